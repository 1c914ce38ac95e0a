"""A computed ESTIMATE of per-GPU memory for FSDP2 training, full fine-tuning and LoRA (not a measurement).

    python benchmarks/memory_estimate.py [MODEL_DIR_or_config.json] --gpus 8 16 32 --micro-batch 4 --seq 4096
    python benchmarks/memory_estimate.py --lora --gpus 1 8 --rank 32 --targets attention_qkv

A planning aid for ABCI jobs (docs/abci_training.md, docs/lora.md), not part of the kit's library.

Components (bytes per GPU; P parameters, N data-parallel GPUs, B x T tokens per micro-batch):

- sharded training state: fp32 master weights 4P/N + fp32 gradients 4P/N + AdamW moments 8P/N
- gathered bf16 weights: the root unit (final norm + lm_head) stays gathered from forward to the end
  of backward; the embedding and ~2 decoder layers (current + prefetched) are gathered at a time;
  gradients of a gathered unit exist in bf16 and, for the fp32 reduce-scatter, once more in fp32
- activations: with activation checkpointing one bf16 hidden state per layer (B*T*h*2) plus one
  layer being recomputed; without it every layer keeps its activations. Per token and layer we
  count (7.5 h + 4 f) bf16 values + 2 h fp32 (RMSNorm upcasts) with FlashAttention/memory-efficient
  SDPA (no T x T scores)
- the chunked output layer: one [chunk x vocab] block in fp32 plus its gradient and the bf16 logits
- a fixed allowance for the CUDA context, NCCL buffers and allocator fragmentation

These are the usual first-order terms; real peaks differ by a few GB (allocator caching, NCCL, the
exact prefetch overlap). Measure with torch.cuda.max_memory_allocated() on the first job.

LoRA (`--lora`) is built on the full fine-tuning estimate (same activation, output-layer and runtime
terms) with LoRA's state instead of full training state (P base parameters, A adapter parameters,
N data-parallel GPUs):

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
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tunekit.train.lora import DEFAULT_TARGETS, LoraSpec, resolve_target_modules

GB = 1e9

# llm-jp-4-8b (FACTS.md section 4), used when no config is given.
LLMJP_4_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 196608,
              "tie_word_embeddings": False}


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated GB per GPU, by component."""

    params_billion: float
    sharded_state: float
    gathered_weights_and_grads: float
    activations: float
    output_layer: float
    runtime_allowance: float

    @property
    def total(self) -> float:
        return (self.sharded_state + self.gathered_weights_and_grads + self.activations
                + self.output_layer + self.runtime_allowance)

    def as_dict(self) -> dict:
        return {**asdict(self), "total": round(self.total, 1)}


def count_params(cfg: dict) -> tuple[int, int, int]:
    """(total, per decoder layer, embedding) parameter counts of a LLaMA config."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2          # q, o and k, v
    layer = attn + 3 * h * f + 2 * h                      # + SwiGLU + two RMSNorms
    emb = v * h
    total = layer * cfg["num_hidden_layers"] + emb * (1 if cfg.get("tie_word_embeddings") else 2) + h
    return total, layer, emb


def estimate(cfg: dict, gpus: int, micro_batch: int, seq: int, activation_checkpointing: bool = True,
             chunk_tokens: int = 1024, allowance_gb: float = 4.0) -> MemoryEstimate:
    """Per-GPU memory estimate (GB) for FSDP2 full fine-tuning with bf16 compute and fp32 state."""
    total, layer, emb = count_params(cfg)
    h, f, v, n_layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    state = 16 * total / gpus
    # root (lm_head) + embedding + 2 layers gathered in bf16; their grads in bf16 and fp32.
    gathered_units = emb * 2 + 2 * layer
    weights = 2 * gathered_units
    grads = (2 + 4) * (emb + 2 * layer)  # the largest units being reduced at the same time
    tokens = micro_batch * seq
    per_layer = tokens * ((7.5 * h + 4 * f) * 2 + 2 * h * 4)
    if activation_checkpointing:
        acts = n_layers * tokens * h * 2 + per_layer
    else:
        acts = n_layers * per_layer
    out = min(chunk_tokens, tokens) * v * (4 + 4 + 2)
    return MemoryEstimate(round(total / 1e9, 3), round(state / GB, 1), round((weights + grads) / GB, 1),
                          round(acts / GB, 1), round(out / GB, 1), allowance_gb)


def load_config(path: str | None) -> dict:
    """A config.json (or a model dir holding one); llm-jp-4-8b's shape when `path` is None."""
    if not path:
        return dict(LLMJP_4_8B)
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    return json.loads(p.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ LoRA
def _cfg(config, name: str, default=None):
    # transformers configs are objects; memory.py works on config.json dicts: accept both.
    value = config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)
    return default if value is None else value


def adapter_shapes(config, spec: LoraSpec) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target module of a LLaMA config (object or dict), one layer."""
    h = int(_cfg(config, "hidden_size"))
    heads = int(_cfg(config, "num_attention_heads"))
    kv = int(_cfg(config, "num_key_value_heads", heads))
    hd = int(_cfg(config, "head_dim", h // heads))
    ffn = int(_cfg(config, "intermediate_size"))
    dims = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd),
            "o_proj": (heads * hd, h), "gate_proj": (h, ffn), "up_proj": (h, ffn), "down_proj": (ffn, h)}
    return {t: dims[t] for t in spec.targets}


def count_adapter_params(config, spec: LoraSpec) -> int:
    """Trainable LoRA parameters for a LLaMA config: rank x (in + out) per target per layer."""
    per_layer = sum(spec.rank * (i + o) for i, o in adapter_shapes(config, spec).values())
    return per_layer * int(_cfg(config, "num_hidden_layers"))


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
    """Print the estimate table for a few GPU counts, with and without activation checkpointing."""
    ap = argparse.ArgumentParser(prog="benchmarks/memory_estimate.py", description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="config.json or HF model dir (default: llm-jp-4-8b's shape)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
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
          f"{args.micro_batch} x {args.seq} tokens; {what}")
    print(f"{'method':>6} {'GPUs':>5} {'AC':>4} {'state':>7} {'gathered':>9} {'activ.':>7} {'output':>7} "
          f"{'runtime':>8} {'total GB':>9}")
    for n in args.gpus:
        for ac in (True, False):
            rows = [("full", estimate(cfg, n, args.micro_batch, args.seq, ac, args.chunk_tokens))]
            if args.lora:
                rows.insert(0, ("lora", estimate_lora(cfg, spec, n, args.micro_batch, args.seq, ac, args.chunk_tokens)))
            for name, e in rows:
                print(f"{name:>6} {n:>5} {'on' if ac else 'off':>4} {e.sharded_state:>7.1f} "
                      f"{e.gathered_weights_and_grads:>9.1f} {e.activations:>7.1f} {e.output_layer:>7.1f} "
                      f"{e.runtime_allowance:>8.1f} {e.total:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
