"""The DPO stage end to end in this process: tiny model, a slice of the sample preference data."""
from __future__ import annotations

import math

import pytest

from tunekit.train import refcache
from tunekit.train.dpo import prepare_dpo, run_dpo
from tunekit.train.params import DPOParams
from tunekit.train.report import dpo_check as check_summary
from tunekit.train.report import dpo_figure, dpo_history, overlong
from tunekit.train.report import dpo_summary as summary_of

SMALL = dict(datasets={"math_pref": {"max_train_samples": 40, "split_dev": True, "upsampling_factor": 1}},
             max_dev_samples=8, max_seq_length=160, global_batch_size=8, micro_batch_size=4,
             max_steps=4, val_interval=2, save_interval=2, warmup_steps=1, lr=0.003, seed=3,
             sft_loss_weight=0.0)  # the pure preference loss (the tiny default adds the chosen NLL)


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """Runs and reference-cache entries in tmp (tokenised data and fixtures stay shared)."""
    monkeypatch.setenv("TUNEKIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(refcache, "cache_root", lambda: tmp_path / "cache")
    return tmp_path


def _train(name: str, **over):
    from tunekit.runs import start_run

    cfg = DPOParams.parse({**SMALL, "run_name": name, **over})
    run = start_run("dpo", cfg, cfg.run_name, cfg.runs_dir)
    prep = prepare_dpo(cfg)
    return run, prep, run_dpo(cfg, run, prep)


def test_stage_trains_records_publishes_and_reuses_the_reference_cache(isolated):
    run, prep, result = _train("a")
    assert result["status"] == "completed" and result["step"] == 4
    assert (run.dir / "hf_model" / "model.safetensors").is_file()
    table = overlong(prep)  # over-length pairs are dropped and counted: pairs = kept + dropped
    assert table["pairs"].tolist() == [40, 8]
    assert (table["pairs"] == table["kept"] + table["dropped_overlong"]).all()
    assert table["dropped_overlong"].sum() > 0  # max_seq_length 160 is short for some pairs
    assert len(prep.train) == table["kept"][0]
    cache = result["data"]["reference_cache"]
    assert cache["hit"] is False and cache["unique_pairs"] >= 40

    records = run.metrics()
    train, dev = dpo_history(records)
    # one DPO record per optimizer step, over the whole global batch
    assert train["step"].tolist() == [1, 2, 3, 4] and (train["loss_tokens"] == 8).all()
    for key in ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                "chosen_logp", "rejected_logp", "kl", "preference_loss"):
        assert train[key].notna().all(), key
    assert dev["step"].tolist() == [0, 2, 4]
    step0 = dev.iloc[0]
    # at step 0 the policy is the reference: margins exactly 0 (dev cached in the eval layout)
    assert step0["val_reward_margin"] == 0.0 and step0["val_reward_accuracy"] == 0.0
    assert step0["val_reward_ties"] == 1.0  # an accuracy of 0 at step 0 is all ties, not all wrong
    assert dev.iloc[-1]["val_reward_ties"] == 0.0
    assert step0["val_loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert dev.iloc[-1]["val_reward_margin"] != 0.0
    # without an SFT term the loop's loss is the preference loss of the same step
    assert train["loss"].tolist() == pytest.approx(train["preference_loss"].tolist(), rel=1e-6)

    fig = dpo_figure(records)
    assert len(fig.axes) == 2
    summary = summary_of(result, records)
    assert summary["train_pairs"] == table["kept"][0] and summary["dev_pairs"] == table["kept"][1]
    assert summary["initial_dev_reward_margin"] == 0.0 and summary["final_dev_step"] == 4
    assert summary["final_loss"] == result["final_loss"]  # the training loss, not the dev loss
    checked = check_summary(summary)
    assert checked["status"] == "completed" and checked["published"] is True

    # A sweep over beta reuses the cached reference log-probs: nothing is recomputed.
    def fail(*a, **k):
        raise AssertionError("reference log-probs recomputed")

    import tunekit.train.refcache as rc
    orig = rc.compute_reference_logps
    rc.compute_reference_logps = fail
    try:
        _, _, again = _train("b", ref_policy_kl_penalty=0.1)
    finally:
        rc.compute_reference_logps = orig
    assert again["data"]["reference_cache"]["hit"] is True
    assert again["data"]["reference_cache"]["key"] == cache["key"]


def test_changed_data_or_length_gets_a_new_cache_entry(isolated):
    _, _, a = _train("c", max_steps=1, val_interval=0, save_interval=0)
    _, _, b = _train("d", max_steps=1, val_interval=0, save_interval=0, max_seq_length=140)
    ka, kb = a["data"]["reference_cache"]["key"], b["data"]["reference_cache"]["key"]
    assert ka != kb and b["data"]["reference_cache"]["hit"] is False


def test_bad_parameters_fail_before_any_work():
    from tunekit.errors import UserError

    with pytest.raises(UserError, match="parameter 'preference_loss' must be one of"):
        DPOParams.parse({"preference_loss": "sigmoid"})
    with pytest.raises(UserError, match="dpo_overlong"):
        DPOParams.parse({"dpo_overlong": "cut"})
    with pytest.raises(UserError, match="label_smoothing applies to preference_loss=dpo only"):
        DPOParams.parse({"preference_loss": "ipo", "label_smoothing": 0.1})
    assert DPOParams().model == "tiny" and DPOParams(init="runs/sft/x").model == "runs/sft/x"


def test_rewards_on_data_lines_reach_the_pairs(tmp_path):
    import json

    from tunekit.model import resolve_model
    from tunekit.paths import repo_root
    from tunekit.train.dpo import build_dpo_data

    src = repo_root() / "datasets" / "sample" / "preference" / "train" / "math_pref.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()[:12]
    out = tmp_path / "data" / "v1" / "preference" / "train"
    out.mkdir(parents=True)
    recs = [json.loads(x) for x in lines]
    recs[5].update(chosen_reward=0.9, rejected_reward=0.2)  # a train line (dev = the first 2)
    (out / "rw.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                  encoding="utf-8")
    cfg = DPOParams.parse({"data_dir": str(tmp_path / "data"), "data_version": "v1",
                           "datasets": {"rw": {}}, "max_dev_samples": 2, "max_dev_ratio": 0.2})
    train, dev, report = build_dpo_data(cfg, resolve_model("tiny"), show_progress=False)
    rewards = [(train[i].chosen_reward, train[i].rejected_reward) for i in range(len(train))]
    assert len(dev) == 2 and len(train) == 10
    assert rewards[3] == (0.9, 0.2)  # line 6 = train pair 4
    assert rewards.count((1.0, 0.0)) == 9  # every other pair has the official defaults


def test_a_bad_reward_is_one_sentence_with_its_line(tmp_path):
    import json

    from tunekit.errors import UserError
    from tunekit.model import resolve_model
    from tunekit.paths import repo_root
    from tunekit.train.dpo import build_dpo_data

    src = repo_root() / "datasets" / "sample" / "preference" / "train" / "math_pref.jsonl"
    recs = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()[:6]]
    recs[3]["chosen_reward"] = "high"
    out = tmp_path / "data" / "v1" / "preference" / "train"
    out.mkdir(parents=True)
    (out / "bad.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                   encoding="utf-8")
    cfg = DPOParams.parse({"data_dir": str(tmp_path / "data"), "data_version": "v1",
                           "datasets": {"bad": {}}})
    with pytest.raises(UserError, match=r"bad\.jsonl:4: chosen_reward/rejected_reward must be numbers"):
        build_dpo_data(cfg, resolve_model("tiny"), show_progress=False)


def test_live_reference_follows_the_cached_trajectory_without_a_cache(isolated):
    # Full fine-tuning with `reference: live`: a frozen sharded copy of the starting model runs
    # every micro-batch; the numbers are those of the cached reference up to float rounding.
    cached_run, _, cached = _train("cached-ref")
    entries = sorted((isolated / "cache").glob("refcache/*/*/logps.npz"))
    live_run, _, live = _train("live-ref", reference="live")
    assert live["status"] == "completed" and live["data"]["reference_cache"]["key"] is None
    assert live["data"]["reference"] == "live: frozen copy of the starting model"
    assert cached["data"]["reference"] == "cached log-probs"
    assert len(entries) == 1 and sorted((isolated / "cache").glob("refcache/*/*/logps.npz")) == entries
    a = [r["loss"] for r in cached_run.metrics() if "lr" in r]
    b = [r["loss"] for r in live_run.metrics() if "lr" in r]
    assert len(a) == len(b) == 4 and b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert live["final_val_loss"] == pytest.approx(cached["final_val_loss"], rel=1e-5)
