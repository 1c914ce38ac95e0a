"""Packing SFT examples into fixed-length sequences, with documents kept apart.

Contract with the SFT engine (tunekit.train.batches): item i of a `PackedDataset` is a dict of
numpy arrays, all of length `max_seq_length`:
    input_ids     int64
    labels        int64, ALREADY SHIFTED: labels[t] is the token to predict from position t;
                  -100 on prompt tokens, on the last token of each document and on padding
    position_ids  int64, restarting at 0 for each document (and for the trailing padding)
    doc_lens      int32, lengths of the documents in order, summing to max_seq_length; trailing
                  padding counts as its own final document
The engine turns doc_lens into a block-diagonal causal mask (CPU/SDPA) or cu_seqlens (GPU).

packing="isolated" (default): best-fit-decreasing bin packing of whole documents; no document
attends to another. Examples longer than max_seq_length are dropped (`overlong="drop"`, the
default) or truncated (`"truncate"`: their tail is cut); examples left without a trained token are
dropped; all counted. Truncation cuts the END of the last answer, which in maths data carries the
final \boxed{} answer and the eos: a model trained on such examples learns answers that stop
before their result, so `drop` is the default and `truncate` warns, once per packing, how many
answers lose their end (`answers_cut`) and how many trained tokens go with them.

packing="official": the official kit's stream-and-cut, for reproducing official runs. All examples
are concatenated into one stream and cut into windows of max_seq_length + 1 tokens across example
boundaries; each window is ONE document (doc_lens = [max_seq_length], positions 0..S-1), so the
examples in it attend to each other (cross-contamination). Windows without a trained token and
the final partial window are dropped, and counted.
"""
from __future__ import annotations

import bisect
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from .cache import TokenizedFile

IGNORE_INDEX = -100


class _Stores:
    """Lazily memory-mapped token arrays of several cached files (pickles without the data)."""

    def __init__(self, files: Sequence[TokenizedFile | None]):
        self.dirs = [f.dir if f is not None else None for f in files]
        self._open: list[Any] | None = None

    def __getstate__(self):
        return {"dirs": self.dirs, "_open": None}

    def _arrays(self):
        if self._open is None:
            self._open = [None if d is None else
                          tuple(np.load(d / f"{n}.npy", mmap_mode="r") for n in ("tokens", "mask", "offsets"))
                          for d in self.dirs]
        return self._open

    def doc(self, src: int, rec: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `length` ids and mask values of record `rec` of store `src`."""
        tokens, mask, off = self._arrays()[src]
        a = int(off[rec])
        return tokens[a:a + length], mask[a:a + length]


@dataclass
class PackStats:
    """What packing did; counts add up: examples = packed + dropped_overlong + dropped_no_loss
    (official mode streams every example: packed = examples, the losses are windows/tokens)."""

    mode: str
    max_seq_length: int
    examples: int = 0
    packed: int = 0             # examples placed in sequences (isolated mode)
    truncated: int = 0
    truncated_tokens: int = 0
    answers_cut: int = 0        # truncated examples that lose trained (answer) tokens, i.e. an answer's end
    truncated_loss_tokens: int = 0   # trained tokens those cuts remove
    dropped_overlong_tokens: int = 0
    dropped_overlong: int = 0
    dropped_no_loss: int = 0
    sequences: int = 0
    tokens: int = 0             # non-padding tokens in the sequences
    loss_tokens: int = 0        # positions with a label
    windows_dropped_no_loss: int = 0       # official mode
    remainder_tokens_dropped: int = 0      # official mode

    @property
    def utilisation(self) -> float:
        """Share of sequence positions holding real (non-pad) tokens."""
        return self.tokens / (self.sequences * self.max_seq_length) if self.sequences else 0.0

    @property
    def docs_per_sequence(self) -> float:
        return self.packed / self.sequences if self.sequences else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able stats including the derived ratios."""
        return {**asdict(self), "utilisation": round(self.utilisation, 4),
                "docs_per_sequence": round(self.docs_per_sequence, 3)}


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) with sum(lengths) <= capacity; longest items placed first,
    each into the fullest bin it fits. Deterministic (ties keep input order)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    bins: list[list[int]] = []
    by_free: dict[int, list[int]] = {}   # free space -> bins with exactly that much room
    frees: list[int] = []                # sorted keys of by_free
    for i in order.tolist():
        need = int(lengths[i])
        j = bisect.bisect_left(frees, need)
        if j == len(frees):
            b, free = len(bins), capacity
            bins.append([])
        else:
            free = frees[j]
            b = by_free[free].pop()
            if not by_free[free]:
                del by_free[free]
                frees.pop(j)
        bins[b].append(i)
        left = free - need
        if left > 0:
            if left not in by_free:
                by_free[left] = []
                bisect.insort(frees, left)
            by_free[left].append(b)
    return bins


class PackedDataset:
    """Packed SFT sequences (see the module docstring for the item contract)."""

    def __init__(self, stores: _Stores, src: np.ndarray, rec: np.ndarray, length: np.ndarray,
                 seq_docs: list[np.ndarray] | None, windows: np.ndarray | None,
                 max_seq_length: int, pad_id: int, stats: PackStats):
        self.stores, self.src, self.rec, self.length = stores, src, rec, length
        self.seq_docs, self.windows = seq_docs, windows
        self.max_seq_length, self.pad_id, self.stats = max_seq_length, pad_id, stats
        if windows is not None:  # stream offsets of each document (official mode)
            self._starts = np.concatenate([[0], np.cumsum(length, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.windows) if self.windows is not None else len(self.seq_docs)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        return self._window(i) if self.windows is not None else self._packed(i)

    def _packed(self, i: int) -> dict[str, np.ndarray]:
        S = self.max_seq_length
        ids = np.full(S, self.pad_id, np.int64)
        labels = np.full(S, IGNORE_INDEX, np.int64)
        pos = np.zeros(S, np.int64)
        lens, t = [], 0
        for d in self.seq_docs[i]:
            n = int(self.length[d])
            tok, mask = self.stores.doc(int(self.src[d]), int(self.rec[d]), n)
            ids[t:t + n] = tok
            labels[t:t + n - 1] = np.where(mask[1:n] > 0, tok[1:n], IGNORE_INDEX)
            pos[t:t + n] = np.arange(n)
            lens.append(n)
            t += n
        if t < S:
            pos[t:] = np.arange(S - t)
            lens.append(S - t)
        return {"input_ids": ids, "labels": labels, "position_ids": pos,
                "doc_lens": np.asarray(lens, np.int32)}

    def _window(self, i: int) -> dict[str, np.ndarray]:
        S = self.max_seq_length
        ids, mask = self._stream(int(self.windows[i]), S + 1)
        labels = np.where(mask[1:] > 0, ids[1:], IGNORE_INDEX).astype(np.int64)
        return {"input_ids": ids[:S].astype(np.int64), "labels": labels,
                "position_ids": np.arange(S, dtype=np.int64), "doc_lens": np.asarray([S], np.int32)}

    def _stream(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [start, start+n) of the concatenated stream of all documents."""
        d = int(np.searchsorted(self._starts, start, side="right")) - 1
        ids, masks = [], []
        while n > 0:
            a = start - int(self._starts[d])
            tok, mask = self.stores.doc(int(self.src[d]), int(self.rec[d]), int(self.length[d]))
            take = min(n, len(tok) - a)
            ids.append(tok[a:a + take])
            masks.append(mask[a:a + take])
            n -= take
            start += take
            d += 1
        return np.concatenate(ids), np.concatenate(masks)

    def real_tokens(self, i: int) -> int:
        """Non-padding tokens in sequence i."""
        if self.windows is not None:
            return self.max_seq_length
        return int(self.length[self.seq_docs[i]].sum())

    def doc_count(self, i: int) -> int:
        """Number of examples in sequence i (official windows count as one)."""
        return 1 if self.windows is not None else len(self.seq_docs[i])


def pack_sft(files: Sequence[TokenizedFile | None], src: np.ndarray, rec: np.ndarray, *,
             max_seq_length: int, pad_id: int, packing: str = "isolated",
             overlong: str = "drop") -> PackedDataset:
    """Pack the examples (src[k], rec[k]) of cached SFT files into a PackedDataset."""
    stores = _Stores(files)
    S = max_seq_length
    full = _lengths(files, src, rec)
    stats = PackStats(packing, S, examples=len(src))
    if packing == "official":
        return _pack_official(stores, files, src, rec, full, S, pad_id, stats)
    length = np.minimum(full, S)
    keep = np.ones(len(src), bool)
    over = full > S
    loss = _loss_in_prefix(files, src, rec, length)
    if overlong == "drop":
        keep &= ~over
        stats.dropped_overlong = int(over.sum())
        stats.dropped_overlong_tokens = int(full[over].sum())
    else:
        stats.truncated = int(over.sum())
        stats.truncated_tokens = int((full - length)[over].sum())
        cut = _total_loss(files, src, rec) - loss
        stats.answers_cut = int((cut[over] > 0).sum())
        stats.truncated_loss_tokens = int(cut[over].sum())
        if stats.answers_cut:
            print(f"tunekit.data: warning: {stats.answers_cut} of {len(src)} SFT examples lose the end of an answer "
                  f"at max_seq_length={S} ({stats.truncated_loss_tokens} trained tokens, e.g. a final \\boxed{{}} "
                  "and the eos, are never trained) (overlong='truncate'; use 'drop' to leave them out, or raise "
                  "max_seq_length)", file=sys.stderr, flush=True)
    no_loss = keep & (loss == 0)
    stats.dropped_no_loss = int(no_loss.sum())
    keep &= ~no_loss
    idx = np.nonzero(keep)[0]
    bins = best_fit_decreasing(length[idx], S)
    seq_docs = [idx[np.asarray(b)] for b in bins]
    stats.packed, stats.sequences = len(idx), len(seq_docs)
    stats.tokens, stats.loss_tokens = int(length[idx].sum()), int(loss[idx].sum())
    return PackedDataset(stores, src, rec, length, seq_docs, None, S, pad_id, stats)


def _lengths(files, src, rec) -> np.ndarray:
    out = np.zeros(len(src), np.int64)
    for s in np.unique(src):
        sel = src == s
        out[sel] = files[s].lengths()[rec[sel]]
    return out


def _total_loss(files, src, rec) -> np.ndarray:
    """Trained tokens of each whole example (the stored per-record count)."""
    out = np.zeros(len(src), np.int64)
    for s in np.unique(src):
        sel = src == s
        out[sel] = files[s].array("loss_tokens")[rec[sel]]
    return out


def _loss_in_prefix(files, src, rec, length) -> np.ndarray:
    """Labelled positions per example within its first `length` tokens (mask[1:length])."""
    out = np.zeros(len(src), np.int64)
    for s in np.unique(src):
        sel = np.nonzero(src == s)[0]
        f = files[s]
        off, mask = f.array("offsets"), f.array("mask")
        full = f.array("loss_tokens")[rec[sel]].astype(np.int64)
        whole = length[sel] == np.diff(off)[rec[sel]]
        # Whole examples: the stored count (mask[0] is the bos, never trained). Truncated ones:
        # count the kept part only (few, so a loop is fine).
        out[sel[whole]] = full[whole]
        for k in sel[~whole]:
            a = int(off[rec[k]])
            out[k] = int(mask[a + 1:a + int(length[k])].sum())
    return out


def _pack_official(stores, files, src, rec, full, S, pad_id, stats) -> PackedDataset:
    total = int(full.sum())
    n_win = total // (S + 1)
    stats.remainder_tokens_dropped = total - n_win * (S + 1)
    # The loss mask of the stream, as one array of cumulative trained-target counts.
    masks = [stores.doc(int(s), int(r), int(n))[1] for s, r, n in zip(src, rec, full)]
    mask = np.concatenate(masks).astype(np.int64) if masks else np.zeros(0, np.int64)
    starts = np.arange(n_win, dtype=np.int64) * (S + 1)
    csum = np.concatenate([[0], np.cumsum(mask)])
    trained = csum[starts + S + 1] - csum[starts + 1]   # targets are positions 1..S of a window
    windows = starts[trained > 0]
    stats.windows_dropped_no_loss = int((trained == 0).sum())
    stats.sequences = len(windows)
    stats.packed = len(src)
    stats.tokens = len(windows) * S
    stats.loss_tokens = int(trained[trained > 0].sum())
    return PackedDataset(stores, src, rec, full, None, windows, S, pad_id, stats)
