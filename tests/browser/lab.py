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
import sys
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
def jupyterlab(root: Path, env: dict[str, str]):
    """Run JupyterLab on 127.0.0.1 serving `root`; yields (base_url, token); always stops it."""
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
           f"--port={port}", f"--ServerApp.root_dir={root}",
           f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI runs as root; JupyterLab refuses that without the flag
        cmd.append("--allow-root")
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {root / 'jupyterlab.log'}")
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
return {ready: true, kernel: sc.session && sc.session.kernel ? sc.session.kernel.name : null,
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
            if state["status"] != "idle" or state["pending"] or state["counts"] != before["counts"]:
                return
            time.sleep(0.5)
    raise AssertionError(f"Run All never started: {driver.execute_script(_STATE_JS)}")


def run_notebook_in_lab(driver, base: str, token: str, rel_path: str, timeout: float = 900) -> dict:
    """Open `rel_path` in JupyterLab, Run All, wait for completion; returns what the page showed."""
    driver.get(f"{base}/lab/tree/{rel_path}?token={token}")
    deadline = time.time() + 120
    state = {}
    while time.time() < deadline:
        state = driver.execute_script(_STATE_JS) or {}
        if state.get("ready") and state.get("kernel") and state.get("status") == "idle":
            break
        time.sleep(1)
    else:
        raise AssertionError(f"notebook/kernel never became ready: {state}")
    _run_all(driver, state)
    started, idle_since = time.time(), None
    while time.time() - started < timeout:
        time.sleep(2)
        state = driver.execute_script(_STATE_JS)
        if state["status"] == "idle" and state["pending"] == 0:
            if all(c for c in state["counts"]):
                break
            # Run All stops at a failing cell: idle with unrun cells for a while means it stopped.
            idle_since = idle_since or time.time()
            if time.time() - idle_since > 20:
                break
        else:
            idle_since = None
    else:
        raise AssertionError(f"notebook did not finish within {timeout} s: {state}")
    errors = driver.execute_script(_PAGE + """
        return Array.from(_page().querySelectorAll('.jp-OutputArea-output'))
          .filter(e => (e.getAttribute('data-mime-type') || '').includes('stderr')
                       && /Traceback|Error:|error:/.test(e.textContent)).map(e => e.textContent.slice(0, 2000));""")
    tables = driver.execute_script(_PAGE + "return _page().querySelectorAll('.jp-RenderedHTMLCommon table').length;")
    images = driver.execute_script(
        _PAGE + "return Array.from(_page().querySelectorAll('.jp-RenderedImage img')).filter(i => i.naturalWidth > 50).length;")
    driver.execute_script("return window.jupyterapp.commands.execute('docmanager:save');")
    time.sleep(2)
    return {"kernel": state["kernel"], "cells_run": sum(1 for c in state["counts"] if c),
            "cells": len(state["counts"]), "errors": errors,
            "tables": tables, "images": images, "elapsed_s": round(time.time() - started, 1)}
