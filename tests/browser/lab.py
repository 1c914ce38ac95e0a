"""Drive a real JupyterLab in headless Chromium (Debian packages, no browser download).

Used by the browser tests: start JupyterLab on loopback with a token, open a notebook with the
`tunekit` kernel, run all cells the way a person would (JupyterLab's own "Run All" command),
wait until the kernel is idle and every code cell has run, then report what the page shows.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_available() -> bool:
    """True when Debian's chromium and chromedriver and selenium are installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def make_lab(root: Path, env: dict[str, str], venv: Path):
    """Start JupyterLab the way a person does, `make lab` in the checkout `root` (on a free
    LAB_PORT, with a token and without opening a browser); yields (base_url, token); always stops it."""
    port, token = _free_port(), secrets.token_hex(16)
    lab_args = " ".join([
        "--no-browser", f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"])
    cmd = ["make", "-s", "lab", f"LAB_PORT={port}", f"VENV={venv}", f"LAB_ARGS={lab_args}"]
    log = open(root.parent / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"`make lab` did not start JupyterLab; see {root.parent / 'jupyterlab.log'}")
                time.sleep(0.5)
        yield base, token
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium driven by Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # Flags for a closed network and a root sandbox (see the env notes); no GPU here.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


_STATE_JS = """
const app = window.jupyterapp;
if (!app) return {ready: false};
const w = app.shell.currentWidget;
if (!w || !w.sessionContext || !w.content) return {ready: false};
const sc = w.sessionContext;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
return {ready: true, path: w.context ? w.context.path : null,
        kernel: sc.session && sc.session.kernel ? sc.session.kernel.name : null,
        status: sc.kernelDisplayStatus,
        counts: cells.map(c => c.model.executionCount),
        pending: Array.from(w.node.querySelectorAll('.jp-InputPrompt')).filter(e => e.textContent.includes('*')).length};
"""

# What the page shows of the notebook being run (earlier notebooks stay open in hidden tabs).
_PAGE = "const _page = () => window.jupyterapp.shell.currentWidget.node;\n"


def _run_all(driver, before: dict, attempts: int = 3) -> None:
    """Start JupyterLab's Run All and wait until the kernel has really started on it.

    Not `return ...execute(...)`: WebDriver would await that promise (every cell done) under its
    30 s script timeout. And a command issued while the freshly opened tab is still settling can
    be refused silently, so it is issued again until a cell is queued or the kernel is busy.
    """
    for _ in range(attempts):
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')"
                              ".catch(e => console.log(e)); return null;")
        deadline = time.time() + 20
        while time.time() < deadline:
            state = driver.execute_script(_STATE_JS)
            if state.get("path") != before.get("path"):
                raise AssertionError(f"the open notebook changed under Run All: {before.get('path')} -> {state}")
            if state["status"] != "idle" or state["pending"] or state["counts"] != before["counts"]:
                return
            time.sleep(0.5)
    raise AssertionError(f"Run All never started: {driver.execute_script(_STATE_JS)}")


# Per code cell: its execution count, output text, images (a short fingerprint of each src) and
# whether a widget progress bar is shown.
_CELLS_JS = _PAGE + """
const w = window.jupyterapp.shell.currentWidget;
return w.content.widgets.filter(c => c.model.type === 'code').map(c => {
  const out = c.node.querySelector('.jp-OutputArea');
  const imgs = out ? Array.from(out.querySelectorAll('img')) : [];
  return {source: c.model.sharedModel.getSource(), count: c.model.executionCount,
          text: out ? out.innerText.slice(0, 4000) : '',
          error: out ? Array.from(out.querySelectorAll('.jp-OutputArea-output'))
                        .filter(e => (e.getAttribute('data-mime-type') || '').includes('stderr')
                                     && /Traceback|Error:|error:/.test(e.textContent))
                        .map(e => e.textContent.slice(0, 2000)) : [],
          images: imgs.map(i => i.src.length + ':' + i.src.slice(-48)),
          widget_bars: out ? out.querySelectorAll('[class*="widget-progress"], [class*="progress-bar"]').length : 0};
});
"""


def open_notebook(driver, base: str, token: str, rel_path: str, settle_s: float = 3.0) -> dict:
    """Open `rel_path` in JupyterLab and wait (up to 120 s) until it is the current tab, with its
    kernel idle, and has stayed so for `settle_s`.

    Why the path and the wait: the page reload restores the workspace's earlier tabs (the Tour
    notebook from an earlier test) and one of them can be the current, idle tab for a moment
    before `rel_path` opens. An edit or Run All issued then lands on the wrong notebook, and the
    notebook under test is left unrun (seen in CI: "assert 0 == 1" errors, parameters unchanged).
    """
    driver.get(f"{base}/lab/tree/{rel_path}?token={token}")
    deadline = time.time() + 120
    state, ready_since = {}, None
    while time.time() < deadline:
        state = driver.execute_script(_STATE_JS) or {}
        if (state.get("ready") and state.get("path") == rel_path and state.get("kernel")
                and state.get("status") == "idle"):
            ready_since = ready_since or time.time()
            if time.time() - ready_since >= settle_s:
                return state
        else:
            ready_since = None
        time.sleep(0.5)
    raise AssertionError(f"{rel_path}: notebook/kernel never became the ready current tab: {state}")


def set_parameter(driver, name: str, literal: str) -> str:
    """Change one value in the open notebook's parameters cell, as a person types it; returns the
    cell's previous source (to put back with `set_parameters_source`). Fails when no line of the
    current notebook's parameters cell names `name` (an edit that changed nothing hides a bug)."""
    answer = driver.execute_script(_PAGE + """
        const [name, literal] = [arguments[0], arguments[1]];
        const w = window.jupyterapp.shell.currentWidget;
        const cell = w.content.widgets.find(c => (c.model.getMetadata('tags') || []).includes('parameters'));
        const old = cell.model.sharedModel.getSource();
        let found = 0;
        const lines = old.split('\\n').map(l => {
          if (!l.startsWith(name + ':')) return l;
          found += 1;
          const [head, rest] = [l.split(' = ')[0], l.split(' = ').slice(1).join(' = ')];
          return head + ' = ' + literal + '  #' + rest.split('#').slice(1).join('#');
        });
        const source = lines.join('\\n');
        if (found !== 1) return {error: found + ' lines of ' + w.context.path + "'s parameters cell start with " + name + ':'};
        cell.model.sharedModel.setSource(source);
        if (cell.model.sharedModel.getSource() !== source) return {error: 'the edit did not hold'};
        return {old: old};""", name, literal)
    if "error" in answer:
        raise AssertionError(f"set_parameter({name}={literal}): {answer['error']}")
    return answer["old"]


def set_parameters_source(driver, source: str) -> None:
    """Put the parameters cell's source back."""
    driver.execute_script(_PAGE + """
        const w = window.jupyterapp.shell.currentWidget;
        const cell = w.content.widgets.find(c => (c.model.getMetadata('tags') || []).includes('parameters'));
        cell.model.sharedModel.setSource(arguments[0]);""", source)


# Run All on the tiny defaults takes a few minutes; on a loaded 2-core CI machine several times
# that. The deadline is generous on purpose: a slow run is not a failure, a stuck one is.
RUN_DEADLINE_S = 1800


def run_all(driver, name: str, output_dir: Path, timeout: float = RUN_DEADLINE_S,
            watch: str | None = None) -> dict:
    """Run All in the open notebook (started, never awaited) and poll until it finishes or stops.

    `watch`: text of a cell whose outputs are sampled while it runs (for the live plot).
    Returns what the page showed; on a timeout, saves a screenshot and reports the cells.
    """
    before = driver.execute_script(_STATE_JS)
    _run_all(driver, before)
    started, idle_since, samples = time.time(), None, []
    while time.time() - started < timeout:
        time.sleep(2)
        state = driver.execute_script(_STATE_JS)
        if watch:
            cell = next((c for c in driver.execute_script(_CELLS_JS) if watch in c["source"]), None)
            if cell is not None and cell["count"] is None:  # still running (or queued)
                samples.append({"images": cell["images"], "widget_bars": cell["widget_bars"]})
        if state["status"] == "idle" and state["pending"] == 0:
            if all(c for c in state["counts"]) and state["counts"] != before["counts"]:
                break
            # Run All stops at a failing cell: idle with unrun cells for a while means it stopped.
            idle_since = idle_since or time.time()
            if time.time() - idle_since > 20:
                break
        else:
            idle_since = None
    else:
        shot = output_dir / f"lab-{name}-timeout.png"
        driver.save_screenshot(str(shot))
        cells = driver.execute_script(_CELLS_JS)
        raise AssertionError(f"{name}: Run All did not finish within {timeout} s (screenshot {shot}); "
                             f"cells: {[(c['count'], c['text'][-300:]) for c in cells]}")
    cells = driver.execute_script(_CELLS_JS)
    tables = driver.execute_script(_PAGE + "return _page().querySelectorAll('.jp-RenderedHTMLCommon table').length;")
    images = driver.execute_script(
        _PAGE + "return Array.from(_page().querySelectorAll('.jp-RenderedImage img')).filter(i => i.naturalWidth > 50).length;")
    failed = [c for c in cells if c["error"]]
    return {"kernel": state["kernel"], "cells_run": sum(1 for c in state["counts"] if c),
            "cells": len(state["counts"]), "errors": [e for c in cells for e in c["error"]],
            "failing_cell": failed[0] if failed else None, "cell_states": cells, "samples": samples,
            "tables": tables, "images": images, "elapsed_s": round(time.time() - started, 1)}


def save(driver) -> None:
    """Ctrl-S: JupyterLab's save command, then a moment for the contents manager to write."""
    driver.execute_script("return window.jupyterapp.commands.execute('docmanager:save');")
    time.sleep(3)


def describe_failure(seen: dict) -> str:
    """The failing cell's source and output, for an assertion message."""
    cell = seen.get("failing_cell")
    if not cell:
        unrun = [c for c in seen.get("cell_states", []) if c["count"] is None]
        cell = unrun[0] if unrun else None
    if not cell:
        return str({k: v for k, v in seen.items() if k != "cell_states"})
    return f"cell:\n{cell['source'][:800]}\noutput:\n{cell['text'][-2000:]}"
