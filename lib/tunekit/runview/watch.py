"""Watch running runs: a refreshing terminal table with sparklines, or curves redrawn in a notebook.

    from tunekit.runview import watch
    watch("sweep:lr-grid", every=30)     # or a run directory / run name

Each refresh re-reads metrics.jsonl up to its last complete line; nothing is written or locked.
Watching stops when every run is finished, failed or incomplete (see records.run_status), or
after `timeout` seconds.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from .records import FINAL, RunInfo, read_complete_metrics, resolve_runs, run_info

SPARKS = "▁▂▃▄▅▆▇█"


def targets(run_or_sweep: str, runs_dir: str | None = None) -> list[Path]:
    """The run directories to watch: `sweep:NAME`, a sweep name, or anything `resolve_runs` takes."""
    from ..paths import resolve, runs_root
    from .records import SWEEPS

    root = resolve(runs_dir) if runs_dir else runs_root()
    spec = str(run_or_sweep)
    if not spec.startswith("sweep:") and "/" not in spec and (root / SWEEPS / spec / "sweep.json").is_file():
        spec = f"sweep:{spec}"
    return resolve_runs([spec], runs_dir, existing_only=False) if spec.startswith("sweep:") else \
        resolve_runs([spec], runs_dir)


def sparkline(values: list[float], width: int = 24) -> str:
    """The last `width` values as block characters, lowest to highest."""
    vals = [v for v in values if v == v][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))] for v in vals)


def snapshot(dirs: list[Path]) -> list[tuple[RunInfo, list[dict[str, Any]]]]:
    """(info, metrics) of every run now (a run not started yet shows as such)."""
    out = []
    for d in dirs:
        metrics = read_complete_metrics(d)
        info = run_info(d, metrics) if d.is_dir() else RunInfo(d, d.parent.name, d.name, "not started")
        out.append((info, metrics))
    return out


def format_table(snap: list[tuple[RunInfo, list[dict[str, Any]]]]) -> str:
    """One line per run: status, step, last loss, best val loss, accuracy, loss sparkline."""
    def f(v):
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [["run", "status", "step", "loss", "best val", "accuracy", "loss curve"]]
    for info, metrics in snap:
        losses = [m["loss"] for m in metrics if isinstance(m.get("loss"), (int, float))]
        acc = ", ".join(f"{v:.3f}" for v in info.accuracy.values())
        rows.append([f"{info.stage}/{info.name}", info.status, f(info.step), f(info.last_loss),
                     f(info.best_val_loss), acc, sparkline(losses)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def done(snap, upstream: dict[Path, Path] | None = None) -> bool:
    """True when no run will change any more by itself.

    `upstream` maps a sweep's follow-up run dirs to their point's run: PBS deletes the whole
    follow-up array (afterok) once any point failed, so a follow-up not started by then never will.
    """
    status = {info.dir: info.status for info, _ in snap}
    blocked = bool(upstream) and any(status.get(up) == "failed" for up in upstream.values())
    return all(s in FINAL or (blocked and s == "not started" and d in upstream) for d, s in status.items())


def sweep_upstream(run_or_sweep: str, runs_dir: str | None = None) -> dict[Path, Path]:
    """{follow-up run dir: point run dir} of a sweep target ({} for anything else)."""
    from ..paths import resolve, runs_root
    from .records import SWEEPS, sweep_record

    spec = str(run_or_sweep)
    root = resolve(runs_dir) if runs_dir else runs_root()
    name = spec[len("sweep:"):] if spec.startswith("sweep:") else spec
    if not spec.startswith("sweep:") and ("/" in spec or not (root / SWEEPS / spec / "sweep.json").is_file()):
        return {}
    return {Path(p["then_run_dir"]).resolve(): Path(p["run_dir"]).resolve()
            for p in sweep_record(name, runs_dir).get("points", []) if p.get("then_run_dir")}


def _loop(dirs: list[Path], every: float, timeout: float | None, show: Callable[[list], None],
          sleep: Callable[[float], None], upstream: dict[Path, Path] | None = None) -> list:
    start = time.time()
    while True:
        snap = snapshot(dirs)
        show(snap)
        if done(snap, upstream) or (timeout is not None and time.time() - start >= timeout):
            return snap
        sleep(every)


def watch_terminal(run_or_sweep: str, every: float = 30.0, timeout: float | None = None,
                   out=None, runs_dir: str | None = None, sleep: Callable[[float], None] = time.sleep) -> list:
    """Print the table every `every` seconds (redrawn in place on a terminal) until the runs end."""
    out = out or sys.stdout
    dirs = targets(run_or_sweep, runs_dir)
    tty = hasattr(out, "isatty") and out.isatty()

    upstream = sweep_upstream(run_or_sweep, runs_dir)

    def show(snap):
        text = format_table(snap)
        stamp = time.strftime("%H:%M:%S")
        out.write(("\x1b[H\x1b[2J" if tty else "") + f"{stamp}  {run_or_sweep}\n{text}\n")
        if done(snap, upstream):
            out.write("every run has ended\n")
        out.flush()

    return _loop(dirs, every, timeout, show, sleep, upstream)


def plot_snapshot(snap):
    """Loss, val loss and lr of every run (one panel each)."""
    from .compare import plot_curves

    curves: dict[str, dict[str, list]] = {"loss": {}, "val_loss": {}, "lr": {}}
    for info, metrics in snap:
        for k in curves:
            pts = [(m["step"], m[k]) for m in metrics
                   if isinstance(m.get(k), (int, float)) and isinstance(m.get("step"), (int, float))]
            if pts:
                curves[k][info.name] = pts
    status = ", ".join(f"{info.name}: {info.status}" for info, _ in snap)
    return plot_curves(curves, title=status[:150])


def watch(run_or_sweep: str, every: float = 30.0, timeout: float | None = None, runs_dir: str | None = None,
          sleep: Callable[[float], None] = time.sleep) -> list:
    """In a notebook: redraw the runs' loss / val loss / lr curves in place until every run has ended."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    dirs = targets(run_or_sweep, runs_dir)
    handle = None

    def show(snap):
        nonlocal handle
        fig = plot_snapshot(snap)
        if handle is None:
            handle = display(fig, display_id=True)
        else:
            handle.update(fig)
        plt.close(fig)

    return _loop(dirs, every, timeout, show, sleep, sweep_upstream(run_or_sweep, runs_dir))
