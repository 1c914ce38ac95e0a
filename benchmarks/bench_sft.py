"""Benchmark of the SFT engine: the kit's loop vs a bare loop, peak memory, packed vs padded batches.

    .venv/bin/python benchmarks/bench_sft.py [--steps 8] [--hidden 128] [--layers 4] [--vocab 4096]
                                             [--seq 512] [--global-batch 4] [--micro-batch 2]

Each variant runs in its own fresh process (so peak memory is its own) on the same model and the
same batches (synthetic documents packed per the tunekit.data.packing contract, in the same order):

  kit/packed   tunekit.train.sft.train_sft: FSDP2 (world size 1), chunked loss, token-mean over
               the global batch, grad clipping, schedule, metrics.jsonl, progress bar
  bare/packed  plain transformers model: forward with the same block mask, full-logits cross
               entropy, backward, AdamW step - nothing else
  kit/padded   the kit's loop with the same documents one per sequence, padded (no packing)

Throughput counts REAL tokens (padding excluded) per second over the steps after the first (warm-up).
On a GPU (CUDA available) both loops compute in bf16; on CPU in fp32. Figures depend on the machine
and its load: they are printed, never hard-coded.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.py: dev-only synthetic data


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rates(marks, device: str, n_items: int) -> dict:
    """Per-step real-token rates (wall and CPU time) after the first step, plus peak memory."""
    steps = [((b[2] - a[2]) / (b[0] - a[0]), (b[2] - a[2]) / max(b[1] - a[1], 1e-9))
             for a, b in zip(marks, marks[1:])]
    return {"wall": [w for w, _ in steps], "cpu": [c for _, c in steps],
            "peak_mb": _peak_memory_mb(device), "sequences": n_items}


def _items(args, packed: bool):
    from helpers import make_documents, pack_documents, pad_documents

    docs = make_documents(args.docs, args.vocab, args.seq // 8, args.seq // 2, seed=0)
    return (pack_documents if packed else pad_documents)(docs, args.seq, pad_id=4)


def _kit(args, model_dir: str, packed: bool) -> dict:
    import torch

    import tunekit.train.monitor as loop_mod
    from tunekit.runs import start_run
    from tunekit.train.params import SFTParams
    from tunekit.train.sft import train_sft

    torch.set_num_threads(args.threads)
    items = _items(args, packed)
    marks: list[tuple[float, int]] = []
    real_step = loop_mod.Monitor.step

    def timed_step(self, record):  # timestamps between steps include everything the loop does
        marks.append((time.perf_counter(), time.process_time(), record["tokens_seen"]))
        real_step(self, record)

    loop_mod.Monitor.step = timed_step
    cfg = SFTParams(max_seq_length=args.seq, global_batch_size=args.global_batch,
                    micro_batch_size=args.micro_batch, max_steps=args.steps, lr=1e-3, min_lr=1e-4,
                    warmup_steps=1, constant_steps=0, val_interval=0, save_interval=0,
                    publish="final", run_name=f"bench-{os.getpid()}", runs_dir=str(Path(args.tmp) / "runs"))
    run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
    train_sft(cfg, run, datasets=(items, [], {}), model_dir=Path(model_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return _rates(marks, device, len(items))


def _bare(args, model_dir: str) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from tunekit.train.batches import collate_packed
    from tunekit.train.plan import DataOrder

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    items = _items(args, packed=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order = DataOrder(len(items), args.global_batch, seed=1234)
    marks, seen = [], 0
    for step in range(1, args.steps + 1):
        batches = [collate_packed([items[int(i)] for i in idx], pad_id=4).to(device)
                   for idx in order.rank_micro_batches(step, 0, 1, args.micro_batch)]
        n_loss = sum(b.loss_tokens for b in batches)
        for b in batches:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                logits = model(**b.model_inputs()).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), b.labels.reshape(-1),
                                   ignore_index=-100, reduction="sum") / n_loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seen += sum(b.real_tokens for b in batches)
        marks.append((time.perf_counter(), time.process_time(), seen))
    return _rates(marks, device, len(items))


def _in_process(target, *a) -> dict:
    # A fresh interpreter per variant: its own peak memory, no state shared between variants.
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(target, a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per variant (the first is warm-up)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--docs", type=int, default=200, help="synthetic documents")
    # 1 by default: on a shared CPU, OpenMP threads spin-wait for each other and make timings erratic.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant (interleaved)")
    args = ap.parse_args()
    os.environ.setdefault("TUNEKIT_HEADLESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from helpers import tiny_llama_dir

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        args.tmp = tmp
        model_dir = str(tiny_llama_dir(Path(tmp) / "model", vocab=args.vocab, hidden=args.hidden,
                                       layers=args.layers, max_positions=max(args.seq, 512)))
        res: dict[str, list[dict]] = {"kit/packed": [], "bare/packed": [], "kit/padded": []}
        for _ in range(args.repeats):  # interleaved, so a load spike hits every variant alike
            res["kit/packed"].append(_in_process(_kit, args, model_dir, True))
            res["bare/packed"].append(_in_process(_bare, args, model_dir))
            res["kit/padded"].append(_in_process(_kit, args, model_dir, False))
    import statistics

    import torch

    def merged(k, key):  # per-step rates of every repeat of a variant
        return [x for r in res[k] for x in r[key]]

    summary = {k: {"median_wall": statistics.median(merged(k, "wall")),
                   "best_wall": max(merged(k, "wall")),
                   "median_cpu": statistics.median(merged(k, "cpu")),
                   "peak_mb": max(r["peak_mb"] for r in res[k]), "sequences": res[k][0]["sequences"]}
               for k in res}
    print(f"model: hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}; seq {args.seq}, global "
          f"batch {args.global_batch}, micro {args.micro_batch}; {args.steps} steps x {args.repeats} "
          f"repeats; device {'cuda' if torch.cuda.is_available() else 'cpu'} ({args.threads} threads); "
          f"load average {os.getloadavg()[0]:.1f}")
    print("real (non-padding) tokens per second, per step after the first; median over steps and repeats")
    print(f"{'variant':<12} {'median wall':>12} {'best wall':>10} {'median CPU-time':>16} {'peak MB':>8} "
          f"{'sequences':>10}")
    for k, r in summary.items():
        print(f"{k:<12} {r['median_wall']:>12.0f} {r['best_wall']:>10.0f} {r['median_cpu']:>16.0f} "
              f"{r['peak_mb']:>8.0f} {r['sequences']:>10}")
    kit, bare, pad = (summary[k] for k in ("kit/packed", "bare/packed", "kit/padded"))
    for basis in ("median_wall", "best_wall", "median_cpu"):
        print(f"kit loop vs bare loop ({basis}): {100 * (bare[basis] / kit[basis] - 1):+.1f}% time per real "
              f"token (target <= +10%); packing speed-up x{kit[basis] / pad[basis]:.2f}")
    print(json.dumps({k: {m: round(v, 1) for m, v in r.items()} for k, r in summary.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
