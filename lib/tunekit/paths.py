"""Where things live: every path in the kit is anchored here, never on the current directory.

JupyterLab runs a notebook in its own folder, papermill in the caller's directory unless told
otherwise, nbval in the notebook's folder; anchoring on the repository root makes all three agree.
"""
from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The checkout's root (the folder holding pyproject.toml), or $TUNEKIT_ROOT when set."""
    env = os.environ.get("TUNEKIT_ROOT")
    if env:
        return Path(env).resolve()
    for parent in [_PKG, *_PKG.parents]:
        if (parent / "pyproject.toml").is_file() and (parent / "lib" / "tunekit").is_dir():
            return parent
    return Path.cwd().resolve()


def runs_root() -> Path:
    """Where run directories go: $TUNEKIT_RUNS_DIR (tests set it) or <repo>/runs."""
    env = os.environ.get("TUNEKIT_RUNS_DIR")
    return Path(env).resolve() if env else repo_root() / "runs"


def cache_root() -> Path:
    """Where content-addressed caches go: $TUNEKIT_CACHE_DIR or <repo>/.cache/tunekit."""
    env = os.environ.get("TUNEKIT_CACHE_DIR")
    return Path(env).resolve() if env else repo_root() / ".cache" / "tunekit"


def resolve(path: str | os.PathLike, base: Path | None = None) -> Path:
    """Resolve a user path: absolute stays, `~` expands, relative is taken from `base` or the repo root."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    return ((base or repo_root()) / p).resolve()


def fixtures_dir() -> Path:
    """Where the deterministic tiny model/tokenizer are built on first use (<cache>/fixtures)."""
    return cache_root() / "fixtures"


def shared_fixture(name: str) -> Path:
    """A file from the sibling `shared/fixtures/` folder (the real llm-jp tokenizer model)."""
    env = os.environ.get("TUNEKIT_SHARED_FIXTURES")
    base = Path(env) if env else repo_root().parent / "shared" / "fixtures"
    return base / name
