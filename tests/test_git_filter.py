"""Notebook outputs never reach git: the nbstripout filter `make setup` installs, on a real git repo.

A scratch copy of the working tree becomes its own git repository; `make setup` (with this
environment's venv) installs the filter; then each notebook is saved the way JupyterLab saves it
(jupytext's contents manager, the class `make lab` runs, writing both the .ipynb and its .py
twin) with outputs, execution counts, widget state and the kernel's language_info. There must be
nothing to commit: `git diff` is empty and `git add -A` stages nothing, after which `git status`
is clean too. (Before that `git add`, `git status` lists the saved notebooks: when a file's size
changed, git reports it without running the filter; git's own rule, see docs/notebooks.md.)
`tunekit notebooks check` must accept the saved files. Without the filter, `check` reports the
outputs instead. tests/browser/ does the same through a real JupyterLab.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunekit import nbclean
from tunekit.notebooks import NOTEBOOKS

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def checkout(tmp_path):
    """The working tree's tracked and new files, committed in a fresh repository."""
    root = tmp_path / "repo"
    files = _git(REPO, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot")
    return root


def _make_setup(root: Path) -> None:
    env = dict(os.environ, VENV=str(VENV), TUNEKIT_ROOT=str(root))
    done = subprocess.run(["make", "-s", "setup", f"VENV={VENV}"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def _save_like_jupyterlab(root: Path, rel: str) -> None:
    """Open and save a notebook through jupytext's async contents manager, as JupyterLab does, after
    a Run All: outputs, counts, a widget, the kernel's language_info, widget state."""
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from jupytext.async_contentsmanager import build_async_jupytext_contents_manager_class

    cm = build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(root_dir=str(root))

    async def run():
        model = await cm.get(rel)
        nb = model["content"]
        nb.metadata["language_info"] = {"name": "python", "version": "3.11.2", "file_extension": ".py"}
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            cell.execution_count = i + 1
            cell.metadata["execution"] = {"iopub.status.busy": "2026-12-03T10:00:00Z"}
            cell.outputs = [
                {"output_type": "stream", "name": "stdout", "text": f"cell {i}\n"},
                {"output_type": "display_data", "metadata": {},
                 "data": {"text/plain": "HBox()", "application/vnd.jupyter.widget-view+json":
                          {"model_id": "abc", "version_major": 2, "version_minor": 0}}},
                {"output_type": "execute_result", "execution_count": i + 1, "metadata": {},
                 "data": {"text/plain": "{'a different': 'summary'}"}},
            ]
        await cm.save({"type": "notebook", "format": "json", "content": nb}, rel)

    asyncio.run(run())


def test_every_committed_notebook_is_a_fixed_point_of_the_filter():
    """What the real nbstripout command (with the kit's keys) makes of a committed notebook is that notebook."""
    for nb in NOTEBOOKS:
        out = subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", "-t", "--extra-keys",
                              " ".join(nbclean.EXTRA_KEYS), str(nb.ipynb)],
                             capture_output=True, text=True, check=True).stdout
        assert out == nb.ipynb.read_text(encoding="utf-8"), f"{nb.name}: not in committed form (make sync-notebooks)"


@pytest.mark.slow
def test_a_jupyterlab_save_with_outputs_leaves_git_clean(checkout):
    _make_setup(checkout)
    config = _git(checkout, "config", "--local", "--get-regexp", "^filter.nbstripout")
    assert "filter.nbstripout.clean" in config and "nbstripout --keep-id" in config
    for nb in NOTEBOOKS:
        _save_like_jupyterlab(checkout, f"notebooks/{nb.name}.ipynb")
    saved = json.loads((checkout / "notebooks" / "30_sft.ipynb").read_text(encoding="utf-8"))
    assert any(c.get("outputs") for c in saved["cells"]), "the save did not write outputs: nothing was tested"
    assert _git(checkout, "diff") == ""
    _git(checkout, "add", "-A")
    assert _git(checkout, "diff", "--cached", "--stat") == ""
    assert _git(checkout, "status", "--porcelain") == ""
    env = dict(os.environ, TUNEKIT_ROOT=str(checkout))
    done = subprocess.run([str(VENV / "bin" / "tunekit"), "notebooks", "check"], cwd=checkout, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("0 problem(s)"), done.stdout + done.stderr


@pytest.mark.slow
def test_without_the_filter_check_reports_the_saved_outputs(checkout):
    _save_like_jupyterlab(checkout, "notebooks/30_sft.ipynb")
    env = dict(os.environ, TUNEKIT_ROOT=str(checkout))
    done = subprocess.run([str(VENV / "bin" / "tunekit"), "notebooks", "check"], cwd=checkout, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stdout
    assert any(line.startswith("30_sft.ipynb: cells ") and "carry outputs and no git filter strips them" in line
               for line in done.stdout.splitlines()), done.stdout
    assert " M notebooks/30_sft.ipynb" in _git(checkout, "status", "--porcelain")
