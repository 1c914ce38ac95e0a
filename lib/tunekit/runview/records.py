"""Run records as they are on disk, read without ever writing or locking anything.

A run's status comes from its files alone: `summary.json` (finished), the PBS link record of its
latest job submission (`job/<submission>/link-<k>.json`: running, failed, ...), and the training
engine's `train_result.json` (stopped at a deadline or by a signal: incomplete). A run started
outside PBS that has no summary yet is "started": it is running, or it stopped without one.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..paths import resolve, runs_root

SWEEPS = "sweeps"  # runs/sweeps/<name>/sweep.json: sweep records, not a stage (tunekit.jobs.sweep)
FINAL = frozenset({"finished", "failed", "incomplete"})  # a run in these states will not change by itself


def read_complete_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """metrics.jsonl up to its last complete line (a line a job is still writing is left for later)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        data = path.read_bytes()
    except OSError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    out = []
    for line in complete.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill, followed by later appends
        if isinstance(record, dict):
            out.append(record)
    return out


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def latest_link(run_dir: Path) -> dict[str, Any] | None:
    """The newest link record of the run's latest PBS submission (None: never submitted or not started)."""
    try:
        name = (run_dir / "job" / "latest").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = run_dir / "job" / name
    if not name or "/" in name or name.startswith(".") or not folder.is_dir():
        return None
    links = sorted(folder.glob("link-*.json"), key=lambda p: int(p.stem.split("-")[1]) if p.stem[5:].isdigit() else 0)
    return _json(links[-1]) if links else None


def run_status(run_dir: Path) -> str:
    """finished | failed | running | incomplete | started (see the module docstring)."""
    if (run_dir / "summary.json").is_file():
        return "finished"
    link = (latest_link(run_dir) or {}).get("state")
    result = (_json(run_dir / "train_result.json") or {}).get("status")
    if link in ("failed", "stopped"):
        return "failed"
    if link == "running":
        return "running"
    if link in ("incomplete", "killed") or result in ("deadline", "interrupted"):
        return "incomplete"
    if link == "done":  # the job ended well but wrote no summary: the notebook's last cells did not run
        return "failed"
    return "started"


@dataclass
class RunInfo:
    """One run directory, summarised from its records."""

    dir: Path
    stage: str
    name: str
    status: str
    step: int | None = None
    last_loss: float | None = None
    best_val_loss: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # evaluated model label -> accuracy
    started: str = ""
    commit: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat row for a table."""
        acc = ", ".join(f"{k} {v:.3f}" for k, v in self.accuracy.items())
        return {"stage": self.stage, "run": self.name, "status": self.status, "step": self.step,
                "last_loss": self.last_loss, "best_val_loss": self.best_val_loss, "accuracy": acc,
                "started": self.started, "commit": self.commit}


def run_info(run_dir: str | os.PathLike, metrics: list[dict[str, Any]] | None = None) -> RunInfo:
    """Summarise one run directory from its records (params, env, metrics, summary, job links)."""
    run_dir = Path(run_dir)
    metrics = read_complete_metrics(run_dir) if metrics is None else metrics
    summary = _json(run_dir / "summary.json") or {}
    env = _json(run_dir / "env.json") or {}
    steps = [r for r in metrics if isinstance(r.get("loss"), (int, float)) and "step" in r]
    vals = [r["val_loss"] for r in metrics if isinstance(r.get("val_loss"), (int, float))]
    best = summary.get("best_val_loss")
    accuracy = {}
    for row in summary.get("comparison") or []:
        if isinstance(row, dict) and isinstance(row.get("accuracy"), (int, float)):
            accuracy[str(row.get("model"))] = float(row["accuracy"])
    git = env.get("git") or {}
    commit = (git.get("sha") or "")[:10] + ("+dirty" if git.get("dirty") else "") if git.get("sha") else ""
    started = str(env.get("started") or "")
    launches = run_dir / "launches.jsonl"
    if launches.is_file():  # the first launch is when the run started; env.json is the latest one
        first = launches.read_text(encoding="utf-8").split("\n", 1)[0]
        try:
            started = str(json.loads(first).get("started") or started)
        except ValueError:
            pass
    return RunInfo(dir=run_dir, stage=run_dir.parent.name, name=run_dir.name, status=run_status(run_dir),
                   step=steps[-1]["step"] if steps else summary.get("steps") or summary.get("step"),
                   last_loss=steps[-1]["loss"] if steps else None,
                   best_val_loss=best if isinstance(best, (int, float)) else (min(vals) if vals else None),
                   accuracy=accuracy, started=started, commit=commit,
                   params=_json(run_dir / "params.json") or {})


def _root(runs_dir: str | os.PathLike | None) -> Path:
    return resolve(runs_dir, Path.cwd()) if runs_dir else runs_root()


def all_run_dirs(runs_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every run directory (a folder holding params.json) under <root>/<stage>/, sweeps excluded."""
    root = _root(runs_dir)
    if not root.is_dir():
        return []
    return sorted(run for stage in root.iterdir() if stage.is_dir() and stage.name != SWEEPS
                  for run in stage.iterdir() if (run / "params.json").is_file())


def list_runs(runs_dir: str | os.PathLike | None = None, stage: str | None = None,
              name: str | None = None) -> list[RunInfo]:
    """Every run under the runs root, oldest start first; `stage` exact, `name` a glob or substring."""
    infos = []
    for run in all_run_dirs(runs_dir):
        if stage and run.parent.name != stage:
            continue
        if name and not (fnmatch.fnmatchcase(run.name, name) or name in run.name):
            continue
        infos.append(run_info(run))
    return sorted(infos, key=lambda i: (i.started or "~", i.stage, i.name))


def sweep_record(name: str, runs_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """`<runs root>/sweeps/<name>/sweep.json`, or UserError naming the sweeps that exist."""
    from ..runs import check_run_name

    check_run_name(name, what="sweep name")
    root = _root(runs_dir) / SWEEPS
    record = _json(root / name / "sweep.json")
    if record is None:
        known = sorted(p.name for p in root.iterdir() if (p / "sweep.json").is_file()) if root.is_dir() else []
        raise UserError(f"sweep {name!r}: no {root / name / 'sweep.json'} (known sweeps: "
                        f"{', '.join(known) or 'none'}; `tunekit sweep submit` creates one)")
    return record


def sweep_run_dirs(record: dict[str, Any]) -> list[Path]:
    """The run directories of a sweep's points (each point's run, then its follow-up run if any)."""
    out = []
    for point in record.get("points", []):
        out += [Path(point[k]) for k in ("run_dir", "then_run_dir") if point.get(k)]
    return out


def resolve_runs(specs: list[str], runs_dir: str | os.PathLike | None = None,
                 existing_only: bool = True) -> list[Path]:
    """Run directories from specs: `sweep:NAME`, a run directory, a glob (relative to the runs root or
    the working directory, e.g. `sft/lr-*`), or an exact run name; in order, without duplicates."""
    root = _root(runs_dir)
    found: list[Path] = []
    for spec in specs:
        spec = str(spec)
        if spec.startswith("sweep:"):
            dirs = sweep_run_dirs(sweep_record(spec[len("sweep:"):], runs_dir))
            dirs = [d for d in dirs if d.is_dir()] if existing_only else dirs
        elif any(ch in spec for ch in "*?["):
            dirs = sorted({p for base in (Path.cwd(), root) for p in base.glob(spec)
                           if (p / "params.json").is_file()})
        else:
            path = resolve(spec, Path.cwd())
            if (path / "params.json").is_file():
                dirs = [path]
            elif (root / spec / "params.json").is_file():
                dirs = [root / spec]
            else:
                dirs = [d for d in all_run_dirs(runs_dir) if d.name == spec]
        if not dirs and not any(ch in spec for ch in "*?["):  # a glob may match nothing (yet)
            raise UserError(f"{spec}: matches no run directory (give a run directory, a glob such as "
                            f"sft/* relative to {root}, a run name, or sweep:NAME)")
        found += [d.resolve() for d in dirs]
    if not found:
        raise UserError(f"{', '.join(map(str, specs))}: no run directory matches (runs root: {root})")
    return list(dict.fromkeys(found))


def now() -> str:
    """The current local time, as run records write it."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
