"""Print the per-GPU memory ESTIMATE table for FSDP2 training (computed, not measured).

    python benchmarks/memory_estimate.py [MODEL_DIR_or_config.json] --gpus 8 16 32 --micro-batch 4 --seq 4096
    python benchmarks/memory_estimate.py --accum 8 --micro-batch 4 --seq 4096   # DPO: 2 rows per pair
    python benchmarks/memory_estimate.py --lora --gpus 1 8 --rank 32 --targets attention_qkv

The formula lives in the library (tunekit.train.memory, see its docstring), because training runs
print the same estimate as a planning check before loading the model; this script prints the
table of docs/abci_training.md and docs/lora.md for several GPU counts and activation
checkpointing settings (AC off, every 4th, every 2nd, every layer).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tunekit.train.lora import DEFAULT_TARGETS, LoraSpec, count_adapter_params, resolve_target_modules
from tunekit.train.memory import GB, LLMJP_4_8B, SETTINGS, MemoryEstimate, count_params, estimate

__all__ = ["GB", "LLMJP_4_8B", "count_params", "estimate", "estimate_lora", "count_adapter_params",
           "load_config", "main"]


def estimate_lora(cfg: dict, spec: LoraSpec, gpus: int, micro_batch: int, seq: int, **kwargs) -> MemoryEstimate:
    """The estimate for LoRA (bf16 frozen base, fp32 adapters) of `spec` on this config."""
    return estimate(cfg, gpus, micro_batch, seq, adapter_params=count_adapter_params(cfg, spec), **kwargs)


def load_config(path: str | None) -> dict:
    """A config.json (or a model dir holding one); llm-jp-4-8b's shape when `path` is None."""
    if not path:
        return dict(LLMJP_4_8B)
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    return json.loads(p.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    """Print the estimate table for a few GPU counts and activation checkpointing settings."""
    ap = argparse.ArgumentParser(prog="benchmarks/memory_estimate.py", description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="config.json or HF model dir (default: llm-jp-4-8b's shape)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per micro-batch (DPO: 2 per pair)")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step per GPU (> 1: fp32 grads held)")
    ap.add_argument("--chunk-tokens", type=int, default=1024)
    ap.add_argument("--lora", action="store_true", help="LoRA next to full fine-tuning")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    spec = LoraSpec(rank=args.rank, targets=resolve_target_modules(args.targets))
    what = (f"LoRA rank {spec.rank} on {','.join(spec.targets)} = {count_adapter_params(cfg, spec) / 1e6:.1f}M "
            "adapter parameters vs full fine-tuning" if args.lora else "bf16 compute, fp32 weights/grads/AdamW")
    print(f"ESTIMATE (computed, not measured): {count_params(cfg)[0] / 1e9:.2f}B parameters, micro batch "
          f"{args.micro_batch} x {args.seq} tokens, {args.accum} micro-batch(es) per step; {what}")
    print(f"{'method':>6} {'GPUs':>5} {'AC':>7} {'state':>7} {'accum':>6} {'gathered':>9} {'activ.':>7} "
          f"{'output':>7} {'runtime':>8} {'total GB':>9}")
    common = dict(grad_accum=args.accum, chunk_tokens=args.chunk_tokens)
    for n in args.gpus:
        for ac, every in SETTINGS:
            kw = dict(common, activation_checkpointing=ac, checkpoint_every=every)
            rows = [("full", estimate(cfg, n, args.micro_batch, args.seq, **kw))]
            if args.lora:
                rows.insert(0, ("lora", estimate_lora(cfg, spec, n, args.micro_batch, args.seq, **kw)))
            label = "off" if not ac else ("all" if every == 1 else f"1/{every}")
            for name, e in rows:
                print(f"{name:>6} {n:>5} {label:>7} {e.sharded_state:>7.1f} {e.accumulated_grads:>6.1f} "
                      f"{e.gathered_weights_and_grads:>9.1f} {e.activations:>7.1f} {e.output_layer:>7.1f} "
                      f"{e.runtime_allowance:>8.1f} {e.total:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
