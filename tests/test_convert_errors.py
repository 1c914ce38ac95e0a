"""Issue #14 item 7: two conversion inputs that leaked a bare exception now give one sentence."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunekit.convert import api
from tunekit.errors import UserError
from tunekit.model import tiny_model_dir

QUIET = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_model_dir()


def test_hf_config_without_hidden_size(tiny, tmp_path):
    """Was `KeyError: 'hidden_size'`."""
    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    cfg = json.loads((src / "config.json").read_text())
    del cfg["hidden_size"]
    (src / "config.json").write_text(json.dumps(cfg))
    want = r"config\.json: missing field 'hidden_size' \(is this a LLaMA config\.json\?\)"
    with pytest.raises(UserError, match=want):
        api.hf_to_nemo(str(src), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_nemo_dir_without_common_pt(tiny, tmp_path):
    """Was an AttributeError from inside Megatron."""
    nemo = tmp_path / "nemo"
    api.hf_to_nemo(str(tiny), nemo, **QUIET)
    (nemo / "model_weights" / "common.pt").unlink()
    with pytest.raises(UserError) as exc:
        api.nemo_to_hf(str(nemo), tmp_path / "out", **QUIET)
    message = str(exc.value)
    assert "common.pt" in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()
