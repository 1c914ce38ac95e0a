"""Tables and plots of the inspection notebook (kept here so the notebook stays linear)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import DataConfig
from .files import scan_version
from .schema import FileReport
from .validate import validate_files


def validate_version(cfg: DataConfig) -> list[FileReport]:
    """Validate every entry of the config's data version, SFT and DPO (no tokenizer needed)."""
    return validate_files(scan_version(cfg.version_dir()))


def validation_table(reports: list[FileReport]):
    """One row per file (pandas DataFrame): records, kept, skipped, warnings, blank, errors, status.

    `errors` counts skipped lines plus a file refused as a whole (a directory, gzip, ...)."""
    import pandas as pd

    return pd.DataFrame([{"file": f"{Path(r.path).parent.parent.name}/{Path(r.path).name}",
                          "kind": r.kind, "records": r.records, "kept": r.kept,
                          "skipped": r.skipped, "warnings": r.warnings, "blank": r.blank,
                          "errors": r.errors, "status": r.status} for r in reports],
                        columns=["file", "kind", "records", "kept", "skipped", "warnings", "blank",
                                 "errors", "status"])


def problems_table(reports: list[FileReport], limit: int = 20):
    """The first `limit` problems (pandas DataFrame): file:line, level, message."""
    import pandas as pd

    from ..paths import repo_root

    def short(path: str) -> str:  # repo-relative when possible: shorter, and the same everywhere
        try:
            # abspath, not resolve(): the entry's own name, and a symlink loop must not raise
            return str(Path(os.path.abspath(path)).relative_to(repo_root()))
        except ValueError:
            return path

    rows = [{"where": f"{short(p.path)}:{p.line}" if p.line else short(p.path), "level": p.level,
             "message": p.message}
            for r in reports for p in r.problems][:limit]
    return pd.DataFrame(rows, columns=["where", "level", "message"])


def plot_lengths(sft_df, dpo_df, max_seq_length: int):
    """Histograms of prompt and response token counts (SFT) and prompt/response counts (DPO)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, col, title in ((axes[0], "prompt_tokens", "SFT prompt (untrained)"),
                           (axes[1], "response_tokens", "SFT response (trained)")):
        ax.hist(sft_df[col], bins=40, color="tab:blue" if "prompt" in col else "tab:orange")
        ax.set_title(title)
        ax.set_xlabel("tokens")
    axes[0].set_ylabel("examples")
    longer = np.maximum(dpo_df["chosen_tokens"], dpo_df["rejected_tokens"])
    top = max(1, int(max(dpo_df["prompt_tokens"].max(), longer.max()))) if len(dpo_df) else 1
    bins = np.linspace(0, top, 41)   # shared bins: the two histograms are comparable
    axes[2].hist(dpo_df["prompt_tokens"], bins=bins, alpha=0.6, label="prompt")
    axes[2].hist(longer, bins=bins, alpha=0.6, label="longer response")
    axes[2].set_title("DPO")
    axes[2].set_xlabel("tokens")
    axes[2].legend()
    total = sft_df["total_tokens"]
    axes[1].text(0.98, 0.95, f"SFT examples > {max_seq_length}: {(total > max_seq_length).sum()}",
                 transform=axes[1].transAxes, ha="right", va="top", fontsize=8)
    fig.tight_layout()
    return fig


def plot_pair_lengths(dpo_df):
    """Chosen vs rejected response length per pair (points above the diagonal: chosen longer)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(dpo_df["rejected_tokens"], dpo_df["chosen_tokens"], s=8, alpha=0.5)
    hi = max(1, int(max(dpo_df["chosen_tokens"].max(), dpo_df["rejected_tokens"].max()))) if len(dpo_df) else 1
    ax.plot([0, hi], [0, hi], color="grey", lw=1)
    ax.set_xlabel("rejected tokens")
    ax.set_ylabel("chosen tokens")
    ax.set_title("DPO response lengths")
    fig.tight_layout()
    return fig


def plot_packing(ds):
    """Per packed sequence: real (non-pad) tokens, and documents per sequence."""
    import matplotlib.pyplot as plt

    fill = np.asarray([ds.real_tokens(i) for i in range(len(ds))])
    docs = np.asarray([ds.doc_count(i) for i in range(len(ds))])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(fill / ds.max_seq_length, bins=20, range=(0, 1))
    axes[0].set_xlabel("share of positions holding tokens")
    axes[0].set_ylabel("sequences")
    axes[1].hist(docs, bins=range(1, int(docs.max(initial=1)) + 2))
    axes[1].set_xlabel("examples per sequence")
    fig.suptitle(f"packing ({ds.stats.mode}), {len(ds)} sequences of {ds.max_seq_length}")
    fig.tight_layout()
    return fig
