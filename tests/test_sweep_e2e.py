"""Done-when of sweeps: a 2x2 sweep of the real tiny SFT notebook with a chained evaluation, run by
the fake PBS as two array jobs (the evaluation after the training array, afterok), to four finished
run dirs with evaluation results; then notebooks/60_compare_runs reports them with intervals."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_pbs"))
from pbs_helpers import fake_pbs_with_log_cleanup  # noqa: E402

from tunekit.cli import main as cli_main  # noqa: E402
from tunekit.jobs import pbs  # noqa: E402
from tunekit.jobs.sweep import SweepRequest, parse_grid, submit_sweep, sweep_status  # noqa: E402
from tunekit.notebooks import run_notebook, spec  # noqa: E402
from tunekit.paths import repo_root  # noqa: E402

PARAMS = repo_root() / "job_templates" / "params" / "tiny"


@pytest.fixture
def fake(tmp_path, monkeypatch, runs_dir):
    # an array job's logs carry the sub-job index after the name
    yield from fake_pbs_with_log_cleanup(monkeypatch, tmp_path / "pbs", "{name}*")


def _logs(fake, job_id: str) -> str:
    name = fake.job(job_id)["name"]
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((repo_root() / "logs").glob(f"{name}*")))


@pytest.mark.slow
def test_a_2x2_sft_sweep_with_chained_evaluation_runs_through_and_is_compared_with_intervals(fake, runs_dir, capsys):
    for nb in ("30_sft", "50_evaluate", "60_compare_runs"):
        assert spec(nb).exists()
    req = SweepRequest(
        notebook="30_sft", params_file=str(PARAMS / "sft" / "default.yaml"),
        params={"val_interval": 4, "save_interval": 0}, grid=parse_grid(["lr=1e-3,3e-3", "max_steps=4,8"]),
        then="50_evaluate", then_params_file=str(PARAMS / "evaluate" / "default.yaml"),
        name="grid", group="gab50000", queue="rt_HC", walltime="00:20:00", nproc_per_node=1, max_running=2)
    sub = submit_sweep(req)
    assert sub.submitted == [0, 1, 2, 3] and all(j.endswith("[].fakepbs") for j in sub.job_ids)
    train, follow = fake.wait(sub.job_ids, timeout=1500)
    assert train["exit_status"] == 0, _logs(fake, sub.job_ids[0])
    assert follow["exit_status"] == 0, _logs(fake, sub.job_ids[1])
    assert train["argv"][:2] == ["-J", "0-3%2"] and follow["depend_kind"] == "afterok"

    for i, point in enumerate(sub.points):
        run_dir, eval_dir = point.plan.run_dir, point.then_plan.run_dir
        result = json.loads((run_dir / "train_result.json").read_text())
        params = json.loads((run_dir / "params.json").read_text())
        assert (result["status"], result["step"]) == ("completed", int(point.values["max_steps"]))
        assert params["lr"] == float(point.values["lr"]) and params["run_name"] == point.run_name
        env = json.loads((run_dir / "env.json").read_text())["scheduler"]
        assert env["PBS_ARRAY_INDEX"] == str(i) and env["PBS_JOBID"] == pbs.subjob_id(sub.job_ids[0], i)
        summary = json.loads((eval_dir / "summary.json").read_text())
        [model] = summary["models"].values()
        assert model["spec"] == str(run_dir) and 0 <= model["accuracy"] <= 1
    rows = sweep_status("grid")
    assert [r["state"] for r in rows] == ["done"] * 4 and all(r["accuracy"] is not None for r in rows)

    out = run_notebook("60_compare_runs", {"runs": ["sweep:grid"], "n_boot": 2000, "run_name": "cmp"})
    summary = json.loads((out / "summary.json").read_text())
    board = summary["leaderboard"]
    assert len(board) == 4 and len(summary["paired"]) == 6
    assert [r["accuracy"] for r in board] == sorted((r["accuracy"] for r in board), reverse=True)
    # A few tiny steps answer little or nothing right: an interval may be [0, 0], but it is there,
    # computed from the 90 verdicts of each point's evaluation.
    for r in board:
        assert 0 <= r["low"] <= r["accuracy"] <= r["high"] <= 1
    models = {r["model"] for r in board}
    assert len(models) == 4 and all("grid-" in m for m in models)
    assert (out / "sweep_heatmap.png").is_file() and (out / "curves.png").is_file()
    capsys.readouterr()
    assert cli_main(["runs", "compare", "sweep:grid", "--n-boot", "2000"]) == 0
    assert capsys.readouterr().out.count("[") >= 4
