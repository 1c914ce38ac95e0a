"""Shared test setup: offline, deterministic, and every run record in a temp folder."""
from __future__ import annotations

import os
import shutil
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


_KEEP = (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)


def pytest_sessionfinish(session, exitstatus):
    """The session's run records go with it when every test passed; a failed session keeps them to
    look at (each pytest process, xdist workers included, has a folder of its own)."""
    if exitstatus not in _KEEP:
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the run records of a failed session are (they stay until removed by hand)."""
    if exitstatus in _KEEP:
        terminalreporter.write_line(f"run records of the notebooks run by this session: "
                                    f"{tempfile.gettempdir()}/tunekit-tests-*/runs (kept because the session failed)")


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
