"""Sweeps (tunekit.jobs.sweep): the grid, point names, validation of every point, and array jobs run
end to end by the fake PBS (tests/fake_pbs: `qsub -J`, PBS_ARRAY_INDEX, afterok, `qstat -t`)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_pbs"))
from pbs_helpers import install_fake_pbs, register_stand_ins  # noqa: E402

from tunekit.errors import UserError  # noqa: E402
from tunekit.jobs import pbs  # noqa: E402
from tunekit.jobs.sweep import (SweepRequest, format_sweep_status, grid_points, parse_grid,  # noqa: E402
                                point_run_name, split_values, submit_sweep, sweep_status)
from tunekit.paths import repo_root  # noqa: E402
from tunekit.runs import check_run_name  # noqa: E402


@pytest.fixture
def fake(tmp_path, monkeypatch, runs_dir):
    register_stand_ins(monkeypatch, tmp_path / "nbs")
    for name in ("WANDB_API_KEY", "HF_TOKEN", "TUNEKIT_ABCI_GROUP"):
        monkeypatch.delenv(name, raising=False)
    fake_pbs = install_fake_pbs(monkeypatch, tmp_path / "pbs")
    yield fake_pbs
    for job in (tmp_path / "pbs" / "jobs").glob("*.json"):
        name = json.loads(job.read_text())["name"]
        for log in (repo_root() / "logs").glob(f"{name}*"):
            log.unlink()


def _logs(fake, job_id: str) -> str:
    """What the jobs of this array (or job) wrote into <repo>/logs (for failure messages)."""
    name = fake.job(job_id)["name"]
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted((repo_root() / "logs").glob(f"{name}*")))


def _req(**kw) -> SweepRequest:
    base = dict(notebook="98_fake_train", grid=parse_grid(["total_steps=2,4", "steps_per_job=2,3"]),
                name="g1", group="gab50000", queue="rt_HC", walltime="00:10:00", nproc_per_node=1)
    base.update(kw)
    return SweepRequest(**base)


def test_grid_values_split_at_top_level_commas_and_points_are_every_combination():
    assert split_values("1e-5, 2e-5") == ["1e-5", "2e-5"]
    assert split_values("[a, b],[c]") == ["[a, b]", "[c]"]
    assert split_values("'x,y',z") == ["'x,y'", "z"]
    grid = parse_grid(["lr=1e-5,2e-5", "epochs=1,2,3"])
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"lr": "1e-5", "epochs": "1"}
    assert points[5] == {"lr": "2e-5", "epochs": "3"}
    for bad, why in (["lr"], "NAME=V1"), (["lr=1,,2"], "empty value"), (["lr=1,1"], "repeated"), \
            (["lr=1", "lr=2"], "given twice"), ([], "at least one"):
        with pytest.raises(UserError, match=why):
            parse_grid(bad)


def test_point_names_are_readable_valid_and_unique_even_where_cleaning_makes_them_equal():
    a = point_run_name("g", {"data": "x/y", "lr": "1e-5"})
    b = point_run_name("g", {"data": "x_y", "lr": "1e-5"})
    assert a.startswith("g-datax_y-lr1e-5-") and b.startswith("g-datax_y-lr1e-5-") and a != b
    # Another sweep whose name equals this sweep's name plus a readable part: still different.
    assert point_run_name("g-datax_y", {"lr": "1e-5"}) != point_run_name("g", {"data": "x_y", "lr": "1e-5"})
    long = point_run_name("s" * 90, {"p": "v" * 50})
    assert check_run_name(long) == long and len(long) <= 100
    assert point_run_name("g", {"lr": "1e-5"}) == point_run_name("g", {"lr": "1e-5"})  # stable for re-submission


def test_every_point_is_validated_before_anything_is_written_or_submitted(fake, runs_dir):
    with pytest.raises(UserError) as exc:
        submit_sweep(_req(grid=parse_grid(["total_steps=2,two,x"])))
    msg = str(exc.value)
    assert msg.startswith("sweep point 1 (total_steps=two): ") and "nothing was submitted" in msg
    assert msg.count("\n") == 0
    assert fake.count() == 0 and not (runs_dir / "sweeps").exists() and not (runs_dir / "sft").exists()
    with pytest.raises(UserError, match="--then 97_report: a follow-up must take"):
        submit_sweep(_req(then="97_report"))


def test_dry_run_shows_one_array_script_that_passes_shellcheck_and_writes_nothing(fake, runs_dir, tmp_path):
    sub = submit_sweep(_req(then="99_fake_eval", max_running=2), dry_run=True)
    assert fake.count() == 0
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    script = sub.scripts["main"]
    assert script.count('case "${PBS_ARRAY_INDEX:-0}" in') == 1
    for point in sub.points:
        assert f"RUN_DIR={point.plan.run_dir}" in script
    assert "-J 0-3%2" in sub.commands[1] and sub.commands[1].startswith("ARRAY=$(qsub")
    assert 'depend=afterok:"$ARRAY"' in sub.commands[2] and "-J 0-3%2" in sub.commands[2]
    for key, text in sub.scripts.items():
        path = tmp_path / f"{key}.sh"
        path.write_text(text)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        if shutil.which("shellcheck"):
            lint = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
            assert lint.returncode == 0, lint.stdout


def test_array_indices_select_each_point_and_resubmission_queues_only_points_not_done(fake, runs_dir):
    # steps_per_job 2 of total_steps 4 stops at its "deadline" after one job: that point is not done.
    sub = submit_sweep(_req(grid=parse_grid(["total_steps=2,4"]), then="99_fake_eval", max_running=1))
    assert [j.endswith("[].fakepbs") for j in sub.job_ids] == [True, True]
    array, follow = fake.wait(sub.job_ids)
    assert array["array"]["max_run"] == 1 and array["exit_status"] == 0, _logs(fake, sub.job_ids[0])
    assert follow["exit_status"] == 0, _logs(fake, sub.job_ids[1])
    for i, point in enumerate(sub.points):
        env = json.loads((point.plan.run_dir / "env.json").read_text())["scheduler"]
        assert env["PBS_ARRAY_INDEX"] == str(i) and env["PBS_JOBID"] == pbs.subjob_id(sub.job_ids[0], i)
        seen = json.loads((point.then_plan.run_dir / "seen.json").read_text())
        assert seen["array_index"] == str(i) and seen["pbs_jobid"] == pbs.subjob_id(sub.job_ids[1], i)
        assert json.loads((point.then_plan.run_dir / "params.json").read_text())["models"] == [str(point.plan.run_dir)]
    # Subjobs never overlapped (max_run 1): the second started after the first ended.
    subs = array["subjobs"]
    assert subs["1"]["stime"] >= subs["0"]["etime"]
    rows = sweep_status("g1")
    assert [r["state"] for r in rows] == ["done", "incomplete"]
    assert rows[0]["accuracy"] == 0.2 and rows[1]["step"] is None
    text = format_sweep_status("g1", rows)
    assert "sweep g1: 1 done, 1 incomplete" in text and "total_steps" in text

    again = submit_sweep(_req(grid=parse_grid(["total_steps=2,4"]), then="99_fake_eval", max_running=1))
    assert again.submitted == [1] and len(again.job_ids) == 2
    assert not any("[]" in j for j in again.job_ids)  # one point: a plain job, not an array of one
    fake.wait(again.job_ids)
    assert [r["state"] for r in sweep_status("g1")] == ["done", "done"]
    progress = json.loads((sub.points[1].plan.run_dir / "attempts.jsonl").read_text().splitlines()[-1])
    assert progress == {"from": 2, "to": 4, "status": "completed"}
    record = json.loads((runs_dir / "sweeps" / "g1" / "sweep.json").read_text())
    assert [s["points"] for s in record["submissions"]] == [[0, 1], [1]]
    nothing = submit_sweep(_req(grid=parse_grid(["total_steps=2,4"]), then="99_fake_eval"))
    assert nothing.submitted == [] and "nothing submitted" in nothing.describe()
    with pytest.raises(UserError, match="exists with other points"):
        submit_sweep(_req(grid=parse_grid(["total_steps=2,5"]), then="99_fake_eval"))


def test_a_failed_point_holds_back_the_follow_up_array_and_status_says_so(fake, runs_dir):
    sub = submit_sweep(_req(grid=parse_grid(["fail=false,true"]), then="99_fake_eval", params={"total_steps": 2}))
    array, follow = fake.wait(sub.job_ids)
    assert array["exit_status"] == 1 and follow["deleted"] and follow["stime"] is None
    rows = sweep_status("g1")
    assert [r["state"] for r in rows] == ["not run", "failed"]
    assert [r["evaluate"] for r in rows] == ["not run", "not run"]


def test_cli_dry_run_and_status_of_an_unknown_sweep(fake, runs_dir, capsys):
    from tunekit.cli import main

    rc = main(["sweep", "submit", "98_fake_train", "--grid", "total_steps=2,3", "--grid", "steps_per_job=1,2",
               "-p", "sleep_s", "0.5", "--name", "cli", "--group", "gab50000", "--queue", "rt_HC",
               "--nproc-per-node", "1", "--walltime", "00:05:00", "--max-running", "3", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "# dry run: nothing written, nothing submitted" in out and "-J 0-3%3" in out
    assert "[3] submit total_steps=3, steps_per_job=2" in out and fake.count() == 0
    assert main(["sweep", "status", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep 'nope': no ") and err.count("\n") == 1


def test_hostile_values_and_paths_reach_every_point_intact(fake, tmp_path, monkeypatch):
    hostile = "a b'c\"d $(touch PWNED) `touch PWNED2`; touch PWNED3 & \\ $HOME * ~"
    runs = tmp_path / "runs $(touch PWNED4) 'x'"
    monkeypatch.setenv("TUNEKIT_RUNS_DIR", str(runs))
    sub = submit_sweep(_req(notebook="97_report", grid=[("count", [1, 2])], params={"note": hostile},
                            name="hostile"))
    [array] = fake.wait(sub.job_ids)
    assert array["exit_status"] == 0, _logs(fake, sub.job_ids[0])
    for i, point in enumerate(sub.points):
        seen = json.loads((point.plan.run_dir / "seen.json").read_text())
        assert (seen["note"], seen["count"]) == (hostile, i + 1)
        assert seen["pbs_jobid"] == pbs.subjob_id(sub.job_ids[0], i)
    assert not [p for p in (tmp_path, repo_root(), Path.home()) for p in p.glob("**/PWNED*" if p == tmp_path
                                                                             else "PWNED*")]
