"""The training loop shared by SFT and DPO: accumulation, AdamW steps, validation, checkpoints, resume.

The loop knows nothing about the objective. A `Task` turns dataset items into batches and a batch
into a loss *sum* plus its normaliser (SFT: summed token cross entropy and the number of labelled
tokens; DPO: summed pair losses and the number of pairs). The loop divides by the normaliser summed
over the WHOLE global batch (all micro-batches on all ranks), counted before the first backward:

    loss = sum over every labelled token of the global batch / number of those tokens

So every trained token weighs the same however documents fall into micro-batches and ranks, the
gradient does not depend on micro_batch_size or on the number of processes (1 process and 2
processes give the same trajectory), and short answers are not up-weighted the way a mean of
per-micro-batch means would up-weight them. FSDP averages gradients over ranks, so each rank
scales its part by world_size.

Data order, learning rate and checkpoints are functions of the step only (see schedule.py), which
makes a resumed run continue exactly where the interrupted one would have been.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import torch

from ..errors import UserError
from .checkpoint import CheckpointManager
from .deadline import Deadline
from .distributed import DistEnv, all_reduce_max, all_reduce_sum
from .monitor import Monitor
from .schedule import DataOrder, LRSchedule


class Task(Protocol):
    """What the loop needs from an objective (SFT here; DPO implements the same five methods)."""

    def collate(self, items: Sequence[Any]) -> Any:
        """Dataset items -> one micro-batch (on CPU)."""

    def to_device(self, batch: Any, device) -> Any:
        """The batch on `device`."""

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss SUM over the batch, extra metric SUMS) - the loop divides both by the global weight.

        Extras (e.g. DPO reward accuracy) appear in each step record and, prefixed `val_`, in
        validation records; return the same keys for every batch.
        """

    def weight(self, batch) -> float:
        """This batch's share of the normaliser (labelled tokens for SFT, pairs for DPO)."""

    def tokens(self, batch) -> int:
        """Real (non-padding) tokens in the batch, for throughput."""

    def blank(self, item: Any) -> Any:
        """A copy of `item` that contributes no loss (pads an uneven validation shard)."""


@dataclass(frozen=True)
class LoopSettings:
    """Everything the loop needs from the params, already resolved."""

    total_steps: int
    global_batch: int
    micro_batch: int
    grad_clip: float
    val_interval: int
    save_interval: int
    deadline: Deadline
    delete_optimizer_state: bool = False


@dataclass
class LoopResult:
    """How a call to `train_loop` ended (rank 0 writes it as train_result.json)."""

    status: str                       # completed | deadline
    step: int
    total_steps: int
    resumed_from: int | None
    final_loss: float | None
    tokens_seen: int
    train_seconds: float
    val_history: list[list[float]] = field(default_factory=list)  # [[step, val_loss], ...]
    best_step: int | None = None
    best_val_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(task: Task, model, dataset, env: DistEnv, micro_batch: int) -> dict[str, float] | None:
    """Normalised loss (and extra metrics) over the whole dataset, split across ranks."""
    n = len(dataset)
    if n == 0:
        return None
    per_pass = micro_batch * env.world_size
    n_passes = math.ceil(n / per_pass)  # equal on every rank: FSDP collectives must pair up
    num, weight, extras = 0.0, 0.0, {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(n_passes):
            start = b * per_pass + env.rank * micro_batch
            items = [dataset[i] if i < n else task.blank(dataset[0]) for i in range(start, start + micro_batch)]
            batch = task.to_device(task.collate(items), env.device)
            loss_sum, extra = task.loss(model, batch)
            num += float(loss_sum)
            weight += task.weight(batch)
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v)
    model.train(was_training)
    keys = sorted(extras)
    sums = all_reduce_sum([num, weight] + [extras[k] for k in keys], env)
    if sums[1] <= 0:
        return None
    out = {"val_loss": sums[0] / sums[1]}
    out.update({f"val_{k}": v / sums[1] for k, v in zip(keys, sums[2:])})
    out["val_weight"] = sums[1]
    return out


def _grad_norm(model, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def train_loop(task: Task, model, optimizer, schedule: LRSchedule, train_ds, dev_ds, order: DataOrder,
               ckpt: CheckpointManager, monitor: Monitor, env: DistEnv, s: LoopSettings) -> LoopResult:
    """Train to `s.total_steps` (or the deadline), resuming from the latest complete checkpoint."""
    step, tokens_seen, train_seconds, resumed_from = 0, 0, 0.0, None
    val_history: list[list[float]] = []
    latest = ckpt.latest()
    if latest is not None:
        done = latest.step >= s.total_steps
        if not done and not latest.has_optimizer:
            raise UserError(f"{latest.path}: its optimizer state was deleted, so training cannot "
                            "continue from it (start a new run_name, or train from its weights)")
        state = ckpt.load(latest, model, None if done else optimizer)
        step, resumed_from = latest.step, latest.step
        tokens_seen = int(state.get("tokens_seen", 0))
        train_seconds = float(state.get("train_seconds", 0.0))
        val_history = [list(v) for v in state.get("val_history", [])]
        monitor.print(f"resumed from {latest.path.name} (step {step}/{s.total_steps})")
        if monitor.bar is not None:
            monitor.bar.update(step - monitor.bar.n)
    last_loss = None
    if step == 0 and dev_ds is not None:
        val = evaluate(task, model, dev_ds, env, s.micro_batch)
        if val is not None:
            val_history.append([0, val["val_loss"]])
            monitor.validation({"step": 0, **val})
    accum = s.global_batch // (s.micro_batch * env.world_size)
    status, step_ema, save_cost, last_saved = "completed", None, 0.0, step
    t_attempt = time.time()

    def save(at: int, val_loss: float | None) -> None:
        nonlocal save_cost, last_saved
        t = time.time()
        ckpt.save(at, model, optimizer, {
            "tokens_seen": tokens_seen, "train_seconds": train_seconds, "val_loss": val_loss,
            "val_history": val_history, "schedule": schedule.state_dict(),
            "data": {"seed": order.seed, "global_batch": order.global_batch, "n_items": order.n_items,
                     "next_step": at + 1}})
        save_cost, last_saved = max(save_cost, time.time() - t), at

    while step < s.total_steps:
        # Stop early if one more step plus a checkpoint would not fit before the deadline.
        need = (step_ema or 0.0) + save_cost
        stop = 1.0 if s.deadline.remaining() < need else 0.0
        if all_reduce_max(stop, env) > 0:
            status = "deadline"
            break
        step += 1
        t0 = time.time()
        batches = [task.to_device(task.collate([train_ds[int(i)] for i in idx]), env.device)
                   for idx in order.rank_micro_batches(step, env.rank, env.world_size, s.micro_batch)]
        assert len(batches) == accum
        g_weight, g_tokens = all_reduce_sum([sum(task.weight(b) for b in batches),
                                             sum(task.tokens(b) for b in batches)], env)
        scale = env.world_size / max(g_weight, 1.0)
        num = torch.zeros((), dtype=torch.float64, device=env.device)
        extra_sums: dict[str, float] = {}
        for i, batch in enumerate(batches):
            # Reduce-scatter gradients once per step, on the last micro-batch only.
            model.set_requires_gradient_sync(i == len(batches) - 1)
            loss_sum, extra = task.loss(model, batch)
            (loss_sum * scale).backward()
            num += loss_sum.detach().double()
            for k, v in extra.items():
                extra_sums[k] = extra_sums.get(k, 0.0) + float(v)
        grad_norm = _grad_norm(model, s.grad_clip)
        lr = schedule.apply(optimizer, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        keys = sorted(extra_sums)  # a task returns the same keys on every rank
        sums = all_reduce_sum([float(num)] + [extra_sums[k] for k in keys], env)
        loss = sums[0] / max(g_weight, 1.0)
        extras = {k: v / max(g_weight, 1.0) for k, v in zip(keys, sums[1:])}
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            raise UserError(f"step {step}: the loss became {loss} (grad norm {grad_norm}); "
                            "lower lr or check the data (no checkpoint was written for this step)")
        dt = time.time() - t0
        step_ema = dt if step_ema is None else 0.8 * step_ema + 0.2 * dt
        train_seconds += dt
        tokens_seen += int(g_tokens)
        last_loss = loss
        monitor.step({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": g_tokens / dt if dt > 0 else 0.0, "tokens_seen": tokens_seen,
                      "loss_tokens": int(g_weight), "epoch": round(order.epoch_at(step), 4),
                      "step_seconds": round(dt, 4), **extras})
        is_last = step == s.total_steps
        save_now = is_last or (s.save_interval > 0 and step % s.save_interval == 0)
        val_loss = None
        if dev_ds is not None and (save_now or (s.val_interval > 0 and step % s.val_interval == 0)):
            val = evaluate(task, model, dev_ds, env, s.micro_batch)
            if val is not None:
                val_loss = val["val_loss"]
                val_history.append([step, val_loss])
                monitor.validation({"step": step, **val})
        if save_now:
            save(step, val_loss)
    if status == "deadline" and last_saved != step:
        monitor.print(f"deadline: {s.deadline.describe()}; saving step {step} and stopping")
        save(step, None)
    elif status == "deadline":
        monitor.print(f"deadline: {s.deadline.describe()}; step {step} is already saved, stopping")
    if status == "completed" and s.delete_optimizer_state:
        n = ckpt.drop_optimizer_states()
        monitor.print(f"deleted the optimizer state of {n} checkpoint(s) (weights kept)")
    best = min(val_history, key=lambda v: (v[1], -v[0])) if val_history else None
    monitor.print(f"{status} at step {step}/{s.total_steps} after {time.time() - t_attempt:.0f} s")
    return LoopResult(status=status, step=step, total_steps=s.total_steps, resumed_from=resumed_from,
                      final_loss=last_loss, tokens_seen=tokens_seen, train_seconds=round(train_seconds, 3),
                      val_history=val_history, best_step=int(best[0]) if best else None,
                      best_val_loss=best[1] if best else None)
