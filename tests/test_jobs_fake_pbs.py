"""Jobs executed end to end by the fake PBS (tests/fake_pbs): the rendered script really runs.

The stand-in notebooks (tests/fake_pbs/pbs_helpers.py) keep these independent of the real notebooks;
tests/test_jobs_sft.py runs the real SFT notebook the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_pbs"))
from pbs_helpers import SHIM_DIR, install_fake_pbs, register_stand_ins  # noqa: E402

from tunekit.errors import UserError  # noqa: E402
from tunekit.jobs import cancel_job, job_status, submit_job  # noqa: E402
from tunekit.jobs import chain as chainmod  # noqa: E402
from tunekit.jobs.spec import JobRequest, plan_job  # noqa: E402
from tunekit.jobs.submit import submit_plan  # noqa: E402
from tunekit.paths import repo_root  # noqa: E402

HOSTILE = "a b'c\"d $(touch PWNED) `touch PWNED2`; touch PWNED3 & \\ $HOME * ~"
SECRET = "wandb-secret-" + uuid.uuid4().hex


@pytest.fixture
def fake(tmp_path, monkeypatch, runs_dir):
    register_stand_ins(monkeypatch, tmp_path / "nbs")
    for name in ("WANDB_API_KEY", "HF_TOKEN", "TUNEKIT_ABCI_GROUP"):
        monkeypatch.delenv(name, raising=False)
    pbs = install_fake_pbs(monkeypatch, tmp_path / "pbs")
    yield pbs
    # The jobs write their logs into <repo>/logs (gitignored), as on ABCI; remove this test's.
    for job in (tmp_path / "pbs" / "jobs").glob("*.json"):
        name = json.loads(job.read_text())["name"]
        for log in (repo_root() / "logs").glob(f"{name}-*"):
            log.unlink()


def _pwned(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.glob("**/PWNED*")] + \
        [p for p in (repo_root(), Path.home()) for p in p.glob("PWNED*")]


def test_a_job_runs_its_notebook_with_hostile_values_and_secrets_intact(fake, tmp_path, monkeypatch):
    runs = tmp_path / ("runs " + HOSTILE.replace("/", "_"))
    monkeypatch.setenv("TUNEKIT_RUNS_DIR", str(runs))
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    run_name = "r-hostile"  # run names are plain folder names; every other value is hostile
    note = HOSTILE + "\nline two"
    t0 = time.time()
    sub = submit_job("97_report", group="gab50000", queue="rt_HC", walltime="00:10:00",
                     run_name=run_name, params={"note": note, "count": 7},
                     env={"JOB_TEST_VALUE": HOSTILE})
    [job] = fake.wait(sub.job_ids)
    run_dir = runs / "dummy" / run_name
    assert sub.run_dir == run_dir and job["exit_status"] == 0, job

    seen = json.loads((run_dir / "seen.json").read_text())
    assert seen["note"] == note and seen["count"] == 7 and seen["extra_env"] == HOSTILE
    assert seen["run_dir"] == str(run_dir) and seen["pbs_jobid"] == sub.job_ids[0]
    assert seen["wandb_key_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    local = fake.home / "local" / sub.job_ids[0].split(".")[0]
    assert seen["tmpdir"] == f"{local}/tmp" and seen["hf_home"] == f"{local}/hf"
    assert seen["cwd"] == str(repo_root())
    # The job exports when PBS will kill it: its start + walltime - 60 s.
    assert t0 + 540 - 5 <= float(seen["deadline"]) <= time.time() + 540 + 5
    assert not _pwned(tmp_path)

    job_dir = sub.job_dir
    assert (run_dir / "97_report.ipynb").is_file() and (job_dir / "job.sh").is_file()
    record = json.loads((job_dir / "submission.json").read_text())
    assert record["job_ids"] == sub.job_ids and record["secrets_passed"] == ["WANDB_API_KEY"]
    assert record["commands"][0].startswith(f"cd {repo_root()} && qsub -v ")
    logs = sorted((repo_root() / "logs").glob(f"{job['name']}-*"))
    out = next(p for p in logs if p.name.endswith(f"-{sub.job_ids[0].split('.')[0]}.out"))
    assert "[chain] link 1/1: done (exit code 0)" in out.read_text()
    assert "\n[gpu] torch " in out.read_text()  # every job starts with the torch/CUDA/NCCL/driver line
    # The secret reached the job but no file the kit wrote (the fake scheduler's own job store,
    # like PBS's Variable_List, is the only place that holds it).
    for path in [*run_dir.rglob("*"), *logs]:
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path

    [row] = job_status(run_dir)
    assert (row["pbs_state"], row["exit_status"], row["job_state"], row["run_done"]) == ("F", 0, "done", True)


@pytest.mark.slow
def test_chain_resumes_after_a_walltime_kill_and_a_deadline_stop_then_skips(fake, runs_dir, monkeypatch):
    # Walltime 4 min scaled by 1/4: the first job (sleeping 300 s) is killed after 60 s, as PBS
    # would; the others finish well inside the limit.
    monkeypatch.setenv("FAKE_PBS_TIME_SCALE", "0.25")
    sub = submit_job("98_fake_train", group="gab50000", queue="rt_HC", walltime="00:04:00",
                     run_name="chain", chain=4,
                     params={"steps_per_job": 2, "total_steps": 5, "sleep_s": 300.0})
    jobs = fake.wait(sub.job_ids, timeout=600)
    run_dir = runs_dir / "sft" / "chain"
    links = [json.loads((sub.job_dir / f"link-{k}.json").read_text()) for k in range(1, 5)]
    assert [link["state"] for link in links] == ["running", "incomplete", "done", "skipped"]
    assert [j["exit_status"] for j in jobs] == [271, 0, 0, 0]
    assert "killed before it finished" in links[1]["note"]
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    # Link 1 saved step 2 and was killed before recording its attempt; link 2 resumed from it.
    assert attempts == [{"from": 2, "to": 4, "status": "deadline"},
                        {"from": 4, "to": 5, "status": "completed"}]
    assert json.loads((run_dir / "train_result.json").read_text())["status"] == "completed"
    # Each job keeps the executed notebook of the job before it.
    assert (sub.job_dir / "98_fake_train.link1.ipynb").is_file()
    assert (sub.job_dir / "98_fake_train.link2.ipynb").is_file()
    rows = job_status("chain")
    assert [r["job_state"] for r in rows] == ["killed", "incomplete", "done", "skipped"]
    assert all(r["run_done"] for r in rows)


@pytest.mark.slow
def test_chain_stops_after_a_failed_job(fake, runs_dir):
    sub = submit_job("98_fake_train", group="gab50000", queue="rt_HC", walltime="00:10:00",
                     run_name="broken", chain=3, params={"fail": True})
    jobs = fake.wait(sub.job_ids, timeout=300)
    states = [json.loads((sub.job_dir / f"link-{k}.json").read_text())["state"] for k in (1, 2, 3)]
    assert states == ["failed", "stopped", "stopped"]
    # The notebook runner exits 2 for a failing cell (the kit's error code); the gate stops with 1.
    assert [j["exit_status"] for j in jobs] == [2, 1, 1]
    assert not (runs_dir / "sft" / "broken" / "progress.json").exists()


def test_cancel_deletes_the_running_and_queued_jobs(fake, runs_dir):
    sub = submit_job("98_fake_train", group="gab50000", queue="rt_HC", walltime="00:10:00",
                     run_name="cancel", chain=2, params={"sleep_s": 300.0})
    deadline = time.time() + 120
    # Running = PBS says R AND the job script has recorded its start (on a busy machine the
    # script takes a moment after PBS starts it; cancelled before that, it never started).
    while fake.job(sub.job_ids[0])["state"] != "R" or (chainmod.read_link(sub.job_dir, 1) or {}).get("state") \
            != chainmod.RUNNING:
        assert time.time() < deadline, "the first job never started"
        time.sleep(0.3)
    # A run with queued or running jobs cannot be submitted again by accident.
    again = plan_job(JobRequest(notebook="98_fake_train", group="gab50000", queue="rt_HC",
                                walltime="00:10:00", run_name="cancel", params={"sleep_s": 300.0}))
    with pytest.raises(UserError, match="still queued or running"):
        submit_plan(again)
    assert cancel_job("cancel") == {sub.job_ids[0]: "deleted", sub.job_ids[1]: "deleted"}
    jobs = fake.wait(sub.job_ids, timeout=60)
    assert all(j["state"] == "F" for j in jobs)
    rows = job_status("cancel")
    assert [(r["pbs_state"], r["job_state"]) for r in rows] == [("F", "killed"), ("F", "not started")]
    assert cancel_job("cancel") == {jid: "already finished" for jid in sub.job_ids}


def test_fake_mpirun_places_ranks_like_openmpi(tmp_path):
    # One os.write per rank: the ranks share stdout, and print() may split a line in two writes.
    code = ("import os; e = os.environ; os.write(1, ' '.join([e['OMPI_COMM_WORLD_RANK'], "
            "e['OMPI_COMM_WORLD_LOCAL_RANK'], e['OMPI_COMM_WORLD_SIZE'], e['FAKE_MPI_HOST']]).encode() + b'\\n')")
    out = subprocess.run([str(SHIM_DIR / "mpirun"), "-np", "4", "--npernode", "2", "--host",
                          "h1:2,h2:2", "-x", "PATH", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:-1]) == ["0 0 4 h1", "1 1 4 h1", "2 0 4 h2", "3 1 4 h2"]
    failing = subprocess.run([str(SHIM_DIR / "mpirun"), "-np", "2", sys.executable, "-c",
                              "import os, sys; sys.exit(int(os.environ['OMPI_COMM_WORLD_RANK']) * 3)"],
                             capture_output=True, text=True, timeout=60)
    assert failing.returncode == 3


def test_fake_qsub_refuses_like_abci(fake, tmp_path):
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/bash\n#PBS -q rt_HG\n#PBS -l select=2\ntrue\n")
    out = subprocess.run(["qsub", "-P", "g", str(script)], capture_output=True, text=True,
                         env=os.environ.copy())
    assert out.returncode != 0 and "select=1 only" in out.stderr
