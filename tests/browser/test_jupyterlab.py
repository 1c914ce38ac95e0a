"""The kit as a person sees it: `make lab`, a real JupyterLab, driven in headless Chromium.

A scratch git repository holds a copy of the working tree; `make setup` installs the git filter
there and `make lab` starts JupyterLab exactly as the README says (on a free LAB_PORT). Then:

- the server's root is the repository and the browser opens in notebooks/; the Tour notebook
  runs with tables and plots inline (the screenshot is the README's Tour image);
- a wrong parameter or a bad data line shows one sentence in the failing cell and Run All stops;
- 30_sft with a bad parameter, then a good run: the error sentence is visible in the failing cell,
  the good run shows a widget progress bar and ONE live loss plot that changes while it trains,
  the run directory gets the record of the interactive run, and after Ctrl-S there is nothing to
  commit (the notebook outputs stay out of git).

Run All is started and never awaited; completion is polled with a generous deadline
(lab.RUN_DEADLINE_S). A failure reports the failing cell's source and output, and leaves a
screenshot in tests/_output/.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .lab import (browser_available, chromium, describe_failure, make_lab, open_notebook, run_all, save,
                  set_parameter, set_parameters_source)

# pytest puts tests/ (the folder above this package) on sys.path, so the sibling module imports.
from test_notebook_errors import write_bad_data  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "tests" / "_output"
VENV = Path(sys.executable).parent.parent

if not browser_available():
    reason = "Debian chromium/chromium-driver or selenium missing (run `bash tools/browser_deps.sh` as root)"
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` in a scratch repository (a copy of the working tree, committed, filter installed)."""
    root = tmp_path_factory.mktemp("lab") / "tunekit"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "snapshot")
    settings = root.parent / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "get Jupyter news?" popup over the screenshots (and no outbound request for it).
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEKIT_", "JPY_"))}
    env.update(TUNEKIT_ROOT=str(root), TUNEKIT_CACHE_DIR=str(REPO / ".cache" / "tunekit"), HF_HUB_OFFLINE="1",
               JUPYTER_CONFIG_DIR=str(root.parent / "jupyter-config"),
               JUPYTERLAB_SETTINGS_DIR=str(root.parent / "lab-settings"))
    done = subprocess.run(["make", "-s", "setup", f"VENV={VENV}"], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with make_lab(root, env, VENV) as (base, token), chromium() as driver:
        yield root, base, token, driver


def test_make_lab_serves_the_repository_and_runs_the_tour(lab):
    root, base, token, driver = lab
    driver.get(f"{base}/?token={token}")
    assert "/lab/tree/notebooks" in driver.current_url, driver.current_url
    listing = json.loads(driver.execute_script(
        "return fetch('/api/contents?token=' + arguments[0]).then(r => r.text());", token))
    assert {"notebooks", "datasets", "docs"} <= {c["name"] for c in listing["content"]}
    # The README's Tour: notebooks/10_inspect_data.ipynb, Run All.
    open_notebook(driver, base, token, "notebooks/10_inspect_data.ipynb")
    seen = run_all(driver, "10_inspect_data", OUTPUT)
    driver.execute_script("const i = window.jupyterapp.shell.currentWidget.node.querySelector('.jp-RenderedImage img');"
                          "if (i) i.scrollIntoView({block: 'center'});")
    driver.save_screenshot(str(OUTPUT / "lab-10_inspect_data.png"))
    assert seen["kernel"] == "tunekit"
    assert seen["cells_run"] == seen["cells"] and seen["errors"] == [], describe_failure(seen)
    assert seen["tables"] >= 1 and seen["images"] >= 1, seen
    save(driver)


def test_a_bad_data_line_shows_one_sentence(lab, tmp_path):
    root, base, token, driver = lab
    data = write_bad_data(tmp_path / "bad_data")
    open_notebook(driver, base, token, "notebooks/10_inspect_data.ipynb")
    old = set_parameter(driver, "data_dir", json.dumps(str(data)))
    try:
        for name, literal in (("data_version", '"v1"'), ("sft_datasets", "{}"), ("dpo_datasets", "{}")):
            set_parameter(driver, name, literal)
        seen = run_all(driver, "bad_data_line", OUTPUT)
        driver.save_screenshot(str(OUTPUT / "lab-bad_data_line.png"))
    finally:
        set_parameters_source(driver, old)
        save(driver)
    assert len(seen["errors"]) == 1, describe_failure(seen)
    text = seen["errors"][0]
    assert all(n in text for n in ("error: ", "drill.jsonl:3", "invalid JSON")), text
    assert "Traceback" not in text and 'File "' not in text, text
    assert 0 < seen["cells_run"] < seen["cells"], seen["cells_run"]


def test_30_sft_bad_parameter_then_a_good_run_and_nothing_to_commit(lab):
    """The issue's "done when": error sentence in the failing cell; widget bar and a live plot in a
    good run; nothing to commit afterwards."""
    root, base, token, driver = lab
    open_notebook(driver, base, token, "notebooks/30_sft.ipynb")
    defaults = set_parameter(driver, "model", '"nonexistent_model"')
    try:
        bad = run_all(driver, "30_sft-bad_parameter", OUTPUT)
        driver.execute_script("const e = window.jupyterapp.shell.currentWidget.node"
                              ".querySelector('.jp-OutputArea-output[data-mime-type*=stderr]');"
                              "if (e) e.scrollIntoView({block: 'center'});")
        driver.save_screenshot(str(OUTPUT / "lab-30_sft-bad_parameter.png"))
        assert len(bad["errors"]) == 1, describe_failure(bad)
        assert "error: model 'nonexistent_model'" in bad["errors"][0] and "does not exist" in bad["errors"][0]
        assert "Traceback" not in bad["errors"][0], bad["errors"][0]
        assert 0 < bad["cells_run"] < bad["cells"]
        # The good run: the defaults, one epoch (40 steps) to keep the test short.
        set_parameters_source(driver, defaults)
        set_parameter(driver, "epochs", "1")
        good = run_all(driver, "30_sft-good", OUTPUT, watch="run_sft(")
        driver.execute_script("const i = window.jupyterapp.shell.currentWidget.node"
                              ".querySelector('.jp-OutputArea img'); if (i) i.scrollIntoView({block: 'center'});")
        driver.save_screenshot(str(OUTPUT / "lab-30_sft-good.png"))
    finally:
        set_parameters_source(driver, defaults)
        save(driver)
    assert good["cells_run"] == good["cells"] and good["errors"] == [], describe_failure(good)
    train = next(c for c in good["cell_states"] if "run_sft(" in c["source"])
    assert train["widget_bars"] >= 1, train["text"][-500:]
    assert len(train["images"]) == 1, train["images"]  # one live plot, redrawn in place
    during = good["samples"]
    assert during and max(len(s["images"]) for s in during) <= 1, during[-3:]
    assert len({img for s in during for img in s["images"]} | set(train["images"])) >= 2, \
        "the live plot never changed while training"
    assert any(s["widget_bars"] for s in during), during[-3:]
    # The interactive run left its record: the code executed, with the training cell in it.
    records = sorted((root / "runs" / "sft").glob("*/session-*.ipynb"))
    assert records and "run_sft(" in records[-1].read_text(encoding="utf-8")
    # Nothing to commit: the saved notebook's outputs are stripped by the git filter.
    saved = json.loads((root / "notebooks" / "30_sft.ipynb").read_text(encoding="utf-8"))
    assert any(c.get("outputs") for c in saved["cells"]), "the save wrote no outputs: nothing tested"
    assert _git(root, "diff") == "", _git(root, "diff")[:2000]
    _git(root, "add", "-A")
    assert _git(root, "status", "--porcelain") == "", _git(root, "status", "--porcelain")
