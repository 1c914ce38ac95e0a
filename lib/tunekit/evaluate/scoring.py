"""Score a prediction file against a gold file, as `math-eval PRED GOLD -o OUT` does.

Two scorers give the same verdict interface:
- "tunekit": `tunekit.evaluate.verify` (Math-Verify + the documented normalisations), always here;
- "official": the competition's own `math-eval` (`math_eval.main.parse_and_verify`) when it is
  importable (install it on ABCI from its repository; it needs Python >= 3.12).
"auto" takes the official one when present. The result records which scorer produced it.
Missing predictions and rejected prediction lines count as wrong, exactly as officially. Where the
official tool would stop for the whole file instead (an `output` that is not a string, an id that
is a list, an error it re-raises), the kit still scores every line and lists why in
`ScoreReport.official_failures` (`official_tool_would_fail` in the JSON).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .records import Predictions, load_gold, load_predictions
from .verify import Verdict, check

SCORERS = ("auto", "tunekit", "official")


@dataclass
class ScoreReport:
    """The official output (overall, per category, per id) plus what explains it."""

    overall_accuracy: float
    category_accuracies: dict[str, float]
    detailed_results: dict[str, bool]
    scorer: str
    rules: dict[str, str | None] = field(default_factory=dict)   # id -> rule that accepted it
    category_counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)             # gold ids without a prediction
    problems: list[str] = field(default_factory=list)            # rejected/duplicate/odd lines
    # Why the official math-eval run would have stopped on this file (it scores nothing then).
    official_failures: list[str] = field(default_factory=list)

    def official_json(self) -> dict[str, Any]:
        """The JSON `math-eval -o` writes, plus `scorer` and `problems` (extra keys, never renamed)."""
        return {"overall_accuracy": self.overall_accuracy,
                "category_accuracies": self.category_accuracies,
                "detailed_results": self.detailed_results,
                "scorer": self.scorer,
                "missing_predictions": self.missing,
                "problems": self.problems,
                "official_tool_would_fail": self.official_failures}

    def table(self):
        """Per-category accuracy as a pandas DataFrame (with an Overall row last)."""
        import pandas as pd

        rows = [{"category": c, "n": self.category_counts.get(c, 0),
                 "correct": round(a * self.category_counts.get(c, 0)), "accuracy": a}
                for c, a in self.category_accuracies.items()]
        n = len(self.detailed_results)
        rows.append({"category": "Overall", "n": n, "correct": sum(self.detailed_results.values()),
                     "accuracy": self.overall_accuracy})
        return pd.DataFrame(rows).set_index("category")

    def format_table(self) -> str:
        """The per-category table as plain text (what the CLI prints)."""
        lines = [f"{'category':<12} {'n':>5} {'correct':>8} {'accuracy':>9}"]
        for cat, row in self.table().iterrows():
            lines.append(f"{cat:<12} {int(row['n']):>5} {int(row['correct']):>8} {row['accuracy']:>9.3f}")
        lines.append(f"(scorer: {self.scorer})")
        return "\n".join(lines)


def official_available() -> bool:
    """True if the competition's `math-eval` package is importable here."""
    try:
        from math_eval.main import parse_and_verify  # noqa: F401
    except Exception:  # ImportError, or its own import-time failures: simply not available
        return False
    return True


def _official_check(output: str, solution, method: str | None) -> Verdict:
    import inspect
    import warnings

    from math_eval.main import parse_and_verify

    # Early releases took (prediction, gold) only; later ones add evaluation_method.
    takes_method = len(inspect.signature(parse_and_verify).parameters) >= 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns on every gold line without evaluation_method
        try:
            args = (output, solution, method) if takes_method else (output, solution)
            return Verdict(bool(parse_and_verify(*args)), "official")
        except (NotImplementedError, ValueError, RecursionError) as exc:
            # It re-raises these for its caller; its own CLI would stop, we count the answer wrong.
            return Verdict(False, None, f"the official scorer raises {type(exc).__name__} and stops")


def resolve_scorer(scorer: str = "auto") -> tuple[str, Callable[[str, Any, str | None], Verdict]]:
    """The scorer's recorded name and its check function; raises UserError if unavailable."""
    if scorer not in SCORERS:
        raise UserError(f"scorer {scorer!r} is unknown (use one of {', '.join(SCORERS)})")
    if scorer == "official" or (scorer == "auto" and official_available()):
        if not official_available():
            raise UserError("scorer 'official': the math-eval package is not importable (install it with "
                            "`pip install 'git+https://github.com/llm-jp/ft-llm-2026#subdirectory=math-eval'` "
                            "on Python >= 3.12, or use --scorer tunekit)")
        return _versioned("official math-eval", "math-eval"), _official_check
    return _versioned("tunekit (math-verify", "math-verify") + ")", check


def _versioned(label: str, package: str) -> str:
    from importlib import metadata

    try:
        return f"{label} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return label


def score_records(gold: list[dict[str, Any]], preds: Predictions, scorer: str = "auto",
                  progress: bool = False) -> ScoreReport:
    """Score loaded predictions against loaded gold records (see `score_files`)."""
    from ..runtime import progress as bar

    name, fn = resolve_scorer(scorer)
    problems = list(preds.rejected) + list(preds.duplicates)
    failures = list(preds.fatal_lines)
    known = set(preds.by_id) | set(preds.non_string_output)
    by_str = {str(k): k for k in known}
    results, rules, missing = {}, {}, []
    per_cat: dict[str, list[bool]] = {}
    for g in (bar(gold, desc="scoring", unit="problem") if progress else gold):
        key = str(g["id"])
        pred = preds.by_id.get(g["id"])
        if g["id"] in preds.non_string_output:  # scored officially, and that stops the run
            failures.append(preds.non_string_output[g["id"]])
            verdict = Verdict(False, None)
        elif pred is None:
            missing.append(key)
            if key in by_str:  # same text, other JSON type: the official lookup misses it too
                problems.append(f"prediction id {by_str[key]!r} has another JSON type than gold id "
                                f"{g['id']!r}: the official scorer counts it as missing (write ids as in gold)")
            verdict = Verdict(False, None)
        else:
            verdict = fn(pred["output"], g["solution"], g.get("evaluation_method"))
            if verdict.official_failure:
                failures.append(f"problem {g['id']!r}: {verdict.official_failure}")
                problems.append(f"problem {g['id']!r}: counted wrong; the official math-eval would stop "
                                f"on this file here ({verdict.official_failure})")
        results[key] = verdict.correct
        rules[key] = verdict.rule
        per_cat.setdefault(str(g["category"]), []).append(verdict.correct)
    extra = sorted(str(k) for k in known - {g["id"] for g in gold})
    if extra:
        problems.append(f"{len(extra)} prediction id(s) not in the gold set, ignored: {', '.join(extra[:10])}")
    return ScoreReport(
        overall_accuracy=sum(results.values()) / len(results) if results else 0.0,
        category_accuracies={c: sum(v) / len(v) for c, v in per_cat.items()},
        detailed_results=results, scorer=name, rules=rules,
        category_counts={c: len(v) for c, v in per_cat.items()}, missing=missing, problems=problems,
        official_failures=failures)


def score_files(pred_path: str | os.PathLike, gold_path: str | os.PathLike, scorer: str = "auto",
                out_path: str | os.PathLike | None = None, progress: bool = False) -> ScoreReport:
    """Score a prediction JSONL against a gold JSONL (or folder); optionally write the JSON result."""
    report = score_records(load_gold(gold_path), load_predictions(pred_path), scorer, progress)
    if out_path:
        from ..atomic import write_json

        write_json(Path(out_path), report.official_json())
    return report
