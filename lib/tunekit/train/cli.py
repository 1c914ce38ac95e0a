"""`tunekit train sft|dpo --params P.yaml | --run-dir D`: one training rank, for torchrun/mpirun/PBS.

Run it under a launcher to train multi-process, e.g.
    torchrun --nproc-per-node 8 -m tunekit.cli train sft --params job.yaml
    mpirun -np 16 --npernode 8 ... tunekit train sft --run-dir runs/sft/job1234
(`python -m tunekit.train.sft` takes the same arguments). Heavy imports happen in the handler.
"""
from __future__ import annotations


def _cmd_sft(args) -> int:
    from .sft import worker_main

    return worker_main(args)


def _cmd_dpo(args) -> int:
    from .dpo import worker_main

    return worker_main(args)


def add_worker_arguments(parser) -> None:
    """--params / --run-dir, shared by `tunekit train sft` and `python -m tunekit.train.sft`."""
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--params", help="YAML/JSON params file (the notebook's parameters)")
    g.add_argument("--run-dir", help="an existing run dir: train with its params.json (resume)")


def register(subparsers) -> None:
    """Add `tunekit train sft` and `tunekit train dpo`."""
    p = subparsers.add_parser("train", help="run training as one rank of torchrun/mpirun (or alone)")
    sub = p.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    s = sub.add_parser("sft", help="supervised fine-tuning with the params of notebooks/30_sft")
    add_worker_arguments(s)
    s.set_defaults(func=_cmd_sft)
    d = sub.add_parser("dpo", help="preference training with the params of notebooks/40_dpo")
    add_worker_arguments(d)
    d.set_defaults(func=_cmd_dpo)
