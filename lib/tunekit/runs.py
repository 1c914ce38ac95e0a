"""The run record: one directory per notebook execution, the immutable record of what happened.

    runs/<stage>/<run_name>/
        <stage>.ipynb     executed notebook (written by the runner / papermill)
        params.json       the resolved, validated config
        env.json          package versions, git sha + dirty flag, devices, host, PBS job id
        metrics.jsonl     one JSON object per line, appended and flushed during the run
        summary.json      final numbers (written atomically at the end)
        *.png             plots
        session-*.ipynb   an interactive (JupyterLab) run: the code it executed and what it showed

        launches.jsonl    one line per launch (attempt): host, pid, start time, git state, PBS job id,
                          resumed, package versions; env.json is the latest launch's snapshot
        .lock             held (flock) by the one process writing the run (tunekit.runlock)

Only rank 0 writes, and only one process at a time: a second writer is refused with the holder's
host, pid and start time. Re-opening an existing run directory with the same params resumes it
(training stages continue from their last checkpoint). Different params are refused with the
differing keys, before anything is written, if the run holds results; a run that holds none (a
start that failed before producing anything, e.g. bad data) is replaced by the new attempt, so a
corrected retry can keep the name. Run names are one plain folder name (`check_run_name`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import atomic, runlock
from .errors import UserError
from .paths import repo_root, resolve, runs_root

# Packages whose versions go into env.json (those that change numbers or formats).
_TRACKED = ["torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "numpy",
            "megatron-core", "peft", "math-verify", "papermill", "tunekit"]


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_NAME = 100


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def run_name_problem(name: Any) -> str | None:
    """Why `name` is not a valid run name (None if it is one)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.match(name):
        return (f"is not a valid run name (use only letters a-z A-Z, digits, '-', '_' and '.', not starting "
                f"with '.' or '-', at most {MAX_NAME} characters)")
    return None


def check_run_name(name: Any, what: str = "run_name") -> str:
    """A run name is one plain folder name: letters, digits, '-', '_' and '.', not starting with '.' or '-'."""
    problem = run_name_problem(name)
    if problem:
        raise UserError(f"{what} {name!r} {problem}")
    return name


def default_run_name(stage: str, fingerprint: str = "") -> str:
    """A run name shared by all ranks of one launch: the PBS job id, else the torchrun id, else time."""
    jobid = re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ.get("PBS_JOBID", "").split(".")[0])
    if jobid:
        return f"job{jobid}"[:MAX_NAME]
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if elastic and elastic != "none":
        return "tr-" + re.sub(r"[^A-Za-z0-9_.-]", "_", elastic)[:MAX_NAME - 3]
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
            from .gpu import versions

            devices = {"cuda": torch.cuda.device_count(),
                       "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                       **versions()}  # torch, CUDA, cuDNN, NCCL and driver versions
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
        """Append one metrics record (a line of metrics.jsonl), flushed so a killed job keeps it.

        A full disk raises DiskFull and leaves no torn line behind (tunekit.atomic.append_line).
        """
        if not self.writer:
            return
        atomic.append_line(self.dir / "metrics.jsonl", json.dumps(metrics, sort_keys=True, default=_jsonable))

    def hold(self) -> None:
        """Make sure this process (or the one that launched it) is the run's one writer (rank 0 only)."""
        if self.writer:
            runlock.acquire(self.dir)

    def close(self) -> None:
        """Release the run's lock (the run stays as it is; reopening it resumes)."""
        if self.writer:
            runlock.release(self.dir)

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
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            atomic.write_bytes(target, buf.getvalue())
        return target

    def finish(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write summary.json (atomically), release the run's lock, and return the summary."""
        data = dict(summary)
        data.setdefault("finished", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        self.write_json("summary.json", data)
        self.close()
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


# What a start writes before anything is produced; a run holding nothing else is a failed start.
_START_FILES = frozenset({"params.json", "env.json", "launches.jsonl", runlock.LOCK_FILE, "metrics.jsonl",
                          "train_result.json", "kernel.log"})  # kernel.log: the runner's kernel stderr
_START_DIRS = frozenset({"job", "wandb", "checkpoints"})


def results_in(run_dir: str | os.PathLike) -> list[str]:
    """What a run directory holds beyond its start records: results, complete checkpoints, unknown files.

    Start records are params.json, env.json, launches.jsonl, metrics.jsonl, train_result.json, the
    executed notebook, job files, wandb's folder, temp files and `checkpoints/` while it holds no
    complete checkpoint (only complete ones are named `step_<8 digits>`, see train/checkpoint.py).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in sorted(run_dir.iterdir()):
        n = p.name
        if n in _START_FILES or n.endswith(".ipynb") or (n.startswith(".") and ".tmp" in n):
            continue
        if n == "checkpoints" and p.is_dir():
            found += [f"checkpoints/{c.name}" for c in sorted(p.iterdir()) if re.match(r"^step_\d{8}$", c.name)]
            continue
        if n in _START_DIRS and p.is_dir():
            continue
        found.append(n)
    return found


@dataclass(frozen=True)
class StartCheck:
    """The outcome of `check_start`: where the run goes and how it relates to what is there."""

    path: Path
    name: str
    resumed: bool                 # the run exists with the same parameters
    replaces: list[str] = field(default_factory=list)  # differing params of a failed start it replaces


def _as_dict(params) -> dict[str, Any]:
    return params.to_dict() if hasattr(params, "to_dict") else dict(params)


def _diff(params, old: Mapping[str, Any]) -> list[str]:
    if hasattr(params, "resume_diff"):
        return params.resume_diff(old)
    new = _as_dict(params)  # a plain dict of parameters: every one of them must match
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def run_path(stage: str, run_name: str, runs_dir: str = "") -> Path:
    """`<runs root>/<stage>/<run_name>` for a valid run name."""
    root = resolve(runs_dir) if runs_dir else runs_root()
    return root / stage / check_run_name(run_name)


def check_start(stage: str, params, run_name: str = "", runs_dir: str = "", *, check_lock: bool = True) -> StartCheck:
    """Every check a start makes, writing nothing: the run name, an existing run's params, its lock.

    Raises UserError when the name is not a plain folder name, when the run exists with different
    parameters and holds results, or (with check_lock) when another process is writing it.
    """
    fingerprint = params.fingerprint() if hasattr(params, "fingerprint") else ""
    name = check_run_name(run_name or default_run_name(stage, fingerprint))
    path = run_path(stage, name, runs_dir)
    params_file = path / "params.json"
    resumed, replaces = False, []
    if params_file.exists():
        try:
            old = json.loads(params_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{params_file}: unreadable ({exc}) (restore it, or use another run_name)") from None
        diff = _diff(params, old)
        if not diff:
            resumed = True
        else:
            held = results_in(path)
            detail = "; ".join(diff[:6])
            if held:
                raise UserError(
                    f"{path}: this run already exists with different parameters ({detail}) and holds "
                    f"results ({', '.join(held[:3])}) (choose a new run_name, or delete the folder to start over)")
            replaces = diff
    if check_lock:
        runlock.check_free(path)
    return StartCheck(path, name, resumed, replaces)


def _clear_failed_start(path: Path, replaces: list[str]) -> None:
    """Remove what a failed start left that would be mistaken for the new attempt's records."""
    for name in ("metrics.jsonl", "train_result.json"):
        (path / name).unlink(missing_ok=True)
    shutil.rmtree(path / "checkpoints", ignore_errors=True)  # partial checkpoints only (results_in)
    print(f"note: {path} held only a failed start with other parameters ({'; '.join(replaces[:3])}); "
          "this attempt replaces it (launches.jsonl keeps its record)", flush=True)


def record_launch(path: Path, env: Mapping[str, Any], *, resumed: bool, fingerprint: str = "",
                  replaces: list[str] | None = None) -> dict[str, Any]:
    """Append this launch (attempt) to the run's launches.jsonl and return the entry."""
    log = path / "launches.jsonl"
    n = sum(1 for line in log.read_text(encoding="utf-8").splitlines() if line.strip()) if log.exists() else 0
    entry = {"launch": n + 1, "started": env.get("started"), "host": env.get("host"), "pid": os.getpid(),
             "pbs_job_id": (env.get("scheduler") or {}).get("PBS_JOBID"), "resumed": resumed,
             "git": env.get("git"), "params_fingerprint": fingerprint or None,
             "process": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None,
             "python": env.get("python"), "packages": env.get("packages"), "devices": env.get("devices")}
    if replaces:
        entry["replaces_failed_start"] = replaces
    atomic.append_line(log, json.dumps(entry, sort_keys=True, default=str))
    return entry


def start_run(stage: str, params, run_name: str = "", runs_dir: str = "") -> Run:
    """Create (or reopen, to resume) `runs/<stage>/<run_name>/` and record params and environment.

    Everything is checked (`check_start`) before the first write; the writer (rank 0) then holds
    the run's lock until `Run.finish`/`Run.close` or its exit, and appends this launch to
    launches.jsonl.

    Args:
        stage: the notebook stage, e.g. "sft"; the folder under the runs root.
        params: a NotebookParams (or a plain dict) to store as params.json.
        run_name: the folder name; empty = `default_run_name`.
        runs_dir: the runs root; empty = $TUNEKIT_RUNS_DIR or <repo>/runs.
    """
    check = check_start(stage, params, run_name, runs_dir)
    path = check.path
    writer = _rank() == 0
    if not writer:
        return Run(path, stage, check.resumed, writer)
    path.mkdir(parents=True, exist_ok=True)
    runlock.acquire(path)
    try:
        check = check_start(stage, params, check.name, runs_dir)  # again, now that nobody else can start it
        if check.replaces:
            _clear_failed_start(path, check.replaces)
        atomic.write_json(path / "params.json", _as_dict(params))
        env = environment_snapshot()
        env["resumed"] = check.resumed
        atomic.write_json(path / "env.json", env)
        record_launch(path, env, resumed=check.resumed, replaces=check.replaces,
                      fingerprint=params.fingerprint() if hasattr(params, "fingerprint") else "")
    except BaseException:
        runlock.release(path)
        raise
    run = Run(path, stage, check.resumed, writer)
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
