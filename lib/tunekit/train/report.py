"""What the training notebooks show: tables and figures from a prepared run, its result and its records.

    before training   sources, plan_table, packing / sft_preview (SFT), overlong / pair_preview (DPO)
    after training    result_table, loss_curve_figure, val_history, published_files,
                      dpo_history / dpo_figure (DPO rewards and margins)
    the record        sft_summary / dpo_summary (summary.json), sft_check / dpo_check (the rounded
                      facts the notebooks' nbval cell prints)

Everything here reads plain data (engine.Prepared, train_result.json, metrics.jsonl records), so
it works the same for a run trained in the kernel and one trained by launched workers.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .batches import IGNORE_INDEX, real_token_count

RESULT_KEYS = ("status", "step", "total_steps", "resumed_from", "final_loss", "initial_val_loss", "best_val_loss",
               "best_step", "tokens_per_s", "world_size", "attn_implementation", "compute_dtype", "peft",
               "trainable_params")


def _pd():
    import pandas as pd

    return pd


def _plt():
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")  # headless (tests, workers): no display needed
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ before training
def sources(prep) -> Any:
    """Per-dataset table: records -> train/dev, tokens, shares, duplicates."""
    return _pd().DataFrame(prep.report.get("sources", []))


def plan_table(prep) -> Any:
    """The step plan as a one-column table."""
    return _pd().Series(prep.plan.to_dict(), name="plan").to_frame()


def _split_rows(prep, prefix: str) -> Any:
    rows = [dict(split=k.split("_")[1], **v) for k, v in prep.report.items() if k.startswith(prefix)]
    return _pd().DataFrame(rows)


def packing(prep) -> Any:
    """SFT: packing statistics of the train and dev splits, one row each."""
    return _split_rows(prep, "packing_")


def overlong(prep) -> Any:
    """DPO: over-length handling of the train and dev pairs (pairs = kept + dropped), one row each."""
    return _split_rows(prep, "pairs_")


def sft_preview(prep, n: int = 5) -> Any:
    """The first `n` packed training sequences: documents, trained and padding tokens."""
    rows = []
    pad = getattr(prep.train, "pad_id", None)
    for i in range(min(n, len(prep.train))):
        it = prep.train[i]
        real = real_token_count(it["input_ids"], it["labels"], it["doc_lens"], pad)
        rows.append({"sequence": i, "doc_lens": it["doc_lens"].tolist(),
                     "trained_tokens": int((it["labels"] != IGNORE_INDEX).sum()),
                     "padding_tokens": len(it["input_ids"]) - real})
    return _pd().DataFrame(rows)


def pair_preview(prep, n: int = 3) -> Any:
    """The first `n` training pairs decoded: prompt end, chosen and rejected (scored tokens only)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prep.model_dir)
    rows = []
    for i in range(min(n, len(prep.train))):
        p = prep.train[i]
        rows.append({"pair": i, "prompt_tokens": len(p.prompt),
                     "prompt_end": "..." + tok.decode(p.prompt[-12:].tolist()),
                     "chosen": tok.decode(p.chosen.tolist()), "rejected": tok.decode(p.rejected.tolist()),
                     "chosen_tokens": len(p.chosen), "rejected_tokens": len(p.rejected)})
    return _pd().DataFrame(rows)


# ------------------------------------------------------------------ after training
def result_table(result: Mapping[str, Any]) -> Any:
    """The headline numbers of a training attempt as a one-column table."""
    return _pd().Series({k: result.get(k) for k in RESULT_KEYS}, name="result").to_frame()


def val_history(result: Mapping[str, Any]) -> Any:
    """Validation loss per step."""
    return _pd().DataFrame(result["val_history"], columns=["step", "val_loss"])


def published_files(result: Mapping[str, Any]) -> Any:
    """Table of the files in the published hf_model/ (empty when training stopped early)."""
    pd = _pd()
    if not result.get("hf_model"):
        return pd.DataFrame(columns=["file", "bytes"])
    files = sorted(Path(result["hf_model"]).iterdir())
    return pd.DataFrame([{"file": f.name, "bytes": f.stat().st_size} for f in files if f.is_file()])


def loss_curve_figure(records: Iterable[Mapping[str, Any]], title: str = "loss"):
    """A matplotlib figure of train loss per step and validation loss at its steps."""
    plt = _plt()
    recs = list(records)
    train = [(r["step"], r["loss"]) for r in recs if "loss" in r and "step" in r]
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def dpo_history(records: Sequence[Mapping[str, Any]]):
    """(train, dev) DataFrames of the DPO metrics per step from a run's metrics.jsonl records."""
    pd = _pd()
    train = [r for r in records if "reward_accuracy" in r and "lr" in r and "step" in r]
    dev = [r for r in records if "val_reward_accuracy" in r and "step" in r]
    tdf = pd.DataFrame(train).drop_duplicates("step", keep="last") if train else pd.DataFrame()
    ddf = pd.DataFrame(dev).drop_duplicates("step", keep="last") if dev else pd.DataFrame()
    return tdf, ddf


def dpo_figure(records: Sequence[Mapping[str, Any]], title: str = "DPO"):
    """Reward accuracy (left) and reward margin / chosen and rejected rewards (right) per step."""
    plt = _plt()
    tdf, ddf = dpo_history(records)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if len(tdf):
        ax1.plot(tdf["step"], tdf["reward_accuracy"], lw=1, alpha=0.6, label="train (global batch)")
        ax2.plot(tdf["step"], tdf["reward_margin"], lw=1, alpha=0.6, label="train margin")
    if len(ddf):
        ax1.plot(ddf["step"], ddf["val_reward_accuracy"], "o-", label="dev")
        if "val_reward_ties" in ddf:
            ax1.plot(ddf["step"], ddf["val_reward_ties"], "x:", color="grey", label="dev ties")
        ax2.plot(ddf["step"], ddf["val_reward_margin"], "o-", label="dev margin")
        ax2.plot(ddf["step"], ddf["val_chosen_reward"], "^--", label="dev chosen reward")
        ax2.plot(ddf["step"], ddf["val_rejected_reward"], "v--", label="dev rejected reward")
    ax1.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("reward accuracy (chosen > rejected; ties count as wrong)")
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


# ------------------------------------------------------------------ summary.json and the nbval cell
def sft_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """An SFT run's final numbers for summary.json."""
    out = {k: result.get(k) for k in ("status", "initial_val_loss", "final_val_loss", "best_val_loss", "best_step",
                                      "final_loss", "tokens_seen", "tokens_per_s", "hf_model", "world_size",
                                      "mfu", "peak_mem_gb")}
    out["steps"] = result.get("step")
    return out


def sft_check(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The coarse, key-sorted numbers the SFT notebook's nbval cell compares (stable on any CPU)."""
    first, best = summary.get("initial_val_loss"), summary.get("best_val_loss")
    coarse = (lambda v: None if v is None else round(float(v), 1))  # noqa: E731
    out = {"status": summary.get("status"), "steps": summary.get("steps"),
           "val_loss_step0": coarse(first), "best_val_loss": coarse(best),
           "val_loss_clearly_lower": first is not None and best is not None and best < first - 1.0,
           "published": bool(summary.get("hf_model")), "world_size": summary.get("world_size")}
    return dict(sorted(out.items()))


def dev_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """First and last dev metrics of a DPO run: initial_dev_<name> and final_dev_<name>."""
    _, ddf = dpo_history(records)
    if not len(ddf):
        return {}
    first, last = ddf.iloc[0], ddf.iloc[-1]
    out = {}
    for k in ("val_loss", "val_reward_accuracy", "val_reward_ties", "val_reward_margin", "val_kl",
              "val_chosen_reward", "val_rejected_reward"):
        if k in ddf:
            out[f"initial_dev_{k[4:]}"] = float(first[k])
            out[f"final_dev_{k[4:]}"] = float(last[k])
    out["initial_dev_step"], out["final_dev_step"] = int(first["step"]), int(last["step"])
    return out


def dpo_summary(result: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A DPO run's final numbers for summary.json: training result plus first/last dev DPO metrics."""
    data = result.get("data") or {}
    out = {k: result.get(k) for k in ("status", "step", "total_steps", "final_loss", "best_val_loss",
                                      "best_step", "tokens_per_s", "hf_model", "published_step",
                                      "world_size", "mfu", "peak_mem_gb")}
    out["train_pairs"] = (data.get("pairs_train") or {}).get("kept")
    out["dev_pairs"] = (data.get("pairs_dev") or {}).get("kept")
    out["reference_cache"] = data.get("reference_cache")
    out.update(dev_summary(records))
    return out


def dpo_check(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The coarse, key-sorted facts the DPO notebook's nbval cell compares (stable on any CPU)."""
    acc, margin = summary.get("final_dev_reward_accuracy"), summary.get("final_dev_reward_margin")
    out = {"status": summary.get("status"), "steps": summary.get("step"),
           "train_pairs": summary.get("train_pairs"), "dev_pairs": summary.get("dev_pairs"),
           # policy == reference at step 0: every pair a tie (accuracy 0 there means ties, not errors)
           "dev_all_ties_at_step0": summary.get("initial_dev_reward_ties") == 1.0,
           # 0.5 is chance; the sample's answer-only pairs cap a tiny model near 0.7 (docs/dpo.md)
           "dev_reward_accuracy_above_0.55": acc is not None and acc >= 0.55,
           "dev_reward_margin_positive": margin is not None and margin > 0.05,
           "published": bool(summary.get("hf_model")), "world_size": summary.get("world_size")}
    return dict(sorted(out.items()))
