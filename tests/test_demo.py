"""`make demo` end to end: every stage runs, chains into the next, and training measurably helps."""
from __future__ import annotations

import pytest

from tunekit.notebooks import NOTEBOOKS
from tunekit.pipeline import run_demo
from tunekit.runs import read_summary


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_training_pays_off(runs_dir, capsys):
    done = run_demo(stamp="test")
    assert set(done) == {nb.stage for nb in NOTEBOOKS}, "a stage was skipped"
    for stage, path in done.items():
        assert path == runs_dir / stage / "demo-test"
        assert read_summary(path) is not None, f"{stage} wrote no summary.json"
        assert (path / f"{[nb.name for nb in NOTEBOOKS if nb.stage == stage][0]}.ipynb").is_file()
    # DPO started from the SFT run directory (no symlinks, no absolute paths to type).
    assert read_summary(done["dpo"])["initial_dev_reward_accuracy"] < 0.5 < \
        read_summary(done["dpo"])["final_dev_reward_accuracy"]
    sft = read_summary(done["sft"])
    assert sft["best_val_loss"] < sft["initial_val_loss"] - 1.0
    acc = {row["model"].split("/")[0]: row["accuracy"] for row in read_summary(done["evaluate"])["comparison"]}
    assert acc["sft"] >= acc["tiny"] + 0.05 and acc["dpo"] >= acc["tiny"] + 0.05, acc
    out = capsys.readouterr().out
    assert "[demo] finished" in out and "accuracy: tiny" in out
    # Every model the demo published loads in the competition's transformers versions (submission
    # image 4.57.0, official training environment 4.47.0) with this environment's config, token
    # ids and chat-prompt ids; so does the tokenizer folder that hf-to-nemo hands to the official kit.
    from tunekit.model import compat

    published = [done[s] / "hf_model" for s in ("sft", "dpo", "convert_nemo_to_hf")]
    for folder in published + [done["convert_hf_to_nemo"] / "nemo" / "tokenizer"]:
        for env in ("submission", "official-training"):
            assert compat.check_folder(folder, env)["differences"] == [], (folder, env)
