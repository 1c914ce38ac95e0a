"""Figures of the evaluation notebook (matplotlib; the notebook shows and saves them)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import matplotlib.figure

# Fonts that can draw 中1/中2/中3 (JupyterLab on ABCI or a laptop usually has one of them).
_CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
              "Hiragino Sans", "Yu Gothic", "MS Gothic")


def _tick_labels(labels: list[str]) -> list[str]:
    """Use a CJK font when one is installed; otherwise spell 中N as JHN (junior high N)."""
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [f for f in _CJK_FONTS if f in installed]
    if cjk:
        matplotlib.rcParams["font.sans-serif"] = cjk + list(matplotlib.rcParams["font.sans-serif"])
        return labels
    return [label.replace("中", "JH") for label in labels]


def plot_accuracy(results: Sequence) -> "matplotlib.figure.Figure":
    """Grouped bars: accuracy per category (and Overall) for each model."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .evaluation import category_table

    table = category_table(list(results))
    cats, models = list(table.index), list(table.columns)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) + 2), 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(cats))
    for j, model in enumerate(models):
        ax.bar(x + j * width - 0.4 + width / 2, table[model].fillna(0).values, width, label=model)
    ax.set_xticks(x, _tick_labels(cats))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy per category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_samples_curve(results: Sequence) -> "matplotlib.figure.Figure":
    """pass@k (dashed) and maj@k (solid) against the number of samples k, one colour per model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, r in enumerate(results):
        ks = [row["k"] for row in r.curve]
        colour = f"C{i}"
        ax.plot(ks, [row["maj@k"] for row in r.curve], "o-", color=colour, label=f"{r.label} maj@k")
        ax.plot(ks, [row["pass@k"] for row in r.curve], "s--", color=colour, label=f"{r.label} pass@k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("samples k")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy vs number of samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
