"""The live training plot of a notebook cell: loss and validation loss, redrawn in place.

Only in JupyterLab (`tunekit.runtime.frontend()`): the monitor hands each metrics record to
`LivePlot.add`; the figure is drawn off-screen (Agg) at most every `min_interval` seconds, at every
validation and at the end, and shown through one IPython display handle, so the cell holds a
single image that changes instead of a growing pile of figures. Headless runs never create one:
they keep their periodic log lines and the notebooks draw the final curves from metrics.jsonl.
"""
from __future__ import annotations

import io
import time
from typing import Any, Mapping


class LivePlot:
    """Train loss and val loss (DPO: also reward accuracy) of one run, updated in place."""

    def __init__(self, title: str, min_interval: float = 2.0):
        self.title = title
        self.min_interval = min_interval
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.acc: list[tuple[int, float]] = []
        self.val_acc: list[tuple[int, float]] = []
        self._handle = None
        self._drawn_at = 0.0

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one metrics record (a step or a validation); redraw if it is time."""
        step = record.get("step")
        if not isinstance(step, int):
            return
        force = False
        if "val_loss" in record:
            self.val.append((step, float(record["val_loss"])))
            if "val_reward_accuracy" in record:
                self.val_acc.append((step, float(record["val_reward_accuracy"])))
            force = True  # a validation is rare and what a person waits for
        elif "loss" in record:
            self.train.append((step, float(record["loss"])))
            if "reward_accuracy" in record:
                self.acc.append((step, float(record["reward_accuracy"])))
        if force or time.monotonic() - self._drawn_at >= self.min_interval:
            self.draw()

    def close(self) -> None:
        """Draw the final state."""
        if self.train or self.val:
            self.draw()

    def draw(self) -> None:
        """Render the figure and show it in the handle's place (created on the first draw)."""
        from IPython.display import Image, display

        image = Image(data=self._png(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
        self._drawn_at = time.monotonic()

    def _png(self) -> bytes:
        # An off-screen figure object: never registered with pyplot, so nothing else shows it.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        two = bool(self.acc or self.val_acc)
        fig = Figure(figsize=(10 if two else 6, 3.2), dpi=90)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2) if two else [fig.subplots()]
        ax = axes[0]
        if self.train:
            ax.plot(*zip(*self.train), lw=1, label="train loss")
        if self.val:
            ax.plot(*zip(*self.val), "o-", label="val loss")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{self.title} (live)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if two:
            ax2 = axes[1]
            if self.acc:
                ax2.plot(*zip(*self.acc), lw=1, alpha=0.6, label="train reward accuracy")
            if self.val_acc:
                ax2.plot(*zip(*self.val_acc), "o-", label="dev reward accuracy")
            ax2.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax2.set_ylim(-0.02, 1.02)
            ax2.set_xlabel("optimizer step")
            ax2.grid(alpha=0.3)
            ax2.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
