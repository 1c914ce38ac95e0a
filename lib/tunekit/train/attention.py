"""Per-document attention for packed rows, plugged into transformers without any T x T mask.

A packed batch is flattened to one row of B*T tokens whose documents are given by cumulative
offsets (`cu_seqlens`, batches.py). The kit registers one attention implementation with
transformers (`AttentionInterface`, name `IMPLEMENTATION`) that hands those offsets straight to a
kernel with the contract of `torch.nn.attention.varlen.varlen_attn` (torch 2.13):

    kernel(q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D], cu_q, cu_k, max_q, max_k,
           scale=..., window_size=(-1, 0) (causal), enable_gqa=...) -> [T, Hq, D]

- on a CUDA device in bf16/fp16: torch's own `varlen_attn` (the FlashAttention-2 varlen kernel,
  with autograd): each document attends causally to itself only, attention FLOPs follow the
  documents' real lengths, and no mask exists at all;
- anywhere else (CPU, fp32): `varlen_reference`, the same contract computed one document at a
  time with `scaled_dot_product_attention(is_causal=True)`. It is what the CPU tests run, so the
  plumbing of the GPU path (offsets, shapes, GQA, the flattened row) is tested against the
  dense-mask path here (tests/test_attention.py: logits and gradients, SFT and DPO).

A no-op mask function is registered under the same name in `AttentionMaskInterface`: transformers
then builds no `[B, 1, T, T]` mask for the model (building it cost 150-500 ms per 4 x 4096 batch
on the CPU, and it rules out SDPA's fast kernels).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IMPLEMENTATION = "tunekit_varlen"  # the name under which transformers dispatches to `varlen_attention`
CAUSAL = (-1, 0)  # varlen_attn's window for causal attention (a tuple: it compares with ==)


def varlen_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor,
                     cu_seq_k: torch.Tensor | None, max_q: int, max_k: int, *, scale: float | None = None,
                     window_size: tuple[int, int] = (-1, -1), enable_gqa: bool = False) -> torch.Tensor:
    """`torch.nn.attention.varlen.varlen_attn`'s contract, computed per document with SDPA (any device/dtype).

    Only full (`(-1, -1)`) and causal (`(-1, 0)`) windows are supported, the ones training uses.
    """
    if tuple(window_size) not in ((-1, -1), CAUSAL):
        raise ValueError(f"varlen_reference supports full or causal attention only (window {window_size})")
    if query.shape[1] != key.shape[1] and not enable_gqa:
        raise ValueError(f"{query.shape[1]} query heads but {key.shape[1]} key heads: pass enable_gqa=True")
    bounds_q = cu_seq_q.tolist()
    bounds_k = bounds_q if cu_seq_k is None else cu_seq_k.tolist()
    causal = tuple(window_size) == CAUSAL
    pieces = []
    for i in range(len(bounds_q) - 1):
        q = query[bounds_q[i]:bounds_q[i + 1]].transpose(0, 1)[None]   # [1, Hq, L, D]
        k = key[bounds_k[i]:bounds_k[i + 1]].transpose(0, 1)[None]
        v = value[bounds_k[i]:bounds_k[i + 1]].transpose(0, 1)[None]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=enable_gqa)
        pieces.append(out[0].transpose(0, 1))
    return torch.cat(pieces) if pieces else query.new_zeros(query.shape)


def uses_flash_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """True where torch's FlashAttention varlen kernel runs: a CUDA device computing in bf16 or fp16."""
    return device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


def kernel_for(query: torch.Tensor):
    """The varlen kernel for these inputs: torch's FlashAttention varlen on CUDA bf16/fp16, else the reference."""
    if uses_flash_kernel(query.device, query.dtype):
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn
    return varlen_reference


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """One phrase for logs and run records: which per-document kernel runs on this device and dtype."""
    if uses_flash_kernel(device, dtype):
        return "per-document (FlashAttention varlen kernel)"
    return "per-document (SDPA per document, the reference implementation)"


def varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: [1, H, T, D] inputs + the batch's cu_seqlens -> [1, T, H, D].

    transformers calls it from every attention layer with the keyword arguments the model's
    forward received; the kit's batches pass `cu_seq_lens_q/k` and `max_length_q/k`
    (PackedBatch.model_inputs).
    """
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None:
        raise ValueError(f"attn_implementation {IMPLEMENTATION!r} needs the batch's cu_seq_lens_q/max_length_q "
                         "(a packed batch from tunekit.train.batches with per-document attention)")
    if attention_mask is not None:
        raise ValueError(f"attn_implementation {IMPLEMENTATION!r} takes document offsets, not an attention mask")
    if query.shape[0] != 1:
        raise ValueError(f"per-document attention expects the batch flattened to one row, got {query.shape[0]}")
    if dropout:
        raise ValueError("per-document attention does not implement attention dropout (LLaMA trains without it)")
    max_q = int(kwargs.get("max_length_q") or 0)
    max_k = int(kwargs.get("max_length_k") or max_q)
    # [1, H, T, D] -> [T, H, D]; the FlashAttention kernel wants the last two dims contiguous.
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    out = kernel_for(q)(q, k, v, cu_q, cu_k if cu_k is not None else cu_q, max_q, max_k, scale=scaling,
                        window_size=CAUSAL, enable_gqa=q.shape[1] != k.shape[1])
    return out[None], None


def _no_mask(*_args: Any, **_kwargs: Any) -> None:
    """The mask function of the per-document implementation: there is no mask, the offsets say it all."""
    return None


def register() -> str:
    """Register the per-document implementation with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, varlen_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _no_mask)
    return IMPLEMENTATION
