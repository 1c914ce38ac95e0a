"""Read-only views of run directories: list them, watch running ones, compare finished ones.

    from tunekit.runview import list_runs, watch, load_runs
    watch("sweep:lr-grid", every=30)      # in a notebook: curves redrawn in place until done

Everything here only reads run records (tunekit.runs writes them): it never creates, locks or
changes a run directory, and reads metrics.jsonl up to its last complete line, so a file that a
running job is appending to is read safely. The CLI is `tunekit runs list|watch|compare`.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RunInfo": "records", "run_info": "records", "list_runs": "records", "resolve_runs": "records",
    "read_complete_metrics": "records", "watch": "watch", "load_runs": "compare",
    "leaderboard": "compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
