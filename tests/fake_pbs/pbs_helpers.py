"""Test support for the job tests: stand-in notebooks registered in tunekit.notebooks, and the fake PBS.

Stand-in notebooks keep the job plumbing tests fast and independent of the real notebooks: a
"report" notebook (stage `dummy`, one process) and a "training" notebook (stage `sft`) that
imitates the engine's resume contract: progress is kept in the run directory, each attempt adds
`steps_per_job` steps and writes train_result.json with status "deadline" or "completed".
"""
from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nbformat

from tunekit import notebooks
from tunekit.params import NotebookParams

SHIM_DIR = Path(__file__).resolve().parent


class ReportParams(NotebookParams):
    """Parameters of the stand-in report notebook."""

    note: str = "hello"
    count: int = 1
    run_name: str = ""
    runs_dir: str = ""


class FakeTrainParams(NotebookParams):
    """Parameters of the stand-in training notebook (batch fields feed the layout check)."""

    steps_per_job: int = 2
    total_steps: int = 5
    fail: bool = False
    sleep_s: float = 0.0
    global_batch_size: int = 16
    micro_batch_size: int = 1
    max_seq_length: int = 64
    nproc_per_node: int = 1
    run_name: str = ""
    runs_dir: str = ""

    def check_layout(self, world_size: int, max_positions: int | None) -> None:
        """The engine's layout check, as the real training params have it."""
        from tunekit.train.plan import check_layout

        check_layout(self, world_size, max_positions)


REPORT_BODY = '''\
import hashlib, json, os
from tunekit.runs import start_run
run = start_run("dummy", {"note": note, "count": count, "run_name": run_name, "runs_dir": runs_dir},
                run_name, runs_dir)
seen = {"note": note, "count": count, "run_dir": str(run.dir),
        # A hash, never the secret itself: the test checks the value arrived without writing it.
        "wandb_key_sha256": hashlib.sha256(os.environ.get("WANDB_API_KEY", "").encode()).hexdigest(),
        "extra_env": os.environ.get("JOB_TEST_VALUE"), "pbs_jobid": os.environ.get("PBS_JOBID"),
        "tmpdir": os.environ.get("TMPDIR"), "hf_home": os.environ.get("HF_HOME"),
        "deadline": os.environ.get("TUNEKIT_DEADLINE"), "cwd": os.getcwd()}
run.write_json("seen.json", seen)
run.finish({"count": count})
print("report done")
'''

TRAIN_BODY = '''\
import json, time
from pathlib import Path
from tunekit.runs import start_run
from tunekit import atomic
run = start_run("sft", {"steps_per_job": steps_per_job, "total_steps": total_steps, "fail": fail,
                        "sleep_s": sleep_s, "global_batch_size": global_batch_size,
                        "micro_batch_size": micro_batch_size, "max_seq_length": max_seq_length,
                        "nproc_per_node": nproc_per_node, "run_name": run_name, "runs_dir": runs_dir},
                run_name, runs_dir)
progress = run.path("progress.json")
step = json.loads(progress.read_text())["step"] if progress.exists() else 0
if fail:
    raise RuntimeError("simulated failure")
new = min(total_steps, step + steps_per_job)
atomic.write_json(progress, {"step": new})          # the "checkpoint"
time.sleep(sleep_s if step == 0 else 0)              # a long first attempt the walltime cuts
status = "completed" if new >= total_steps else "deadline"
atomic.write_json(run.path("train_result.json"), {"status": status, "step": new, "resumed_from": step})
with open(run.path("attempts.jsonl"), "a") as f:
    f.write(json.dumps({"from": step, "to": new, "status": status}) + "\\n")
print(f"{status}: step {new}/{total_steps} (from {step})")
'''

class FakeEvalParams(NotebookParams):
    """Parameters of the stand-in evaluation notebook (stage evaluate, takes run dirs as models)."""

    models: list[str] = ["tiny"]
    run_name: str = ""
    runs_dir: str = ""


EVAL_BODY = '''\
import json, os
from pathlib import Path
from tunekit.runs import start_run
run = start_run("evaluate", {"models": models, "run_name": run_name, "runs_dir": runs_dir}, run_name, runs_dir)
rows = []
for m in models:
    progress = Path(m) / "progress.json"
    step = json.loads(progress.read_text())["step"] if progress.exists() else 0
    rows.append({"model": Path(m).name, "accuracy": step / 10})
run.write_json("seen.json", {"pbs_jobid": os.environ.get("PBS_JOBID"),
                             "array_index": os.environ.get("PBS_ARRAY_INDEX")})
run.finish({"comparison": rows})
'''

EVAL_PARAMS = 'models: list = ["tiny"]\nrun_name: str = ""\nruns_dir: str = ""'
REPORT_PARAMS = 'note: str = "hello"  # free text\ncount: int = 1\nrun_name: str = ""\nruns_dir: str = ""'
TRAIN_PARAMS = ("steps_per_job: int = 2\ntotal_steps: int = 5\nfail: bool = False\nsleep_s: float = 0.0\n"
                "global_batch_size: int = 16\nmicro_batch_size: int = 1\nmax_seq_length: int = 64\n"
                "nproc_per_node: int = 1\nrun_name: str = \"\"\nruns_dir: str = \"\"")


@dataclass(frozen=True)
class LocalNotebook(notebooks.NotebookSpec):
    """A registry entry for a notebook file outside notebooks/, with an in-process params model."""

    path: str = ""
    model: Any = None

    @property
    def ipynb(self) -> Path:
        return Path(self.path)

    def params_model(self):
        return self.model


def write_notebook(path: Path, params_src: str, body: str) -> Path:
    """A minimal notebook: a `parameters` cell and one body cell, tunekit kernel."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "tunekit", "display_name": "tunekit", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def register_stand_ins(monkeypatch, folder: Path) -> None:
    """Add `97_report` (stage dummy), `98_fake_train` (stage sft) and `99_fake_eval` (stage evaluate)."""
    report = write_notebook(folder / "97_report.ipynb", REPORT_PARAMS, REPORT_BODY)
    train = write_notebook(folder / "98_fake_train.ipynb", TRAIN_PARAMS, TRAIN_BODY)
    evaluate = write_notebook(folder / "99_fake_eval.ipynb", EVAL_PARAMS, EVAL_BODY)
    extra = [LocalNotebook("97_report", "dummy", "-", str(report), ReportParams),
             LocalNotebook("98_fake_train", "sft", "-", str(train), FakeTrainParams),
             LocalNotebook("99_fake_eval", "evaluate", "-", str(evaluate), FakeEvalParams)]
    monkeypatch.setattr(notebooks, "NOTEBOOKS", [*extra, *notebooks.NOTEBOOKS])


class FakePBS:
    """Handle on the fake PBS of one test: its state folder and helpers to wait for jobs."""

    def __init__(self, home: Path):
        self.home = home

    def job(self, job_id: str) -> dict[str, Any]:
        return json.loads((self.home / "jobs" / f"{job_id.split('.')[0].split('[')[0]}.json").read_text())

    def wait(self, job_ids, timeout: float = 180.0) -> list[dict[str, Any]]:
        """Block until every job is finished (state F); returns their records."""
        end = time.time() + timeout
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        while True:
            jobs = [self.job(j) for j in ids]
            if all(j["state"] == "F" for j in jobs):
                return jobs
            if time.time() > end:
                raise TimeoutError(f"fake PBS jobs still running: {[j['id'] for j in jobs]}")
            time.sleep(0.3)

    def count(self) -> int:
        return len(list((self.home / "jobs").glob("*.json")))


def install_fake_pbs(monkeypatch, home: Path) -> FakePBS:
    """Put the fake qsub/qstat/qdel/mpirun first on PATH with a private state folder."""
    for tool in ("qsub", "qstat", "qdel", "mpirun"):
        path = SHIM_DIR / tool
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("FAKE_PBS_HOME", str(home))
    monkeypatch.setenv("PATH", f"{SHIM_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    # The job starts from a nearly empty environment, as on PBS; tests stay offline in it too.
    monkeypatch.setenv("FAKE_PBS_PASS_ENV", "HF_HUB_OFFLINE,TRANSFORMERS_OFFLINE")
    return FakePBS(home)


def fake_pbs_with_log_cleanup(monkeypatch, home: Path, log_glob: str) -> Iterator[FakePBS]:
    """`install_fake_pbs` for a pytest fixture (yield from it): the job environment holds no
    secrets or ABCI group, and afterwards the logs of this fake's jobs (`log_glob`, formatted
    with each job's name) are removed from the repository's logs/ folder, and only those: tests
    running in parallel keep theirs."""
    from tunekit.paths import repo_root

    for name in ("WANDB_API_KEY", "HF_TOKEN", "TUNEKIT_ABCI_GROUP"):
        monkeypatch.delenv(name, raising=False)
    yield install_fake_pbs(monkeypatch, home)
    for job in (home / "jobs").glob("*.json"):
        for log in (repo_root() / "logs").glob(log_glob.format(name=json.loads(job.read_text())["name"])):
            log.unlink()
