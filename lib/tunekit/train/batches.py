"""Micro-batches from packed sequences, with documents kept apart.

A packed item (tunekit.data.packing contract) holds `input_ids`, `labels` (already shifted, -100
where no loss), `position_ids` (restarting at 0 per document) and `doc_lens` (summing to the
sequence length; trailing padding is its own final document). Attention must never cross a
document boundary, so the batch carries either

- `attention_mask`: a [B, 1, T, T] boolean block-diagonal causal mask (True = may attend), which
  transformers passes to SDPA/eager unchanged (used on CPU, and on GPU without FlashAttention), or
- `cu_seqlens` (+ `max_seqlen`) over the flattened [1, B*T] batch for FlashAttention's varlen
  kernel, which is faster and needs no T x T mask.

Restarting position ids make RoPE see each document as if it were alone; together with the mask
the logits equal those of each document run by itself (tests/test_train_batches.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass
class PackedBatch:
    """One micro-batch of packed sequences as tensors, plus bookkeeping counts."""

    input_ids: torch.Tensor          # [B, T] int64
    labels: torch.Tensor             # [B, T] int64, -100 = no loss
    position_ids: torch.Tensor       # [B, T] int64
    doc_lens: list[np.ndarray]       # per sequence, int32
    attention_mask: torch.Tensor | None = None  # [B, 1, T, T] bool (SDPA/eager)
    cu_seqlens: torch.Tensor | None = None      # [n_docs + 1] int32 (FlashAttention varlen)
    max_seqlen: int = 0
    real_tokens: int = 0             # tokens that are not trailing padding
    extra: dict[str, Any] = field(default_factory=dict)
    n_labelled: int = -1             # counted on the CPU at collate time (no GPU sync later)

    @property
    def loss_tokens(self) -> int:
        """Number of positions that carry a label (the SFT loss normaliser)."""
        if self.n_labelled < 0:
            self.n_labelled = int((self.labels != IGNORE_INDEX).sum())
        return self.n_labelled

    def to(self, device) -> "PackedBatch":
        """The same batch on `device` (non-blocking copies where possible)."""
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return PackedBatch(mv(self.input_ids), mv(self.labels), mv(self.position_ids), self.doc_lens,
                           attention_mask=mv(self.attention_mask), cu_seqlens=mv(self.cu_seqlens),
                           max_seqlen=self.max_seqlen, real_tokens=self.real_tokens, extra=self.extra,
                           n_labelled=self.loss_tokens)

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the decoder (varlen kwargs flatten the batch to [1, B*T])."""
        if self.cu_seqlens is not None:
            return {"input_ids": self.input_ids.reshape(1, -1),
                    "position_ids": self.position_ids.reshape(1, -1),
                    "cu_seq_lens_q": self.cu_seqlens, "cu_seq_lens_k": self.cu_seqlens,
                    "max_length_q": self.max_seqlen, "max_length_k": self.max_seqlen}
        return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                "attention_mask": self.attention_mask}


def block_causal_mask(doc_lens: Sequence[int], seq_len: int) -> torch.Tensor:
    """[T, T] bool: position q may attend to k iff k <= q and both lie in the same document."""
    lens = torch.as_tensor(np.asarray(doc_lens, dtype=np.int64))
    if int(lens.sum()) != seq_len:
        raise ValueError(f"doc_lens sum to {int(lens.sum())}, expected {seq_len}")
    seg = torch.repeat_interleave(torch.arange(len(lens)), lens)
    same_doc = seg[:, None] == seg[None, :]
    return torch.tril(same_doc)


def cu_seqlens_from(doc_lens: Sequence[np.ndarray]) -> tuple[torch.Tensor, int]:
    """Cumulative document offsets over the flattened batch (int32, leading 0) and the longest doc."""
    lens = np.concatenate([np.asarray(d, dtype=np.int64) for d in doc_lens])
    lens = lens[lens > 0]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    return torch.from_numpy(cu), int(lens.max())


def real_token_count(input_ids: np.ndarray, labels: np.ndarray, doc_lens: np.ndarray,
                     pad_id: int | None) -> int:
    """Tokens that are not trailing padding (a final document of only pad ids and no labels)."""
    total = int(len(input_ids))
    if pad_id is None or len(doc_lens) == 0:
        return total
    last = int(doc_lens[-1])
    tail_ids, tail_labels = input_ids[total - last:], labels[total - last:]
    if last and np.all(tail_ids == pad_id) and np.all(tail_labels == IGNORE_INDEX):
        return total - last
    return total


def collate_packed(items: Sequence[Mapping[str, np.ndarray]], *, varlen: bool = False,
                   pad_id: int | None = None) -> PackedBatch:
    """Stack packed items into a PackedBatch with a block mask (default) or varlen offsets."""
    ids = np.stack([np.asarray(it["input_ids"], dtype=np.int64) for it in items])
    labels = np.stack([np.asarray(it["labels"], dtype=np.int64) for it in items])
    pos = np.stack([np.asarray(it["position_ids"], dtype=np.int64) for it in items])
    docs = [np.asarray(it["doc_lens"], dtype=np.int32) for it in items]
    seq_len = ids.shape[1]
    real = sum(real_token_count(i, lab, d, pad_id) for i, lab, d in zip(ids, labels, docs))
    batch = PackedBatch(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(pos),
                        docs, real_tokens=real, n_labelled=int((labels != IGNORE_INDEX).sum()))
    if varlen:
        batch.cu_seqlens, batch.max_seqlen = cu_seqlens_from(docs)
    else:
        batch.attention_mask = torch.stack([block_causal_mask(d, seq_len) for d in docs])[:, None]
    return batch
