"""The DPO stage: preference training on top of the SFT engine, with cached reference log-probs.

    run_dpo(cfg, run)          notebook cell: trains here, or launches N workers and waits
    train_dpo(cfg, run, ...)   one process's part of training (what each worker runs)
    python -m tunekit.train.dpo --params P.yaml | --run-dir D     worker entry (torchrun/mpirun)

The starting policy is `init`: an SFT run dir (its published `hf_model/`), any HF model dir, or
"tiny"; the reference is that same model. Before training, the reference log-probs of every train
and dev pair are loaded from the content-addressed cache or computed once (`refcache`), so no
reference model is ever held during training. The rest is the SFT engine unchanged
(`session.train_session`: FSDP2, accumulation, schedule, validation, DCP checkpoints and exact
resume, `hf_model/` publishing), driven by `DPOTask`, whose loss is the summed per-pair loss
(`dpo_losses`) and whose normaliser is the number of pairs: the loss is the mean over the pairs of
the global batch, as in the official kit.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import UserError
from .distributed import DistEnv, init_distributed
from .dpo_batch import Pair, PairBatch, build_pair_batch, make_pair, policy_logps
from .dpo_losses import METRIC_KEYS, PreferenceLossConfig, pair_terms
from .prep import StagePrep, run_prepared
from .dpo_params import DPOParams
from .layout import check_layout, make_plan
from .lora import uses_base_reference

WORKER = "tunekit.train.dpo"
# DPO metrics reported next to the loss, per step and per validation (the loop adds "loss").
STEP_KEYS = tuple(k for k in METRIC_KEYS if k != "loss")


class DPOTask:
    """The loop's objective for DPO (see `tunekit.train.loop.Task`): per-pair losses, summed."""

    def __init__(self, loss_cfg: PreferenceLossConfig, reference, *, packed: bool = True,
                 varlen: bool = False, pad_id: int = 0):
        self.cfg = loss_cfg
        self.reference = reference   # ReferenceLogps (cache) or LiveReference: .for_batch(pb)
        self.packed = packed
        self.varlen = varlen
        self.pad_id = pad_id

    def collate(self, items: Sequence[Pair]) -> PairBatch:
        return build_pair_batch(items, packed=self.packed, pad_id=self.pad_id, varlen=self.varlen)

    def to_device(self, batch: PairBatch, device) -> PairBatch:
        return batch.to(device)

    def loss(self, model, batch: PairBatch):
        chosen, rejected = policy_logps(model, batch)
        ref_c, ref_r = self.reference.for_batch(batch)
        terms = pair_terms(chosen, rejected, ref_c, ref_r, batch.n_chosen, batch.n_rejected, self.cfg,
                           batch.chosen_reward, batch.rejected_reward)
        loss_sum = (terms.loss * batch.weights.to(terms.loss.dtype)).sum()
        # Metric SUMS: the loop divides them by the global pair count, for every training step
        # (metrics.jsonl) and for validation (as val_<name>).
        sums = terms.sums(batch.weights)
        return loss_sum, {k: sums[k] for k in STEP_KEYS}

    def weight(self, batch: PairBatch) -> float:
        return float(batch.weights.sum())

    def tokens(self, batch: PairBatch) -> int:
        return batch.tokens

    def blank(self, item: Pair) -> Pair:
        return replace(item, weight=0.0)


# ------------------------------------------------------------------------------ data
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

    def all(self) -> list[Pair]:
        """Every pair, materialised (for the one-off reference pass)."""
        return [self[i] for i in range(len(self))]


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
        from ..data.schema import iter_lines  # the data layer's own line numbering

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
    """(train items, dev items, report, DPOData) from the params' data config (tunekit.data.dpo)."""
    from ..data.dpo import load_dpo_data

    data = load_dpo_data({**cfg.to_dict(), "tokenizer": str(model_dir)}, show_progress=show_progress)
    train = PairItems(data.train, _rewards_of(data.train, data.mixture))
    dev = PairItems(data.dev, _rewards_of(data.dev, data.mixture))
    return train, dev, data.report(), data


# ------------------------------------------------------------------------------ reference
def reference_logps(cfg: DPOParams, env: DistEnv, model_dir: Path, pairs: list[Pair],
                    dev_pairs: list[Pair], *, varlen: bool, pad_id: int, log=print):
    """The reference log-probs of the train and dev pairs: cached, or computed once with `init`.

    On a miss the init model is loaded (the same FSDP2 path as training), run over the unique
    pairs, and freed before training loads the policy: at no time are two models in memory.
    """
    from ..data.template import TEMPLATE_VERSION
    from .modeling import load_for_training, resolve_precision
    from .refcache import ensure_reference_logps

    holder: dict[str, Any] = {}

    def logps_fn(pb: PairBatch):
        if "model" not in holder:
            model, _ = load_for_training(model_dir, env, precision=cfg.precision,
                                         attn_implementation=cfg.attn_implementation,
                                         chunk_tokens=cfg.loss_chunk_tokens)
            holder["model"] = model.eval()
        return policy_logps(holder["model"], pb)

    dtype = str(resolve_precision(cfg.precision, env)).replace("torch.", "")
    try:
        return ensure_reference_logps(
            logps_fn, pairs, eval_pairs=dev_pairs, model_dir=model_dir, template=TEMPLATE_VERSION,
            max_seq_length=cfg.max_seq_length, compute_dtype=dtype,
            micro_batch_size=cfg.micro_batch_size, packed=cfg.pack_pairs, pad_id=pad_id,
            varlen=varlen, device=env.device, rank=env.rank, world_size=env.world_size, log=log)
    finally:
        holder.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ training
def _pad_id(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pad = cfg.get("pad_token_id")
    return int(pad) if isinstance(pad, int) else 0


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
    from .modeling import read_config, resolve_attention
    from .monitor import check_wandb
    from .session import train_session
    from .sft import on_main_first, resolve_model_dir

    env = env or init_distributed()
    model_dir = Path(model_dir) if model_dir else on_main_first(env, lambda: resolve_model_dir(cfg.model))
    config = read_config(model_dir)
    check_layout(cfg, env.world_size, getattr(config, "max_position_embeddings", None))
    check_wandb(cfg.wandb)  # on every rank: a failure on one rank only would hang the others
    varlen = resolve_attention(cfg.attn_implementation, env) == "flash_attention_2"
    if datasets is None:
        datasets = on_main_first(env, lambda: build_dpo_data(cfg, model_dir, env.is_main)[:3])
    train_ds, dev_ds, report = datasets
    plan = make_plan(cfg, env.world_size, len(train_ds), len(dev_ds))
    pad_id = _pad_id(model_dir)
    say = print if env.is_main else (lambda _m: None)
    task_cls = DPOTask
    if uses_base_reference(cfg):  # LoRA: the policy with adapters off is the reference, no cache
        from .lora_dpo import AdaptersOffDPOTask, AdaptersOffReference

        ref, task_cls = AdaptersOffReference(), AdaptersOffDPOTask
    else:
        ref = reference_logps(cfg, env, model_dir, _all(train_ds), _all(dev_ds), varlen=varlen,
                              pad_id=pad_id, log=say)
    task = task_cls(cfg.loss_config(), ref, packed=cfg.pack_pairs, varlen=varlen, pad_id=pad_id)
    report = dict(report or {}, reference_cache={k: ref.info.get(k) for k in
                                                 ("key", "hit", "unique_pairs", "seconds")})
    return train_session(cfg=cfg, run=run, env=env, task=task, train_ds=train_ds,
                         dev_ds=dev_ds if len(dev_ds) else None, model_dir=model_dir, plan=plan,
                         data_report=report)


def _all(ds) -> list[Pair]:
    return ds.all() if hasattr(ds, "all") else [ds[i] for i in range(len(ds))]


@dataclass
class DPOPrep(StagePrep):
    """What the notebook shows before training: model dir, pairs, report and step plan (rows = pairs)."""

    def overlong(self):
        """Over-length handling of the train and dev pairs (pairs = kept + dropped), one row each."""
        return self.split_rows("pairs_")

    def preview(self, n: int = 3):
        """The first `n` training pairs decoded: prompt end, chosen and rejected (scored tokens only)."""
        import pandas as pd
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model_dir)
        rows = []
        for i in range(min(n, len(self.train))):
            p = self.train[i]
            rows.append({"pair": i, "prompt_tokens": len(p.prompt),
                         "prompt_end": "..." + tok.decode(p.prompt[-12:].tolist()),
                         "chosen": tok.decode(p.chosen.tolist()), "rejected": tok.decode(p.rejected.tolist()),
                         "chosen_tokens": len(p.chosen), "rejected_tokens": len(p.rejected)})
        return pd.DataFrame(rows)


def prepare_dpo(cfg: DPOParams) -> DPOPrep:
    """Resolve the starting model, check the layout, build the pairs and the plan - before training."""
    from .modeling import read_config
    from .sft import planned_world_size, resolve_model_dir

    world, spawn = planned_world_size(cfg)
    model_dir = resolve_model_dir(cfg.model)
    check_layout(cfg, world, getattr(read_config(model_dir), "max_position_embeddings", None))
    train, dev, report, _ = build_dpo_data(cfg, model_dir)
    if len(train) == 0:
        raise UserError("data: no DPO pairs left to train on (check datasets, max_seq_length and "
                        "dpo_overlong; the over-length table says how many were dropped)")
    plan = make_plan(cfg, world, len(train), len(dev))
    return DPOPrep(model_dir, train, dev, report, plan, spawn)


def run_dpo(cfg: DPOParams, run, prep: DPOPrep | None = None) -> dict[str, Any]:
    """Notebook entry: train in this kernel, or launch the worker processes and wait for them."""
    prep = prep or prepare_dpo(cfg)  # fails here, in the notebook, before any process starts
    return run_prepared(prep, cfg, run, WORKER, train_dpo)


# ------------------------------------------------------------------------------ reporting
def dpo_history(records: Sequence[dict[str, Any]]):
    """(train, dev) DataFrames of the DPO metrics per step from a run's metrics.jsonl records."""
    import pandas as pd

    train = [r for r in records if "reward_accuracy" in r and "lr" in r and "step" in r]
    dev = [r for r in records if "val_reward_accuracy" in r and "step" in r]
    tdf = pd.DataFrame(train).drop_duplicates("step", keep="last") if train else pd.DataFrame()
    ddf = pd.DataFrame(dev).drop_duplicates("step", keep="last") if dev else pd.DataFrame()
    return tdf, ddf


def dpo_figure(records: Sequence[dict[str, Any]], title: str = "DPO"):
    """Reward accuracy (left) and reward margin / chosen and rejected rewards (right) per step."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tdf, ddf = dpo_history(records)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if len(tdf):
        ax1.plot(tdf["step"], tdf["reward_accuracy"], lw=1, alpha=0.6, label="train (global batch)")
        ax2.plot(tdf["step"], tdf["reward_margin"], lw=1, alpha=0.6, label="train margin")
    if len(ddf):
        ax1.plot(ddf["step"], ddf["val_reward_accuracy"], "o-", label="dev")
        ax2.plot(ddf["step"], ddf["val_reward_margin"], "o-", label="dev margin")
        ax2.plot(ddf["step"], ddf["val_chosen_reward"], "^--", label="dev chosen reward")
        ax2.plot(ddf["step"], ddf["val_rejected_reward"], "v--", label="dev rejected reward")
    ax1.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("reward accuracy (chosen > rejected)")
    ax2.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("beta * log(pi / ref)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title(f"{title}: reward accuracy")
    ax2.set_title(f"{title}: rewards and margin")
    fig.tight_layout()
    return fig


def dev_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """First and last dev metrics of a run: initial_dev_<name> and final_dev_<name>."""
    _, ddf = dpo_history(records)
    if not len(ddf):
        return {}
    first, last = ddf.iloc[0], ddf.iloc[-1]
    out = {}
    for k in ("val_loss", "val_reward_accuracy", "val_reward_margin", "val_kl",
              "val_chosen_reward", "val_rejected_reward"):
        if k in ddf:
            out[f"initial_dev_{k[4:]}"] = float(first[k])
            out[f"final_dev_{k[4:]}"] = float(last[k])
    out["initial_dev_step"], out["final_dev_step"] = int(first["step"]), int(last["step"])
    return out


def summary_of(result: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's final numbers for summary.json: training result plus first/last dev DPO metrics."""
    data = result.get("data") or {}
    out = {k: result.get(k) for k in ("status", "step", "total_steps", "final_loss", "best_val_loss",
                                      "best_step", "tokens_per_s", "hf_model", "published_step",
                                      "world_size")}
    out["train_pairs"] = (data.get("pairs_train") or {}).get("kept")
    out["dev_pairs"] = (data.get("pairs_dev") or {}).get("kept")
    out["reference_cache"] = data.get("reference_cache")
    out.update(dev_summary(records))
    return out


def check_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The coarse, key-sorted facts the notebook's nbval cell compares (stable on any CPU)."""
    acc, margin = summary.get("final_dev_reward_accuracy"), summary.get("final_dev_reward_margin")
    out = {"status": summary.get("status"), "steps": summary.get("step"),
           "train_pairs": summary.get("train_pairs"), "dev_pairs": summary.get("dev_pairs"),
           # 0.5 is chance; the sample's answer-only pairs cap a tiny model near 0.7 (docs/dpo.md)
           "dev_reward_accuracy_above_0.55": acc is not None and acc >= 0.55,
           "dev_reward_margin_positive": margin is not None and margin > 0.05,
           "published": bool(summary.get("hf_model")), "world_size": summary.get("world_size")}
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ worker entry
def worker_main(args: argparse.Namespace) -> int:
    """Train as one rank of whatever launched us; returns the exit code."""
    from ..runtime import seed_everything
    from .distributed import shutdown
    from .sft import load_params, open_run_for_worker

    cfg = load_params(args.params, args.run_dir, cls=DPOParams)
    env = init_distributed()
    ok = False
    try:
        seed_everything(cfg.seed + env.rank)
        run = open_run_for_worker(cfg, Path(args.run_dir) if args.run_dir else None, env, stage="dpo")
        result = train_dpo(cfg, run, env=env)
        if env.is_main:
            print(f"{result['status']}: step {result['step']}/{result['total_steps']}, "
                  f"run dir {run.dir}", flush=True)
        ok = True
    finally:
        shutdown(clean=ok)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tunekit.train.dpo`: a UserError becomes `error: <sentence>` and exit code 2."""
    from .sft import add_worker_arguments

    parser = argparse.ArgumentParser(prog="python -m tunekit.train.dpo",
                                     description=__doc__.splitlines()[0])
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return worker_main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
