"""Signals as stop requests: finish the current unit of work, save, then stop; a second signal stops at once.

Jobs on ABCI mostly end by signal, not by SIGKILL: PBS sends SIGTERM on `qdel`, at the walltime and
on node drain (SIGKILL follows after the site's grace period), a terminal sends SIGINT on Ctrl-C,
JupyterLab's "interrupt" is SIGINT, and mpirun forwards SIGUSR1 to every rank (it kills the job on
SIGTERM). `StopRequest` turns them into a flag the training loop checks between steps:

    with StopRequest() as stop:
        while training:
            if stop.requested: save a checkpoint, record status "interrupted", stop

The same stop often arrives twice within milliseconds by different routes (PBS signals every
process of the job while the job script forwards the signal too; torchrun forwards what the
scheduler also sent), so a repeat within DUPLICATE_WINDOW_S counts as the same request. A signal
after that is a second request and acts at once: SIGINT raises KeyboardInterrupt (Jupyter's
interrupt keeps working), any other signal ends the process by that signal.

Handlers only record and forward (`os.kill`); they never print through Python's buffered streams
(re-entrant writes from a handler can raise), so the code that acts on the request reports it.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
DUPLICATE_WINDOW_S = 1.0


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's exit status for a process stopped by `signum` (128 + signal number)."""
    return 128 + int(signum)


def exit_now(signum: int) -> None:
    """Act on a second request at once: KeyboardInterrupt for SIGINT, else die by the signal itself."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def note(text: str) -> None:
    """Write one line to stderr without Python's stream buffers (safe inside a signal handler)."""
    try:
        os.write(2, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


class StopRequest:
    """Install stop handlers for the duration of a `with` block (main thread only; elsewhere inert).

    Args:
        on_first: called with the signal number on the first request (e.g. forward it to children).
        on_second: called on a later request; default `exit_now`.
        signals: the signals handled.
        window_s: repeats within this many seconds of the first are the same request.
    """

    def __init__(self, on_first: Callable[[int], None] | None = None,
                 on_second: Callable[[int], None] | None = None,
                 signals: tuple[int, ...] = STOP_SIGNALS, window_s: float = DUPLICATE_WINDOW_S):
        self.on_first = on_first
        self.on_second = on_second or exit_now
        self.signals = signals
        self.window_s = window_s
        self.signum: int | None = None
        self.at: float | None = None
        self._previous: dict[int, object] = {}
        self.active = False

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The first signal's name ('' if none)."""
        return signal_name(self.signum) if self.signum is not None else ""

    def request(self, signum: int) -> None:
        """Record a request as if `signum` had arrived (what the handler does)."""
        now = time.monotonic()
        if self.signum is None:
            self.signum, self.at = signum, now
            if self.on_first is not None:
                self.on_first(signum)
            return
        if now - (self.at or now) < self.window_s:
            return  # the same stop, delivered by a second route
        self.on_second(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # Python only delivers signals to the main thread
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._previous.clear()
        self.active = False
