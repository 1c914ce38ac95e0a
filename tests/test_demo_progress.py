"""What `make demo` shows while it runs and at the end (the chain itself runs in test_pipeline.py)."""
from __future__ import annotations

import json
import time

from tunekit import pipeline
from tunekit.pipeline import StageProgress, dpo_vs_sft, expected_seconds, headline


def test_stage_progress_turns_the_notebooks_log_lines_into_progress_with_time_left():
    said = []
    expected = {"sft": 100.0, "dpo": 60.0, "evaluate": 30.0}
    watch = StageProgress(4, 6, "30_sft", "sft", expected, ["sft", "dpo", "evaluate"], said.append)
    # What the notebook prints, in the chunks papermill hands over (a line may be split).
    watch.write("model: /x\nsft:  39%|#####9         | 255/650 [00:30<00:4")
    watch.write("6,  8.49step/s, loss=0.5173]\nstep=300 val_loss=0.4501 val_weight=2295.0000\n")
    watch.write("a table row that is not progress\n")
    assert len(said) == 2, said
    assert said[0].startswith("[demo] (4/6) 30_sft: sft 39% (255/650), ")
    # 46 s left in this stage (the bar's own estimate) + 90 s for the stages after it
    assert said[0].endswith("about 2 min 16 s left in the demo"), said[0]
    assert said[1] == "[demo] (4/6) 30_sft: step=300 val_loss=0.4501 val_weight=2295.0000"


def test_without_a_bar_the_stage_estimate_counts_down():
    watch = StageProgress(1, 6, "10_inspect_data", "inspect_data", {"inspect_data": 20.0}, ["inspect_data"], print)
    watch.t0 = time.time() - 15
    assert 4 <= watch.left_in_stage() <= 5
    watch.t0 = time.time() - 60
    assert watch.left_in_stage() == 0


def _run(root, stage, name, started, finished):
    d = root / stage / name
    d.mkdir(parents=True)
    (d / "env.json").write_text(json.dumps({"started": started}))
    (d / "summary.json").write_text(json.dumps({"finished": finished}))
    return d


def test_expected_seconds_come_from_the_last_demo_on_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_RUNS_DIR", str(tmp_path))
    times, source = expected_seconds()
    assert times == pipeline.REFERENCE_SECONDS and "reference" in source
    for stage in pipeline.REFERENCE_SECONDS:
        _run(tmp_path, stage, "demo-1", "2026-12-03T10:00:00+09:00", "2026-12-03T10:01:40+09:00")
    times, source = expected_seconds()
    assert set(times.values()) == {100.0} and source == "the last demo on this machine"
    # the run being made now is not its own estimate
    times, _ = expected_seconds(exclude="demo-1")
    assert times == pipeline.REFERENCE_SECONDS


def test_the_summary_says_whether_dpo_beats_sft(tmp_path):
    run = tmp_path / "evaluate" / "demo-1"
    run.mkdir(parents=True)
    summary = {"eval_problems": 90, "comparison": [{"model": "tiny", "accuracy": 0.0},
                                                    {"model": "sft/demo-1", "accuracy": 0.2},
                                                    {"model": "dpo/demo-1", "accuracy": 0.2444}]}
    (run / "summary.json").write_text(json.dumps(summary))
    assert dpo_vs_sft({"evaluate": run}) == "+4 of 90 problems (0.200 -> 0.244): DPO improves on SFT"
    assert headline("evaluate", summary) == "accuracy on 90 problems: tiny 0.000, sft/demo-1 0.200, dpo/demo-1 0.244"
    summary["comparison"][2]["accuracy"] = 0.1889
    (run / "summary.json").write_text(json.dumps(summary))
    assert dpo_vs_sft({"evaluate": run}).endswith("DPO does not improve on SFT")


def test_dpo_headline_reports_ties_separately():
    line = headline("dpo", {"initial_dev_reward_accuracy": 0.0, "initial_dev_reward_ties": 1.0,
                            "final_dev_reward_accuracy": 0.7875, "final_dev_reward_ties": 0.0, "step": 90})
    assert line == "dev reward accuracy 0.000 (ties 1.000) -> 0.787 (ties 0.000) in 90 steps; chance 0.5"


def test_the_chain_runs_its_kernels_on_one_thread_and_restores_the_environment(monkeypatch, tmp_path):
    """CPU results depend on the thread count: the chain's numbers (its references) must not."""
    from tunekit import notebooks

    seen = []

    def fake_run(name, params, source, stdout=None):
        seen.append((name, notebooks.os.environ.get("OMP_NUM_THREADS")))
        return tmp_path / name

    monkeypatch.setattr(notebooks, "run_notebook", fake_run)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    notebooks.run_chain("demo-x", log=lambda line: None)
    assert seen and all(threads == "1" for _, threads in seen), seen
    assert notebooks.os.environ["OMP_NUM_THREADS"] == "7"
