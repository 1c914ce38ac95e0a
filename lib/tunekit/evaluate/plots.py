"""Figures of the evaluation notebook (matplotlib; the notebook shows and saves them).

Category labels are the competition's own (中1, 中2, 中3, IA, IIB, IIIC): the figures draw them with
a Japanese font, an installed one or else IPAexGothic from the pinned `matplotlib-fontja` wheel,
as a fallback behind matplotlib's default font (only the glyphs it lacks come from it).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    import matplotlib.figure

# Fonts that can draw 中1/中2/中3, preferred when installed (ABCI, a laptop).
_CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "TakaoGothic",
              "Hiragino Sans", "Yu Gothic", "MS Gothic")


def japanese_font() -> str | None:
    """The name of a font that draws Japanese: an installed one, else the bundled IPAexGothic."""
    import importlib.util
    import os

    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in _CJK_FONTS:
        if name in installed:
            return name
    spec = importlib.util.find_spec("matplotlib_fontja")  # located, not imported: its import restyles every plot
    if spec is None or not spec.submodule_search_locations:
        return None
    ttf = os.path.join(spec.submodule_search_locations[0], "fonts", "ipaexg.ttf")
    font_manager.fontManager.addfont(ttf)
    return font_manager.FontProperties(fname=ttf).get_name()


@contextlib.contextmanager
def _japanese_text() -> Iterator[None]:
    """Text created inside draws Japanese glyphs (fonts are fixed when a text object is created)."""
    import matplotlib.pyplot as plt

    cjk = japanese_font()
    family = [plt.rcParams["font.sans-serif"][0]] + ([cjk] if cjk else [])
    with plt.rc_context({"font.family": family}):
        yield


def plot_accuracy(results: Sequence) -> "matplotlib.figure.Figure":
    """Grouped bars: accuracy per category (and Overall) for each model."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .evaluation import category_table

    table = category_table(list(results))
    cats, models = list(table.index), list(table.columns)
    with _japanese_text():
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) + 2), 3.6))
        width = 0.8 / max(1, len(models))
        x = np.arange(len(cats))
        for j, model in enumerate(models):
            ax.bar(x + j * width - 0.4 + width / 2, table[model].fillna(0).values, width, label=model)
        ax.set_xticks(x, cats)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title("accuracy per category")
        ax.legend(fontsize=8)
        fig.tight_layout()
    return fig


def plot_samples_curve(results: Sequence) -> "matplotlib.figure.Figure | None":
    """pass@k (dashed) and maj@k (solid) against the number of samples k, one colour per model;
    None when every model has one sample per problem (a curve of one point says nothing)."""
    import matplotlib.pyplot as plt

    if all(len(r.curve) <= 1 for r in results):
        return None

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


def show_samples_curve(results: Sequence, run) -> None:
    """The notebook's pass@k / maj@k section: table and figure (saved in the run) when some model
    drew more than one sample per problem, else one line saying why there is nothing to show."""
    from IPython.display import display

    from .evaluation import curve_table

    fig = plot_samples_curve(results)
    if fig is None:
        print("one sample per problem: pass@k and maj@k equal the accuracy (for the curve, set "
              "n_samples > 1 and temperature > 0)")
        return
    display(curve_table(list(results)).round(3))
    run.save_figure(fig, "accuracy_vs_samples")
    display(fig)
    import matplotlib.pyplot as plt

    plt.close(fig)  # shown once, not again by the inline backend at the end of the cell
