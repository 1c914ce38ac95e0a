"""tunekit.runview: run records read without writing, `runs list|watch|compare`, notebook watch(),
and notebooks/60_compare_runs on hand-made run records (the demo chain runs it on real ones)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunekit.cli import main as cli_main
from tunekit.runview import compare, records, watch as watchmod

CATS = ["中1", "中2", "中3", "IA", "IIB", "IIIC"]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False))


def make_sft(root: Path, name: str, params: dict, losses: list[float], vals: list[float] | None = None,
             finished: bool = True) -> Path:
    run = root / "sft" / name
    _write(run / "params.json", {"run_name": name, "runs_dir": "", **params})
    _write(run / "env.json", {"started": "2026-12-01T10:00:00+09:00", "git": {"sha": "abc123def4567", "dirty": True}})
    lines = [json.dumps({"step": i + 1, "loss": v, "lr": 1e-4}) for i, v in enumerate(losses)]
    lines += [json.dumps({"step": (i + 1) * 2, "val_loss": v}) for i, v in enumerate(vals or [])]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        _write(run / "train_result.json", {"status": "completed"})
        _write(run / "summary.json", {"best_val_loss": min(vals) if vals else None, "steps": len(losses)})
    return run


def make_eval(root: Path, name: str, models: dict[str, tuple[str, list[bool]]]) -> Path:
    run = root / "evaluate" / name
    _write(run / "params.json", {"run_name": name, "models": [s for s, _ in models.values()]})
    summary = {"comparison": [], "models": {}}
    for label, (spec, verdicts) in models.items():
        folder = run / label.replace("/", "_")
        ids = [f"p{i:03d}" for i in range(len(verdicts))]
        _write(folder / "scores.json", {"detailed_results": dict(zip(ids, verdicts)),
                                        "overall_accuracy": sum(verdicts) / len(verdicts)})
        (folder / "predictions.jsonl").write_text("\n".join(
            json.dumps({"id": i, "category": CATS[k % 6], "output": "x"}, ensure_ascii=False)
            for k, i in enumerate(ids)) + "\n")
        summary["comparison"].append({"model": label, "accuracy": sum(verdicts) / len(verdicts)})
        summary["models"][label] = {"spec": spec}
    _write(run / "summary.json", summary)
    return run


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_metrics_are_read_up_to_the_last_complete_line_and_status_comes_from_the_records(runs_dir):
    run = make_sft(runs_dir, "a", {"lr": 1e-4}, [3.0, 2.0], finished=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1')  # a line the job is still writing
    assert [m["step"] for m in records.read_complete_metrics(run)] == [1, 2]
    assert records.run_status(run) == "started"
    _write(run / "job" / "s1" / "link-1.json", {"state": "running"})
    (run / "job" / "latest").write_text("s1\n")
    assert records.run_status(run) == "running"
    _write(run / "job" / "s1" / "link-1.json", {"state": "failed"})
    assert records.run_status(run) == "failed"
    _write(run / "summary.json", {})
    info = records.run_info(run)
    assert (info.status, info.step, info.last_loss, info.commit) == ("finished", 2, 2.0, "abc123def4+dirty")


def test_runs_list_filters_by_stage_and_name(runs_dir, capsys):
    make_sft(runs_dir, "lr-small", {"lr": 1e-5}, [2.0], [1.5])
    make_sft(runs_dir, "lr-big", {"lr": 1e-3}, [2.0], [1.2])
    make_eval(runs_dir, "ev", {"tiny": ("tiny", [True, False])})
    assert cli_main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    assert "3 run(s)" in out and "abc123def4+dirty" in out and "tiny 0.500" in out
    assert cli_main(["runs", "list", "--stage", "sft", "--name", "*big"]) == 0
    out = capsys.readouterr().out
    assert "lr-big" in out and "lr-small" not in out and "1 run(s)" in out


def test_compare_tables_only_differing_params_intervals_paired_tests_and_leaderboard(runs_dir, capsys):
    a = make_sft(runs_dir, "a", {"lr": 1e-5, "epochs": 1, "seed": 0}, [2.0, 1.0], [1.5])
    b = make_sft(runs_dir, "b", {"lr": 2e-5, "epochs": 1, "seed": 0}, [2.0, 0.9], [1.4])
    good = [i % 3 != 0 for i in range(90)]            # 60/90
    close = list(good)
    close[0] = close[3] = True                         # 62/90: +2 answers
    bad = [i % 3 == 0 for i in range(90)]             # 30/90
    make_eval(runs_dir, "ev", {"sft/a": (str(a), good), "sft/b": (str(b), close), "tiny": ("tiny", bad)})
    cmp = compare.load_runs(["sft/*", "evaluate/*"])
    diff = compare.param_differences(cmp.runs)
    assert list(diff.columns) == ["lr"]  # epochs and seed are equal: not shown
    acc = compare.accuracy_table(cmp.models, n_boot=2000)
    row = acc.loc["sft/b"]
    assert row["accuracy"] == pytest.approx(62 / 90) and row["low"] < 62 / 90 < row["high"]
    assert set(CATS) <= set(acc.columns)
    board = compare.leaderboard(cmp.models, n_boot=2000)
    assert list(board["model"]) == ["sft/b", "sft/a", "tiny"]
    assert list(board["vs_best"]) == ["-", "not distinguishable", "worse"]  # +2 answers is not a win
    paired = compare.paired_table(cmp.models, n_boot=2000)
    ab = paired[(paired.a == "sft/a") & (paired.b == "sft/b")].iloc[0]
    assert (ab.only_a, ab.only_b, ab.verdict) == (0, 2, "no clear difference")
    assert cmp.models[0].training_run == a
    assert cli_main(["runs", "compare", "evaluate/*", "--n-boot", "2000"]) == 0
    out = capsys.readouterr().out
    assert out.index("sft/b") < out.index("sft/a") < out.index("tiny") and "not distinguishable" in out


def test_a_two_parameter_sweep_gets_a_heat_map(runs_dir):
    points = []
    for i, (lr, ep) in enumerate([("1e-5", "1"), ("1e-5", "2"), ("2e-5", "1"), ("2e-5", "2")]):
        run = make_sft(runs_dir, f"s-{i}", {"lr": float(lr), "epochs": int(ep)}, [1.0], [1.0 - i / 10])
        ev = make_eval(runs_dir, f"s-{i}", {f"sft/s-{i}": (str(run), [k < 10 * (i + 1) for k in range(60)])})
        points.append({"index": i, "values": {"lr": lr, "epochs": ep}, "run_name": f"s-{i}", "stage": "sft",
                       "run_dir": str(run), "then_stage": "evaluate", "then_run_dir": str(ev)})
    _write(runs_dir / "sweeps" / "s" / "sweep.json", {"name": "s", "grid": {"lr": ["1e-5", "2e-5"],
                                                                           "epochs": ["1", "2"]}, "points": points})
    cmp = compare.load_runs(["sweep:s"])
    grid = compare.heatmap_table(cmp)
    assert grid.loc["2e-5", "2"] == pytest.approx(40 / 60) and grid.loc["1e-5", "1"] == pytest.approx(10 / 60)
    assert len(cmp.runs) == 8 and len(cmp.models) == 4


def test_watch_refreshes_until_the_run_ends_and_never_writes(runs_dir, tmp_path):
    run = make_sft(runs_dir, "live", {"lr": 1e-5}, [4.0, 3.0], finished=False)
    before = _tree(run)
    ticks = []

    def progress(seconds):  # the "job": between refreshes it trains a step, then finishes
        ticks.append(seconds)
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 3, "loss": 2.0}) + "\n")
        if len(ticks) == 2:
            _write(run / "summary.json", {})

    class Out:
        text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    out = Out()
    state = {"tree": before, "changed": []}

    def check_then_progress(seconds):
        # Between the job's last write and now only the watcher ran: nothing may have changed.
        state["changed"].append(_tree(run) != state["tree"])
        progress(seconds)
        state["tree"] = _tree(run)

    snap = watchmod.watch_terminal("live", every=5, out=out, sleep=check_then_progress)
    assert ticks == [5, 5] and snap[0][0].status == "finished"
    assert out.text.count("sft/live") == 3 and "every run has ended" in out.text
    assert "▁" in out.text and "█" in out.text
    assert state["changed"] == [False, False] and _tree(run) == state["tree"]
    assert not (run / ".lock").exists()


def test_notebook_watch_redraws_in_place(runs_dir, monkeypatch):
    import IPython.display

    run = make_sft(runs_dir, "nb", {"lr": 1e-5}, [4.0, 3.0], [3.5], finished=False)
    calls = []

    class Handle:
        def update(self, fig):
            calls.append(("update", fig))

    def display(fig, display_id=False):
        calls.append(("display", fig))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", display)
    n = {"i": 0}

    def sleep(_):
        n["i"] += 1
        if n["i"] == 2:
            _write(run / "summary.json", {})

    watchmod.watch(str(run), every=1, sleep=sleep)
    assert [c[0] for c in calls] == ["display", "update", "update"]
    assert [ax.get_title() for ax in calls[0][1].axes] == ["loss", "val_loss", "lr"]


def test_watch_of_a_local_run_that_never_ends_stops_at_its_timeout(runs_dir):
    make_sft(runs_dir, "stuck", {"lr": 1e-5}, [1.0], finished=False)
    snap = watchmod.watch_terminal("stuck", every=0.05, timeout=0.2, out=open(os.devnull, "w"))
    assert snap[0][0].status == "started"


@pytest.mark.slow
def test_compare_notebook_runs_on_these_records(runs_dir):
    from tunekit.notebooks import run_notebook

    a = make_sft(runs_dir, "a", {"lr": 1e-5}, [2.0, 1.0], [1.5])
    make_eval(runs_dir, "ev", {"sft/a": (str(a), [i % 2 == 0 for i in range(30)]), "tiny": ("tiny", [False] * 30)})
    out = run_notebook("60_compare_runs", {"n_boot": 500, "run_name": "cmp"})
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["leaderboard"]] == ["sft/a", "tiny"]
    assert summary["leaderboard"][1]["vs_best"] == "worse"
    assert (out / "leaderboard.png").is_file() and (out / "curves.png").is_file()


def test_watching_a_sweep_ends_when_a_failed_point_means_the_follow_ups_never_run(runs_dir):
    ok = make_sft(runs_dir, "w-0", {"lr": 1e-5}, [1.0])
    bad = make_sft(runs_dir, "w-1", {"lr": 2e-5}, [1.0], finished=False)
    points = [{"index": i, "values": {"lr": lr}, "run_name": r.name, "stage": "sft", "run_dir": str(r),
               "then_stage": "evaluate", "then_run_dir": str(runs_dir / "evaluate" / r.name)}
              for i, (lr, r) in enumerate([("1e-5", ok), ("2e-5", bad)])]
    _write(runs_dir / "sweeps" / "w" / "sweep.json", {"name": "w", "grid": {"lr": ["1e-5", "2e-5"]}, "points": points})
    # Nothing failed yet: the follow-ups are awaited (here: until the timeout).
    snap = watchmod.watch_terminal("w", every=0.05, timeout=0.2, out=open(os.devnull, "w"))
    assert [i.status for i, _ in snap] == ["finished", "not started", "started", "not started"]
    _write(bad / "job" / "s" / "link-1.json", {"state": "failed"})
    (bad / "job" / "latest").write_text("s\n")
    calls = []
    snap = watchmod.watch_terminal("sweep:w", every=60, out=open(os.devnull, "w"), sleep=calls.append)
    assert calls == [] and [i.status for i, _ in snap][2] == "failed"
