"""`tunekit train <stage> --params P.yaml | --run-dir D`: one training rank, the kit's one worker entry.

Run it under a launcher to train multi-process, e.g.

    torchrun --nproc-per-node 8 -m tunekit.cli train sft --params job.yaml
    mpirun -np 16 --npernode 8 ... python -m tunekit.cli train dpo --run-dir runs/dpo/job1234

A training notebook with `nproc_per_node` > 1 (or in a multi-node PBS job) launches exactly this
(`distributed.spawn_workers`). The stages come from `STAGES`: adding a stage is one line there
plus its module. Heavy imports (torch) happen in the handler, so `tunekit --help` stays fast.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class Stage:
    """A training stage: its parameters model and its one-rank train function ("module:name")."""

    name: str
    params: str
    train: str
    help: str

    def load(self, ref: str) -> Any:
        """Import "module:name"."""
        module, name = ref.split(":")
        return getattr(importlib.import_module(module), name)


STAGES = {s.name: s for s in (
    Stage("sft", "tunekit.train.params:SFTParams", "tunekit.train.sft:train_sft",
          "supervised fine-tuning with the params of notebooks/30_sft"),
    Stage("dpo", "tunekit.train.params:DPOParams", "tunekit.train.dpo:train_dpo",
          "preference training with the params of notebooks/40_dpo"),
)}


def load_params(stage: Stage, path: str | None, run_dir: str | None):
    """The stage's params from a YAML/JSON params file, or from a run dir's params.json."""
    cls = stage.load(stage.params)
    if run_dir:
        p = Path(run_dir) / "params.json"
        if not p.is_file():
            raise UserError(f"{run_dir}: no params.json (is this a run directory?)")
        return cls.parse(json.loads(p.read_text(encoding="utf-8")), source=str(p))
    from .. import paramfile  # the same reader `tunekit job submit` uses (2e-5 is a float)

    return cls.parse(paramfile.load(path), source=str(path))


def _reopen(cfg, run_dir: Path) -> None:
    """Rank 0 of `--run-dir D`: become D's writer; a launch of its own (not started by D's writer) is recorded."""
    from .. import runlock
    from ..runs import environment_snapshot, record_launch

    if runlock.acquire(run_dir):  # False: the notebook kernel that launched us writes the run
        env = environment_snapshot()
        record_launch(run_dir, env, resumed=(run_dir / "checkpoints").is_dir(), fingerprint=cfg.fingerprint())


def open_run_for_worker(cfg, run_dir: Path | None, env):
    """The run on every rank: rank 0 creates/reopens it (start_run) and holds its lock, the others follow."""
    from ..runs import Run, start_run
    from .distributed import broadcast_object

    info = None
    if run_dir is not None:
        run_dir = Path(run_dir).resolve()
        if env.is_main:
            try:
                _reopen(cfg, run_dir)
                info = (str(run_dir), (run_dir / "checkpoints").is_dir(), None)
            except UserError as exc:
                info = (None, False, str(exc))
    elif env.is_main:
        try:
            r = start_run(cfg.stage, cfg, cfg.run_name, cfg.runs_dir)
            info = (str(r.dir), r.resumed, None)
        except UserError as exc:
            info = (None, False, str(exc))
    info = broadcast_object(info, env)
    if info[2]:
        raise UserError(info[2])
    return Run(Path(info[0]), cfg.stage, resumed=info[1], writer=env.is_main)


def worker_main(args) -> int:
    """Train as one rank of whatever launched us; returns the exit code."""
    from ..runtime import seed_everything
    from .distributed import exit_worker, init_distributed, shutdown

    import signal

    from ..signals import exit_code

    stage = STAGES[args.train_command]
    cfg = load_params(stage, args.params, args.run_dir)
    env = init_distributed()
    ok = False
    try:
        seed_everything(cfg.seed + env.rank)
        run = open_run_for_worker(cfg, Path(args.run_dir) if args.run_dir else None, env)
        result = stage.load(stage.train)(cfg, run, env=env)
        if env.is_main:
            stopped = f" ({result['stop_signal']} received)" if result.get("stop_signal") else ""
            print(f"{result['status']}: step {result['step']}/{result['total_steps']}{stopped}, "
                  f"run dir {run.dir}", flush=True)
        ok = True
    finally:
        shutdown(clean=ok)
    # Exit code 0 also for a deadline stop: the run is consistent and resumable, and
    # train_result.json says "deadline" (what a PBS chain looks at). A stop signal is not a
    # success: 128 + its number, as if the signal had ended the process (after the checkpoint).
    code = exit_code(getattr(signal, result["stop_signal"])) if result.get("stop_signal") else 0
    exit_worker(code)
    return code


def register(subparsers) -> None:
    """Add `tunekit train <stage>` for every stage in STAGES."""
    p = subparsers.add_parser("train", help="run training as one rank of torchrun/mpirun (or alone)")
    sub = p.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    for stage in STAGES.values():
        s = sub.add_parser(stage.name, help=stage.help)
        g = s.add_mutually_exclusive_group(required=True)
        g.add_argument("--params", help="YAML/JSON params file (the notebook's parameters)")
        g.add_argument("--run-dir", help="an existing run dir: train with its params.json (resume)")
        s.set_defaults(func=worker_main)
