"""Tokenizer folders the kit writes load with the same ids in the competition's transformers versions.

Checked against the real libraries: side environments with transformers 4.57.0 (the submission
image's lock) and 4.47.0 (the official training environment), built once per checkout under
`.cache/side-envs` (tunekit.model.compat), run `compat_probe.py` and are compared with this
environment's transformers 5. Building them needs PyPI access the first time (~15-40 s each).
"""
from __future__ import annotations

import json
import shutil

import pytest

from tunekit.model import compat
from tunekit.model.portable import write_portable_tokenizer

VERSIONS = ["submission", "official-training"]


def _load(d):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def llmjp_with_template():
    from tunekit.template import install_chat_template
    from tunekit.model import llmjp_tokenizer_dir

    tok = _load(llmjp_tokenizer_dir())
    install_chat_template(tok)
    return tok


@pytest.mark.parametrize("env", VERSIONS)
def test_save_pretrained_of_transformers_5_fails_there_and_the_portable_writer_does_not(env, tmp_path,
                                                                                      llmjp_with_template):
    tok = llmjp_with_template
    tok.save_pretrained(str(tmp_path / "saved"))            # the planted failure: what the kit did
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "TokenizersBackend"
    broken = compat.check_folder(tmp_path / "saved", env)["differences"]
    assert broken and "TokenizersBackend does not exist" in broken[0]

    files = write_portable_tokenizer(tok, tmp_path / "portable")
    assert "chat_template.jinja" in files
    assert compat.check_folder(tmp_path / "portable", env)["differences"] == []


def test_the_probe_really_compares_ids(tmp_path, llmjp_with_template):
    # A folder that loads everywhere but encodes differently must be reported (the check can fail).
    write_portable_tokenizer(llmjp_with_template, tmp_path / "t")
    here = compat.probe_here(tmp_path / "t")
    there = json.loads(json.dumps(here))
    there["chat"][0][-1] += 1
    there["tokenizer"]["ids"][1] = there["tokenizer"]["ids"][1][:-1]
    assert compat.differences(here, there) == ["tokenizer differs in ids", "chat differs"]


@pytest.mark.parametrize("env", VERSIONS)
def test_config_written_by_transformers_5_loses_rope_theta_there_unless_made_portable(env, tmp_path):
    from tunekit.convert.configs import read_json
    from tunekit.model.portable import portable_model_config
    from tunekit.model import tiny_model_dir

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir(), d)
    cfg = read_json(d / "config.json")
    for legacy in ("rope_theta", "torch_dtype"):
        cfg.pop(legacy, None)
    cfg["rope_parameters"] = {"rope_theta": 500000.0, "rope_type": "default"}  # as transformers 5 writes
    (d / "config.json").write_text(json.dumps(cfg))
    diffs = compat.check_folder(d, env)["differences"]
    assert diffs and "rope_theta" in diffs[0]            # 4.x would silently run theta 10000
    assert ("dtype" in diffs[0]) is (env == "official-training")   # 4.47 reads only torch_dtype
    (d / "config.json").write_text(json.dumps(portable_model_config(cfg)))
    assert compat.check_folder(d, env)["differences"] == []


def test_portable_writer_is_deterministic_and_keeps_the_template_it_is_given(tmp_path, llmjp_with_template):
    a = write_portable_tokenizer(llmjp_with_template, tmp_path / "a")
    write_portable_tokenizer(llmjp_with_template, tmp_path / "b")
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in a)
    cfg = json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (cfg["add_bos_token"], cfg["add_eos_token"]) == (True, False)   # what it does, as officially
    assert cfg["chat_template"] == (tmp_path / "a" / "chat_template.jinja").read_text()
    # The competition tokenizer's special-token names.
    assert {cfg[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")} == \
        {"<|unk|>", "<|bos|>", "<|eos|>", "<|pad|>"}


def test_a_side_env_that_cannot_be_built_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_SIDE_ENVS", str(tmp_path / "envs"))
    bogus = compat.SideEnv("bogus", "a version that does not exist", ("transformers==0.0.0",))
    monkeypatch.setitem(compat.ENVS, "bogus", bogus)
    with pytest.raises(compat.SideEnvUnavailable, match="cannot build the transformers 0.0.0 check environment"):
        compat.side_python("bogus")
    assert not [p for p in (tmp_path / "envs").iterdir() if p.is_dir()]   # no half-built env left
