"""The kit as a person sees it: notebooks run in a real JupyterLab in headless Chromium.

For each notebook: open it with the `tunekit` kernel, Run All, wait, then assert that no cell
failed (in the page and in the saved notebook), that tables and plots rendered, and keep a
screenshot in tests/_output/ (the README's Tour image comes from here).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from .lab import browser_available, chromium, jupyterlab, run_notebook_in_lab

# pytest puts tests/ (the folder above this package) on sys.path, so the sibling module imports.
from test_notebook_errors import write_bad_data  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "tests" / "_output"

if not browser_available():
    reason = "Debian chromium/chromium-driver or selenium missing (run `bash tools/browser_deps.sh` as root)"
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a scratch copy of notebooks/ (saving never touches the committed files)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    settings = root / ".lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "get Jupyter news?" popup over the screenshot (and no outbound request for it).
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {**os.environ, "TUNEKIT_RUNS_DIR": str(root / "runs"), "TUNEKIT_HEADLESS": "0",
           "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "HF_HUB_OFFLINE": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings")}
    with jupyterlab(root, env) as (base, token), chromium() as driver:
        yield root, base, token, driver


# One notebook: the Tour's. Every notebook already runs headless in test_pipeline.py; this checks
# the interactive path (JupyterLab, live progress bars, inline tables and plots) once.
@pytest.mark.parametrize("name, min_tables, min_images", [
    ("10_inspect_data", 1, 1),
])
def test_notebook_runs_in_jupyterlab(lab, name, min_tables, min_images):
    root, base, token, driver = lab
    if not (root / "notebooks" / f"{name}.ipynb").exists():
        pytest.fail(f"notebooks/{name}.ipynb does not exist")
    seen = run_notebook_in_lab(driver, base, token, f"notebooks/{name}.ipynb")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    # Show the first plot (what a person scrolls to), not just the last cell.
    driver.execute_script("const i = window.jupyterapp.shell.currentWidget.node.querySelector('.jp-RenderedImage img');"
                          "if (i) i.scrollIntoView({block: 'center'});")
    driver.save_screenshot(str(OUTPUT / f"lab-{name}.png"))
    assert seen["kernel"] == "tunekit"
    assert seen["cells_run"] == seen["cells"], seen
    assert seen["errors"] == [], seen["errors"]
    saved = json.loads((root / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
    failed = [o for c in saved["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert failed == [], failed[:1]
    assert seen["tables"] >= min_tables, seen
    assert seen["images"] >= min_images, seen


def _with_parameters(src: Path, dst: Path, **values: str) -> None:
    """Copy a notebook, replacing the defaults of some parameters (what a person edits)."""
    nb = nbformat.read(src, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    for name, literal in values.items():
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{name}:"))
        annotation, _, rest = lines[i].partition(" = ")
        lines[i] = f"{annotation} = {literal}  #{rest.partition('#')[2]}"
    cell.source = "\n".join(lines)
    nbformat.write(nb, dst)


@pytest.mark.parametrize("case", ["bad parameter", "bad data line"])
def test_user_error_shows_in_the_failing_cell(lab, case):
    """A person who sets a wrong parameter, or whose data has a bad line, sees one sentence as
    the failing cell's output (not an empty cell, not a traceback) and Run All stops there."""
    root, base, token, driver = lab
    if case == "bad parameter":
        name, needles = "bad_parameter", ["error: model 'nonexistent_model'", "does not exist"]
        _with_parameters(root / "notebooks" / "30_sft.ipynb", root / "notebooks" / f"{name}.ipynb",
                         model='"nonexistent_model"')
    else:
        data = write_bad_data(root / "bad_data")
        name, needles = "bad_data_line", ["error: ", "drill.jsonl:3", "invalid JSON"]
        _with_parameters(root / "notebooks" / "10_inspect_data.ipynb",
                         root / "notebooks" / f"{name}.ipynb", data_dir=repr(str(data)),
                         data_version='"v1"', sft_datasets="{}", dpo_datasets="{}", on_error='"raise"')
    seen = run_notebook_in_lab(driver, base, token, f"notebooks/{name}.ipynb")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    driver.execute_script("const e = window.jupyterapp.shell.currentWidget.node"
                          ".querySelector('.jp-OutputArea-output[data-mime-type*=stderr]');"
                          "if (e) e.scrollIntoView({block: 'center'});")
    driver.save_screenshot(str(OUTPUT / f"lab-{name}.png"))
    assert len(seen["errors"]) == 1, seen
    page_text = seen["errors"][0]
    assert all(n in page_text for n in needles), page_text
    assert "Traceback" not in page_text and "File \"" not in page_text, page_text
    assert 0 < seen["cells_run"] < seen["cells"], seen  # Run All stopped at the failing cell
    saved = json.loads((root / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
    failed = [o for c in saved["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(failed) == 1 and all(n in "\n".join(failed[0]["traceback"]) for n in needles), failed
