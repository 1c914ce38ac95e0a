"""Process-wide runtime helpers: determinism, progress bars and headless detection.

Determinism lives here rather than in each notebook: call `seed_everything(cfg.seed)` in the
validation cell. Progress bars are plain tqdm (no widgets, which papermill and nbval mangle); when
headless (papermill, PBS, CI) they print a log line every `headless_interval` seconds instead.
"""
from __future__ import annotations

import os
import random
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def is_headless() -> bool:
    """True under papermill/PBS/CI (TUNEKIT_HEADLESS=1, set by the kit's runners) or without a TTY."""
    flag = os.environ.get("TUNEKIT_HEADLESS")
    if flag is not None:
        return flag not in ("", "0", "false")
    if "ipykernel" in sys.modules:
        return False  # interactive Jupyter kernel: tqdm's \r updates render fine in JupyterLab
    return not sys.stderr.isatty()


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
             unit: str = "it", headless_interval: float = 30.0, disable: bool = False):
    """A tqdm bar that renders in JupyterLab/terminals and degrades to periodic log lines headless."""
    from tqdm import tqdm

    if is_headless():
        # One line per interval, newline-terminated, to stdout: readable in PBS logs and in
        # papermill's --log-output, instead of thousands of carriage-return updates.
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable,
                    mininterval=headless_interval, maxinterval=headless_interval * 4,
                    file=sys.stdout, ascii=True, ncols=100, dynamic_ncols=False)
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
