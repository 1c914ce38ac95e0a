"""Preference training (DPO): the objective, its reference, its data, and its notebook and worker entries.

    prepare_dpo(cfg) -> Prepared   notebook: starting model, pairs and step plan, checked first
    run_dpo(cfg, run, prep)        notebook: train in this kernel, or launch the workers and wait
    train_dpo(cfg, run, ...)       one process's share of training (every `tunekit train dpo` rank)

The starting policy is `init`: an SFT run dir (its published `hf_model/`), any HF model dir, or
"tiny"; the reference is that same model. `reference` says where its log-probs come from:

    cached (default)  computed once before training with the freshly loaded policy, which at that
                      moment IS the reference, and stored by content (refcache.py): no reference
                      model is ever held during training, and a sweep over beta or lr reuses them
    live              computed for every micro-batch during training (no pass before it, nothing
                      on disk): by a frozen copy of the starting model, held sharded in the compute
                      dtype next to the policy (full fine-tuning), or by the policy itself with its
                      LoRA adapters switched off (the LoRA policy starts with B = 0, so "adapters
                      off" is exactly the starting model; no second model then)

`DPOTask` puts both responses of every pair through ONE forward pass (batches.py: rows follow the
documents' real lengths), applies the official loss family (dpo_loss.py) per pair and returns the
pairs' summed loss; the engine divides by the number of pairs of the global batch, so the step's
loss is the mean over its pairs, as in the official kit.
"""
from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.dpo import load_dpo_data
from ..data.schema import iter_lines
from ..template import TEMPLATE_VERSION
from ..errors import UserError
from .batches import Pair, PairBatch, build_pair_batch, make_pair, policy_logps
from .distributed import DistEnv
from .dpo_loss import METRIC_KEYS, pair_terms
from .engine import (Prepared, load_for_training, on_main_first, per_document, prepare, resolve_precision,
                     row_multiple, run_prepared, setup, train)
from .lora import adapters_disabled
from .params import DPOParams, PreferenceParams
from .plan import make_plan
from .refcache import ensure_reference_logps

# DPO metrics reported next to the loss, per step and per validation (the loop adds "loss").
STEP_KEYS = tuple(k for k in METRIC_KEYS if k != "loss")
Reference = Callable[[Any, PairBatch], tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------ the objective
def adapters_off_logps(model, pb: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of a pair batch from the LoRA policy itself with its adapters switched off."""
    with torch.no_grad(), adapters_disabled(model):
        c, r = policy_logps(model, pb)
    return c.detach(), r.detach()


def cached_reference(cache) -> Reference:
    """A Reference that looks the pairs up in precomputed log-probs (refcache.ReferenceLogps)."""
    return lambda _model, pb: cache.for_batch(pb)


def frozen_model_reference(ref_model) -> Reference:
    """A Reference computed by a separately held frozen model (engine.load_for_training(frozen=True))."""
    def reference(_policy, pb: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            c, r = policy_logps(ref_model, pb)
        return c.detach(), r.detach()

    return reference


class DPOTask:
    """The engine's objective for DPO: per-pair preference losses against the reference, summed."""

    def __init__(self, loss_cfg: PreferenceParams, reference: Reference, *, packed: bool = True,
                 varlen: bool = False, pad_id: int = 0, pad_multiple: int = 8):
        self.cfg = loss_cfg
        self.reference = reference  # (model, pair batch) -> (chosen, rejected) reference log-probs
        self.packed = packed
        self.varlen = varlen
        self.pad_id = pad_id
        self.pad_multiple = pad_multiple

    def batch(self, items: Sequence[Pair], device) -> PairBatch:
        """Pairs -> one forward pass's documents (rows by batches.pair_rows) on `device`."""
        return build_pair_batch(items, packed=self.packed, pad_id=self.pad_id, varlen=self.varlen,
                                pad_multiple=self.pad_multiple).to(device)

    def loss(self, model, batch: PairBatch):
        """(summed per-pair loss, summed DPO metrics) of a micro-batch; blanks weigh 0."""
        chosen, rejected = policy_logps(model, batch)
        ref_c, ref_r = self.reference(model, batch)
        terms = pair_terms(chosen, rejected, ref_c, ref_r, batch.n_chosen, batch.n_rejected, self.cfg,
                           batch.chosen_reward, batch.rejected_reward)
        loss_sum = (terms.loss * batch.weights.to(terms.loss.dtype)).sum()
        # Metric SUMS: the loop divides them by the global pair count, for every training step
        # (metrics.jsonl) and for validation (as val_<name>).
        sums = terms.sums(batch.weights)
        return loss_sum, {k: sums[k] for k in STEP_KEYS}

    def blank(self, item: Pair) -> Pair:
        """The pair with weight 0: it is run but trains and counts nothing."""
        return replace(item, weight=0.0)


# ------------------------------------------------------------------ data
class PairItems:
    """The data layer's pair dataset seen as the engine's `Pair` items (rewards attached)."""

    def __init__(self, ds, rewards: list[tuple[float, float]] | None = None):
        self.ds = ds
        self.rewards = rewards

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Pair:
        it = self.ds[i]
        c, r = self.rewards[i] if self.rewards is not None else (None, None)
        return make_pair(it["prompt"], it["chosen"], it["rejected"], c, r)


def _rewards_of(ds, mixture) -> list[tuple[float, float]] | None:
    """Ground-truth rewards per pair from `chosen_reward`/`rejected_reward` keys of the JSONL lines.

    The official format has none (then None: the official defaults 1 and 0 apply); data produced
    for reward-aware PO (rpo_*) may carry them. The tokenised cache does not keep them, so the
    source lines of the selected pairs are read again.
    """
    per_source: dict[int, dict[int, tuple[float, float]]] = {}
    for s_idx, s in enumerate(mixture.sources):
        raw = s.file.path.read_bytes() if s.file is not None else b""
        if b'"chosen_reward"' not in raw:
            continue
        table = {}
        for n, line in iter_lines(s.file.path):
            if b'"chosen_reward"' in line:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # an invalid line: the data layer reported (or refused) it already
                try:
                    table[n] = (float(obj.get("chosen_reward", 1.0)), float(obj.get("rejected_reward", 0.0)))
                except (TypeError, ValueError):
                    raise UserError(f"{s.file.path}:{n}: chosen_reward/rejected_reward must be numbers "
                                    "(fix the line or remove both keys)") from None
        lines = s.file.array("lines")
        per_source[s_idx] = {rec: table.get(int(lines[rec]), (1.0, 0.0)) for rec in range(len(lines))}
    if not per_source:
        return None
    return [per_source.get(int(s), {}).get(int(r), (1.0, 0.0)) for s, r in zip(ds.src, ds.rec)]


def build_dpo_data(cfg: DPOParams, model_dir: Path, show_progress: bool = True):
    """(train items, dev items, report) from the params' data options, tokenised with the model's tokenizer."""
    data = load_dpo_data({**cfg.to_dict(), "tokenizer": str(model_dir)}, show_progress=show_progress)
    train_ds = PairItems(data.train, _rewards_of(data.train, data.mixture))
    dev_ds = PairItems(data.dev, _rewards_of(data.dev, data.mixture))
    return train_ds, dev_ds, data.report()


# ------------------------------------------------------------------ the reference log-probs
def reference_logps(cfg: DPOParams, env: DistEnv, model_dir: Path, pairs: list[Pair],
                    dev_pairs: list[Pair], *, varlen: bool, pad_id: int, pad_multiple: int = 8, log=print):
    """The reference log-probs of the train and dev pairs: cached, or computed once with `init`.

    On a miss the init model is loaded (the same FSDP2 path as training), run over the unique
    pairs, and freed before training loads the policy: at no time are two models in memory.
    """
    holder: dict[str, Any] = {}

    def logps_fn(pb: PairBatch):
        if "model" not in holder:
            model, _ = load_for_training(model_dir, env, precision=cfg.precision,
                                         attn_implementation=cfg.attn_implementation,
                                         chunk_tokens=cfg.loss_chunk_tokens, frozen=True)
            holder["model"] = model
        return policy_logps(holder["model"], pb)

    dtype = str(resolve_precision(cfg.precision, env)).replace("torch.", "")
    try:
        return ensure_reference_logps(
            logps_fn, pairs, eval_pairs=dev_pairs, model_dir=model_dir, template=TEMPLATE_VERSION,
            max_seq_length=cfg.max_seq_length, compute_dtype=dtype,
            micro_batch_size=cfg.micro_batch_size, packed=cfg.pack_pairs, pad_id=pad_id,
            pad_multiple=pad_multiple, varlen=varlen, device=env.device, rank=env.rank,
            world_size=env.world_size, log=log)
    finally:
        holder.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ entry points
def train_dpo(cfg: DPOParams, run, *, env: DistEnv | None = None, datasets=None,
              model_dir: Path | None = None) -> dict[str, Any]:
    """Run this process's share of DPO (collective) and return the result record.

    Args:
        cfg: validated DPOParams.
        run: the open run (tunekit.runs.Run); only rank 0 writes.
        env: the distributed environment (initialised here when None).
        datasets: (train items, dev items, report) instead of building them from the params.
        model_dir: an HF model dir instead of resolving cfg.init.
    """
    s = setup(cfg, env, model_dir)
    varlen, multiple = per_document(s.attn), row_multiple(s.attn, s.env)
    if datasets is None:
        datasets = on_main_first(s.env, lambda: build_dpo_data(cfg, s.model_dir, s.env.is_main))
    train_ds, dev_ds, report = datasets
    make_plan(cfg, s.env.world_size, len(train_ds), len(dev_ds))  # fail before the reference pass
    pad_id = s.pad_id if s.pad_id is not None else 0
    reference, info = live_reference(cfg, s) if cfg.reference == "live" else (None, None)
    if reference is None:
        cache = reference_logps(cfg, s.env, s.model_dir, [train_ds[i] for i in range(len(train_ds))],
                                [dev_ds[i] for i in range(len(dev_ds))], varlen=varlen, pad_id=pad_id,
                                pad_multiple=multiple, log=print if s.env.is_main else (lambda _m: None))
        reference, info = cached_reference(cache), cache.info
    task = DPOTask(cfg, reference, packed=cfg.pack_pairs, varlen=varlen, pad_id=pad_id, pad_multiple=multiple)
    report = dict(report or {}, reference_cache={k: info.get(k) for k in ("key", "hit", "unique_pairs", "seconds")},
                  reference=info.get("source", "cached log-probs"))
    return train(task, cfg, run, s, train_ds, dev_ds, report)


def live_reference(cfg: DPOParams, s) -> tuple[Reference, dict[str, Any]]:
    """The live reference: the LoRA policy with adapters off, or a frozen sharded copy of the starting model."""
    empty = {"key": None, "hit": None, "unique_pairs": None, "seconds": None}
    if cfg.peft == "lora":
        return adapters_off_logps, dict(empty, source="live: policy with LoRA adapters disabled")
    ref_model, _ = load_for_training(s.model_dir, s.env, precision=cfg.precision,
                                     attn_implementation=cfg.attn_implementation,
                                     chunk_tokens=cfg.loss_chunk_tokens, frozen=True)
    return frozen_model_reference(ref_model), dict(empty, source="live: frozen copy of the starting model")


def _pairs_to_train_on(cfg: DPOParams, model_dir: Path):
    train_ds, dev_ds, report = build_dpo_data(cfg, model_dir)
    if len(train_ds) == 0:
        raise UserError("data: no DPO pairs left to train on (check datasets, max_seq_length and "
                        "dpo_overlong; the over-length table says how many were dropped)")
    return train_ds, dev_ds, report


def prepare_dpo(cfg: DPOParams) -> Prepared:
    """Resolve the starting model, check the layout, build the pairs and the plan - before training."""
    return prepare(cfg, lambda model_dir: _pairs_to_train_on(cfg, model_dir))


def run_dpo(cfg: DPOParams, run, prep: Prepared | None = None) -> dict[str, Any]:
    """Notebook entry: train in this kernel, or launch the worker processes and wait for them."""
    prep = prep or prepare_dpo(cfg)  # fails here, in the notebook, before any process starts
    return run_prepared(prep, cfg, run, train_dpo)
