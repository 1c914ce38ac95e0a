"""The kit's real notebooks as PBS jobs under the fake PBS (tests/fake_pbs), with the shipped params.

- a real single-process notebook (10_inspect_data) with its tiny params file;
- the tiny SFT notebook with 2 training processes on 2 simulated nodes (one mpirun across the
  hosts of $PBS_NODEFILE, started by the notebook itself);
- a chain whose first job stops at its deadline and whose next job resumes the run;
- a training job deleted (qdel) while it trains: it saves a checkpoint and records the stop.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_pbs"))
from pbs_helpers import fake_pbs_with_log_cleanup  # noqa: E402

from tunekit.jobs import job_status, submit_job  # noqa: E402
from tunekit.notebooks import spec  # noqa: E402
from tunekit.paths import repo_root  # noqa: E402
from tunekit.runs import read_metrics  # noqa: E402

PARAMS = repo_root() / "job_templates" / "params" / "tiny"


@pytest.fixture
def fake(tmp_path, monkeypatch, runs_dir):
    # a job's logs are <name>-<id>.out/.err
    yield from fake_pbs_with_log_cleanup(monkeypatch, tmp_path / "pbs", "{name}-*")


def _log(fake, job_id: str, suffix: str) -> str:
    name = fake.job(job_id)["name"]
    path = repo_root() / "logs" / f"{name}-{job_id.split('.')[0]}.{suffix}"
    return path.read_text(errors="replace") if path.exists() else ""


def _why(fake, job_id: str) -> str:
    """The error lines of a job's logs (the tail alone is papermill's own traceback)."""
    text = _log(fake, job_id, "out") + _log(fake, job_id, "err")
    errors = [line for line in text.splitlines() if "Error" in line or "error:" in line]
    return "\n".join(errors[-12:]) or text[-3000:]


def _need(notebook: str):
    nb = spec(notebook)
    if not nb.exists():
        pytest.skip(f"notebooks/{nb.name}.ipynb is not built yet")
    return nb


@pytest.mark.slow
def test_inspect_data_notebook_runs_as_a_job_with_its_params_file(fake, runs_dir):
    _need("10_inspect_data")
    sub = submit_job("inspect_data", params_file=str(PARAMS / "inspect_data" / "default.yaml"),
                     group="gab50000", queue="rt_HC", walltime="00:20:00", run_name="job-e2e")
    [job] = fake.wait(sub.job_ids, timeout=900)
    assert job["exit_status"] == 0, _why(fake, sub.job_ids[0])
    run_dir = runs_dir / "inspect_data" / "job-e2e"
    assert (run_dir / "10_inspect_data.ipynb").is_file() and (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "params.json").read_text())["run_name"] == "job-e2e"
    assert json.loads((run_dir / "env.json").read_text())["scheduler"]["PBS_JOBID"] == sub.job_ids[0]
    [row] = job_status(run_dir)
    assert (row["pbs_state"], row["job_state"]) == ("F", "done")


@pytest.mark.slow
def test_tiny_sft_trains_with_two_processes_on_two_fake_nodes(fake, runs_dir):
    _need("30_sft")
    sub = submit_job("sft", params_file=str(PARAMS / "sft" / "default.yaml"), group="gab50000",
                     queue="rt_HF", nodes=2, nproc_per_node=1, walltime="00:30:00",
                     run_name="two-nodes", params={"max_steps": 12})
    [job] = fake.wait(sub.job_ids, timeout=1500)
    out = _log(fake, sub.job_ids[0], "out")
    assert job["exit_status"] == 0, _why(fake, sub.job_ids[0])
    run_dir = runs_dir / "sft" / "two-nodes"
    result = json.loads((run_dir / "train_result.json").read_text())
    assert (result["status"], result["step"], result["world_size"]) == ("completed", 12, 2)
    assert (run_dir / "hf_model" / "config.json").is_file()
    assert (run_dir / "30_sft.ipynb").is_file()
    assert "2 process(es): 1 per node x 2 node(s) (mpirun)" in out
    [row] = job_status(run_dir)
    assert (row["job_state"], row["run_done"]) == ("done", True)


@pytest.mark.slow
def test_sft_chain_first_job_stops_at_its_deadline_and_the_next_resumes(fake, runs_dir):
    _need("30_sft")
    # Each job trains for at most 30 s (the engine's own max_train_minutes limit: the same stop
    # path as the PBS walltime deadline, i.e. checkpoint, train_result "deadline", clean exit).
    # 20000 steps would need ~700 tiny steps/s to finish in that time (a fast core does ~10), so
    # both jobs end "incomplete" on any machine, and the second must continue from the first.
    sub = submit_job("sft", params_file=str(PARAMS / "sft" / "default.yaml"), group="gab50000",
                     queue="rt_HC", nproc_per_node=1, walltime="00:30:00", run_name="chained",
                     chain=2, params={"max_train_minutes": 0.5, "max_steps": 20000})
    jobs = fake.wait(sub.job_ids, timeout=1800)
    assert [j["exit_status"] for j in jobs] == [0, 0], _why(fake, sub.job_ids[0]) + _why(fake, sub.job_ids[1])
    links = [json.loads((sub.job_dir / f"link-{k}.json").read_text()) for k in (1, 2)]
    assert [link["state"] for link in links] == ["incomplete", "incomplete"]
    assert "resuming" in links[1]["note"]
    run_dir = runs_dir / "sft" / "chained"
    result = json.loads((run_dir / "train_result.json").read_text())
    assert result["status"] == "deadline" and 0 < result["resumed_from"] < result["step"] < 20000
    # The second job's metrics continue the first job's steps without a gap or a restart.
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == list(range(1, result["step"] + 1))
    assert "resumed from step_" in _log(fake, sub.job_ids[1], "out") + _log(fake, sub.job_ids[1], "err")


@pytest.mark.slow
def test_qdel_of_a_training_job_saves_a_checkpoint_and_records_the_stop(fake, runs_dir, monkeypatch):
    """PBS signals the job script's session only (FAKE_PBS_KILL_SCOPE=session, as MoM kills by
    session id): the kernel runs in its own session, so the stop must travel script -> runner ->
    kernel. Training saves a checkpoint, the link is resumable, the executed notebook is whole."""
    import nbformat

    from tunekit.train.checkpoint import list_checkpoints

    _need("30_sft")
    monkeypatch.setenv("FAKE_PBS_KILL_SCOPE", "session")
    monkeypatch.setenv("FAKE_PBS_KILL_DELAY", "120")  # PBS's grace before SIGKILL (the site's kill_delay)
    sub = submit_job("sft", params_file=str(PARAMS / "sft" / "default.yaml"), group="gab50000",
                     queue="rt_HC", nproc_per_node=1, walltime="00:30:00", run_name="qdel",
                     params={"max_steps": 20000, "save_interval": 0, "val_interval": 0})
    run_dir = runs_dir / "sft" / "qdel"
    end = time.time() + 900
    while not [r for r in read_metrics(run_dir) if "loss" in r]:
        assert fake.job(sub.job_ids[0])["state"] != "F" and time.time() < end, _why(fake, sub.job_ids[0])
        time.sleep(0.3)
    qdel = subprocess.run(["qdel", sub.job_ids[0]], capture_output=True, text=True, timeout=200)
    assert qdel.returncode == 0, qdel.stderr
    fake.wait(sub.job_ids, timeout=600)
    out = _log(fake, sub.job_ids[0], "out") + _log(fake, sub.job_ids[0], "err")
    assert "[job] SIGTERM received: passing it to the notebook" in out
    assert "training stopped after step" in out, _why(fake, sub.job_ids[0])
    link = json.loads((sub.job_dir / "link-1.json").read_text())
    assert (link["state"], link["rc"]) == ("incomplete", 143) and "stopped by SIG" in link["note"], link
    result = json.loads((run_dir / "train_result.json").read_text())
    assert result["status"] == "interrupted" and 1 <= result["step"] < 20000
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [result["step"]]
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, result["step"] + 1))
    nb = nbformat.read(run_dir / "30_sft.ipynb", as_version=4)
    assert any(o.get("ename") == "Interrupted" for c in nb.cells for o in c.get("outputs", []))
