"""The record of an interactive run: what a JupyterLab session executed and showed, in the run dir.

A headless run's record is its executed notebook (papermill writes it into the run directory).
An interactive run gets the equivalent from the kernel itself, because the notebook a person
saves is stripped of its outputs (tunekit.nbclean) and may have been edited since:

    <run>/session-<time>.ipynb         every cell the kernel executed for this run, in order, with
                                       the exact code (IPython's history) and what it printed and
                                       displayed (text, tables, figures; not the progress widgets)
    <run>/session-<time>/              each table shown as CSV and each figure as PNG, named
                                       after the cell (`in12-table1.csv`, `in14-figure1.png`)

`record_session(run)` starts it (runs.start_run calls it; it does nothing outside a JupyterLab
kernel). The cells before the one that opened the run are taken from the history back to the
latest `parameters` cell (the one that sets `runs_dir`); from then on, every cell is recorded as
it finishes and the files are rewritten (atomically) after each.
"""
from __future__ import annotations

import datetime as _dt
import io
import re
from pathlib import Path
from typing import Any

from . import atomic

_PARAMETERS = re.compile(r"^runs_dir\s*:", re.M)
_WIDGET = "application/vnd.jupyter.widget-view+json"
_current: "SessionRecord | None" = None


def record_session(run) -> "SessionRecord | None":
    """Record this JupyterLab kernel's cells into `run` from now on (None: not in JupyterLab)."""
    global _current
    from .runtime import frontend

    if frontend() != "jupyterlab" or not getattr(run, "writer", True):
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    ip = get_ipython()
    if ip is None:
        return None
    if _current is not None:
        _current.stop()  # a new run in the same kernel: the old record is complete
    _current = SessionRecord(run.dir, ip)
    return _current


class _Tee(io.TextIOBase):
    """A text stream that copies what is written to it into a buffer."""

    def __init__(self, stream, buffer: list[str]):
        self._stream, self._buffer = stream, buffer

    def write(self, text: str) -> int:
        self._buffer.append(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class SessionRecord:
    """The cells of one interactive run, kept in memory and written after every cell."""

    def __init__(self, run_dir: Path, ip):
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = Path(run_dir) / f"session-{stamp}.ipynb"
        self.files = Path(run_dir) / f"session-{stamp}"
        self.ip = ip
        self.cells: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self._streams: dict[str, list[str]] = {}
        self._saved: dict[str, Any] = {}
        history = list(ip.user_ns.get("In", [""]))
        now = len(history) - 1  # the cell that is opening the run (still executing)
        first = max([i for i in range(1, now + 1) if _PARAMETERS.search(history[i] or "")], default=1)
        for n in range(first, now):
            self.cells.append({"n": n, "code": history[n], "outputs": []})
        # The opening cell: its code now, its result when it finishes (post_run_cell below).
        self.current = {"n": now, "code": history[now] if now > 0 else "", "outputs": []}
        ip.events.register("pre_run_cell", self._pre)
        ip.events.register("post_run_cell", self._post)
        ip.display_pub.register_hook(self._display)

    def stop(self) -> None:
        """Stop recording (the files keep what was recorded)."""
        for event, fn in (("pre_run_cell", self._pre), ("post_run_cell", self._post)):
            try:
                self.ip.events.unregister(event, fn)
            except ValueError:
                pass
        unregister = getattr(self.ip.display_pub, "unregister_hook", None)
        if unregister:
            unregister(self._display)
        self._restore()

    # ------------------------------------------------------------ IPython callbacks
    def _pre(self, info) -> None:
        import sys

        self.current = {"n": self.ip.execution_count, "code": info.raw_cell, "outputs": []}
        self._streams = {"stdout": [], "stderr": []}
        self._saved = {"stdout": sys.stdout, "stderr": sys.stderr}
        sys.stdout = _Tee(sys.stdout, self._streams["stdout"])
        sys.stderr = _Tee(sys.stderr, self._streams["stderr"])

    def _display(self, msg):
        """display_pub hook: note the output and pass the message on unchanged."""
        if self.current is not None:
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind in ("display_data", "update_display_data"):
                data = content.get("data", {})
                if data and _WIDGET not in data:
                    shown = {"output_type": "display_data", "data": data, "metadata": content.get("metadata", {})}
                    display_id = (content.get("transient") or {}).get("display_id")
                    outs = self.current["outputs"]
                    same = [i for i, o in enumerate(outs) if display_id and o.get("_id") == display_id]
                    if same:  # an update in place (live plot): keep only the latest picture
                        outs[same[-1]] = {**shown, "_id": display_id}
                    elif kind == "display_data":
                        outs.append({**shown, "_id": display_id})
        return msg

    def _post(self, result) -> None:
        self._restore()
        cell = self.current or {"n": result.execution_count, "code": result.info.raw_cell, "outputs": []}
        self.current = None
        outs = []
        for name in ("stdout", "stderr"):
            text = "".join(self._streams.get(name, []))
            if text:
                outs.append({"output_type": "stream", "name": name, "text": text})
        outs += cell["outputs"]
        if result.result is not None:
            data, md = self.ip.display_formatter.format(result.result)
            outs.append({"output_type": "execute_result", "data": data, "metadata": md,
                         "execution_count": cell["n"], "_object": result.result})
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            lines = getattr(error, "_render_traceback_", None)
            outs.append({"output_type": "error", "ename": type(error).__name__, "evalue": str(error),
                         "traceback": lines() if lines else [f"{type(error).__name__}: {error}"]})
        cell["outputs"] = outs
        self.cells.append(cell)
        self._streams = {}
        self.write()

    def _restore(self) -> None:
        import sys

        for name, stream in self._saved.items():
            if isinstance(getattr(sys, name), _Tee):
                setattr(sys, name, stream)
        self._saved = {}

    # ------------------------------------------------------------ the files
    def write(self) -> None:
        """(Re)write the session notebook and the tables and figures of the recorded cells."""
        import base64

        import nbformat

        cells = []
        for cell in self.cells:
            outputs, n_table, n_figure = [], 0, 0
            for out in cell["outputs"]:
                out = dict(out)
                obj = out.pop("_object", None)
                out.pop("_id", None)
                if hasattr(obj, "to_csv"):  # a pandas table (DataFrame or Series)
                    n_table += 1
                    target = self.files / f"in{cell['n']}-table{n_table}.csv"
                    if not target.exists():
                        atomic.write_text(target, obj.to_csv())
                png = out.get("data", {}).get("image/png")
                if png:
                    n_figure += 1
                    atomic.write_bytes(self.files / f"in{cell['n']}-figure{n_figure}.png", base64.b64decode(png))
                outputs.append(nbformat.from_dict(out))
            cells.append(nbformat.v4.new_code_cell(cell["code"], execution_count=cell["n"], outputs=outputs))
        nb = nbformat.v4.new_notebook(cells=cells)
        from .nbclean import KERNELSPEC

        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        nb.metadata["tunekit"] = {"recorded_from": "an interactive JupyterLab session (IPython history)"}
        atomic.write_text(self.path, nbformat.writes(nb) + "\n")
