"""Process-wide runtime helpers: determinism, progress bars and where the output goes.

Determinism lives here rather than in each notebook: call `seed_everything(cfg.seed)` in the
validation cell. Output adapts to where it is seen (`frontend()`):

    jupyterlab   a kernel started by a Jupyter server (JupyterLab, Notebook): widget progress bars
                 (ipywidgets) and live plots that update in place
    terminal     a TTY: tqdm's one-line bars
    headless     papermill, PBS, CI, pipes: a plain log line every `headless_interval` seconds,
                 so saved notebooks and job logs stay readable and stable
"""
from __future__ import annotations

import os
import random
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def frontend() -> str:
    """Where this process's output is seen: "jupyterlab", "terminal" or "headless" (see the module doc).

    TUNEKIT_HEADLESS=1 (set by the kit's runners and job scripts) forces "headless", =0 forbids
    it. A kernel counts as JupyterLab when a Jupyter server started it (the server names the
    session in JPY_SESSION_NAME); papermill and nbclient start kernels without it, and widgets
    would only leave placeholders in the notebooks they save.
    """
    flag = os.environ.get("TUNEKIT_HEADLESS")
    if flag is not None and flag not in ("", "0", "false"):
        return "headless"
    if "ipykernel" in sys.modules:
        return "jupyterlab" if os.environ.get("JPY_SESSION_NAME") or flag is not None else "headless"
    return "terminal" if sys.stderr.isatty() or flag is not None else "headless"


def is_headless() -> bool:
    """True under papermill/PBS/CI or without a TTY: periodic log lines instead of live bars and plots."""
    return frontend() == "headless"


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so CPU runs are bit-reproducible."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    except ImportError:
        pass


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None,
             unit: str = "it", headless_interval: float | None = None, disable: bool = False):
    """One progress bar for one long step: a widget bar in JupyterLab, tqdm's line in a terminal,
    a log line every `headless_interval` seconds headless."""
    from tqdm import tqdm

    where = frontend()
    if headless_interval is None:
        # TUNEKIT_PROGRESS_SECONDS: how often a headless bar logs (`tunekit demo` asks for more often)
        headless_interval = float(os.environ.get("TUNEKIT_PROGRESS_SECONDS") or 30.0)
    if where == "headless":
        # One line per interval, newline-terminated, to stdout: readable in PBS logs and in
        # papermill's --log-output, instead of thousands of carriage-return updates.
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable,
                    mininterval=headless_interval, maxinterval=headless_interval * 4,
                    file=sys.stdout, ascii=True, ncols=100, dynamic_ncols=False)
    if where == "jupyterlab" and _widgets_available():
        from tqdm.notebook import tqdm as widget_tqdm

        # A real bar that updates in place (text bars in a notebook become one stderr box per update).
        return widget_tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True)


def notebook_setup() -> None:
    """Call once at the top of a notebook: a UserError then shows as its one sentence.

    UserError renders itself through IPython's `_render_traceback_` protocol, which reaches
    JupyterLab, papermill and nbval alike. What must not happen is a custom exception handler
    for it (`set_custom_exc`): IPython discards such a handler's return value, so the failing
    cell would show nothing at all. This clears one left in a long-lived kernel.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    from .errors import UserError

    if any(issubclass(UserError, exc) for exc in ip.custom_exceptions):
        ip.set_custom_exc((), None)
