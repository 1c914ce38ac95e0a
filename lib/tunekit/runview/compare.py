"""Compare runs: parameter differences, curves, evaluated models with bootstrap intervals and paired tests.

What notebooks/60_compare_runs and `tunekit runs compare` show. Evaluated models come from
evaluation runs (`<eval run>/<model>/scores.json`: one verdict per problem, and
`predictions.jsonl`: each problem's category), so two models are compared on exactly the same
problems. A difference is called a win only when its paired-bootstrap interval excludes zero.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .. import stats
from .records import RunInfo, read_complete_metrics, resolve_runs, run_info

CATEGORIES = ("中1", "中2", "中3", "IA", "IIB", "IIIC")  # the competition's labels, in school order
_NOT_PARAMS = {"run_name", "runs_dir"}
TRAINING = ("sft", "dpo")


@dataclass
class EvaluatedModel:
    """One model's verdicts in one evaluation run."""

    label: str
    eval_run: Path
    spec: str
    correct: dict[str, bool]
    category: dict[str, str]
    training_run: Path | None = None

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / len(self.correct) if self.correct else 0.0


@dataclass
class Comparison:
    """Everything loaded for a comparison."""

    runs: list[RunInfo]
    metrics: dict[Path, list[dict[str, Any]]]
    models: list[EvaluatedModel] = field(default_factory=list)
    sweep: dict[str, Any] | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _models_of(eval_run: Path) -> list[EvaluatedModel]:
    summary = _read_json(eval_run / "summary.json") or {}
    specs = {k: (v or {}).get("spec", "") for k, v in (summary.get("models") or {}).items()}
    out = []
    for folder in sorted(p for p in eval_run.iterdir() if (p / "scores.json").is_file()):
        scores = _read_json(folder / "scores.json") or {}
        detailed = scores.get("detailed_results") or {}
        categories = {}
        pred = folder / "predictions.jsonl"
        if pred.is_file():
            for line in pred.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    categories[str(rec["id"])] = str(rec.get("category", ""))
        label = next((k for k in specs if folder.name == _slug(k)), folder.name)
        spec = specs.get(label, "")
        train = Path(spec) if spec and (Path(spec) / "params.json").is_file() else None
        out.append(EvaluatedModel(label, eval_run, spec, {str(k): bool(v) for k, v in detailed.items()},
                                  categories, train))
    return out


def _slug(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def load_runs(specs: list[str], runs_dir: str | os.PathLike | None = None) -> Comparison:
    """Resolve specs (run dirs, globs, names, `sweep:NAME`) and read every run's records."""
    from .records import sweep_record

    dirs = resolve_runs(specs, runs_dir)
    sweep = None
    sweeps = [s for s in specs if str(s).startswith("sweep:")]
    if len(sweeps) == 1:
        sweep = sweep_record(sweeps[0][len("sweep:"):], runs_dir)
    metrics = {d: read_complete_metrics(d) for d in dirs}
    runs = [run_info(d, metrics[d]) for d in dirs]
    models: list[EvaluatedModel] = []
    for d in dirs:
        if d.parent.name == "evaluate" and (d / "summary.json").is_file():
            models += _models_of(d)
    # The same label from two evaluation runs (e.g. "tiny" evaluated twice): name the run too.
    labels = [m.label for m in models]
    for m in models:
        if labels.count(m.label) > 1:
            m.label = f"{m.label} @ {m.eval_run.name}"
    return Comparison(runs, metrics, models, sweep)


def param_differences(runs: list[RunInfo]):
    """One row per run, one column per parameter whose value differs between runs of the same stage."""
    import pandas as pd

    rows = []
    for stage in dict.fromkeys(r.stage for r in runs):
        group = [r for r in runs if r.stage == stage]
        keys = sorted({k for r in group for k in r.params} - _NOT_PARAMS)
        differing = [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True, default=str)
                                             for r in group}) > 1]
        for r in group:
            rows.append({"stage": stage, "run": r.name,
                         **{k: _short(r.params.get(k)) for k in differing}})
    return pd.DataFrame(rows).set_index(["stage", "run"]) if rows else pd.DataFrame()


def _short(value: Any) -> Any:
    text = value if isinstance(value, (int, float, bool)) or value is None else json.dumps(value, ensure_ascii=False)
    if isinstance(text, str) and text.startswith('"'):
        text = json.loads(text)
    if isinstance(text, str) and len(text) > 40:
        text = "..." + text[-37:]
    return text


def accuracy_table(models: list[EvaluatedModel], n_boot: int = stats.DEFAULT_BOOT, level: float = 0.95,
                   seed: int = 0):
    """Accuracy with its bootstrap interval, overall and per category (rows: models)."""
    import pandas as pd

    rows = []
    for m in models:
        ids = sorted(m.correct)
        lo, hi = stats.bootstrap_ci([m.correct[i] for i in ids], n_boot, level, seed)
        row = {"model": m.label, "n": len(ids), "accuracy": m.accuracy, "low": lo, "high": hi}
        cats = sorted({m.category.get(i, "") for i in ids}, key=_category_order)
        for c in cats:
            sub = [m.correct[i] for i in ids if m.category.get(i, "") == c]
            clo, chi = stats.bootstrap_ci(sub, n_boot, level, seed)
            row[f"{c or '?'}"] = f"{sum(sub) / len(sub):.2f} [{clo:.2f}, {chi:.2f}] n={len(sub)}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def _category_order(c: str) -> tuple[int, str]:
    return (CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES), c)


def _paired(a: EvaluatedModel, b: EvaluatedModel, n_boot: int, level: float, seed: int) -> dict[str, Any]:
    common = sorted(set(a.correct) & set(b.correct))
    if not common:
        raise UserError(f"{a.label} and {b.label} share no problem (evaluated on different eval sets?)")
    x, y = [a.correct[i] for i in common], [b.correct[i] for i in common]
    pb = stats.paired_bootstrap(x, y, n_boot, level, seed)
    mc = stats.mcnemar_exact(x, y)
    verdict = "a better" if pb["low"] > 0 else "b better" if pb["high"] < 0 else "no clear difference"
    return {"a": a.label, "b": b.label, "problems": len(common), "diff": pb["diff"], "low": pb["low"],
            "high": pb["high"], "only_a": mc["only_a"], "only_b": mc["only_b"], "mcnemar_p": mc["p"],
            "verdict": verdict}


def paired_table(models: list[EvaluatedModel], n_boot: int = stats.DEFAULT_BOOT, level: float = 0.95,
                 seed: int = 0):
    """Every pair of models on their common problems: difference a - b with its interval, McNemar p."""
    import pandas as pd

    rows = [_paired(a, b, n_boot, level, seed) for i, a in enumerate(models) for b in models[i + 1:]]
    return pd.DataFrame(rows)


def leaderboard(models: list[EvaluatedModel], n_boot: int = stats.DEFAULT_BOOT, level: float = 0.95,
                seed: int = 0):
    """Models best first, each with its interval and how it compares with the best one (paired)."""
    import pandas as pd

    ranked = sorted(models, key=lambda m: (-m.accuracy, m.label))
    rows = []
    for rank, m in enumerate(ranked, 1):
        lo, hi = stats.bootstrap_ci([m.correct[i] for i in sorted(m.correct)], n_boot, level, seed)
        row = {"rank": rank, "model": m.label, "accuracy": m.accuracy, "low": lo, "high": hi}
        if rank == 1:
            row.update(vs_best="-", mcnemar_p=None)
        else:
            pair = _paired(ranked[0], m, n_boot, level, seed)
            row.update(vs_best="worse" if pair["verdict"] == "a better" else "not distinguishable",
                       mcnemar_p=pair["mcnemar_p"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("rank") if rows else pd.DataFrame()


def heatmap_table(comparison: Comparison):
    """For a sweep over exactly two parameters: accuracy (else best val loss) per grid cell; None otherwise."""
    import pandas as pd

    sweep = comparison.sweep
    if not sweep or len(sweep.get("grid", {})) != 2:
        return None
    (p1, _), (p2, _) = list(sweep["grid"].items())
    acc = {str(m.training_run.resolve()): m.accuracy for m in comparison.models if m.training_run}
    val = {str(r.dir.resolve()): r.best_val_loss for r in comparison.runs}
    metric = "accuracy" if acc else "best_val_loss"
    rows = []
    for point in sweep["points"]:
        key = str(Path(point["run_dir"]).resolve())
        value = acc.get(key) if acc else val.get(key)
        rows.append({p1: point["values"][p1], p2: point["values"][p2], metric: value})
    table = pd.DataFrame(rows).pivot(index=p1, columns=p2, values=metric)
    table.columns.name = f"{metric}: {p2}"
    return table


def training_curves(comparison: Comparison, keys=("loss", "val_loss", "lr")) -> dict[str, dict[str, list]]:
    """{metric: {run label: [(step, value), ...]}} for the training runs (complete metrics lines only)."""
    out: dict[str, dict[str, list]] = {k: {} for k in keys}
    for r in comparison.runs:
        if r.stage not in TRAINING:
            continue
        for k in keys:
            points = [(m["step"], m[k]) for m in comparison.metrics[r.dir]
                      if isinstance(m.get(k), (int, float)) and isinstance(m.get("step"), (int, float))]
            if points:
                out[k][f"{r.stage}/{r.name}"] = points
    return out


def plot_curves(curves: dict[str, dict[str, list]], title: str = ""):
    """One panel per metric, one line per run (log-scale for losses)."""
    import matplotlib.pyplot as plt

    keys = [k for k, v in curves.items() if v]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for label, pts in curves[k].items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker="o" if len(pts) < 15 else None)
        ax.set_title(k)
        ax.set_xlabel("step")
        if "loss" in k:
            ax.set_yscale("log")
    if keys:
        axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_leaderboard(board) -> Any:
    """Accuracy with its interval per model, best at the top."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(1, len(board))))
    y = list(range(len(board)))[::-1]
    ax.errorbar(board["accuracy"], y, xerr=[board["accuracy"] - board["low"], board["high"] - board["accuracy"]],
                fmt="o", capsize=4)
    ax.set_yticks(y, board["model"])
    ax.set_xlabel("accuracy (95% bootstrap interval)")
    ax.set_xlim(-0.02, 1.02)
    fig.tight_layout()
    return fig


def plot_heatmap(table) -> Any:
    """The 2-D sweep grid, one cell per point."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * table.shape[1], 1.2 + 0.8 * table.shape[0]))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="viridis")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    ax.set_xlabel(table.columns.name)
    ax.set_ylabel(table.index.name)
    import numpy as np

    for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
        ax.text(j, i, "" if v != v else f"{v:.3g}", ha="center", va="center", color="w")
    fig.colorbar(im)
    fig.tight_layout()
    return fig


def check_summary(comparison: Comparison, board) -> dict[str, Any]:
    """The small, rounded summary the notebook's check cell prints (stable across machines)."""
    out = {
        "runs": {stage: sum(1 for r in comparison.runs if r.stage == stage)
                 for stage in sorted({r.stage for r in comparison.runs})},
        "models": len(comparison.models),
        "leaderboard": [f"{row.model}: {row.accuracy:.3f} [{row.low:.3f}, {row.high:.3f}] {row.vs_best}"
                        for row in board.itertuples()] if len(board) else [],
    }
    return out


def format_leaderboard(board) -> str:
    """The leaderboard as plain text (what `tunekit runs compare` prints)."""
    if board is None or not len(board):
        return "no evaluated models among these runs (evaluation runs hold the accuracies)"
    lines = [f"{'#':>2}  {'model':<40} {'accuracy':>8}  {'95% interval':<15} vs best"]
    for rank, row in board.iterrows():
        p_value = row["mcnemar_p"]
        p = "" if p_value is None or p_value != p_value else f" (McNemar p={p_value:.3f})"
        lines.append(f"{rank:>2}  {row['model'][:40]:<40} {row['accuracy']:>8.3f}  "
                     f"[{row['low']:.3f}, {row['high']:.3f}]  {row['vs_best']}{p}")
    return "\n".join(lines)
