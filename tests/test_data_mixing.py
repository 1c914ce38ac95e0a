"""Mixing and splits with the official knobs; the per-source report; on_error raise|skip."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tunekit.data.config import DataConfig
from tunekit.data.mixing import build_mixture
from tunekit.errors import UserError
from tunekit.model import tiny_tokenizer_dir


def line(i: int, tag: str) -> str:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": f"{tag} {i} + 1 は？"},
            {"role": "assistant", "content": f"{i + 1}"}]
    return json.dumps({"messages": msgs}, ensure_ascii=False)


@pytest.fixture(scope="module")
def tok_dir():
    return str(tiny_tokenizer_dir())


@pytest.fixture
def version(tmp_path, monkeypatch):
    """datasets/v1/tuning/train/{a (25 lines), b (50 lines)}.jsonl"""
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "data" / "v1" / "tuning" / "train"
    d.mkdir(parents=True)
    (d / "a.jsonl").write_text("\n".join(line(i, "a") for i in range(25)) + "\n", encoding="utf-8")
    (d / "b.jsonl").write_text("\n".join(line(i, "b") for i in range(50)) + "\n", encoding="utf-8")
    return tmp_path / "data"


def cfg(version, tok_dir, **kw):
    return DataConfig(data_dir=str(version), data_version="v1", tokenizer=tok_dir, **kw)


def lines_of(mix, name, split):
    s = next(s for s in mix.sources if s.name == name)
    idx = s.dev_idx if split == "dev" else s.train_idx
    return [int(x) for x in s.file.array("lines")[idx]]


def test_official_head_split_and_upsampling(version, tok_dir):
    mix = build_mixture(cfg(version, tok_dir, datasets={"a": {}, "b": {"upsampling_factor": 3}},
                            max_dev_samples=4, max_dev_ratio=0.1), "sft", show_progress=False)
    assert lines_of(mix, "a", "dev") == [1, 2]                  # int(25 * 0.1) = 2, the first lines
    assert lines_of(mix, "a", "train") == list(range(3, 26))
    assert lines_of(mix, "b", "dev") == [1, 2, 3, 4]            # min(4, int(50 * 0.1) = 5)
    src, rec = mix.docs("train")
    assert len(src) == 23 + 46 * 3                               # train upsampled
    src_dev, _ = mix.docs("dev")
    assert len(src_dev) == 2 + 4                                 # dev NOT upsampled (kit default)
    rep = mix.report().set_index("dataset")
    assert rep.loc["b", "train_upsampled"] == 138 and rep.loc["b", "dev"] == 4
    assert rep["train_token_share"].sum() == pytest.approx(1.0, abs=1e-3)
    assert (rep["records"] == rep["valid"] + rep["invalid"]).all()


def test_upsample_dev_restores_official_behaviour(version, tok_dir):
    mix = build_mixture(cfg(version, tok_dir, datasets={"b": {"upsampling_factor": 2}}, upsample_dev=True),
                        "sft", show_progress=False)
    assert len(mix.docs("dev")[0]) == 5 * 2


def test_max_train_samples_split_dev_and_skip(version, tok_dir):
    mix = build_mixture(cfg(version, tok_dir, datasets={"a": {"max_train_samples": 0},
                                                        "b": {"max_train_samples": 10, "split_dev": False}}),
                        "sft", show_progress=False)
    a = next(s for s in mix.sources if s.name == "a")
    assert a.file is None and len(a.train_idx) == 0 and "a: skipped" in mix.notes[0]
    assert lines_of(mix, "b", "dev") == [] and lines_of(mix, "b", "train") == list(range(1, 11))


def test_empty_map_means_every_file_and_list_of_names(version, tok_dir):
    assert [s.name for s in build_mixture(cfg(version, tok_dir), "sft", show_progress=False).sources] == ["a", "b"]
    assert DataConfig(datasets=["x", "y"]).datasets["y"].upsampling_factor == 1


def test_hash_split_is_deterministic_and_independent_of_line_order(version, tok_dir, tmp_path):
    c = cfg(version, tok_dir, datasets={"b": {}}, dev_split="hash")
    mix = build_mixture(c, "sft", show_progress=False)
    f = mix.sources[0].file
    dev_hashes = set(f.array("hashes")[mix.sources[0].dev_idx].tolist())
    path = version / "v1" / "tuning" / "train" / "b.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mix2 = build_mixture(c, "sft", show_progress=False)
    f2 = mix2.sources[0].file
    assert set(f2.array("hashes")[mix2.sources[0].dev_idx].tolist()) == dev_hashes
    assert len(dev_hashes) == 5 and lines_of(mix, "b", "dev") != [1, 2, 3, 4, 5]


def test_duplicates_between_train_and_dev_are_counted(version, tok_dir):
    path = version / "v1" / "tuning" / "train" / "a.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[10] = lines[0]          # line 11 (train) repeats line 1 (dev)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = build_mixture(cfg(version, tok_dir, datasets={"a": {}}), "sft", show_progress=False).report()
    assert int(rep.loc[0, "dev_dups_in_train"]) == 1


def test_on_error_raise_and_skip(version, tok_dir):
    path = version / "v1" / "tuning" / "train" / "a.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write("{broken\n")
    with pytest.raises(UserError, match=r"a\.jsonl: 1 bad line\(s\).*a\.jsonl:26: error: invalid JSON"):
        build_mixture(cfg(version, tok_dir, datasets={"a": {}}), "sft", show_progress=False)
    mix = build_mixture(cfg(version, tok_dir, datasets={"a": {}}, on_error="skip"), "sft", show_progress=False)
    r = mix.sources[0].file.report
    assert (r.records, r.kept, r.skipped) == (26, 25, 1) and r.skipped_by_reason == {"invalid JSON": 1}
    rep = mix.report()
    assert int(rep.loc[0, "invalid"]) == 1 and int(rep.loc[0, "valid"]) == 25


def test_config_errors_are_one_sentence(version, tok_dir):
    with pytest.raises(UserError, match="no file for dataset"):
        build_mixture(cfg(version, tok_dir, datasets={"zzz": {}}), "sft", show_progress=False)
    with pytest.raises(UserError, match="data version folder not found"):
        build_mixture(DataConfig(data_dir=str(version), data_version="v9", tokenizer=tok_dir), "sft")
    with pytest.raises(UserError, match="upsampling_factor"):
        DataConfig.parse({"datasets": {"a": {"upsampling_factor": 0}}})
    with pytest.raises(UserError, match="packing"):
        DataConfig.parse({"packing": "greedy"})
    assert np.isclose(DataConfig.parse({"max_dev_ratio": 0.2, "unrelated_notebook_param": 1}).max_dev_ratio, 0.2)
