"""A computed ESTIMATE of per-GPU memory for LoRA training with FSDP2 (not a measurement).

    python -m tunekit.train.lora_memory [MODEL_DIR_or_config.json] --gpus 1 --micro-batch 4 --seq 4096

Built on the full fine-tuning estimate (`tunekit.train.memory`, same activation, output-layer and
runtime terms) with LoRA's state instead of full training state (P base parameters, A adapter
parameters, N data-parallel GPUs):

- state: the frozen base in bf16, 2P/N (the engine stores frozen weights in the compute dtype:
  they are never updated, so they need no fp32 master copy), plus 16A/N for the adapters (fp32
  weights, gradients and two AdamW moments)
- gathered weights: the same bf16 units as full fine-tuning (root lm_head, embedding, ~2 layers);
  gradients exist only for the adapters (negligible), none for the gathered base weights
- activations: the full fine-tuning figure, an upper bound (a frozen linear's input is saved only
  where an adapter needs it)
"""
from __future__ import annotations

import argparse
import sys

from .lora import DEFAULT_TARGETS, LoraSpec, count_adapter_params, resolve_target_modules
from .memory import GB, MemoryEstimate, count_params, estimate, load_config


def estimate_lora(cfg: dict, spec: LoraSpec, gpus: int, micro_batch: int, seq: int,
                  activation_checkpointing: bool = True, chunk_tokens: int = 1024,
                  allowance_gb: float = 4.0) -> MemoryEstimate:
    """Per-GPU memory estimate (GB) for LoRA with bf16 compute, bf16 frozen base, fp32 adapters."""
    full = estimate(cfg, gpus, micro_batch, seq, activation_checkpointing, chunk_tokens, allowance_gb)
    total, layer, emb = count_params(cfg)
    adapters = count_adapter_params(cfg, spec)
    state = (2 * total + 16 * adapters) / gpus
    gathered = 2 * (emb * 2 + 2 * layer)
    return MemoryEstimate(full.params_billion, round(state / GB, 1), round(gathered / GB, 1),
                          full.activations, full.output_layer, full.runtime_allowance)


def main(argv: list[str] | None = None) -> int:
    """Print LoRA vs full fine-tuning estimates for a few GPU counts, with and without checkpointing."""
    ap = argparse.ArgumentParser(prog="python -m tunekit.train.lora_memory", description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="config.json or HF model dir (default: llm-jp-4-8b's shape)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    spec = LoraSpec(rank=args.rank, targets=resolve_target_modules(args.targets))
    print(f"ESTIMATE (computed, not measured): {count_params(cfg)[0] / 1e9:.2f}B parameters, LoRA rank "
          f"{spec.rank} on {','.join(spec.targets)} = {count_adapter_params(cfg, spec) / 1e6:.1f}M adapter "
          f"parameters; micro batch {args.micro_batch} x {args.seq} tokens, bf16 compute")
    print(f"{'method':>6} {'GPUs':>5} {'AC':>4} {'state':>7} {'gathered':>9} {'activ.':>7} {'output':>7} "
          f"{'runtime':>8} {'total GB':>9}")
    for n in args.gpus:
        for ac in (True, False):
            for name, e in (("lora", estimate_lora(cfg, spec, n, args.micro_batch, args.seq, ac)),
                            ("full", estimate(cfg, n, args.micro_batch, args.seq, ac))):
                print(f"{name:>6} {n:>5} {'on' if ac else 'off':>4} {e.sharded_state:>7.1f} "
                      f"{e.gathered_weights_and_grads:>9.1f} {e.activations:>7.1f} {e.output_layer:>7.1f} "
                      f"{e.runtime_allowance:>8.1f} {e.total:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
