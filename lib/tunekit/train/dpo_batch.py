"""DPO micro-batches: both responses of every pair in ONE forward pass, per-sequence log-probs.

A pair is (prompt ids, chosen response ids, rejected response ids). Each micro-batch of N pairs
becomes 2N documents `prompt + chosen`, `prompt + rejected` (in the order c0, r0, c1, r1, ...),
laid out in one of two ways, both of which the SFT engine already knows how to run in isolation
(`tunekit.train.batches.collate_packed`: block-diagonal causal mask on CPU/SDPA, cu_seqlens for
FlashAttention varlen on GPU; position ids restart per document):

- packed (default): all 2N documents side by side in ONE row, padded to a multiple of
  `pad_multiple`; no padding between documents, so no compute is spent on pad tokens beyond that;
- concatenated: one row per document, padded to the longest (the official kit's layout).

Labels are already shifted (labels[t] = the token after t) and are -100 on the prompt, on each
document's last position and on padding: the prompt is never scored. Log-probs come from the
engine's chunked head (`CausalLMForTraining` -> `tunekit.train.loss.token_logprobs`), which never
holds full-vocabulary logits for all tokens at once; `sequence_logps` then sums them per document.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .batches import IGNORE_INDEX, PackedBatch, collate_packed
from .dpo_losses import DEFAULT_CHOSEN_REWARD, DEFAULT_REJECTED_REWARD


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
        mv = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PairBatch(self.batch.to(device), mv(self.doc_index), self.n_pairs, mv(self.n_chosen),
                         mv(self.n_rejected), mv(self.chosen_reward), mv(self.rejected_reward),
                         mv(self.weights), self.digests)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the forward pass."""
        return int((self.doc_index < 2 * self.n_pairs).sum())


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_pair_batch(pairs: Sequence[Pair], *, packed: bool = True, pad_id: int = 0,
                     pad_multiple: int = 8, varlen: bool = False) -> PairBatch:
    """Lay out `pairs` for one forward pass (packed in one row, or one row per document).

    Args:
        pairs: the micro-batch.
        packed: True = all documents in one row; False = one padded row per document.
        pad_id: the token id used for padding (never scored, never attended to by a document).
        pad_multiple: round row lengths up to this (friendlier kernel shapes).
        varlen: build cu_seqlens for FlashAttention varlen instead of a [B,1,T,T] mask.
    """
    if not pairs:
        raise ValueError("build_pair_batch needs at least one pair")
    docs = []
    for p in pairs:
        docs.append(document(p.prompt, p.chosen))
        docs.append(document(p.prompt, p.rejected))
    lens = [len(ids) for ids, _ in docs]
    rows: list[list[int]] = [list(range(len(docs)))] if packed else [[i] for i in range(len(docs))]
    width = _round_up(sum(lens) if packed else max(lens), pad_multiple)
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
    """Run the training model (`CausalLMForTraining`: labels -> token log-probs) on a pair batch."""
    b = pb.batch
    token_lp = model(labels=b.labels, **b.model_inputs())
    return sequence_logps(token_lp.reshape(b.labels.shape), pb)


def micro_batches(pairs: Sequence[Pair], size: int) -> list[list[Pair]]:
    """Consecutive groups of `size` pairs (the last may be shorter)."""
    return [list(pairs[i:i + size]) for i in range(0, len(pairs), size)]
