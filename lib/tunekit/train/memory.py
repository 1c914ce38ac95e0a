"""A computed ESTIMATE of per-GPU memory for FSDP2 training (full fine-tuning or LoRA), not a measurement.

Used in two places: every GPU training run prints it next to the GPU's memory before loading the
model (`plan_line`, a planning check: a layout that cannot fit is named before 8B weights load,
not after an out-of-memory an hour later), and `python benchmarks/memory_estimate.py` prints the
table of docs/abci_training.md. Real peaks differ by a few GB (allocator caching, NCCL buffers,
prefetch overlap): runs record the measured `peak_mem_gb` per step in metrics.jsonl.

Components (bytes per GPU; P parameters, N data-parallel GPUs, B x T tokens per micro-batch):

- sharded training state: fp32 master weights 4P/N + fp32 gradients 4P/N + AdamW moments 8P/N
  (LoRA: the frozen base in bf16, 2P/N, plus 16 bytes per adapter parameter / N)
- accumulated gradients: with gradient accumulation (more than one micro-batch per step), FSDP2
  skips the reduce-scatter on all but the last micro-batch and keeps each parameter's UNSHARDED
  gradient in the reduce dtype (fp32) until then: 4P bytes on every GPU, whatever N (34 GB for
  llm-jp-4-8b). Without accumulation it does not exist.
- gathered bf16 weights: the root unit (final norm + lm_head) stays gathered from forward to the
  end of backward; the embedding and ~2 decoder layers (current + prefetched) at a time; gradients
  of a gathered unit in bf16 and, for the fp32 reduce-scatter, once more in fp32
- activations per decoder layer: a recomputed (checkpointed) layer keeps only its bf16 input,
  B*T*h*2; any other keeps (7.5 h + 4 f) bf16 values + 2 h fp32 (RMSNorm upcasts) per token, with
  per-document/FlashAttention kernels (no T x T scores). `checkpoint_every` = n recomputes every
  n-th layer; one recomputed layer's full activations exist during backward.
- the chunked output layer: one [chunk x vocab] block in fp32 plus its gradient and bf16 logits
- a fixed allowance for the CUDA context, NCCL buffers and allocator fragmentation
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

GB = 1e9

# llm-jp-4-8b (FACTS.md section 4).
LLMJP_4_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 196608,
              "tie_word_embeddings": False}


def _get(config: Any, name: str, default: Any = None) -> Any:
    # transformers configs are objects, config.json is a dict: accept both.
    value = config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)
    return default if value is None else value


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated GB per GPU, by component."""

    params_billion: float
    sharded_state: float
    accumulated_grads: float
    gathered_weights_and_grads: float
    activations: float
    output_layer: float
    runtime_allowance: float

    @property
    def total(self) -> float:
        return round(self.sharded_state + self.accumulated_grads + self.gathered_weights_and_grads
                     + self.activations + self.output_layer + self.runtime_allowance, 1)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def count_params(config: Any) -> tuple[int, int, int]:
    """(total, per decoder layer, embedding) parameter counts of a LLaMA config (object or dict)."""
    h, f, v = int(_get(config, "hidden_size")), int(_get(config, "intermediate_size")), int(_get(config, "vocab_size"))
    heads = int(_get(config, "num_attention_heads"))
    kv = int(_get(config, "num_key_value_heads", heads))
    hd = int(_get(config, "head_dim", h // heads))
    attn = h * heads * hd * 2 + h * kv * hd * 2          # q, o and k, v
    layer = attn + 3 * h * f + 2 * h                      # + SwiGLU + two RMSNorms
    emb = v * h
    tied = bool(_get(config, "tie_word_embeddings", False))
    total = layer * int(_get(config, "num_hidden_layers")) + emb * (1 if tied else 2) + h
    return total, layer, emb


def estimate(config: Any, gpus: int, micro_batch: int, seq: int, *, activation_checkpointing: bool = True,
             checkpoint_every: int = 1, grad_accum: int = 1, chunk_tokens: int = 1024, allowance_gb: float = 4.0,
             adapter_params: int | None = None, live_reference: bool = False) -> MemoryEstimate:
    """Per-GPU memory estimate (GB) with bf16 compute (see the module docstring for every term).

    Args:
        micro_batch, seq: sequences (rows) per micro-batch and their length; DPO rows are 2 per pair.
        grad_accum: micro-batches per optimizer step per GPU (> 1 adds the unsharded fp32 gradient).
        adapter_params: LoRA's trainable parameters (None: full fine-tuning).
        live_reference: DPO with `reference: live` and no LoRA: a frozen bf16 copy, sharded.
    """
    total, layer, emb = count_params(config)
    h, f = int(_get(config, "hidden_size")), int(_get(config, "intermediate_size"))
    v, n_layers = int(_get(config, "vocab_size")), int(_get(config, "num_hidden_layers"))
    lora = adapter_params is not None
    trainable = adapter_params if lora else total
    state = (2 * total + 16 * adapter_params) / gpus if lora else 16 * total / gpus
    if live_reference and not lora:
        state += 2 * total / gpus
    accumulated = 4 * trainable if grad_accum > 1 else 0
    # root (lm_head) + embedding + 2 layers gathered in bf16; without LoRA their grads in bf16 and fp32.
    gathered = 2 * (emb * 2 + 2 * layer) + (0 if lora else (2 + 4) * (emb + 2 * layer))
    tokens = micro_batch * seq
    full_layer = tokens * ((7.5 * h + 4 * f) * 2 + 2 * h * 4)
    if activation_checkpointing:
        every = max(1, int(checkpoint_every))
        recomputed = math.ceil(n_layers / every)       # layers 0, n, 2n, ... (transformers' rule)
        acts = recomputed * tokens * h * 2 + (n_layers - recomputed) * full_layer + full_layer
    else:
        acts = n_layers * full_layer
    out = min(chunk_tokens, tokens) * v * (4 + 4 + 2)
    r = lambda x: round(x / GB, 1)  # noqa: E731
    return MemoryEstimate(round(total / 1e9, 3), r(state), r(accumulated), r(gathered), r(acts), r(out),
                          allowance_gb)


# Activation checkpointing settings from the fastest (most memory) to the cheapest.
SETTINGS = ((False, 1), (True, 4), (True, 2), (True, 1))


def cheapest_fitting(config: Any, budget_gb: float, **kwargs: Any) -> tuple[bool, int] | None:
    """The fastest (activation_checkpointing, checkpoint_every) whose estimate fits `budget_gb`, or None."""
    for ac, every in SETTINGS:
        if estimate(config, activation_checkpointing=ac, checkpoint_every=every, **kwargs).total <= budget_gb:
            return ac, every
    return None


def for_params(cfg: Any, config: Any, world_size: int, grad_accum: int) -> MemoryEstimate:
    """The estimate for a training config (SFTParams/DPOParams) on `world_size` GPUs."""
    from .lora import count_adapter_params, spec_from_params

    spec = spec_from_params(cfg)
    rows = cfg.micro_batch_size * (2 if cfg.stage == "dpo" else 1)  # DPO: chosen + rejected per pair
    return estimate(config, world_size, rows, cfg.max_seq_length,
                    activation_checkpointing=cfg.activation_checkpointing,
                    checkpoint_every=cfg.activation_checkpointing_every, grad_accum=grad_accum,
                    chunk_tokens=cfg.loss_chunk_tokens,
                    adapter_params=count_adapter_params(config, spec) if spec is not None else None,
                    live_reference=getattr(cfg, "reference", "cached") == "live")


def plan_line(est: MemoryEstimate, device_gb: float | None) -> str:
    """One line for the run log: the estimate, its largest terms, and how it compares with the GPU."""
    terms = sorted(((v, k) for k, v in est.as_dict().items()
                    if k not in ("total", "params_billion", "runtime_allowance")), reverse=True)[:3]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:g}" for v, k in terms)
    line = f"memory estimate: ~{est.total:g} GB per GPU ({parts})"
    if device_gb:
        line += f" of {device_gb:g} GB"
        if est.total > 0.95 * device_gb:
            line += (" - likely OUT OF MEMORY: turn activation_checkpointing on (or lower "
                     "activation_checkpointing_every, micro_batch_size), or use more GPUs")
    return line
