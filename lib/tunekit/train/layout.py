"""Checks of the parallel layout and the run plan, done before any model is loaded.

Each violation is one sentence naming the parameters involved and what to change, so a bad PBS
job fails in seconds rather than after loading 8B weights on 16 GPUs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UserError
from .schedule import total_steps


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
