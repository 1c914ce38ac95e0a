"""Shared test setup: offline, deterministic, and every run record in a temp folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports transformers/torch: never touch the Hub, keep CPU numerics boring.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["TUNEKIT_HEADLESS"] = "1"
# Notebooks executed by the tests (in their own kernel) inherit these: their run records go to a
# throwaway folder instead of the user's runs/.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="tunekit-tests-"))
os.environ.setdefault("TUNEKIT_RUNS_DIR", str(_SESSION_TMP / "runs"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    """A private runs root for one test."""
    d = tmp_path / "runs"
    monkeypatch.setenv("TUNEKIT_RUNS_DIR", str(d))
    return d
