"""The committed form of the kit's notebooks, and the git filter that keeps outputs out of git.

A committed `.ipynb` carries no outputs at all. What a `# NBVAL_CHECK_OUTPUT` summary cell must
print (its regression reference, stored by `tunekit notebooks refresh`) lives in that cell's
metadata (`tunekit.reference_outputs`), so running a notebook in JupyterLab can never change the
reference, and every output a session saves can be stripped.

The stripping is nbstripout's (pinned in environment.yml), with the keys below: `make setup`
installs it as the git `clean` filter of `*.ipynb` (.gitattributes), so Run All + Ctrl-S leaves
`git status` clean; `strip` applies the very same function in-process (sync, refresh, check), so a
committed notebook is a fixed point of the filter. JupyterLab saves through jupytext's contents
manager, which also rewrites the paired `.py` and the notebook's `jupytext` metadata: the committed
`.py` files keep jupytext's own header and the `jupytext` metadata is one of the stripped keys.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CHECK_MARK = "NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"name": "tunekit", "display_name": "tunekit (Python 3.11)", "language": "python"}
META = "tunekit"                    # cell.metadata["tunekit"]["reference_outputs"]
REFERENCE = "reference_outputs"

# nbstripout's own default keys (its command line adds them itself; the library does not).
NBSTRIPOUT_DEFAULT_KEYS = (
    "metadata.signature", "metadata.widgets", "cell.metadata.collapsed", "cell.metadata.ExecuteTime",
    "cell.metadata.execution", "cell.metadata.heading_collapsed", "cell.metadata.hidden",
    "cell.metadata.scrolled",
)
# What else a JupyterLab save or a papermill run adds: the kernel's language_info, jupytext's
# pairing metadata (rewritten on every save), papermill's timings.
EXTRA_KEYS = ("metadata.language_info", "metadata.jupytext", "metadata.papermill", "cell.metadata.papermill")
FILTER = "nbstripout"               # the filter and diff driver names in .gitattributes


def is_check_cell(cell) -> bool:
    """True for a `# NBVAL_CHECK_OUTPUT` summary cell."""
    return cell.get("cell_type") == "code" and CHECK_MARK in cell.get("source", "")


def reference(cell) -> list[dict[str, Any]] | None:
    """The stored reference outputs of a check cell (None: never refreshed)."""
    ref = (cell.get("metadata", {}).get(META) or {}).get(REFERENCE)
    return None if ref is None else [dict(o) for o in ref]


def set_reference(cell, outputs: list[dict[str, Any]]) -> None:
    """Store `outputs` as the check cell's reference (execution counts dropped: they are not compared)."""
    ref = []
    for out in outputs:
        out = copy.deepcopy(dict(out))
        out.pop("execution_count", None)
        ref.append(out)
    cell.metadata.setdefault(META, {})[REFERENCE] = ref


def strip(nb) -> None:
    """Put a notebook (nbformat node) into its committed form, in place: nbstripout with the kit's keys."""
    from nbstripout import strip_output

    strip_output(nb, keep_output=False, keep_count=False, keep_id=True,
                 extra_keys=list(NBSTRIPOUT_DEFAULT_KEYS + EXTRA_KEYS))
    nb.metadata["kernelspec"] = dict(KERNELSPEC)


def stripped_copy(nb):
    """A stripped deep copy (the notebook as git would store it)."""
    out = copy.deepcopy(nb)
    strip(out)
    return out


def has_outputs(nb) -> list[int]:
    """1-based numbers of the cells that carry outputs or execution counts."""
    return [i for i, c in enumerate(nb.cells, 1)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


# ---------------------------------------------------------------- the git filter
def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)


def in_git(root: Path) -> bool:
    """True when `root` is inside a git work tree."""
    try:
        return _git(root, "rev-parse", "--is-inside-work-tree").stdout.strip() == "true"
    except (OSError, subprocess.SubprocessError):
        return False


def filter_command(root: Path, python: str | None = None) -> str:
    """The `clean` command git runs on every staged .ipynb: this environment's nbstripout.

    git runs filters from the top of the work tree, so a venv inside the checkout is named by its
    relative path: the same setting then works in every clone and `git worktree` of the repository
    (worktrees share one config), each with its own `.venv`.
    """
    exe = Path(python or sys.executable)
    try:
        exe = exe.relative_to(root)
    except ValueError:
        pass
    return f'"{exe}" -m nbstripout --keep-id'


def install_git_filter(root: Path, python: str | None = None) -> list[str]:
    """Configure the checkout's git (its local config) to strip notebooks on `git add`/`status`/`diff`.

    .gitattributes (committed) maps `*.ipynb` to the filter; this sets what the filter runs: the
    venv's nbstripout with the kit's extra keys, a plain `cat` smudge, and the same stripping as
    the diff text conversion. Returns the `key = value` lines set.
    """
    cmd = filter_command(root, python)
    settings = {
        f"filter.{FILTER}.clean": cmd,
        f"filter.{FILTER}.smudge": "cat",
        # A failing filter must stop `git add` rather than let outputs through.
        f"filter.{FILTER}.required": "true",
        f"filter.{FILTER}.extrakeys": " ".join(EXTRA_KEYS),
        f"diff.{FILTER}.textconv": f"{cmd} -t",
    }
    for key, value in settings.items():
        done = _git(root, "config", "--local", key, value)
        if done.returncode:
            raise RuntimeError(f"git config {key} failed: {done.stderr.strip()}")
    return [f"{k} = {v}" for k, v in settings.items()]


def uninstall_git_filter(root: Path) -> None:
    """Remove the filter settings (e.g. before the venv that runs them is deleted)."""
    _git(root, "config", "--local", "--remove-section", f"filter.{FILTER}")
    _git(root, "config", "--local", "--remove-section", f"diff.{FILTER}")


def git_filter_active(path: Path) -> bool:
    """True when git strips this notebook on add: .gitattributes names the filter, it is configured
    and the python it runs exists."""
    here = path.parent
    try:
        attr = _git(here, "check-attr", "filter", "--", path.name).stdout
        clean = _git(here, "config", f"filter.{FILTER}.clean").stdout.strip()
        top = Path(_git(here, "rev-parse", "--show-toplevel").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False
    if not attr.strip().endswith(f": {FILTER}") or not clean:
        return False
    python = clean.split('"')[1] if clean.startswith('"') else clean.split()[0]
    return os.access(top / python, os.X_OK)


def committed_text(path: Path) -> str | None:
    """The notebook as staged in git's index (None outside git or when not tracked)."""
    try:
        done = _git(path.parent, "show", f":./{path.name}")
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
