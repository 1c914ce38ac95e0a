# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: tunekit (Python 3.11)
#     language: python
#     name: tunekit
# ---

# %% [markdown]
# # 60 Compare runs: what differs, how training went, and which model is really better
# Give run directories, globs (`sft/lr-*`, relative to the runs root), run names or a sweep
# (`sweep:NAME`, from `tunekit sweep submit`). The notebook shows only the parameters that differ,
# overlays the training curves, and compares every evaluated model on the SAME problems: each
# accuracy with a bootstrap 95% interval, every pair with a paired bootstrap interval and McNemar's
# exact test. On 90 problems one answer is 1.1 points: a difference whose interval includes zero
# is reported as "no clear difference", not as a win. Nothing here writes into the compared runs.

# %% tags=["parameters"]
runs: list = ["sft/*", "dpo/*", "evaluate/*"]  # run dirs, globs relative to the runs root (sft/lr-*), run names, or sweep:NAME
n_boot: int = 10000  # bootstrap resamples for every interval and paired test
level: float = 0.95  # confidence level of the intervals
seed: int = 0  # bootstrap seed (fixed: the same runs give the same intervals)
# --- run record
run_name: str = ""  # run folder name (empty: automatic); the same name reopens (resumes) that run
runs_dir: str = ""  # runs root (empty: <repo>/runs)

# %%
from tunekit.runtime import notebook_setup
notebook_setup()
import pandas as pd
from IPython.display import display
from tunekit.runs import start_run
from tunekit.runview.params import CompareParams
cfg = CompareParams.from_globals(globals())
run = start_run("compare_runs", cfg, cfg.run_name, cfg.runs_dir)
run

# %% [markdown]
# ## 1. The runs
# Status, steps, best validation loss and accuracy from each run's record, then only the
# parameters whose values differ between runs of the same stage.

# %%
from tunekit.runview.compare import load_runs, param_differences
comparison = load_runs(cfg.runs, cfg.runs_dir or None)
display(pd.DataFrame([r.row() for r in comparison.runs]).set_index(["stage", "run"]))
param_differences(comparison.runs)

# %% [markdown]
# ## 2. Training curves
# Train loss, validation loss and learning rate of every SFT and DPO run, overlaid (log scale for
# losses). A run still training shows its curves up to its last complete metrics line.

# %%
from tunekit.runview.compare import plot_curves, training_curves
fig = plot_curves(training_curves(comparison))
_ = run.save_figure(fig, "curves")

# %% [markdown]
# ## 3. DPO metrics
# Reward accuracy and margin (train and dev) of the DPO runs: how often the policy prefers the
# chosen answer over the rejected one, relative to the reference model.

# %%
dpo_keys = ("reward_accuracy", "val_reward_accuracy", "reward_margin", "val_reward_margin")
dpo_curves = {k: v for k, v in training_curves(comparison, dpo_keys).items()
              if any(label.startswith("dpo/") for label in v)}
if any(dpo_curves.values()):
    fig = plot_curves({k: {lab: pts for lab, pts in v.items() if lab.startswith("dpo/")} for k, v in dpo_curves.items()})
    _ = run.save_figure(fig, "dpo_metrics")
else:
    print("no DPO runs among these runs")

# %% [markdown]
# ## 4. Accuracy with 95% intervals, overall and per category
# Percentile bootstrap over the problems (`n_boot` resamples). Per category the interval is wide:
# a category holds a fraction of the problems.

# %%
from tunekit.runview.compare import accuracy_table
accuracy = accuracy_table(comparison.models, cfg.n_boot, cfg.level, cfg.seed)
accuracy.round(3)

# %% [markdown]
# ## 5. Paired tests: each pair of models on the same problems
# `diff` = accuracy a - b; `low`/`high` its paired bootstrap interval; `only_a`/`only_b` the
# problems only one of them solves; McNemar's exact p-value on those.

# %%
from tunekit.runview.compare import paired_table
paired = paired_table(comparison.models, cfg.n_boot, cfg.level, cfg.seed)
paired.round(3)

# %% [markdown]
# ## 6. Leaderboard
# Best first. `vs_best` says whether a model is measurably worse than the best one (its paired
# interval excludes zero) or not distinguishable from it on these problems.

# %%
from tunekit.runview.compare import leaderboard, plot_leaderboard
board = leaderboard(comparison.models, cfg.n_boot, cfg.level, cfg.seed)
display(board.round(3))
if len(board):
    fig = plot_leaderboard(board)
    _ = run.save_figure(fig, "leaderboard")

# %% [markdown]
# ## 7. Heat map of a 2-D sweep
# For a sweep over two parameters: accuracy of each grid point (best validation loss when the
# sweep has no evaluation).

# %%
from tunekit.runview.compare import heatmap_table, plot_heatmap
grid = heatmap_table(comparison)
if grid is not None:
    display(grid)
    fig = plot_heatmap(grid)
    _ = run.save_figure(fig, "sweep_heatmap")
else:
    print("not a sweep over two parameters: no heat map")
summary = run.finish({"runs": [str(r.dir) for r in comparison.runs],
                      "leaderboard": board.reset_index().to_dict("records") if len(board) else [],
                      "paired": paired.to_dict("records") if len(paired) else []})

# %%
# NBVAL_CHECK_OUTPUT
from tunekit.runview.compare import check_summary
print(check_summary(comparison, board))
