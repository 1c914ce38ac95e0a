"""DCP checkpoints that a killed save can never corrupt, with keep-last + top-k pruning.

    <run_dir>/checkpoints/
        step_00000020/          complete: only directories with this exact name are ever loaded
            model/              DCP (torch.distributed.checkpoint) of the sharded model
            optim/              DCP of the optimiser (deleted at the end if asked: weights stay)
            rng/rank_00000.pt   each rank's RNG states
            trainer_state.json  step, data position, schedule, val loss, tokens seen (written last)
        .step_00000040.partial  a save in progress (or killed): never loaded, removed on next save

A save writes everything into the `.partial` folder, all ranks meet at a barrier, rank 0 writes
trainer_state.json and renames the folder into place (atomic on POSIX). Rank 0 prunes: the latest
checkpoint and the `keep_top_k` lowest validation losses stay; the rest are renamed away first and
then deleted, so a half-deleted folder never carries a trusted name. DCP reshards on load, so a
run may resume with a different number of processes.

Disk space: before training (and before every save) rank 0 checks that the file system holds the
next checkpoint, estimated from the model (`checkpoint_bytes`: the saved parameters plus AdamW's
two moments); a shortfall, or a write that fails on a full disk anyway, stops every rank with
"disk full at <path>" and removes the partial folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import UserError
from .distributed import DistEnv, all_reduce_max, barrier, broadcast_object
from .lora import checkpoint_options

_NAME = re.compile(r"^step_(\d{8})$")
STATE_FILE = "trainer_state.json"


def step_dir_name(step: int) -> str:
    """The folder name of the checkpoint after `step` optimiser steps."""
    return f"step_{step:08d}"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint on disk and its trainer state."""

    path: Path
    step: int
    state: dict[str, Any]

    @property
    def val_loss(self) -> float | None:
        return self.state.get("val_loss")

    @property
    def has_optimizer(self) -> bool:
        return (self.path / "optim").is_dir() and self.state.get("has_optimizer", True)


def is_complete(path: Path) -> bool:
    """True for a checkpoint folder with the final name, its state file and both DCP metadata."""
    return (_NAME.match(path.name) is not None and (path / STATE_FILE).is_file()
            and (path / "model" / ".metadata").is_file())


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under `root`, oldest step first (partial or foreign folders ignored)."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and is_complete(p):
            try:
                state = json.loads((p / STATE_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue  # unreadable state = not trusted
            out.append(CheckpointInfo(p, int(_NAME.match(p.name).group(1)), state))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(root: Path, need_optimizer: bool = True) -> CheckpointInfo | None:
    """The newest complete checkpoint (with optimiser state if `need_optimizer`)."""
    found = [c for c in list_checkpoints(root) if c.has_optimizer or not need_optimizer]
    return found[-1] if found else None


def best_checkpoint(root: Path) -> CheckpointInfo | None:
    """The complete checkpoint with the lowest validation loss (ties: the later one)."""
    scored = [c for c in list_checkpoints(root) if c.val_loss is not None]
    return min(scored, key=lambda c: (c.val_loss, -c.step)) if scored else None


# Per-checkpoint overhead beside the tensors: DCP metadata, RNG states, trainer_state.json.
_FIXED_BYTES = 1 << 20
_PER_RANK_BYTES = 64 << 10


def checkpoint_bytes(model, world_size: int = 1) -> int:
    """Estimated size of one checkpoint of `model`: saved parameters + AdamW's two moments + overhead.

    Only trainable parameters are saved when some are frozen (LoRA, see lora.checkpoint_options);
    AdamW keeps exp_avg and exp_avg_sq in the parameters' dtype (fp32 masters: 12 bytes/parameter).
    """
    params = list(model.parameters())
    frozen = any(not p.requires_grad for p in params)
    saved = sum(p.numel() * p.element_size() for p in params if p.requires_grad or not frozen)
    moments = 2 * sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return int(1.02 * (saved + moments)) + _FIXED_BYTES + _PER_RANK_BYTES * world_size


def check_free_space(root: Path, need: int) -> None:
    """Raise DiskFull ("disk full at <root>") when the file system of `root` cannot hold `need` bytes."""
    if atomic.free_bytes(root) < need:
        raise atomic.disk_full(root, need)


def _is_disk_full(exc: BaseException) -> bool:
    """True if a full disk is anywhere in the error (DCP wraps each rank's failure)."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if atomic.is_disk_full(e) or "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint.CheckpointException
        if isinstance(failures, dict):
            todo += [v for v in failures.values() if isinstance(v, BaseException)]
    return False


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _remove(path: Path) -> None:
    # Rename first: a deletion interrupted half-way must not leave a folder with a trusted name.
    doomed = path.with_name(f".{path.name}.deleting")
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


class CheckpointManager:
    """Save, find, load and prune the checkpoints of one run (all methods are collective)."""

    def __init__(self, root: Path, env: DistEnv, keep_top_k: int = 1):
        self.root = Path(root)
        self.env = env
        self.keep_top_k = keep_top_k

    def save(self, step: int, model, optimizer, state: dict[str, Any]) -> Path:
        """Write the checkpoint of `step` atomically; returns its final path."""
        final = self.root / step_dir_name(step)
        if final.exists():  # e.g. a deadline save right after a regular save of the same step
            return final
        tmp = self.root / f".{final.name}.partial"
        problem = None
        if self.env.is_main:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)  # left by a killed save of the same step
                check_free_space(self.root, checkpoint_bytes(model, self.env.world_size))
                tmp.mkdir()
                (tmp / "rng").mkdir()
            except (UserError, OSError) as exc:
                problem = str(exc) if isinstance(exc, UserError) or not atomic.is_disk_full(exc) \
                    else str(atomic.disk_full(self.root))
        problem = broadcast_object(problem, self.env)
        if problem:
            raise UserError(f"{problem} (checkpoint of step {step} not written)")
        t0 = time.time()
        try:
            self._write(tmp, model, optimizer)
        except Exception as exc:
            if not _is_disk_full(exc):
                raise
            if self.env.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise atomic.disk_full(self.root) from None
        problem = None
        if self.env.is_main:
            record = dict(state, step=step, world_size=self.env.world_size, has_optimizer=True,
                          save_seconds=round(time.time() - t0, 3))
            try:
                atomic.write_json(tmp / STATE_FILE, record)
            except UserError as exc:  # a full disk: the others must not wait in the barrier below
                shutil.rmtree(tmp, ignore_errors=True)
                problem = str(exc)
            else:
                os.replace(tmp, final)
                _fsync_dir(self.root)
                self._prune()
        problem = broadcast_object(problem, self.env)
        if problem:
            raise UserError(f"{problem} (checkpoint of step {step} not written)")
        return final

    def _write(self, tmp: Path, model, optimizer) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        barrier(self.env)
        # Frozen weights (the LoRA base) are not saved: they are reloaded from the base model.
        msd, osd = get_state_dict(model, optimizer, options=checkpoint_options(model))
        dcp.save({"model": msd}, checkpoint_id=str(tmp / "model"))
        dcp.save({"optim": osd}, checkpoint_id=str(tmp / "optim"))
        failed: OSError | None = None
        try:
            torch.save(_rng_state(), tmp / "rng" / f"rank_{self.env.rank:05d}.pt")
        except OSError as exc:  # not collective: tell the others instead of leaving them in a barrier
            failed = exc
        if all_reduce_max(1.0 if failed is not None else 0.0, self.env) > 0:
            raise failed or OSError(28, "No space left on device (on another rank)")

    def load(self, ckpt: CheckpointInfo, model, optimizer=None) -> dict[str, Any]:
        """Load model (+ optimiser, + this rank's RNG) from `ckpt`; returns its trainer state."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                             set_model_state_dict, set_state_dict)

        opts = checkpoint_options(model)
        if optimizer is None:
            msd = get_model_state_dict(model, options=opts)
            box = {"model": msd}
            dcp.load(box, checkpoint_id=str(ckpt.path / "model"))
            set_model_state_dict(model, box["model"], options=opts)
        else:
            msd, osd = get_state_dict(model, optimizer, options=opts)
            mbox, obox = {"model": msd}, {"optim": osd}
            dcp.load(mbox, checkpoint_id=str(ckpt.path / "model"))
            dcp.load(obox, checkpoint_id=str(ckpt.path / "optim"))
            set_state_dict(model, optimizer, model_state_dict=mbox["model"],
                           optim_state_dict=obox["optim"], options=opts)
            rng = ckpt.path / "rng" / f"rank_{self.env.rank:05d}.pt"
            if rng.is_file() and ckpt.state.get("world_size") == self.env.world_size:
                _set_rng_state(torch.load(rng, weights_only=False))
        return ckpt.state

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint (with or without optimiser), as rank 0 sees it."""
        found = latest_checkpoint(self.root, need_optimizer=False) if self.env.is_main else None
        return broadcast_object(found, self.env)

    def best(self) -> CheckpointInfo | None:
        """The lowest-val-loss checkpoint, as rank 0 sees it."""
        found = best_checkpoint(self.root) if self.env.is_main else None
        return broadcast_object(found, self.env)

    def keep_set(self, found: list[CheckpointInfo]) -> set[Path]:
        """Folders to keep: the latest one and the `keep_top_k` with the lowest val loss."""
        if not found:
            return set()
        keep = {found[-1].path}
        scored = sorted((c for c in found if c.val_loss is not None), key=lambda c: (c.val_loss, -c.step))
        keep.update(c.path for c in scored[: self.keep_top_k])
        return keep

    def _prune(self) -> None:
        found = list_checkpoints(self.root)
        keep = self.keep_set(found)
        for c in found:
            if c.path not in keep:
                _remove(c.path)
        for stale in self.root.glob(".*.deleting"):
            shutil.rmtree(stale, ignore_errors=True)

    def drop_optimizer_states(self) -> int:
        """Delete the optimiser part of every kept checkpoint (weights stay); returns how many."""
        n = 0
        if self.env.is_main:
            for c in list_checkpoints(self.root):
                if (c.path / "optim").is_dir():
                    atomic.write_json(c.path / STATE_FILE, dict(c.state, has_optimizer=False))
                    _remove(c.path / "optim")
                    n += 1
        barrier(self.env)
        return n


def _fsync_dir(path: Path) -> None:
    # Make the rename durable before anyone is told the checkpoint exists.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
