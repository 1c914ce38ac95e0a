"""Token statistics of a mixture and the training-cost estimate shown by the inspection notebook."""
from __future__ import annotations

from typing import Any

import numpy as np

from .mixing import Mixture


def sft_lengths(mix: Mixture):
    """Per example (pandas DataFrame): dataset, split, prompt (untrained) and response (trained) tokens."""
    import pandas as pd

    frames = []
    for s in mix.sources:
        if s.file is None:
            continue
        total = s.file.lengths("tokens")
        trained = np.asarray(s.file.array("loss_tokens"), np.int64)
        for split, idx in (("train", s.train_idx), ("dev", s.dev_idx)):
            frames.append(pd.DataFrame({"dataset": s.name, "split": split,
                                        "prompt_tokens": total[idx] - trained[idx],
                                        "response_tokens": trained[idx], "total_tokens": total[idx]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["dataset", "split", "prompt_tokens", "response_tokens", "total_tokens"])


def dpo_lengths(mix: Mixture):
    """Per pair (pandas DataFrame): dataset, split, prompt, chosen and rejected response tokens."""
    import pandas as pd

    frames = []
    for s in mix.sources:
        if s.file is None:
            continue
        p, c, r = (s.file.lengths(n) for n in ("prompt", "chosen", "rejected"))
        for split, idx in (("train", s.train_idx), ("dev", s.dev_idx)):
            frames.append(pd.DataFrame({"dataset": s.name, "split": split, "prompt_tokens": p[idx],
                                        "chosen_tokens": c[idx], "rejected_tokens": r[idx]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["dataset", "split", "prompt_tokens", "chosen_tokens", "rejected_tokens"])


def lost_tokens(mix: Mixture, max_seq_length: int, overlong: str = "drop"):
    """Per dataset and split (pandas DataFrame): what `max_seq_length` costs under `overlong`.

    Columns: examples, over_length (longer than max_seq_length), answers_cut (of those, how many
    have trained tokens past the limit: truncating them cuts the end of an answer, e.g. its final
    \\boxed{}), then what is lost with the chosen policy: examples_lost (drop), tokens_lost (all
    tokens of dropped examples, or the cut tails), trained_tokens_lost (answer tokens among them)
    and their share of the split's trained tokens.
    """
    import pandas as pd

    S, rows = max_seq_length, []
    for s in mix.sources:
        if s.file is None:
            continue
        f = s.file
        off = np.asarray(f.array("offsets"), np.int64)
        csum = np.concatenate([[0], np.cumsum(np.asarray(f.array("mask"), np.int64))])
        total, trained = np.diff(off), np.asarray(f.array("loss_tokens"), np.int64)
        for split, idx in (("train", s.train_idx), ("dev", s.dev_idx)):
            n, t = total[idx], trained[idx]
            over = n > S
            starts = off[idx][over]
            past = csum[off[idx + 1][over]] - csum[starts + S]   # trained tokens beyond the limit
            drop = overlong == "drop"
            lost_trained = int(t[over].sum()) if drop else int(past.sum())
            rows.append({"dataset": s.name, "split": split, "examples": int(len(idx)), "over_length": int(over.sum()),
                         "answers_cut": int((past > 0).sum()), "policy": overlong,
                         "examples_lost": int(over.sum()) if drop else 0,
                         "tokens_lost": int(n[over].sum() if drop else (n[over] - S).sum()),
                         "trained_tokens_lost": lost_trained,
                         "trained_share_lost": round(lost_trained / max(1, int(t.sum())), 4)})
    cols = ["dataset", "split", "examples", "over_length", "answers_cut", "policy", "examples_lost", "tokens_lost",
            "trained_tokens_lost", "trained_share_lost"]
    return pd.DataFrame(rows, columns=cols)


def over_length(lengths: np.ndarray, max_seq_length: int) -> dict[str, int]:
    """How many examples exceed the sequence length, and by how many tokens in total."""
    lengths = np.asarray(lengths)
    over = lengths > max_seq_length
    return {"examples": int(len(lengths)), "over_length": int(over.sum()),
            "tokens_cut": int((lengths[over] - max_seq_length).sum())}


def estimate_training(tokens_per_epoch: int, epochs: float, nodes: int, gpus_per_node: int,
                      tokens_per_s_per_gpu: float) -> dict[str, Any]:
    """Wall time and ABCI node-hours for a token budget at an ASSUMED per-GPU throughput.

    tokens_per_epoch counts sequence positions processed (packed sequences x length), the work the
    GPUs do; the throughput is an assumption the user states, not a measurement.
    """
    total = tokens_per_epoch * epochs
    gpus = max(1, nodes * gpus_per_node)
    seconds = total / (tokens_per_s_per_gpu * gpus) if tokens_per_s_per_gpu > 0 else float("inf")
    return {"tokens_per_epoch": int(tokens_per_epoch), "epochs": epochs, "total_tokens": int(total),
            "nodes": nodes, "gpus": gpus, "assumed_tokens_per_s_per_gpu": tokens_per_s_per_gpu,
            "wall_hours": seconds / 3600, "node_hours": seconds / 3600 * nodes}
