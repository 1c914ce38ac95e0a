"""Supervised fine-tuning: the SFT objective, the notebook entry point and the worker entry point.

    run_sft(cfg, run)          notebook cell: trains here, or launches N workers and waits
    train_sft(cfg, run, ...)   one process's part of training (what each worker runs)
    python -m tunekit.train.sft --params P.yaml | --run-dir D     worker / CLI entry for
                               torchrun and mpirun (`tunekit train sft` is the same)

The SFT loss is token-mean cross entropy over all labelled tokens of the global batch (see
loop.py for why), computed by the chunked head so full-vocabulary logits never exist at once.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from .batches import IGNORE_INDEX, PackedBatch, collate_packed, real_token_count
from .cli import add_worker_arguments  # noqa: F401  (re-exported: DPO's entry point uses it)
from .distributed import DistEnv, barrier, broadcast_object, init_distributed
from .layout import check_layout, make_plan
from .prep import StagePrep, run_prepared
from .params import SFTParams

WORKER = "tunekit.train.sft"


class SFTTask:
    """Next-token cross entropy on packed sequences with document isolation."""

    def __init__(self, varlen: bool = False, pad_id: int | None = None):
        self.varlen = varlen
        self.pad_id = pad_id

    def collate(self, items: Sequence[dict[str, np.ndarray]]) -> PackedBatch:
        return collate_packed(items, varlen=self.varlen, pad_id=self.pad_id)

    def to_device(self, batch: PackedBatch, device) -> PackedBatch:
        return batch.to(device)

    def loss(self, model, batch: PackedBatch):
        lp = model(labels=batch.labels, **batch.model_inputs())
        return -lp.sum(), {}

    def weight(self, batch: PackedBatch) -> float:
        return float(batch.loss_tokens)

    def tokens(self, batch: PackedBatch) -> int:
        return batch.real_tokens

    def blank(self, item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(item)
        out["labels"] = np.full_like(np.asarray(item["labels"]), IGNORE_INDEX)
        return out


def resolve_model_dir(spec: str) -> Path:
    """The HF model dir for `model` ('tiny', an HF dir, or a run dir with hf_model/)."""
    try:
        from ..model import resolve_model
    except ImportError:
        resolve_model = None
    if resolve_model is not None:
        return Path(resolve_model(spec))
    from ..paths import resolve

    p = resolve(spec)
    if (p / "hf_model" / "config.json").is_file():
        return p / "hf_model"
    if (p / "config.json").is_file():
        return p
    raise UserError(f"model {spec!r}: not an HF model dir or a run dir with hf_model/ "
                    "(and tunekit.model.resolve_model is not available for 'tiny')")


def build_sft_data(cfg: SFTParams, model_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Packed train/dev datasets from the params' data config, and their report (tunekit.data)."""
    try:
        from ..data.sft import build_packed_sft  # noqa: F401  (provided by the data area)
    except ImportError:
        raise UserError("the SFT data pipeline (tunekit.data) is not available in this checkout; "
                        "pass datasets= to train_sft") from None
    return build_packed_sft(cfg, model_dir)


def _pad_id(model_dir: Path) -> int | None:
    import json

    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pad = cfg.get("pad_token_id")
    return int(pad) if isinstance(pad, int) else None


def train_sft(cfg: SFTParams, run, *, env: DistEnv | None = None, datasets=None,
              model_dir: Path | None = None) -> dict[str, Any]:
    """Run this process's share of SFT (collective) and return the result record.

    Args:
        cfg: validated SFTParams.
        run: the open run (tunekit.runs.Run); only rank 0's writes.
        env: the distributed environment (initialised here when None).
        datasets: (train, dev, report) to use instead of building them from cfg's data config.
        model_dir: an HF model dir instead of resolving cfg.model.
    """
    from .modeling import read_config, resolve_attention
    from .monitor import check_wandb
    from .session import train_session

    env = env or init_distributed()
    model_dir = Path(model_dir) if model_dir else on_main_first(env, lambda: resolve_model_dir(cfg.model))
    config = read_config(model_dir)
    check_layout(cfg, env.world_size, getattr(config, "max_position_embeddings", None))
    check_wandb(cfg.wandb)  # on every rank: a failure on one rank only would hang the others
    attn = resolve_attention(cfg.attn_implementation, env)
    if datasets is None:
        # One rank tokenises (content-addressed cache), the others then read the cache.
        datasets = on_main_first(env, lambda: build_sft_data(cfg, model_dir))
    train_ds, dev_ds, report = datasets
    plan = make_plan(cfg, env.world_size, len(train_ds), len(dev_ds) if dev_ds is not None else 0)
    task = SFTTask(varlen=attn == "flash_attention_2", pad_id=_pad_id(model_dir))
    return train_session(cfg=cfg, run=run, env=env, task=task, train_ds=train_ds,
                         dev_ds=dev_ds if dev_ds is not None and len(dev_ds) else None,
                         model_dir=model_dir, plan=plan, data_report=report)


def on_main_first(env: DistEnv, fn):
    """Run `fn` on rank 0, then on the others (so caches are built once); a failure stops every rank."""
    result, error, exc_main = None, None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below; the others must not hang
            exc_main = exc
            error = str(exc) if isinstance(exc, UserError) else f"rank 0 failed: {exc!r}"
    error = broadcast_object(error, env)
    if exc_main is not None:
        raise exc_main
    if error:
        raise UserError(error)
    barrier(env)
    if not env.is_main:
        result = fn()
    return result


_on_main_first = on_main_first  # the name DPO imports


@dataclass
class SFTPrep(StagePrep):
    """What the notebook shows before training: model dir, packed data, report and step plan."""

    def packing(self):
        """Packing statistics of the train and dev splits, one row each."""
        return self.split_rows("packing_")

    def preview(self, n: int = 5):
        """The first `n` packed training sequences: documents, real and trained tokens."""
        import pandas as pd

        rows = []
        pad = getattr(self.train, "pad_id", None)
        for i in range(min(n, len(self.train))):
            it = self.train[i]
            real = real_token_count(it["input_ids"], it["labels"], it["doc_lens"], pad)
            rows.append({"sequence": i, "doc_lens": it["doc_lens"].tolist(),
                         "trained_tokens": int((it["labels"] != IGNORE_INDEX).sum()),
                         "padding_tokens": len(it["input_ids"]) - real})
        return pd.DataFrame(rows)


def planned_world_size(cfg) -> tuple[int, bool]:
    """(processes training will use, whether run_sft launches them) for this kernel and cfg."""
    from . import launch
    from .distributed import launched_world_size

    if launch.should_spawn(cfg.nproc_per_node):
        return launch.world_plan(cfg.nproc_per_node)[0], True
    return launched_world_size(), False


def prepare_sft(cfg: SFTParams) -> SFTPrep:
    """Resolve the model, check the layout, build the packed data and the plan - before any training."""
    from .modeling import read_config

    world, spawn = planned_world_size(cfg)
    model_dir = resolve_model_dir(cfg.model)
    check_layout(cfg, world, getattr(read_config(model_dir), "max_position_embeddings", None))
    train, dev, report = build_sft_data(cfg, model_dir)
    plan = make_plan(cfg, world, len(train), len(dev))
    return SFTPrep(model_dir, train, dev, report, plan, spawn)


def run_sft(cfg: SFTParams, run, prep: SFTPrep | None = None) -> dict[str, Any]:
    """Notebook entry: train in this kernel, or launch the worker processes and wait for them."""
    prep = prep or prepare_sft(cfg)  # fails here, in the notebook, before any process starts
    return run_prepared(prep, cfg, run, WORKER, train_sft)


def published_files(result: dict[str, Any]):
    """Table of the files in the published hf_model/ (empty when training stopped early)."""
    import pandas as pd

    if not result.get("hf_model"):
        return pd.DataFrame(columns=["file", "bytes"])
    files = sorted(Path(result["hf_model"]).iterdir())
    return pd.DataFrame([{"file": f.name, "bytes": f.stat().st_size} for f in files if f.is_file()])


def check_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The coarse, key-sorted numbers the notebook's nbval cell compares (stable on any CPU)."""
    first, best = summary.get("initial_val_loss"), summary.get("best_val_loss")
    coarse = (lambda v: None if v is None else round(float(v), 1))  # noqa: E731
    out = {"status": summary.get("status"), "steps": summary.get("steps"),
           "val_loss_step0": coarse(first), "best_val_loss": coarse(best),
           "val_loss_clearly_lower": first is not None and best is not None and best < first - 1.0,
           "published": bool(summary.get("hf_model")), "world_size": summary.get("world_size")}
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ worker / CLI entry point
def open_run_for_worker(cfg: SFTParams | None, run_dir: Path | None, env: DistEnv, stage: str = "sft"):
    """The run on every rank: rank 0 creates/reopens it (start_run), the others follow its path."""
    from ..runs import Run, start_run

    if run_dir is not None:
        run_dir = Path(run_dir).resolve()
        return Run(run_dir, stage, resumed=(run_dir / "checkpoints").is_dir(), writer=env.is_main)
    info = None
    if env.is_main:
        try:
            r = start_run(stage, cfg, cfg.run_name, cfg.runs_dir)
            info = (str(r.dir), r.resumed, None)
        except UserError as exc:
            info = (None, False, str(exc))
    info = broadcast_object(info, env)
    if info[2]:
        raise UserError(info[2])
    return Run(Path(info[0]), stage, resumed=info[1], writer=env.is_main)


def load_params(path: str | None, run_dir: str | None, cls=SFTParams):
    """Params from a YAML/JSON file, or from a run dir's params.json."""
    import json

    import yaml

    if run_dir:
        p = Path(run_dir) / "params.json"
        if not p.is_file():
            raise UserError(f"{run_dir}: no params.json (is this a run directory?)")
        return cls.parse(json.loads(p.read_text(encoding="utf-8")), source=str(p))
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: params file not found")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a params file must be a mapping of parameter: value")
    return cls.parse(data, source=str(path))


def worker_main(args: argparse.Namespace) -> int:
    """Train as one rank of whatever launched us; returns the exit code."""
    from .distributed import shutdown

    cfg = load_params(args.params, args.run_dir)
    env = init_distributed()
    ok = False
    try:
        from ..runtime import seed_everything

        seed_everything(cfg.seed + env.rank)
        run = open_run_for_worker(cfg, Path(args.run_dir) if args.run_dir else None, env)
        result = train_sft(cfg, run, env=env)
        if env.is_main:
            print(f"{result['status']}: step {result['step']}/{result['total_steps']}, "
                  f"run dir {run.dir}", flush=True)
        ok = True
    finally:
        shutdown(clean=ok)
    # Exit code 0 also for a deadline stop: the run is consistent and resumable, and
    # train_result.json says "deadline" (what a PBS chain looks at).
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tunekit.train.sft`: a UserError becomes `error: <sentence>` and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m tunekit.train.sft", description=__doc__.splitlines()[0])
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return worker_main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
