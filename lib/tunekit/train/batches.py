"""Micro-batches for one forward pass: packed SFT sequences and DPO pairs, documents kept apart.

A packed item (tunekit.data.packing contract) holds `input_ids`, `labels` (already shifted, -100
where no loss), `position_ids` (restarting at 0 per document) and `doc_lens` (summing to the
sequence length; trailing padding is its own final document). Attention must never cross a
document boundary, so the batch carries either

- `cu_seqlens` (+ `max_seqlen`) over the flattened [1, B*T] batch for per-document attention
  (attention.py: FlashAttention's varlen kernel on GPU, per-document SDPA on CPU; the default,
  `attn_implementation: auto`), which needs no T x T mask, or
- `attention_mask`: a [B, 1, T, T] boolean block-diagonal causal mask (True = may attend), which
  transformers passes to SDPA/eager unchanged (`attn_implementation: sdpa | eager`, the reference).

Restarting position ids make RoPE see each document as if it were alone; together with the mask
the logits equal those of each document run by itself (tests/test_train_batches.py).

DPO pairs use the same layout: each micro-batch of N pairs becomes 2N documents `prompt + chosen`,
`prompt + rejected` (c0, r0, c1, r1, ...), laid out so that attention cost and memory follow the
documents' real lengths (`pair_rows`): back to back in one row with per-document attention, or,
with a dense mask, in rows as wide as the longest document; `pack_pairs: false` gives one row per
document padded to the longest (the official kit's layout). Rows are padded to a multiple of
`pad_multiple` (128 for a mask on CUDA: cuDNN's masked backward returns NaN at lengths of 64 mod
128 on H200, pytorch#196678). Labels are -100 on the prompt, on each document's last position and
on padding: the prompt is never scored. Both responses of a pair therefore go through ONE forward
pass, and `sequence_logps` sums the chunked head's token log-probs per document.

Every batch type tells the loop its `weight` (its share of the loss normaliser: labelled tokens
for SFT, pairs for DPO) and its real (non-padding) `tokens`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100
# The official data format has no reward fields; NeMo-Aligner's DPO dataset defaults to these.
DEFAULT_CHOSEN_REWARD = 1.0
DEFAULT_REJECTED_REWARD = 0.0


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

    @property
    def weight(self) -> float:
        """This batch's share of the SFT loss normaliser: its labelled tokens."""
        return float(self.loss_tokens)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens, for throughput."""
        return self.real_tokens

    def to(self, device) -> "PackedBatch":
        """The same batch on `device` (from pinned host memory, asynchronously, on CUDA)."""
        mv = lambda t: to_device(t, device)  # noqa: E731
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


def to_device(t: torch.Tensor | None, device) -> torch.Tensor | None:
    """`t` on `device`; a CPU tensor bound for CUDA goes through page-locked memory (asynchronous copy)."""
    if t is None:
        return None
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


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


# ------------------------------------------------------------------ DPO pairs
@dataclass(frozen=True)
class Pair:
    """One tokenised preference pair; responses exclude the prompt (as the data layer gives them)."""

    prompt: np.ndarray     # int ids, starts with bos
    chosen: np.ndarray     # response ids after the prompt
    rejected: np.ndarray
    chosen_reward: float = DEFAULT_CHOSEN_REWARD
    rejected_reward: float = DEFAULT_REJECTED_REWARD
    weight: float = 1.0    # 0 = a blank that only pads an uneven validation shard

    @property
    def lengths(self) -> tuple[int, int]:
        """Token counts of the two documents (prompt + response)."""
        return len(self.prompt) + len(self.chosen), len(self.prompt) + len(self.rejected)

    def digest(self) -> bytes:
        """A 16-byte content hash of the ids (what the reference cache is keyed by, per pair)."""
        h = hashlib.blake2b(digest_size=16)
        for part in (self.prompt, self.chosen, self.rejected):
            arr = np.ascontiguousarray(part, dtype=np.int64)
            h.update(len(arr).to_bytes(8, "little"))
            h.update(arr.tobytes())
        return h.digest()


def make_pair(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int],
              chosen_reward: float | None = None, rejected_reward: float | None = None) -> Pair:
    """A Pair from id lists; missing rewards take the official defaults (1 and 0)."""
    as_ids = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return Pair(as_ids(prompt), as_ids(chosen), as_ids(rejected),
                DEFAULT_CHOSEN_REWARD if chosen_reward is None else float(chosen_reward),
                DEFAULT_REJECTED_REWARD if rejected_reward is None else float(rejected_reward))


def document(prompt: np.ndarray, response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, shifted labels) of `prompt + response`; only response tokens are ever predicted."""
    ids = np.concatenate([prompt, response]).astype(np.int64)
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    p = len(prompt)
    # Position t predicts ids[t + 1]; the response starts at p, so predictions from p - 1 on.
    if len(response):
        labels[p - 1:len(ids) - 1] = ids[p:]
    return ids, labels


@dataclass
class PairBatch:
    """A micro-batch of pairs laid out for one forward pass, plus the per-document bookkeeping."""

    batch: PackedBatch
    doc_index: torch.Tensor        # [B, T] int64: document of each position, 2N for padding
    n_pairs: int
    n_chosen: torch.Tensor         # [N] scored tokens of each chosen response
    n_rejected: torch.Tensor       # [N]
    chosen_reward: torch.Tensor    # [N] ground-truth rewards (official defaults 1 / 0)
    rejected_reward: torch.Tensor  # [N]
    weights: torch.Tensor          # [N] 1 per real pair, 0 per blank
    digests: list[bytes]           # per pair, for reference-cache look-ups

    def to(self, device) -> "PairBatch":
        """The same batch on `device`."""
        mv = lambda t: to_device(t, device)  # noqa: E731
        return PairBatch(self.batch.to(device), mv(self.doc_index), self.n_pairs, mv(self.n_chosen),
                         mv(self.n_rejected), mv(self.chosen_reward), mv(self.rejected_reward),
                         mv(self.weights), self.digests)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the forward pass."""
        return int((self.doc_index < 2 * self.n_pairs).sum())

    @property
    def weight(self) -> float:
        """This batch's share of the DPO loss normaliser: its pairs (blanks count 0)."""
        return float(self.weights.sum())


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pair_rows(lens: Sequence[int], *, packed: bool, varlen: bool, pad_multiple: int) -> tuple[list[list[int]], int]:
    """Which documents share a row, and the row width, so that cost follows the documents' real lengths.

    - varlen (per-document attention, no mask): every document in ONE row, back to back; attention
      runs per document, so nothing but the final rounding is padding.
    - packed with a dense mask: rows as wide as the longest document (rounded up), filled first-fit
      with the longest documents first. Attention costs rows x width^2 instead of (sum of
      lengths)^2 for one row holding everything, and the [R, 1, W, W] mask stays small.
    - not packed: one row per document, padded to the longest (the official kit's layout).
    """
    if varlen and packed:
        return [list(range(len(lens)))], _round_up(sum(lens), pad_multiple)
    width = _round_up(max(lens), pad_multiple)
    if not packed:
        return [[i] for i in range(len(lens))], width
    rows: list[list[int]] = []
    room: list[int] = []
    for d in sorted(range(len(lens)), key=lambda i: (-lens[i], i)):
        for r, free in enumerate(room):
            if lens[d] <= free:
                rows[r].append(d)
                room[r] -= lens[d]
                break
        else:
            rows.append([d])
            room.append(width - lens[d])
    return rows, width


def build_pair_batch(pairs: Sequence[Pair], *, packed: bool = True, pad_id: int = 0,
                     pad_multiple: int = 8, varlen: bool = False) -> PairBatch:
    """Lay out `pairs` for one forward pass (rows by `pair_rows`), documents kept apart.

    Args:
        pairs: the micro-batch.
        packed: True = documents share rows (see `pair_rows`); False = one padded row per document.
        pad_id: the token id used for padding (never scored, never attended to by a document).
        pad_multiple: round row lengths up to this (engine.row_multiple: 128 for a mask on CUDA).
        varlen: per-document attention over cu_seqlens instead of a [B,1,T,T] mask.
    """
    if not pairs:
        raise ValueError("build_pair_batch needs at least one pair")
    docs = []
    for p in pairs:
        docs.append(document(p.prompt, p.chosen))
        docs.append(document(p.prompt, p.rejected))
    lens = [len(ids) for ids, _ in docs]
    rows, width = pair_rows(lens, packed=packed, varlen=varlen, pad_multiple=pad_multiple)
    items, doc_rows = [], []
    for row in rows:
        ids = np.full(width, pad_id, dtype=np.int64)
        labels = np.full(width, IGNORE_INDEX, dtype=np.int64)
        pos = np.zeros(width, dtype=np.int64)
        where = np.full(width, len(docs), dtype=np.int64)  # padding belongs to "document 2N"
        doc_lens, at = [], 0
        for d in row:
            n = lens[d]
            ids[at:at + n], labels[at:at + n] = docs[d]
            pos[at:at + n] = np.arange(n)
            where[at:at + n] = d
            doc_lens.append(n)
            at += n
        if at < width:
            pos[at:] = np.arange(width - at)
            doc_lens.append(width - at)  # trailing padding is its own document
        items.append({"input_ids": ids, "labels": labels, "position_ids": pos,
                      "doc_lens": np.asarray(doc_lens, dtype=np.int32)})
        doc_rows.append(where)
    batch = collate_packed(items, varlen=varlen, pad_id=pad_id)
    n_c = [len(p.chosen) for p in pairs]
    n_r = [len(p.rejected) for p in pairs]
    f32 = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    return PairBatch(batch, torch.from_numpy(np.stack(doc_rows)), len(pairs),
                     torch.tensor(n_c, dtype=torch.int64), torch.tensor(n_r, dtype=torch.int64),
                     f32([p.chosen_reward for p in pairs]), f32([p.rejected_reward for p in pairs]),
                     f32([p.weight for p in pairs]), [p.digest() for p in pairs])


def sequence_logps(token_logps: torch.Tensor, pb: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs per chosen and per rejected response ([N] each) from [B, T] token log-probs.

    Positions without a label already carry 0 (prompt, last token, padding), so a plain segment
    sum per document is exact; padding lands in the extra bucket 2N, which is dropped.
    """
    n_docs = 2 * pb.n_pairs
    sums = torch.zeros(n_docs + 1, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, pb.doc_index.reshape(-1), token_logps.reshape(-1))
    per_doc = sums[:n_docs].reshape(pb.n_pairs, 2)
    return per_doc[:, 0], per_doc[:, 1]


def policy_logps(model, pb: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each chosen and rejected response under `model` (engine.CausalLMForTraining)."""
    b = pb.batch
    token_lp = model(labels=b.labels, **b.model_inputs())
    return sequence_logps(token_lp.reshape(b.labels.shape), pb)

