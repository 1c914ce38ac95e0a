"""The competition's file contract: gold problems in, predictions out (FACTS.md section 6).

Gold line: `{id, problem, solution (str or list: any may match), category, unit, difficulty?,
evaluation_method?: soft|strict|complex|complex-strict}`. Prediction line: `{id, output}` plus
optionally the gold fields; the official scorer builds a dataclass from each line, so ANY OTHER
KEY (or a missing `id`/`output`) makes the line fail to load and its problem counts as wrong.
We load predictions the same way but report every rejected line as `path:line: why`, so nothing
is lost silently. Two kinds of line make the official tool stop for the whole file instead: an
`output` that is not a string (null, a number; it fails when that problem is scored) and an id
that is a list or an object (it fails while reading); the kit counts those problems wrong and
reports that the official run would have failed. Gold files are the user's own data: a bad gold
line is an error to fix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .verify import METHODS

GOLD_REQUIRED = ("id", "problem", "solution", "category", "unit")
GOLD_OPTIONAL = ("difficulty", "evaluation_method")
PREDICTION_KEYS = frozenset(("id", "output") + GOLD_REQUIRED + GOLD_OPTIONAL)


@dataclass
class Predictions:
    """Predictions as the official scorer sees them, plus what it would have dropped and why."""

    by_id: dict[Any, dict[str, Any]] = field(default_factory=dict)
    lines_read: int = 0
    rejected: list[str] = field(default_factory=list)    # `path:line: reason`, counted wrong
    duplicates: list[str] = field(default_factory=list)  # `path:line: ...`, the later line wins
    # id -> `path:line: why` for lines the official tool loads but then stops the whole run on
    # (an `output` that is not a string) if that id is scored; the kit counts them wrong.
    non_string_output: dict[Any, str] = field(default_factory=dict)
    # lines on which the official tool stops while LOADING the file (an id that is a list/object)
    fatal_lines: list[str] = field(default_factory=list)


def _jsonl_lines(path: Path) -> Iterable[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def eval_files(path: str | os.PathLike) -> list[Path]:
    """The JSONL files of an eval set: the file itself, or every `*.jsonl` in a folder (sorted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise UserError(f"{p}: no *.jsonl files in this eval set folder (point to a gold JSONL file)")
        return files
    if not p.exists():
        raise UserError(f"{p}: eval set not found (give a gold JSONL file or a folder of them)")
    return [p]


def _check_gold(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "a gold line must be a JSON object"
    missing = [k for k in GOLD_REQUIRED if k not in rec]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    extra = sorted(set(rec) - set(GOLD_REQUIRED) - set(GOLD_OPTIONAL))
    if extra:
        return f"unknown key(s) {', '.join(extra)} (the official scorer skips such gold lines)"
    sol = rec["solution"]
    if not (isinstance(sol, str) or (isinstance(sol, list) and sol and all(isinstance(s, str) for s in sol))):
        return "solution must be a string or a non-empty list of strings"
    method = rec.get("evaluation_method")
    if method is not None and method not in METHODS:
        return f"evaluation_method {method!r} is not one of {', '.join(METHODS)}"
    if not isinstance(rec["problem"], str):
        return "problem must be a string"
    return None


def load_gold(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a gold eval set (file or folder); raises UserError listing every bad line."""
    records, errors, seen = [], [], {}
    for file in eval_files(path):
        for number, line in _jsonl_lines(file):
            where = f"{file}:{number}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{where}: not valid JSON ({exc.msg})")
                continue
            problem = _check_gold(rec)
            if problem:
                errors.append(f"{where}: {problem}")
                continue
            if rec["id"] in seen:
                errors.append(f"{where}: duplicate id {rec['id']!r} (first at {seen[rec['id']]})")
                continue
            seen[rec["id"]] = where
            records.append(rec)
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise UserError(f"{path}: {len(errors)} bad gold line(s) (fix them):\n  {shown}")
    if not records:
        raise UserError(f"{path}: the eval set is empty")
    return records


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Read a prediction JSONL file with the official acceptance rules (see module docstring)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: prediction file not found")
    preds = Predictions()
    where_of: dict[Any, str] = {}
    for number, line in _jsonl_lines(path):
        preds.lines_read += 1
        where = f"{path}:{number}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            preds.rejected.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(rec, dict):
            preds.rejected.append(f"{where}: not a JSON object")
            continue
        extra = sorted(set(rec) - PREDICTION_KEYS)
        missing = [k for k in ("id", "output") if k not in rec]
        if extra or missing:
            why = (f"unknown key(s) {', '.join(extra)}" if extra else f"missing {', '.join(missing)}")
            preds.rejected.append(f"{where}: {why} (the official scorer drops this line: problem "
                                  f"{rec.get('id')!r} counts as wrong)")
            continue
        key = rec["id"]
        if isinstance(key, (list, dict)):
            # Officially a crash: the id is looked up in a dict while the file is read.
            why = f"{where}: id must be a string or a number (got a JSON {type(key).__name__})"
            preds.rejected.append(why)
            preds.fatal_lines.append(f"{why}: the official scorer stops reading this file (TypeError)")
            continue
        if key in where_of:
            preds.duplicates.append(f"{where}: duplicate id {key!r} replaces the line at {where_of[key]}")
        where_of[key] = where
        # The later line replaces the earlier one, whatever either holds (as officially).
        preds.by_id.pop(key, None)
        preds.non_string_output.pop(key, None)
        if not isinstance(rec["output"], str):
            kind = "null" if rec["output"] is None else type(rec["output"]).__name__
            preds.rejected.append(f"{where}: output must be a string (got {kind}; counted wrong)")
            preds.non_string_output[key] = (f"{where}: output is {kind}, not a string: the official "
                                            "scorer stops on this file with a TypeError")
            continue
        preds.by_id[key] = rec
    return preds


def prediction_record(gold: dict[str, Any], output: str) -> dict[str, Any]:
    """One prediction line: the gold record's allowed fields plus `output` (nothing else)."""
    rec = {k: gold[k] for k in GOLD_REQUIRED + GOLD_OPTIONAL if k in gold}
    rec["output"] = output
    return rec


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as UTF-8 JSONL atomically (one object per line, non-ASCII kept)."""
    from ..atomic import write_text

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_text(path, text)
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; raises UserError naming the first bad line."""
    out = []
    for number, line in _jsonl_lines(Path(path)):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{number}: each line must be a JSON object")
        out.append(rec)
    return out
