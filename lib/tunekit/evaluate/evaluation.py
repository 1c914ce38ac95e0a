"""Evaluate one or more models on a gold eval set: what `notebooks/50_evaluate` calls.

For each model: generate (n answers per problem), score every answer, pick the majority-vote
answer (the only answer when n = 1), write `predictions.jsonl` in the exact competition format,
then score THAT FILE with the official contract, so the number reported is the number the file
would get. Per model folder inside the run directory:

    <label>/predictions.jsonl   competition format ({gold fields} + output), one line per problem
    <label>/samples.jsonl       every sample: id, sample, output, answer, correct
    <label>/scores.json         the scorer's JSON (overall, per category, per id, scorer name)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .generate import Decoding, Generation, generate_answers
from .records import load_predictions, prediction_record, write_jsonl
from .runinfo import model_label, training_metrics
from .scoring import ScoreReport, resolve_scorer, score_records
from .verify import answer_key, extract_answer
from .voting import accuracy_vs_samples, group_answers, majority_index


@dataclass
class ModelResult:
    """Everything measured for one model."""

    label: str
    spec: str
    report: ScoreReport
    generation: Generation
    sample_correct: list[list[bool]]
    curve: list[dict[str, float]]
    training: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    def row(self) -> dict[str, Any]:
        """One row of the comparison table."""
        n = len(self.sample_correct[0]) if self.sample_correct else 0
        last = self.curve[-1] if self.curve else {}
        row = {"model": self.label, "accuracy": self.report.overall_accuracy, "n_samples": n,
               f"pass@{n}": last.get("pass@k"), f"maj@{n}": last.get("maj@k"),
               "new_tokens_per_s": round(self.generation.tokens_per_second, 1),
               "rejected_lines": len(self.report.problems), "missing": len(self.report.missing)}
        row.update(self.training)
        return row


def slug(label: str) -> str:
    """A folder-safe version of a model label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def predict(spec: str, gold: list[dict[str, Any]], *, style: str = "official",
            decoding: Decoding = Decoding(), backend: str = "auto",
            progress: bool = True) -> tuple[list[str], Generation, list[list[int]]]:
    """Generate for every gold problem; returns the chosen output per problem (majority vote over
    the samples, the only sample when n = 1), the Generation and the answer groups per problem."""
    gen = generate_answers(spec, [g["problem"] for g in gold], style, decoding, backend, progress)
    groups = [group_answers(outs) if len(outs) > 1 else [0] for outs in gen.outputs]
    chosen = [outs[majority_index(g)] for outs, g in zip(gen.outputs, groups)]
    return chosen, gen, groups


def evaluate_model(spec: str, gold: list[dict[str, Any]], out_dir: Path, *, style: str = "official",
                   decoding: Decoding = Decoding(), backend: str = "auto", scorer: str = "auto",
                   label: str | None = None, progress: bool = True) -> ModelResult:
    """Generate, vote, write and score the predictions of one model (see module docstring)."""
    label = label or model_label(spec)
    folder = Path(out_dir) / slug(label)
    chosen, gen, groups = predict(spec, gold, style=style, decoding=decoding, backend=backend,
                                  progress=progress)
    _, check_fn = resolve_scorer(scorer)
    samples, correct = [], []
    for g, outs in zip(gold, gen.outputs):
        ok = [check_fn(o, g["solution"], g.get("evaluation_method")).correct for o in outs]
        correct.append(ok)
        samples += [{"id": g["id"], "sample": i, "output": o, "answer": answer_key(extract_answer(o)),
                     "correct": c} for i, (o, c) in enumerate(zip(outs, ok))]
    curve = accuracy_vs_samples(correct, groups)
    pred_path = write_jsonl(folder / "predictions.jsonl",
                            [prediction_record(g, out) for g, out in zip(gold, chosen)])
    write_jsonl(folder / "samples.jsonl", samples)
    # Score the written file, not the in-memory answers: the number is what the file would get.
    report = score_records(gold, load_predictions(pred_path), scorer)
    from ..atomic import write_json

    write_json(folder / "scores.json", report.official_json())
    return ModelResult(label, str(spec), report, gen, correct, curve, training_metrics(spec), folder)


def evaluate_models(specs: list[str], gold: list[dict[str, Any]], out_dir: Path, **kwargs) -> list[ModelResult]:
    """`evaluate_model` for each spec, in order (labels made unique if two specs share a name)."""
    results, seen = [], set()
    for spec in specs:
        label = model_label(spec)
        while label in seen:
            label += "'"
        seen.add(label)
        results.append(evaluate_model(spec, gold, out_dir, label=label, **kwargs))
    return results


def comparison_table(results: list[ModelResult]):
    """One row per model: accuracy, pass@n/maj@n, throughput, and its training run's metrics."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in results]).set_index("model")


def category_table(results: list[ModelResult]):
    """Accuracy per category (rows) and model (columns), with an Overall row."""
    import pandas as pd

    cols = {r.label: {**r.report.category_accuracies, "Overall": r.report.overall_accuracy} for r in results}
    return pd.DataFrame(cols)


def curve_table(results: list[ModelResult]):
    """pass@k and maj@k per model and k (long format)."""
    import pandas as pd

    return pd.DataFrame([{"model": r.label, **row} for r in results for row in r.curve])


def summary(results: list[ModelResult]) -> dict[str, Any]:
    """The numbers saved in summary.json: per model accuracy, per category, curve, training."""
    return {"scorer": results[0].report.scorer if results else None,
            "eval_problems": len(results[0].report.detailed_results) if results else 0,
            "comparison": [r.row() for r in results],
            "models": {r.label: {"spec": r.spec, "accuracy": r.report.overall_accuracy,
                                 "category_accuracies": r.report.category_accuracies,
                                 "curve": r.curve, "training": r.training,
                                 "new_tokens_per_s": r.generation.tokens_per_second,
                                 "problems": r.report.problems, "missing": r.report.missing}
                       for r in results}}


def examples_table(result: ModelResult, gold: list[dict[str, Any]], n: int = 5):
    """The first n problems of one model: gold answer, chosen output, verdict and matching rule."""
    import pandas as pd

    preds = load_predictions(result.folder / "predictions.jsonl").by_id if result.folder else {}
    rows = [{"id": g["id"], "category": g["category"], "solution": g["solution"],
             "output": preds.get(g["id"], {}).get("output", "")[:80],
             "correct": result.report.detailed_results[str(g["id"])],
             "rule": result.report.rules.get(str(g["id"]))} for g in gold[:n]]
    return pd.DataFrame(rows).set_index("id")


def check_summary(results: list[ModelResult], margin: float = 0.05) -> dict[str, Any]:
    """The small, rounded, key-sorted summary the notebook's nbval cell prints.

    `trained_beats_base` compares every later model with the first (the base model): each must be
    at least `margin` more accurate. None when only one model was evaluated.
    """
    base = results[0].report.overall_accuracy
    out = {
        "accuracy": {r.label: round(r.report.overall_accuracy, 3) for r in results},
        "categories": len(results[0].report.category_accuracies),
        "models": len(results),
        "predictions_valid": all(not r.report.problems and not r.report.missing for r in results),
        "problems": len(results[0].report.detailed_results),
        "trained_beats_base": (None if len(results) < 2 else
                               all(r.report.overall_accuracy >= base + margin for r in results[1:])),
    }
    return dict(sorted(out.items()))
