"""Benchmark of DPO: cached reference log-probs vs a live reference model, same model, same batches.

    .venv/bin/python benchmarks/bench_dpo.py [--steps 6] [--hidden 256] [--layers 4] [--vocab 16000]
                                             [--seq 256] [--pairs 64] [--global-batch 8] [--micro-batch 2]

Both variants train through the kit's engine (`session.train_session` with `DPOTask`: FSDP2 at
world size 1, chunked log-probs, pairs packed with isolation) on the same random LLaMA and the same
synthetic pairs in the same order; only the source of the reference log-probs differs:

  cached  the kit's way: one reference pass over all pairs with the freshly loaded model (timed on
          its own, and paid once per data/model, not per run), the model freed, then training reads
          the table; no second model exists during training
  live    the usual way (TRL, NeMo-Aligner): a frozen copy of the model in the compute dtype
          (bf16 on GPU, fp32 on CPU) runs a no-grad forward of every micro-batch during training

Each variant runs in its own fresh process so its peak memory is its own: VmHWM (high-water
resident memory) on CPU, torch.cuda.max_memory_allocated on GPU. Step time is measured between the
loop's step reports after the first (warm-up) step; variants alternate `--repeats` times and the
fastest run of each is reported. The loss trajectories of both variants are compared as well
(same numbers expected up to float rounding). Figures are printed, never hard-coded.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.py: dev-only synthetic data


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024


def _pairs(args):
    import numpy as np

    from tunekit.train.batches import make_pair

    rng = np.random.default_rng(0)
    out = []
    for _ in range(args.pairs):
        p = int(rng.integers(args.seq // 8, args.seq // 4))
        c = int(rng.integers(args.seq // 8, args.seq - p))
        r = int(rng.integers(args.seq // 8, args.seq - p))
        ids = lambda n: rng.integers(5, args.vocab, n).tolist()  # noqa: E731
        out.append(make_pair([1] + ids(p - 1), ids(c), ids(r)))
    return out


def _variant(args, model_dir: str, kind: str) -> dict:
    import torch

    import tunekit.train.monitor as loop_mod
    from tunekit.runs import start_run
    from tunekit.train import refcache
    from tunekit.train.distributed import init_distributed
    from tunekit.train.dpo import DPOTask, cached_reference, reference_logps
    from tunekit.train.engine import Setup, resolve_precision, train
    from tunekit.train.params import DPOParams

    torch.set_num_threads(args.threads)
    refcache.cache_root = lambda: Path(args.tmp) / f"cache-{os.getpid()}"  # always computed anew
    marks: list[float] = []
    losses: list[float] = []
    real_step = loop_mod.Monitor.step

    def timed_step(self, record):
        if record["step"] > 0 and "lr" in record:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
            losses.append(record["loss"])
        real_step(self, record)

    loop_mod.Monitor.step = timed_step
    cfg = DPOParams(max_seq_length=args.seq, global_batch_size=args.global_batch,
                    micro_batch_size=args.micro_batch, max_steps=args.steps, lr=1e-4, min_lr=1e-5,
                    warmup_steps=1, val_interval=0, save_interval=0, publish="final",
                    run_name=f"bench-{kind}-{os.getpid()}", runs_dir=str(Path(args.tmp) / "runs"))
    run = start_run("dpo", cfg, cfg.run_name, cfg.runs_dir)
    env = init_distributed()
    pairs = _pairs(args)
    model_dir = Path(model_dir)
    ref_pass_s = None
    if kind == "cached":
        t0 = time.perf_counter()
        reference = cached_reference(reference_logps(cfg, env, model_dir, pairs, [], varlen=False, pad_id=4,
                                                     log=lambda _m: None))
        ref_pass_s = time.perf_counter() - t0
    else:
        from transformers import AutoModelForCausalLM

        from helpers import live_reference
        from tunekit.train.engine import CausalLMForTraining

        dtype = resolve_precision(cfg.precision, env)
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        reference = live_reference(CausalLMForTraining(lm.to(env.device), cfg.loss_chunk_tokens))
    task = DPOTask(cfg, reference, packed=True, varlen=False, pad_id=4)
    train(task, cfg, run, Setup(env, model_dir, "sdpa", 4), pairs, None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step_s = (marks[-1] - marks[0]) / max(len(marks) - 1, 1)
    return {"step_s": step_s, "peak_mb": _peak_mb(device), "ref_pass_s": ref_pass_s, "losses": losses}


def _in_process(target, *a) -> dict:
    # A fresh interpreter per variant: its own peak memory, no state shared between variants.
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(target, a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per variant (the first is warm-up)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--seq", type=int, default=256, help="longest prompt + response")
    ap.add_argument("--pairs", type=int, default=64, help="synthetic training pairs")
    ap.add_argument("--global-batch", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--micro-batch", type=int, default=2, help="pairs per forward pass")
    ap.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant; the fastest is reported")
    args = ap.parse_args()
    os.environ.setdefault("TUNEKIT_HEADLESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from helpers import tiny_llama_dir

    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        args.tmp = tmp
        model_dir = str(tiny_llama_dir(Path(tmp) / "model", vocab=args.vocab, hidden=args.hidden,
                                       layers=args.layers, max_positions=max(args.seq, 512)))
        res: dict[str, list[dict]] = {"cached": [], "live": []}
        for _ in range(args.repeats):  # interleaved, so a load spike hits both variants alike
            for kind in res:
                res[kind].append(_in_process(_variant, args, model_dir, kind))
        n_params = _count_params(model_dir)
    best = {k: min(v, key=lambda r: r["step_s"]) for k, v in res.items()}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model: hidden {args.hidden}, layers {args.layers}, vocab {args.vocab} ({n_params / 1e6:.1f}M "
          f"params); {args.pairs} pairs of <= {args.seq} tokens per sequence; global batch "
          f"{args.global_batch} pairs, micro {args.micro_batch}; {args.steps} steps; device {device} "
          f"({args.threads} threads); best of {args.repeats}")
    print(f"{'variant':<8} {'step s':>8} {'peak MB':>9}  (all runs: step s)")
    for k, r in best.items():
        runs = ", ".join(f"{x['step_s']:.3f}" for x in res[k])
        print(f"{k:<8} {r['step_s']:>8.3f} {r['peak_mb']:>9.0f}  ({runs})")
    c, live = best["cached"], best["live"]
    diff = max(abs(a - b) for a, b in zip(c["losses"], live["losses"]))
    print(f"step time cached / live: {c['step_s'] / live['step_s']:.2f}x (target <= 0.6x)")
    print(f"peak memory cached - live: {c['peak_mb'] - live['peak_mb']:+.0f} MB "
          f"(the live reference's weights alone: {n_params * (2 if device == 'cuda' else 4) / 2**20:.0f} MB)")
    print(f"one-off reference pass (cached variant, all {args.pairs} pairs): {c['ref_pass_s']:.2f} s "
          f"= {c['ref_pass_s'] / c['step_s']:.1f} training steps")
    print(f"largest loss difference cached vs live over {len(c['losses'])} steps: {diff:.2e}")
    print(json.dumps({"cached_step_s": round(c["step_s"], 4), "live_step_s": round(live["step_s"], 4),
                      "cached_peak_mb": round(c["peak_mb"]), "live_peak_mb": round(live["peak_mb"]),
                      "ref_pass_s": round(c["ref_pass_s"], 3), "max_loss_diff": diff}))
    return 0


def _count_params(model_dir: str) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


if __name__ == "__main__":
    sys.exit(main())
