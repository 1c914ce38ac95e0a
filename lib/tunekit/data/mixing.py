"""Dataset mixing and train/dev splits with the official knobs, reported per source.

Per dataset (a file `<name>.jsonl`), from its N valid records:
- dev = the FIRST min(max_dev_samples, int(N * max_dev_ratio)) records when `split_dev` (official);
  with `dev_split="hash"` the records with the smallest content hashes instead (deterministic,
  independent of line order, and exact duplicates always land on the same side);
- train = the next `max_train_samples` records (-1 = the rest; 0 = skip the dataset);
- train is repeated `upsampling_factor` times; dev is NOT (the official kit repeats dev as well,
  which only duplicates dev examples; `upsample_dev=True` restores that).
N counts valid records: invalid lines are skipped (on_error="skip") before splitting and reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .cache import TokenizedFile, UnreadableFile, tokenize_file
from .config import DataConfig, DatasetKnobs, resolve_tokenizer
from .files import scan_folder
from .schema import FileReport, Kind, find_files


@dataclass
class Source:
    """One dataset of a mixture: its cached file and which records go where."""

    name: str
    file: TokenizedFile | None       # None when skipped (max_train_samples=0)
    knobs: DatasetKnobs
    dev_idx: np.ndarray              # record indices, file order
    train_idx: np.ndarray            # record indices, before upsampling
    dev_repeat: int = 1
    refused: FileReport | None = None  # on_error="skip": the file could not be read at all

    @property
    def train_repeat(self) -> int:
        return self.knobs.upsampling_factor


def split_indices(n: int, hashes: np.ndarray, knobs: DatasetKnobs,
                  cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(dev, train) record indices of one dataset with N valid records."""
    n_dev = min(cfg.max_dev_samples, int(n * cfg.max_dev_ratio)) if knobs.split_dev else 0
    if cfg.dev_split == "hash":
        order = np.argsort(np.asarray(hashes), kind="stable")
        dev = np.sort(order[:n_dev])
        rest = np.sort(order[n_dev:])
    else:
        dev, rest = np.arange(n_dev), np.arange(n_dev, n)
    if knobs.max_train_samples > 0:
        rest = rest[: knobs.max_train_samples]
    return dev.astype(np.int64), rest.astype(np.int64)


@dataclass
class Mixture:
    """The selected datasets of one kind with their splits; `docs()` lists (source, record)."""

    kind: Kind
    cfg: DataConfig
    tokenizer_dir: Path
    sources: list[Source]
    notes: list[str] = field(default_factory=list)

    @property
    def reports(self) -> list[FileReport]:
        """Validation reports of the files that were read."""
        return [s.file.report if s.file is not None else s.refused for s in self.sources
                if s.file is not None or s.refused is not None]

    def docs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(source index, record index) of every example of `split` ("train" or "dev"), upsampled."""
        src, rec = [], []
        for i, s in enumerate(self.sources):
            idx, rep = (s.train_idx, s.train_repeat) if split == "train" else (s.dev_idx, s.dev_repeat)
            if len(idx):
                src.append(np.full(len(idx) * rep, i, np.int32))
                rec.append(np.tile(idx, rep))
        if not src:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate(src), np.concatenate(rec)

    def first_train_record(self) -> tuple[Source, int]:
        """(source, record index) of the first training record, for showing one example."""
        for s in self.sources:
            if s.file is not None and len(s.train_idx):
                return s, int(s.train_idx[0])
        raise UserError(f"no {self.kind.upper()} training records in the selected datasets "
                        f"({', '.join(s.name for s in self.sources) or 'none'}; see the validation "
                        "report above)")

    def example_lengths(self, s: Source) -> np.ndarray:
        """Tokens per record of a source (SFT: whole sequence; DPO: prompt+chosen + prompt+rejected)."""
        f = s.file
        if self.kind == "sft":
            return f.lengths("tokens")
        p = f.lengths("prompt")
        return 2 * p + f.lengths("chosen") + f.lengths("rejected")

    def duplicates(self) -> dict[str, int]:
        """Per source: dev records whose exact content also occurs in train (any source)."""
        train_hashes = [s.file.array("hashes")[s.train_idx] for s in self.sources
                        if s.file is not None and len(s.train_idx)]
        pool = np.unique(np.concatenate(train_hashes)) if train_hashes else np.zeros(0, np.uint64)
        return {s.name: int(np.isin(s.file.array("hashes")[s.dev_idx], pool).sum())
                if s.file is not None and len(s.dev_idx) else 0 for s in self.sources}

    def report(self):
        """Per source: original -> train/dev counts, tokens, share of training tokens, duplicates."""
        import pandas as pd

        dups = self.duplicates()
        rows = []
        for s in self.sources:
            r = s.file.report if s.file is not None else s.refused
            lens = self.example_lengths(s) if s.file is not None else np.zeros(0, np.int64)
            train_tok = int(lens[s.train_idx].sum()) * s.train_repeat if len(lens) else 0
            dev_tok = int(lens[s.dev_idx].sum()) * s.dev_repeat if len(lens) else 0
            rows.append({"dataset": s.name, "records": r.records if r else 0,
                         "valid": r.kept if r else 0, "invalid": r.skipped if r else 0,
                         "dev": len(s.dev_idx) * s.dev_repeat, "train": len(s.train_idx),
                         "upsampling": s.train_repeat,
                         "train_upsampled": len(s.train_idx) * s.train_repeat,
                         "train_tokens": train_tok, "dev_tokens": dev_tok,
                         "dev_dups_in_train": dups[s.name]})
        df = pd.DataFrame(rows)
        total = df["train_tokens"].sum() if len(df) else 0
        df["train_token_share"] = (df["train_tokens"] / total).round(4) if total else 0.0
        return df


def build_mixture(cfg: DataConfig | dict[str, Any], kind: Kind, *, show_progress: bool = True) -> Mixture:
    """Validate, tokenise (cached) and split every dataset of the config for SFT or DPO."""
    cfg = DataConfig.parse(cfg)
    files = find_files(cfg.version_dir(), kind)
    folder = cfg.version_dir() / ("tuning" if kind == "sft" else "preference") / "train"
    wanted = dict(cfg.datasets) or {name: DatasetKnobs() for name in files}
    missing = [n for n in wanted if n not in files]
    if missing:
        raise UserError(f"{folder}: no file for dataset(s) {', '.join(missing)} (found: "
                        f"{', '.join(files) or 'no .jsonl files'}; names are file stems)")
    if not wanted:
        raise UserError(f"{folder}: no .jsonl files to train on")
    tok_dir = resolve_tokenizer(cfg.tokenizer)
    sources, notes = [], []
    if not cfg.datasets:  # every file: say which data-like names were not read
        notes += [f"{e.path.name}: {e.ignored}" for e in scan_folder(folder, kind) if e.ignored]
    for name, knobs in wanted.items():
        if knobs.max_train_samples == 0:
            notes.append(f"{name}: skipped (max_train_samples=0)")
            sources.append(Source(name, None, knobs, np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        try:
            f = tokenize_file(files[name], kind, tok_dir, style=cfg.template_style,
                              dpo_append_eos=cfg.dpo_append_eos, workers=cfg.workers,
                              show_progress=show_progress)
        except UnreadableFile as exc:
            if cfg.on_error == "raise":
                exc.report.raise_if_errors()
            notes.append(f"{name}: left out (on_error='skip'): {exc.report.problems[0].message}")
            sources.append(Source(name, None, knobs, np.zeros(0, np.int64), np.zeros(0, np.int64),
                                  refused=exc.report))
            continue
        if cfg.on_error == "raise":
            f.report.raise_if_errors()
        dev, train = split_indices(len(f), f.array("hashes"), knobs, cfg)
        dev_repeat = knobs.upsampling_factor if cfg.upsample_dev else 1
        sources.append(Source(name, f, knobs, dev, train, dev_repeat))
    _cross_file_duplicates(sources)
    return Mixture(kind, cfg, tok_dir, sources, notes)


def _cross_file_duplicates(sources: list[Source]) -> None:
    """Warnings (on the later file's report) for records or IDs that an earlier file already has;
    duplicates within one file are in that file's cached report already."""
    from .schema import Problem
    from .validate import DuplicateIndex

    index = DuplicateIndex()
    for s in sources:
        if s.file is None:
            continue
        f, path = s.file, str(s.file.path)
        rows = zip(f.array("lines").tolist(), f.array("hashes").tolist(), f.array("ids").tolist())
        for n, h, i in rows:
            for reason, message, first_file in index.check(path, n, h, i):
                if first_file != path:
                    f.report.add(Problem(path, n, "warning", message), reason)
