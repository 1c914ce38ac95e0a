"""What a run will do and when it must stop, decided before any model is loaded.

    check_layout / make_plan   the parallel layout (global batch vs micro batch x processes, sequence
                               length vs the model limit) and the step plan; one sentence per problem,
                               so a bad PBS job fails in seconds rather than after loading 8B weights
    LRSchedule                 the official schedule (NeMo `CosineAnnealing` with `constant_steps`,
                               i.e. Megatron's warmup + cosine + hold): linear warmup to `lr` over
                               `warmup_steps`, cosine to `min_lr` until `total - constant_steps`, then
                               `min_lr`. Steps count from 1 (the first update uses lr * 1/warmup, not 0)
    DataOrder                  epoch after epoch, each a permutation of the packed sequences drawn from
                               `seed + epoch`; step s uses stream positions [s*G, (s+1)*G)
    make_deadline              an own time limit and/or the PBS walltime minus a margin

The schedule and the data order depend only on (seed, step), so a resumed run sees exactly the
batches and learning rates the uninterrupted run would have seen, whatever the number of processes.

PBS kills a job at its walltime without a warning that reaches Python in time for an 8B checkpoint,
so the loop checks before every step whether one more step plus a checkpoint still fits, and
otherwise saves and exits cleanly (the next job of a chain resumes). The job end comes from, in
order: $TUNEKIT_DEADLINE (epoch seconds; the kit's job template sets it at job start), $PBS_WALLTIME
(seconds, exported by some PBS versions), or `qstat -f $PBS_JOBID` (Resource_List.walltime + stime).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import UserError


# ------------------------------------------------------------------ layout and plan
def layout_problems(global_batch: int, micro_batch: int, world_size: int, max_seq_length: int,
                    max_positions: int | None) -> list[str]:
    """Sentences describing every way the layout cannot work (empty = fine)."""
    out = []
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        out.append(f"global_batch_size {global_batch} is not divisible by micro_batch_size "
                   f"{micro_batch} x {world_size} data-parallel process(es) = {per_pass} (make the "
                   f"global batch a multiple of {per_pass}, or change micro_batch_size/process count)")
    if max_positions and max_seq_length > max_positions:
        out.append(f"max_seq_length {max_seq_length} exceeds the model's limit of {max_positions} "
                   "positions (max_position_embeddings; lower max_seq_length)")
    return out


def check_layout(cfg, world_size: int, max_positions: int | None) -> None:
    """Raise UserError if `cfg` cannot run on `world_size` processes with this model."""
    problems = layout_problems(cfg.global_batch_size, cfg.micro_batch_size, world_size,
                               cfg.max_seq_length, max_positions)
    if problems:
        raise UserError("; ".join(f"layout: {p}" for p in problems))


@dataclass(frozen=True)
class TrainPlan:
    """How many steps, with how much accumulation, over how much data."""

    world_size: int
    grad_accum: int
    total_steps: int
    steps_per_epoch: float
    n_train: int
    n_dev: int
    unused_sequences: int       # sequences past the last whole global batch (never trained on)
    tokens_per_step: int        # global batch x sequence length (padding included)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(cfg, world_size: int, n_train: int, n_dev: int) -> TrainPlan:
    """The step plan for `n_train` packed sequences, or a one-sentence error if nothing can train."""
    g = cfg.global_batch_size
    if n_train < g and cfg.max_steps <= 0:
        raise UserError(f"data: only {n_train} packed training sequence(s) of {cfg.max_seq_length} "
                        f"tokens, fewer than global_batch_size {g} (lower global_batch_size or add data)")
    if n_train == 0:
        raise UserError("data: no training sequences (check data_dir, data_version and datasets)")
    steps = total_steps(n_train, g, cfg.epochs, cfg.max_steps)
    used = steps * g
    epochs_total = cfg.epochs * n_train
    unused = max(0, epochs_total - used) if cfg.max_steps <= 0 else 0
    return TrainPlan(world_size=world_size, grad_accum=g // (cfg.micro_batch_size * world_size),
                     total_steps=steps, steps_per_epoch=round(n_train / g, 3), n_train=n_train,
                     n_dev=n_dev, unused_sequences=unused, tokens_per_step=g * cfg.max_seq_length)


# ------------------------------------------------------------------ schedule and data order
@dataclass(frozen=True)
class LRSchedule:
    """Warmup -> cosine -> hold at min_lr over `total_steps` optimiser steps."""

    lr: float
    min_lr: float
    warmup_steps: int
    constant_steps: int
    total_steps: int

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step `step` (1-based)."""
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        decay_end = self.total_steps - self.constant_steps
        if step > decay_end:
            return self.min_lr
        span = decay_end - self.warmup_steps
        if span <= 0:
            return self.lr
        ratio = (step - self.warmup_steps) / span
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))

    def apply(self, optimizer, step: int) -> float:
        """Set every param group's lr for step `step`; returns it."""
        value = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> dict:
        """What a checkpoint records about the schedule (it is stateless beyond the step)."""
        return {"kind": "warmup_cosine_hold", "lr": self.lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "constant_steps": self.constant_steps,
                "total_steps": self.total_steps}


@dataclass(frozen=True)
class DataOrder:
    """Which dataset indices each step and rank trains on (deterministic from seed and step)."""

    n_items: int
    global_batch: int
    seed: int

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_items)

    def global_batch_indices(self, step: int) -> np.ndarray:
        """The G dataset indices of 1-based step `step`, in order."""
        start = (step - 1) * self.global_batch
        pos = np.arange(start, start + self.global_batch)
        epochs, offsets = np.divmod(pos, self.n_items)
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm(int(e))[offsets[sel]]
        return out

    def rank_micro_batches(self, step: int, rank: int, world: int, micro: int) -> list[np.ndarray]:
        """This rank's contiguous share of the step's global batch, cut into micro-batches."""
        idx = self.global_batch_indices(step)
        per_rank = len(idx) // world
        mine = idx[rank * per_rank:(rank + 1) * per_rank]
        return [mine[i:i + micro] for i in range(0, len(mine), micro)]

    def epoch_at(self, step: int) -> float:
        """Fractional epochs completed after `step`."""
        return step * self.global_batch / self.n_items


def total_steps(n_items: int, global_batch: int, epochs: int, max_steps: int) -> int:
    """Optimiser steps of a run: max_steps when > 0, else whole global batches in `epochs` epochs."""
    if max_steps > 0:
        return max_steps
    return (epochs * n_items) // global_batch


# ------------------------------------------------------------------ deadline
def parse_hms(text: str) -> int:
    """Seconds in a PBS duration `[[HH:]MM:]SS`."""
    parts = [int(p) for p in text.strip().split(":")]
    secs = 0
    for p in parts:
        secs = secs * 60 + p
    return secs


def _from_qstat(jobid: str) -> float | None:
    try:
        out = subprocess.run(["qstat", "-f", jobid], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    wall = re.search(r"Resource_List\.walltime\s*=\s*([\d:]+)", out)
    start = re.search(r"\bstime\s*=\s*(.+)", out)
    if not (wall and start):
        return None
    try:
        started = _dt.datetime.strptime(" ".join(start.group(1).split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return started.timestamp() + parse_hms(wall.group(1))


def job_end_time(environ: dict[str, str] | None = None) -> tuple[float | None, str]:
    """(epoch seconds when the scheduler kills this job, where that came from) or (None, reason)."""
    env = os.environ if environ is None else environ
    if env.get("TUNEKIT_DEADLINE"):
        return float(env["TUNEKIT_DEADLINE"]), "TUNEKIT_DEADLINE"
    jobid = env.get("PBS_JOBID", "")
    if not jobid:
        return None, "not a PBS job"
    if env.get("PBS_WALLTIME", "").isdigit():
        # Exported relative to the job start; the process started shortly after the job did.
        return _process_start() + float(env["PBS_WALLTIME"]), "PBS_WALLTIME"
    end = _from_qstat(jobid)
    return (end, "qstat") if end else (None, "walltime not readable from qstat")


def _process_start() -> float:
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{os.getpid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / ticks
    except (OSError, ValueError, IndexError):
        return time.time()


@dataclass(frozen=True)
class Deadline:
    """The moment by which training must have checkpointed and stopped (None = no limit)."""

    at: float | None
    source: str

    def remaining(self, now: float | None = None) -> float:
        """Seconds left (inf without a deadline)."""
        return float("inf") if self.at is None else self.at - (now or time.time())

    def describe(self) -> str:
        """One line for the log."""
        if self.at is None:
            return f"no deadline ({self.source})"
        when = _dt.datetime.fromtimestamp(self.at).strftime("%Y-%m-%d %H:%M:%S")
        return f"stop by {when} ({self.source}, {self.remaining() / 60:.1f} min left)"


def make_deadline(max_train_minutes: float, walltime_margin_minutes: float,
                  start: float | None = None, environ: dict[str, str] | None = None) -> Deadline:
    """Combine the own limit (from `start`) and the job end minus the margin; the earlier wins."""
    start = start or time.time()
    options: list[tuple[float, str]] = []
    if max_train_minutes > 0:
        options.append((start + 60 * max_train_minutes, f"max_train_minutes={max_train_minutes:g}"))
    end, source = job_end_time(environ)
    if end is not None:
        options.append((end - 60 * walltime_margin_minutes,
                        f"job end from {source} - {walltime_margin_minutes:g} min margin"))
    if not options:
        return Deadline(None, source)
    at, why = min(options)
    return Deadline(at, why)
