"""Tokenised DPO pairs: one call from a data config to train and dev pair datasets.

Item i of a `PairDataset` is {"prompt", "chosen", "rejected"}: int64 id arrays where the prompt
starts with bos and the responses EXCLUDE the prompt (the DPO engine's `Pair` layout; the full
sequences are prompt + chosen and prompt + rejected).

A pair is too long when len(prompt) + max(len(chosen), len(rejected)) > max_seq_length. The
official kit drops such pairs silently; here `dpo_overlong="drop"` drops them and counts them, and
`"truncate_prompt"` keeps bos + the END of the prompt (the latest turns) so the pair fits, dropping
(and counting) only pairs whose responses alone do not fit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from .config import DataConfig
from .mixing import Mixture, build_mixture


@dataclass
class PairStats:
    """Counts add up: pairs = kept + dropped_overlong."""

    policy: str
    max_seq_length: int
    pairs: int = 0
    kept: int = 0
    truncated_prompt: int = 0
    truncated_tokens: int = 0
    dropped_overlong: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PairDataset:
    """Tokenised preference pairs (see the module docstring)."""

    def __init__(self, files, src: np.ndarray, rec: np.ndarray, prompt_keep: np.ndarray,
                 stats: PairStats):
        self.dirs = [f.dir if f is not None else None for f in files]
        self.src, self.rec, self.prompt_keep, self.stats = src, rec, prompt_keep, stats
        self._open = None

    def __getstate__(self):
        return {**self.__dict__, "_open": None}

    def _arrays(self):
        if self._open is None:
            names = ("prompt", "prompt_off", "chosen", "chosen_off", "rejected", "rejected_off")
            self._open = [None if d is None else {n: np.load(d / f"{n}.npy", mmap_mode="r") for n in names}
                          for d in self.dirs]
        return self._open

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        a, r = self._arrays()[int(self.src[i])], int(self.rec[i])
        part = lambda n: np.asarray(a[n][int(a[f"{n}_off"][r]):int(a[f"{n}_off"][r + 1])], np.int64)  # noqa: E731
        prompt = part("prompt")
        keep = int(self.prompt_keep[i])
        if keep < len(prompt):  # truncate_prompt: bos + the last keep-1 prompt tokens
            prompt = np.concatenate([prompt[:1], prompt[len(prompt) - keep + 1:]])
        return {"prompt": prompt, "chosen": part("chosen"), "rejected": part("rejected")}


def select_pairs(mix: Mixture, split: str) -> PairDataset:
    """Apply the over-length policy to the train or dev pairs of a DPO mixture."""
    cfg = mix.cfg
    S = cfg.max_seq_length
    files = [s.file for s in mix.sources]
    src, rec = mix.docs(split)
    p = np.zeros(len(src), np.int64)
    resp = np.zeros(len(src), np.int64)
    for s in np.unique(src):
        sel = src == s
        f = files[s]
        p[sel] = f.lengths("prompt")[rec[sel]]
        resp[sel] = np.maximum(f.lengths("chosen"), f.lengths("rejected"))[rec[sel]]
    stats = PairStats(cfg.dpo_overlong, S, pairs=len(src))
    over = p + resp > S
    keep = np.ones(len(src), bool)
    prompt_keep = p.copy()
    if cfg.dpo_overlong == "truncate_prompt":
        room = S - resp                       # prompt tokens that still fit
        fixable = over & (room >= 2)          # bos + at least one prompt token
        prompt_keep[fixable] = room[fixable]
        stats.truncated_prompt = int(fixable.sum())
        stats.truncated_tokens = int((p - prompt_keep)[fixable].sum())
        keep &= ~(over & ~fixable)
    else:
        keep &= ~over
    stats.dropped_overlong = int((~keep).sum())
    stats.kept = int(keep.sum())
    return PairDataset(files, src[keep], rec[keep], prompt_keep[keep], stats)


@dataclass
class DPOData:
    """DPO train/dev pair datasets and where they came from."""

    train: PairDataset
    dev: PairDataset
    mixture: Mixture

    def sources(self):
        """Per-source table (pandas DataFrame)."""
        return self.mixture.report()

    def report(self) -> dict[str, Any]:
        """Sources, over-length handling and validation counts (JSON-able)."""
        return {"kind": "dpo", "tokenizer": str(self.mixture.tokenizer_dir),
                "sources": self.sources().to_dict(orient="records"), "notes": list(self.mixture.notes),
                "validation": [r.summary() for r in self.mixture.reports],
                "pairs_train": self.train.stats.as_dict(), "pairs_dev": self.dev.stats.as_dict()}


def load_dpo_data(cfg: DataConfig | Mapping[str, Any], *, show_progress: bool = True) -> DPOData:
    """Validate, tokenise (cached), split and mix DPO data; apply the over-length policy."""
    mix = build_mixture(cfg, "dpo", show_progress=show_progress)
    return DPOData(select_pairs(mix, "train"), select_pairs(mix, "dev"), mix)
