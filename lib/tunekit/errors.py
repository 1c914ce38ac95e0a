"""Errors a user can cause and fix: shown as one sentence, never as a bare traceback."""
from __future__ import annotations

PREFIX = "error: "


class UserError(Exception):
    """A problem with the user's input (params, data, paths) described in one actionable sentence.

    The CLI prints it as `error: <message>` and exits 2; in a notebook the failing cell's output is
    that same line (JupyterLab, papermill and nbval all show it). Messages follow
    `<where>: <what is wrong> (<what to do>)`.
    """

    def _render_traceback_(self) -> list[str]:
        # IPython's protocol for exceptions that format themselves: its showtraceback() sends
        # these lines as the cell's error output instead of a traceback, so every front end
        # (JupyterLab, papermill's saved notebook, nbval's report) shows exactly the sentence.
        return rendered(str(self))


def rendered(message: str) -> list[str]:
    """The lines a UserError shows as a notebook cell's error output."""
    return (PREFIX + message).splitlines() or [PREFIX.strip()]


def is_rendered_user_error(evalue: str, traceback: list[str]) -> bool:
    """True when a cell's error output (evalue + traceback lines) is a rendered UserError."""
    return list(traceback or []) == rendered(evalue)


class DiskFull(UserError):
    """A write failed because the file system is full (or over quota): `disk full at <path> (...)`."""


class Interrupted(UserError):
    """Work stopped on request (SIGTERM/SIGINT): its state is saved and a re-run continues it.

    `exit_code` is the conventional 128 + signal number, so shells and PBS see a signal stop.
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
