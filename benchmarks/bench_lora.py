"""Benchmark: full fine-tuning vs LoRA through the kit's engine on a larger random LLaMA (CPU).

    .venv/bin/python benchmarks/bench_lora.py                  # ~0.35B params (see below), seq 256
    .venv/bin/python benchmarks/bench_lora.py --hidden 2048 --layers 16 --vocab 32000   # ~1.0B

The default is ~0.35B parameters, not 1B: full fine-tuning in fp32 on CPU holds 16 bytes per
parameter (weights, gradients, two AdamW moments) plus the fp32 copy made while loading, so 1B
needs ~20 GB - more than a shared 24 GB machine should give one benchmark. `--hidden 2048
--layers 16` is the ~1B shape for a machine with the memory.

Each method runs in its own process through the engine exactly as a `peft: none|lora` run does
(`load_for_training` -> FSDP2 in one gloo process, `build_optimizer`, AdamW steps on packed
synthetic batches, fp32, one thread). Reported per method: parameters and trainable parameters,
peak resident memory while loading and while training (the process's VmHWM, reset in between),
the step time (median of the timed steps after one warm-up step) and tokens/s. Then the ratio
LoRA/full, and the state both should hold by construction (16 B per trainable parameter + 4 B
per frozen one on CPU) for comparison. Prints figures only; never part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import gc, json, statistics, sys, time
import torch
torch.set_num_threads(1)
from pathlib import Path
from types import SimpleNamespace
from helpers import synthetic_packed, trainable_summary
from tunekit.train.distributed import init_distributed
from tunekit.train.engine import build_optimizer, load_for_training
from tunekit.train.lora import LoraSpec, resolve_target_modules
from tunekit.train.sft import SFTTask

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak RSS (Linux >= 4.0)
        f.write("5")

a = json.loads(sys.argv[1])
env = init_distributed()
spec = None
if a["method"] == "lora":
    spec = LoraSpec(rank=a["rank"], alpha=2.0 * a["rank"], targets=resolve_target_modules(a["targets"]))
t0 = time.time()
model, setup = load_for_training(Path(a["model_dir"]), env, precision="fp32", attn_implementation="sdpa",
                                 lora=spec)
load_s = time.time() - t0
opt = build_optimizer(model, SimpleNamespace(weight_decay=0.0, lr=1e-4, adam_beta1=0.9, adam_beta2=0.98))
gc.collect()
load_peak = hwm()
reset_hwm()
task = SFTTask(pad_id=4)
items = synthetic_packed(64, a["seq"], a["vocab"], seed=1)
batches = [task.batch(items[i * a["mbs"]:(i + 1) * a["mbs"]], env.device) for i in range(a["steps"] + 1)]
times = []
for b in batches:
    t = time.time()
    loss, _ = task.loss(model, b)
    (loss / b.weight).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.time() - t)
step = statistics.median(times[1:])
print(json.dumps({**trainable_summary(model), "load_seconds": load_s, "load_peak": load_peak,
                  "train_peak": hwm(), "step_seconds": step, "tokens_per_s": a["seq"] * a["mbs"] / step}))
"""


def build_model(out: Path, hidden: int, layers: int, vocab: int) -> Path:
    """A random LLaMA (GQA, SwiGLU, untied) saved in bf16 like the real checkpoint; reused if present."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(4, hidden // 64)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                      max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=4)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    return out


def run_child(args: dict) -> dict:
    """One method in a fresh process (its own peak memory); returns its JSON record."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")  # helpers.py: dev-only synthetic data
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNEKIT_HEADLESS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True,
                         text=True)
    if res.returncode != 0:
        sys.exit(f"{args['method']} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the model, run full and LoRA, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--targets", default="attention_qkv")
    ap.add_argument("--model-dir", default="", help="where to build/reuse the random model, kept "
                    "afterwards (default: a temp dir, removed at the end)")
    args = ap.parse_args(argv)
    from tunekit.train.params import SFTParams  # noqa: F401  (fail early outside the venv)
    from tunekit.train.engine import load_for_training
    import inspect

    if "lora" not in inspect.signature(load_for_training).parameters:
        sys.exit("the engine has no LoRA hook yet (apply the LoRA integration patch first)")
    shape = f"h{args.hidden}-l{args.layers}-v{args.vocab}"
    scratch = None if args.model_dir else Path(tempfile.mkdtemp(prefix="tunekit-bench-lora-"))
    model_dir = Path(args.model_dir) if args.model_dir else scratch / shape
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # so that the cleanup below runs
    try:
        print(f"model: random LLaMA {shape} at {model_dir}", flush=True)
        build_model(model_dir, args.hidden, args.layers, args.vocab)
        common = dict(model_dir=str(model_dir), seq=args.seq, mbs=args.micro_batch, steps=args.steps,
                      vocab=args.vocab, rank=args.rank, targets=args.targets)
        rows = {m: run_child(dict(common, method=m)) for m in ("full", "lora")}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    gib = 1024 ** 3
    print(f"\n{args.seq} tokens x micro batch {args.micro_batch}, fp32, 1 thread, "
          f"LoRA rank {args.rank} alpha {2 * args.rank} on {args.targets}")
    print(f"{'method':>6} {'params':>10} {'trainable':>11} {'load peak':>10} {'train peak':>11} "
          f"{'step s':>7} {'tok/s':>7} {'state by construction':>22}")
    for m, r in rows.items():
        frozen = r["params"] - r["trainable_params"]
        state = (16 * r["trainable_params"] + 4 * frozen) / gib
        print(f"{m:>6} {r['params'] / 1e6:>9.1f}M {r['trainable_params'] / 1e6:>10.2f}M "
              f"{r['load_peak'] / gib:>8.2f}GB {r['train_peak'] / gib:>9.2f}GB {r['step_seconds']:>7.2f} "
              f"{r['tokens_per_s']:>7.1f} {state:>20.2f}GB")
    f, lo = rows["full"], rows["lora"]
    print(f"\nLoRA / full: training peak {lo['train_peak'] / f['train_peak']:.2f}x, "
          f"step time {lo['step_seconds'] / f['step_seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
