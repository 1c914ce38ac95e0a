"""The one-call entry points (SFT packed data, DPO pairs), the render CLI and the notebook params."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tunekit.cli import main
from tunekit.data.dpo import load_dpo_data
from tunekit.data.params import InspectParams
from tunekit.data.sft import build_packed_sft, load_sft_data
from tunekit.errors import UserError
from tunekit.model import tiny_tokenizer_dir

SAMPLE = {"data_dir": "datasets", "data_version": "sample"}


@pytest.fixture(scope="module")
def tok_dir():
    return str(tiny_tokenizer_dir())


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "api-cache"))


def test_load_sft_data_on_the_sample(tok_dir):
    data = load_sft_data({**SAMPLE, "tokenizer": tok_dir, "max_seq_length": 256,
                          "datasets": {"math_drill": {}, "math_chat": {"upsampling_factor": 2}}},
                         show_progress=False)
    rep = data.report()
    assert [s["dataset"] for s in rep["sources"]] == ["math_drill", "math_chat"]
    n = {name: len(open(f"datasets/sample/tuning/train/{name}.jsonl", encoding="utf-8").read().splitlines())
         for name in ("math_drill", "math_chat")}
    dev = {name: min(100, int(k * 0.1)) for name, k in n.items()}   # the official head split
    drill = rep["sources"][0]
    assert (drill["records"], drill["dev"], drill["train"]) == (n["math_drill"], dev["math_drill"],
                                                                n["math_drill"] - dev["math_drill"])
    train = n["math_drill"] - dev["math_drill"] + 2 * (n["math_chat"] - dev["math_chat"])
    assert rep["packing_train"]["examples"] == train and rep["packing_dev"]["examples"] == sum(dev.values())
    item = data.train[0]
    assert item["input_ids"].shape == (256,) and int(item["doc_lens"].sum()) == 256
    json.dumps(rep)   # JSON-able for the run record


def test_engine_hook_takes_the_tokenizer_from_the_model_dir(tok_dir):
    params = {**SAMPLE, "datasets": {"math_drill": {"max_train_samples": 50}}, "max_seq_length": 128,
              "lr": 1e-3, "run_name": "x"}     # other notebook params are ignored
    train, dev, report = build_packed_sft(params, tok_dir)
    assert report["tokenizer"] == tok_dir and report["packing_train"]["examples"] == 50
    assert len(dev) > 0 and train[0]["labels"].dtype == np.int64


@pytest.mark.parametrize("policy", ["drop", "truncate_prompt"])
def test_dpo_pairs_and_overlength_policy(tok_dir, policy):
    S = 100
    data = load_dpo_data({**SAMPLE, "tokenizer": tok_dir, "max_seq_length": S, "dpo_overlong": policy},
                         show_progress=False)
    st = data.train.stats
    n = len(open("datasets/sample/preference/train/math_pref.jsonl", encoding="utf-8").read().splitlines())
    assert st.pairs == st.kept + st.dropped_overlong and st.pairs == n - min(100, int(n * 0.1))
    for i in range(len(data.train)):
        p = data.train[i]
        assert p["prompt"][0] == 1 and len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"])) <= S
    if policy == "drop":
        assert st.dropped_overlong > 0 and st.truncated_prompt == 0
    else:
        assert st.truncated_prompt > 0 and st.kept > 0
        long = data.mixture.sources[0].file
        full = [long.pair(int(r))[0] for r in data.train.rec]
        cut = [i for i in range(len(data.train)) if len(data.train[i]["prompt"]) < len(full[i])]
        i = cut[0]     # truncated prompts keep bos and the END of the prompt (the question itself)
        assert np.array_equal(data.train[i]["prompt"][1:], full[i][-(len(data.train[i]["prompt"]) - 1):])


def test_render_cli(tok_dir, capsys):
    assert main(["data", "render", "datasets/sample/tuning/train/math_chat.jsonl", "--tokenizer", tok_dir,
                 "--limit", "2"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    assert len(rows[0]["input_ids"]) == len(rows[0]["loss_mask"]) and rows[0]["input_ids"][0] == 1
    assert rows[0]["loss_mask"][-1] == 1 and rows[0]["input_ids"][-1] == 2
    assert main(["data", "render", "datasets/sample/preference/train/math_pref.jsonl", "--tokenizer", tok_dir,
                 "--limit", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    n = len(row["prompt_ids"])
    assert row["chosen_ids"][:n] == row["prompt_ids"] == row["rejected_ids"][:n]
    assert main(["data", "render", "datasets/sample/tuning/train/math_chat.jsonl", "--tokenizer", tok_dir,
                 "--limit", "1", "--pretty"]) == 0
    out = capsys.readouterr().out
    assert "### 応答:" in out and "⟦" in out and out.rstrip().endswith("<|eos|>⟧")


def test_inspect_params_validate_data_options():
    cfg = InspectParams()
    from tunekit.train.params import DPOParams, SFTParams

    # 10_inspect_data inspects exactly what 30_sft and 40_dpo train on by default (same counts).
    assert cfg.sft_datasets == SFTParams().datasets and cfg.dpo_datasets == DPOParams().datasets
    assert cfg.data_config("sft").datasets["math_chat"].upsampling_factor == 1
    assert list(cfg.data_config("dpo").datasets) == ["math_pref"]
    with pytest.raises(UserError, match="dev_split"):
        InspectParams.parse({"dev_split": "random"})
    with pytest.raises(UserError, match="max_train_samples"):
        InspectParams.parse({"sft_datasets": {"a": {"max_train_samples": -5}}})
