"""Benchmark: HF <-> NeMo conversion of a ~1B-parameter random LLaMA against a plain file copy.

    .venv/bin/python benchmarks/bench_convert.py            # ~1.0B params, bf16, ~2 GB on disk
    .venv/bin/python benchmarks/bench_convert.py --layers 4  # smaller/faster

The model is generated locally (random bf16 weights written tensor by tensor, llm-jp-4's shape
family: GQA, SwiGLU, untied embeddings) with the tiny fixture's tokenizer. Each conversion runs in
its own process so its peak resident memory (ru_maxrss) is its own; an "import only" process gives
the baseline that torch + transformers + Megatron-core cost before any tensor is touched.

Reported: bytes, seconds and MB/s for a copy of the same bytes (page cache warm, like the
conversions), HF->NeMo and NeMo->HF (conversion = streaming write; the bit-exact weight check
re-reads everything and is timed separately), and peak memory versus the model size and the
largest single tensor. `--verify-logits` also times the Megatron-vs-HF logits check (one fp32
model at a time: ~4 bytes per parameter). Prints figures only; never part of `make test`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Peak memory is the child's VmHWM (high-water RSS of its own address space). ru_maxrss would also
# count the parent's pages the child held between fork and exec.
CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from tunekit.convert import api
kind, src, dst, verify_logits = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if kind == "import":
    from tunekit.convert.megatron_cpu import import_megatron
    import transformers
    import_megatron()
    summary = {}
else:
    fn = api.hf_to_nemo if kind == "hf_to_nemo" else api.nemo_to_hf
    summary = fn(src, dst, verify_logits=verify_logits, log=lambda *a: None).summary
status = open("/proc/self/status").read()
hwm_kb = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1])
print("RESULT " + json.dumps({"summary": summary, "peak_mb": hwm_kb / 1024}))
"""


def run_child(*args: str) -> tuple[dict, float, float]:
    """Run one step in a fresh process; returns (its summary, wall seconds, peak RSS in MB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNEKIT_HEADLESS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"step {args[0]} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    data = json.loads(line[7:])
    return data["summary"], wall, data["peak_mb"]


def make_model(out: Path, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int,
               vocab: int) -> tuple[int, int]:
    """Write a random bf16 LlamaForCausalLM dir tensor by tensor; returns (params, largest tensor bytes)."""
    import torch

    from tunekit.convert import configs, layout
    from tunekit.convert.hf_files import copy_tokenizer_files, write_generation_config
    from tunekit.convert.safetensors_io import ShardWriter
    from tunekit.model import tiny_model_dir

    spec = layout.LlamaSpec(num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_heads=heads,
                            num_query_groups=kv_heads, head_dim=hidden // heads, vocab_size=vocab,
                            rope_theta=500000.0, max_position_embeddings=4096)
    out.mkdir(parents=True)
    plan = list(layout.hf_expected(spec).items())
    writer = ShardWriter(out, plan, torch.bfloat16, max_shard_bytes=5 * 10**9)
    gen = torch.Generator().manual_seed(0)
    largest = 0
    for name, shape in plan:
        t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.bfloat16)
        largest = max(largest, writer.write(name, t))
    writer.close()
    tiny = tiny_model_dir()
    copy_tokenizer_files(tiny, out)
    ids = {"bos": 1, "eos": 2, "pad": 4}
    (out / "config.json").write_text(json.dumps(configs.hf_config_dict(spec, "bf16", ids), indent=2))
    write_generation_config(out, ids)
    return spec.num_params(), largest


def copy_baseline(src: Path, dst: Path) -> tuple[int, float]:
    """Plain copy of the model's weight files (the same bytes a conversion moves)."""
    dst.mkdir(parents=True)
    files = sorted(src.glob("*.safetensors"))
    t0 = time.time()
    for f in files:
        # fsync the copy, as both converters fsync what they write (a whole-system sync would
        # also flush other processes' data).
        with open(f, "rb") as fin, open(dst / f.name, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 * 2**20)
            fout.flush()
            os.fsync(fout.fileno())
    return sum(f.stat().st_size for f in files), time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--verify-logits", action="store_true", help="also time the logits check")
    ap.add_argument("--workdir", default="", help="where to write (default: a temp dir, removed after)")
    args = ap.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="tunekit-bench-convert-"))
    try:
        t0 = time.time()
        params, largest = make_model(root / "hf", args.hidden, args.layers, args.heads, args.kv_heads,
                                     args.ffn, args.vocab)
        print(f"model: {params / 1e9:.3f}B parameters, bf16, written in {time.time() - t0:.0f} s "
              f"(largest tensor {largest / 1e6:.0f} MB)", flush=True)
        nbytes, copy_s = copy_baseline(root / "hf", root / "copy")
        _, _, base_rss = run_child("import", "-", "-", "0")
        v = "1" if args.verify_logits else "0"
        h2n, h2n_wall, h2n_rss = run_child("hf_to_nemo", str(root / "hf"), str(root / "nemo"), v)
        n2h, n2h_wall, n2h_rss = run_child("nemo_to_hf", str(root / "nemo"), str(root / "hf2"), v)
        rows = [("plain copy", nbytes, copy_s, None, None, None)]
        for name, s, wall, rss in (("HF -> NeMo", h2n, h2n_wall, h2n_rss), ("NeMo -> HF", n2h, n2h_wall, n2h_rss)):
            rows.append((name, s["bytes_written"], s["write_seconds"], s["verify_seconds"], wall, rss))
        print(f"\n{'step':<16}{'bytes':>10}{'convert s':>11}{'MB/s':>8}{'vs copy':>8}{'verify s':>10}"
              f"{'wall s':>8}{'peak RSS':>10}")
        for name, b, s, ver, wall, rss in rows:
            rate = b / 1e6 / s
            rel = rate / (nbytes / 1e6 / copy_s)
            print(f"{name:<16}{b / 1e9:>8.2f}GB{s:>11.1f}{rate:>8.0f}{rel:>8.2f}"
                  f"{'' if ver is None else f'{ver:.1f}':>10}{'' if wall is None else f'{wall:.0f}':>8}"
                  f"{'' if rss is None else f'{rss / 1e3:.2f}GB':>10}")
        print(f"\nimport-only process (torch + transformers + Megatron-core): {base_rss / 1e3:.2f} GB peak RSS")
        print(f"model weights: {nbytes / 1e9:.2f} GB; largest tensor: {largest / 1e9:.3f} GB; "
              f"peak above the import baseline: HF->NeMo {(h2n_rss - base_rss) / 1e3:.2f} GB, "
              f"NeMo->HF {(n2h_rss - base_rss) / 1e3:.2f} GB")
        for s in (h2n, n2h):
            ver = s["verification"]
            logits = (f", logits max|diff| {ver['logits_max_abs_diff']:.2e}" if "logits_max_abs_diff" in ver
                      else "")
            print(f"{s['direction']}: {ver['tensors_compared']} tensors bit-exact{logits}")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
