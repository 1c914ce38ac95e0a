"""What a training run reports while it trains: metrics.jsonl records, the progress bar, wandb,
and in JupyterLab a live loss plot (tunekit.train.live).

Only rank 0 reports. Every optimiser step appends one record to the run's metrics.jsonl (flushed,
so a killed job keeps it); validation appends `{"step", "val_loss", ...}` records. A record that
cannot be written (full disk) is not lost silently: the monitor keeps the error in `failed` and
the loop stops every rank with it at the next step boundary. Each attempt starts by cutting
metrics.jsonl back to its checkpoint (`truncate_metrics`), so after any resume the file holds
exactly one record per step and per validation. wandb is off
unless asked: `offline` writes under the run dir for a later `wandb sync`, `online` needs
WANDB_API_KEY in the environment (never in params or files).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .. import atomic
from ..errors import UserError


def check_wandb(mode: str) -> None:
    """Fail before any work if wandb is requested but cannot run (missing package or key)."""
    if mode == "disabled":
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError(f"wandb={mode}: the wandb package is not installed "
                        "(pip install wandb, or set wandb to 'disabled')") from None
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        raise UserError("wandb=online: WANDB_API_KEY is not set in the environment "
                        "(export it in your shell or job; never put it in params)")


class Monitor:
    """Rank-0 reporting for one run: metrics.jsonl, progress bar, optional wandb."""

    def __init__(self, run, *, is_main: bool, total_steps: int, start_step: int = 0,
                 wandb_mode: str = "disabled", wandb_project: str = "tunekit",
                 config: Mapping[str, Any] | None = None, desc: str = "train"):
        self.run = run
        self.is_main = is_main
        self.bar = None
        self.wandb = None
        self.failed: Exception | None = None  # a record could not be written (e.g. DiskFull)
        self.live = None
        if not is_main:
            return
        from ..runtime import frontend, progress

        self.bar = progress(total=total_steps, desc=desc, unit="step")
        self.bar.update(start_step)
        if frontend() == "jupyterlab":
            from .live import LivePlot

            self.live = LivePlot(f"{desc} {run.name}")
        if wandb_mode != "disabled":
            import wandb

            # The run dir name doubles as the wandb id, so a resumed run continues the same chart.
            self.wandb = wandb.init(project=wandb_project, name=run.name, id=_wandb_id(run),
                                    dir=str(run.dir), mode=wandb_mode, resume="allow",
                                    config=dict(config or {}))

    def step(self, record: Mapping[str, Any]) -> None:
        """Report one optimiser step."""
        if not self.is_main:
            return
        self._log(record)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"},
                           step=record["step"])
        if self.live is not None:
            self.live.add(record)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def validation(self, record: Mapping[str, Any]) -> None:
        """Report one validation pass."""
        if not self.is_main:
            return
        self._log(record)
        if self.wandb is not None:
            self.wandb.log({f"val/{k}": v for k, v in record.items() if k != "step"},
                           step=record["step"])
        if self.live is not None:
            self.live.add(record)
        self.print(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))

    def _log(self, record: Mapping[str, Any]) -> None:
        # Raising here would stop rank 0 alone and leave the others waiting in a collective.
        if self.failed is not None:
            return
        try:
            self.run.log(**record)
        except UserError as exc:
            self.failed = exc
            self.print(f"error: {exc}")

    def print(self, line: str) -> None:
        """A log line that does not break the progress bar."""
        if not self.is_main:
            return
        from ..runtime import is_headless

        if self.bar is not None and not is_headless():
            self.bar.write(line)  # keeps the live bar intact in a terminal / JupyterLab
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Close the bar, the live plot and wandb."""
        if self.live is not None:
            self.live.close()
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(run) -> str:
    return f"{run.stage}-{run.name}".replace("/", "-")[:64]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def truncate_metrics(run_dir: Path, after_step: int) -> int:
    """Drop metrics records of steps > `after_step` (they are redone on resume) and torn lines; returns how many.

    `after_step` is the step of the checkpoint the attempt resumes from, -1 without one (then every
    step and validation record goes, the step-0 validation included).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    import json

    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line torn by the kill
            continue
        if isinstance(rec.get("step"), int) and rec["step"] > after_step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic.write_text(path, "".join(x + "\n" for x in kept))
    return dropped

