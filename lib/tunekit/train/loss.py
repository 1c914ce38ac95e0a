"""Chunked next-token log-probabilities and the SFT loss, without full-vocabulary logits in memory.

llm-jp-4's vocabulary is 196,608: the fp32 logits of one 4k sequence are ~3 GB, and autograd
would keep them (and the log-softmax output) until backward. Instead, only the positions that
carry a label are projected, a chunk of `chunk_tokens` rows at a time, and each chunk runs under
activation checkpointing: forward keeps just the chunk's hidden states, backward recomputes that
chunk's logits. The peak is one [chunk x vocab] fp32 block (plus its gradient), whatever the
sequence length.

Both SFT (token-mean cross entropy) and DPO (per-sequence sums of log-probs) are built on
`token_logprobs`, which returns a dense [B, T] tensor of log p(label) with 0 where there is no label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .batches import IGNORE_INDEX


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # The projection runs in the compute dtype (bf16 on GPU); log-softmax in fp32 for accuracy.
    logits = F.linear(hidden, weight).float()
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   chunk_tokens: int = 1024) -> torch.Tensor:
    """log p(labels[b, t] | prefix) for every labelled position, 0 elsewhere; shape of `labels`, fp32.

    Args:
        hidden: [B, T, H] final hidden states (after the last norm).
        weight: [V, H] output projection (lm_head.weight).
        labels: [B, T] already-shifted targets, -100 where there is no loss.
        chunk_tokens: rows projected at once; bounds the [rows x V] logits block.
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1)
    idx = (flat_y != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    out = torch.zeros(flat_y.shape, dtype=torch.float32, device=hidden.device)
    if idx.numel() == 0:
        # Keep the graph connected so backward still reaches every parameter (FSDP needs that).
        return out.reshape(labels.shape) + 0.0 * hidden.sum() + 0.0 * weight.sum()
    h_sel, y_sel = flat_h.index_select(0, idx), flat_y.index_select(0, idx)
    pieces = []
    for start in range(0, idx.numel(), chunk_tokens):
        h_c, y_c = h_sel[start:start + chunk_tokens], y_sel[start:start + chunk_tokens]
        if torch.is_grad_enabled() and (h_c.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk_logprobs, h_c, weight, y_c, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h_c, weight, y_c))
    return out.index_put((idx,), torch.cat(pieces)).reshape(labels.shape)


def sft_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                 chunk_tokens: int = 1024) -> tuple[torch.Tensor, int]:
    """Summed cross entropy over labelled positions and their count (divide by a global count)."""
    lp = token_logprobs(hidden, weight, labels, chunk_tokens)
    return -lp.sum(), int((labels != IGNORE_INDEX).sum())


def plain_sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference: mean cross entropy from full logits (what the chunked path must equal)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)
