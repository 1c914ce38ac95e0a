"""What the training run behind a model recorded: dev loss (SFT) and reward metrics (DPO).

A model spec can be "tiny", an HF dir, a run dir, or a run's `hf_model/` folder. For the last two
we read the run record (`metrics.jsonl`, `summary.json`) tolerantly: stages log different keys and
a run may have been killed, so we look for the usual names and report only what exists.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..paths import resolve
from ..runs import read_metrics, read_summary

_LOSS_KEYS = ("val_loss", "dev_loss", "eval_loss", "validation_loss")


def run_dir_of(spec: str | os.PathLike) -> Path | None:
    """The run directory behind a spec (the folder with params.json), or None (e.g. "tiny").

    Relative paths are taken from the repository root, as `tunekit.model.resolve_model` does.
    """
    text = str(spec).strip()
    if text in ("", "tiny"):
        return None
    p = resolve(text)
    if not p.exists():
        return None
    for cand in (p, p.parent):
        if cand.is_dir() and (cand / "params.json").is_file():
            return cand
    return None


def model_label(spec: str | os.PathLike) -> str:
    """A short name for a model in tables: `sft/<run>` for run dirs, the folder name for HF dirs."""
    run = run_dir_of(spec)
    if run is not None:
        return f"{run.parent.name}/{run.name}"
    p = Path(str(spec))
    return p.name if p.name not in ("", ".") else str(spec)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _reward_key(key: str) -> str | None:
    """`val_reward_accuracy`, `reward_margin`, ... for any key naming a DPO reward metric."""
    k = key.lower()
    kind = "accuracy" if "acc" in k else "margin" if "margin" in k else None
    if "reward" not in k or kind is None:
        return None
    held_out = any(tag in k for tag in ("val", "dev", "eval"))
    return f"{'val_' if held_out else ''}reward_{kind}"


def training_metrics(spec: str | os.PathLike) -> dict[str, Any]:
    """Flat numbers from the run behind `spec`: stage, val loss first/last/best, DPO reward metrics.

    Empty for specs without a run record. Later records win for reward metrics (the final value).
    """
    run = run_dir_of(spec)
    if run is None:
        return {}
    out: dict[str, Any] = {"stage": run.parent.name}
    records = read_metrics(run)
    losses = [v for r in records for k in _LOSS_KEYS if (v := _number(r.get(k))) is not None]
    summary = read_summary(run) or {}
    if not losses:
        losses = [v for k in _LOSS_KEYS if (v := _number(summary.get(k))) is not None]
    if losses:
        out.update(val_loss_first=losses[0], val_loss_last=losses[-1], val_loss_best=min(losses))
    for source in (summary, *records):  # records after the summary: the last logged value wins
        for key, value in source.items():
            name, v = _reward_key(key), _number(value)
            if name and v is not None:
                out[name] = v
    return out
