"""Supervised fine-tuning: the SFT objective, its data, and its notebook and worker entry points.

    prepare_sft(cfg) -> Prepared   notebook: model dir, packed data and step plan, checked first
    run_sft(cfg, run, prep)        notebook: train in this kernel, or launch the workers and wait
    train_sft(cfg, run, ...)       one process's share of training (what every `tunekit train sft`
                                   rank runs under torchrun / mpirun)

The loss is next-token cross entropy over the packed sequences' labelled tokens: `sft_loss` sums
it over a micro-batch and the engine divides by the number of labelled tokens of the whole global
batch, so each step's loss is the token mean over the global batch (engine.py says why). The
per-token log-probs come from the model's chunked head (engine.CausalLMForTraining), so
full-vocabulary logits never exist for all tokens at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.sft import build_packed_sft
from .batches import IGNORE_INDEX, PackedBatch, collate_packed
from .distributed import DistEnv
from .engine import Prepared, on_main_first, per_document, prepare, run_prepared, setup, train
from .params import SFTParams


def sft_loss(model, batch: PackedBatch) -> torch.Tensor:
    """Summed next-token cross entropy over the batch's labelled tokens (divide by a global token count)."""
    return -model(labels=batch.labels, **batch.model_inputs()).sum()


class SFTTask:
    """The engine's objective for SFT: packed sequences with document isolation, `sft_loss`."""

    def __init__(self, varlen: bool = False, pad_id: int | None = None):
        self.varlen = varlen
        self.pad_id = pad_id

    def batch(self, items: Sequence[dict[str, np.ndarray]], device) -> PackedBatch:
        """Packed items -> one micro-batch (varlen offsets, or a block-diagonal mask) on `device`."""
        return collate_packed(items, varlen=self.varlen, pad_id=self.pad_id).to(device)

    def loss(self, model, batch: PackedBatch):
        """(summed cross entropy, no extra metrics)."""
        return sft_loss(model, batch), {}

    def blank(self, item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The item with every label removed: it is run but trains and counts nothing."""
        out = dict(item)
        out["labels"] = np.full_like(np.asarray(item["labels"]), IGNORE_INDEX)
        return out


def train_sft(cfg: SFTParams, run, *, env: DistEnv | None = None, datasets=None,
              model_dir: Path | None = None) -> dict[str, Any]:
    """Run this process's share of SFT (collective) and return the result record.

    Args:
        cfg: validated SFTParams.
        run: the open run (tunekit.runs.Run); only rank 0 writes.
        env: the distributed environment (initialised here when None).
        datasets: (train, dev, report) to use instead of building them from the params.
        model_dir: an HF model dir instead of resolving cfg.model.
    """
    s = setup(cfg, env, model_dir)
    if datasets is None:
        # One rank tokenises (content-addressed cache), the others then read the cache.
        datasets = on_main_first(s.env, lambda: build_packed_sft(cfg, s.model_dir))
    train_ds, dev_ds, report = datasets
    task = SFTTask(varlen=per_document(s.attn), pad_id=s.pad_id)
    return train(task, cfg, run, s, train_ds, dev_ds, report)


def prepare_sft(cfg: SFTParams) -> Prepared:
    """Resolve the model, check the layout, build the packed data and the plan - before any training."""
    return prepare(cfg, lambda model_dir: build_packed_sft(cfg, model_dir))


def run_sft(cfg: SFTParams, run, prep: Prepared | None = None) -> dict[str, Any]:
    """Notebook entry: train in this kernel, or launch the worker processes and wait for them."""
    prep = prep or prepare_sft(cfg)  # fails here, in the notebook, before any process starts
    return run_prepared(prep, cfg, run, train_sft)
