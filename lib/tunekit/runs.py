"""The run record: one directory per notebook execution, the immutable record of what happened.

    runs/<stage>/<run_name>/
        <stage>.ipynb     executed notebook (written by the runner / papermill)
        params.json       the resolved, validated config
        env.json          package versions, git sha + dirty flag, devices, host, PBS job id
        metrics.jsonl     one JSON object per line, appended and flushed during the run
        summary.json      final numbers (written atomically at the end)
        *.png             plots
        session-*.ipynb   an interactive (JupyterLab) run: the code it executed and what it showed

Only rank 0 writes. Re-opening an existing run directory with the same params resumes it (training
stages continue from their last checkpoint); different params are refused with the differing keys.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from . import atomic
from .errors import UserError
from .paths import repo_root, resolve, runs_root

# Packages whose versions go into env.json (those that change numbers or formats).
_TRACKED = ["torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "numpy",
            "megatron-core", "peft", "math-verify", "papermill", "tunekit"]


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def default_run_name(stage: str, fingerprint: str = "") -> str:
    """A run name shared by all ranks of one launch: the PBS job id, else the torchrun id, else time."""
    jobid = os.environ.get("PBS_JOBID", "").split(".")[0]
    if jobid:
        return f"job{jobid}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if elastic and elastic != "none":
        return f"tr-{elastic}"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{fingerprint}" if fingerprint else stamp


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (None outside git)."""
    root = root or repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty if sha else None}


def environment_snapshot() -> dict[str, Any]:
    """Versions, git state, devices and scheduler ids; never any environment secrets."""
    from importlib import metadata

    versions = {}
    for pkg in _TRACKED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    devices: dict[str, Any] = {"cuda": 0}
    try:
        import torch

        if torch.cuda.is_available():
            devices = {"cuda": torch.cuda.device_count(),
                       "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    except ImportError:
        pass
    # Only scheduler/launcher variables that identify the job: never dump os.environ (secrets).
    sched_keys = ["PBS_JOBID", "PBS_JOBNAME", "PBS_QUEUE", "PBS_ARRAY_INDEX", "WORLD_SIZE",
                  "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES"]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git": git_state(),
        "devices": devices,
        "scheduler": {k: os.environ[k] for k in sched_keys if k in os.environ},
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


class Run:
    """An open run directory; use `start_run` to get one."""

    def __init__(self, path: Path, stage: str, resumed: bool, writer: bool = True):
        self.dir = path
        self.stage = stage
        self.name = path.name
        self.resumed = resumed
        self.writer = writer  # False on ranks > 0: every method becomes a no-op there

    def __repr__(self) -> str:
        return f"Run({self.stage}/{self.name}{', resumed' if self.resumed else ''})"

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.dir.joinpath(*parts)

    def log(self, **metrics: Any) -> None:
        """Append one metrics record (a line of metrics.jsonl), flushed so a killed job keeps it."""
        if not self.writer:
            return
        line = json.dumps(metrics, sort_keys=True, default=_jsonable) + "\n"
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """All records of metrics.jsonl (a torn last line from a kill is skipped)."""
        return read_metrics(self.dir)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON artefact atomically into the run directory."""
        target = self.dir / name
        if self.writer:
            atomic.write_json(target, obj)
        return target

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as PNG in the run directory (the notebook still shows it inline)."""
        target = self.dir / (name if name.endswith(".png") else f"{name}.png")
        if self.writer:
            tmp = target.with_name(f".{target.name}.tmp.png")
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
            os.replace(tmp, target)
        return target

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write summary.json (atomically) and return it."""
        data = dict(summary)
        data.setdefault("finished", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        self.write_json("summary.json", data)
        return data


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a run's metrics.jsonl; a torn final line (killed mid-write) is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's summary.json, or None if the run has not finished."""
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def start_run(stage: str, params, run_name: str = "", runs_dir: str = "") -> Run:
    """Create (or reopen, to resume) `runs/<stage>/<run_name>/` and record params and environment.

    Args:
        stage: the notebook stage, e.g. "sft"; the folder under the runs root.
        params: a NotebookParams (or a plain dict) to store as params.json.
        run_name: the folder name; empty = `default_run_name`.
        runs_dir: the runs root; empty = $TUNEKIT_RUNS_DIR or <repo>/runs.
    """
    as_dict = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    fingerprint = params.fingerprint() if hasattr(params, "fingerprint") else ""
    root = resolve(runs_dir) if runs_dir else runs_root()
    name = run_name or default_run_name(stage, fingerprint)
    if "/" in name or name in (".", "..") or not name.strip():
        raise UserError(f"run_name {name!r} is not a plain folder name (use letters, digits, - and _)")
    path = root / stage / name
    writer = _rank() == 0
    params_file = path / "params.json"
    resumed = params_file.exists()
    if resumed:
        old = json.loads(params_file.read_text(encoding="utf-8"))
        if hasattr(params, "resume_diff"):
            diff = params.resume_diff(old)
        else:  # a plain dict of parameters: every one of them must match
            diff = [f"{k}: {old.get(k)!r} -> {as_dict.get(k)!r}" for k in sorted(set(old) | set(as_dict))
                    if old.get(k) != as_dict.get(k)]
        if diff:
            detail = "; ".join(diff[:6])
            raise UserError(
                f"{path}: this run already exists with different parameters ({detail}) "
                "(choose a new run_name, or delete the folder to start over)")
    if writer:
        path.mkdir(parents=True, exist_ok=True)
        atomic.write_json(params_file, as_dict)
        env = environment_snapshot()
        env["resumed"] = resumed
        atomic.write_json(path / "env.json", env)
    run = Run(path, stage, resumed, writer)
    from .session import record_session

    record_session(run)  # in JupyterLab: the executed code and its outputs (a headless run has its notebook)
    return run


def find_runs(stage: str, runs_dir: str = "") -> list[Path]:
    """Run directories of a stage, oldest first (by folder modification time)."""
    root = (resolve(runs_dir) if runs_dir else runs_root()) / stage
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and (p / "params.json").exists()]
    return sorted(dirs, key=lambda p: p.stat().st_mtime)
