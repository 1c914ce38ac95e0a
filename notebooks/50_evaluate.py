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
# # 50 Evaluate: answer like the submission, score like the competition, compare runs
# *提出と同じプロンプトで解答を生成し、コンペと同じ規則で採点して、モデル（ベース・SFT・DPO など）を比較します。*
#
# Each model (the base model, an SFT run, a DPO run, ...) answers the eval set through the same
# path as the submission: one user message with the official prompt, rendered by the model's own
# chat template. The answers are written in the exact competition prediction format and scored
# with the competition's rules (Math-Verify plus its normalisations for Japanese school maths, or
# the official `math-eval` itself when installed). With several samples per problem the notebook
# also shows self-consistency (majority vote), pass@k and maj@k. The dev loss and DPO reward
# metrics of each training run are read from its run record, so the table at the end compares
# what training measured with what the competition will measure.

# %% tags=["parameters"]
models: list = ["tiny"]  # model specs: "tiny", HF model dirs, or run dirs (their hf_model/ is evaluated)
eval_set: str = "datasets/sample/eval"  # gold JSONL file or folder in the competition format
max_problems: int = 0  # evaluate only the first N problems (0: all of them)
prompt_style: str = "official"  # official (answer only, as the submission example) | cot_boxed (reasoning, then \boxed{})
max_new_tokens: int = 32  # new tokens per answer (the submission example uses 64; cot_boxed needs ~1024)
temperature: float = 0.0  # 0: greedy, as the submission example; above 0: sampling
top_p: float = 1.0  # nucleus sampling threshold (sampling only)
n_samples: int = 1  # answers per problem; more than 1 needs temperature above 0 (majority vote, pass@k, maj@k)
batch_size: int = 8  # problems generated together (transformers backend)
backend: str = "auto"  # auto (vLLM on a GPU node with the evaluation env, make setup-eval) | transformers | vllm
scorer: str = "auto"  # auto (official math-eval where installed) | tunekit | official
seed: int = 0  # sampling seed
# --- run record
run_name: str = ""  # run folder name (empty: automatic); the same name reopens (resumes) that run
runs_dir: str = ""  # runs root (empty: <repo>/runs)

# %%
from tunekit.runtime import notebook_setup, seed_everything
notebook_setup()
from tunekit.evaluate.params import EvalParams
from tunekit.runs import start_run
cfg = EvalParams.from_globals(globals())
run = start_run("evaluate", cfg, cfg.run_name, cfg.runs_dir)
seed_everything(cfg.seed)
run

# %% [markdown]
# ## 1. The eval set and the prompt
# *評価データ（カテゴリ別の問題数）と、モデルに送られるプロンプトです。*
#
# Gold lines are checked against the competition format (a bad line stops here with its line
# number). Below: problems per category, then the exact prompt the first model receives.

# %%
import pandas as pd
from IPython.display import display
from tunekit.evaluate.records import load_gold
from tunekit.paths import resolve
gold = load_gold(resolve(cfg.eval_set))[: cfg.max_problems or None]
pd.Series([g["category"] for g in gold], name="problems").value_counts().sort_index().to_frame()

# %%
from transformers import AutoTokenizer
from tunekit.evaluate.generate import resolve_model_dir
from tunekit.evaluate.prompts import build_messages, render_prompt
tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(cfg.models[0]))
print(render_prompt(tokenizer, build_messages(gold[0]["problem"], cfg.prompt_style)))

# %% [markdown]
# ## 2. Generate, vote, write the predictions, score them
# *解答を生成し、提出形式で書き出して、そのファイルを採点します。*
#
# For each model: `<run>/<model>/predictions.jsonl` (competition format: the gold fields plus
# `output`; the majority-vote answer when n_samples > 1), `samples.jsonl` (every sample with its
# extracted answer and verdict) and `scores.json` (the scorer's JSON). The score is computed
# from the written file, so it is what that file would get.

# %%
from tunekit.evaluate.evaluation import evaluate_models
results = evaluate_models(cfg.models, gold, run.dir, style=cfg.prompt_style, decoding=cfg.decoding(),
                          backend=cfg.backend, scorer=cfg.scorer)
for r in results:
    run.log(model=r.label, accuracy=r.report.overall_accuracy, new_tokens_per_s=r.generation.tokens_per_second)
    print(f"{r.label}: accuracy {r.report.overall_accuracy:.3f} ({r.report.scorer}, {r.generation.backend}) -> {r.folder}")

# %% [markdown]
# ## 3. Accuracy per category
# *カテゴリ別（中1〜IIIC）の正解率です。*
#
# Rejected prediction lines or missing predictions (each counted wrong, as officially) would be
# listed under the table.

# %%
from tunekit.evaluate.evaluation import category_table
from tunekit.evaluate.plots import plot_accuracy
display(category_table(results).round(3))
for r in results:
    for problem in r.report.problems + [f"missing prediction: {m}" for m in r.report.missing]:
        print(f"{r.label}: {problem}")
fig = plot_accuracy(results)
_ = run.save_figure(fig, "accuracy_per_category")

# %% [markdown]
# A look at the first answers of the first model: the chosen output, the verdict and the rule
# that accepted it (`math-verify`, or a named fallback such as `inequality-interval`).

# %%
from tunekit.evaluate.evaluation import examples_table
examples_table(results[0], gold, n=5)

# %% [markdown]
# ## 4. Accuracy vs number of samples
# *サンプル数と正解率（pass@k、多数決 maj@k）の関係です。`n_samples` が 2 以上のときだけ表示します。*
#
# pass@k: some sample among k is right (unbiased estimate from all n samples). maj@k: the
# majority answer of the first k samples is right. The curve needs n_samples > 1 (with
# temperature > 0); with one sample per problem both are the accuracy, and this says so.

# %%
from tunekit.evaluate.plots import show_samples_curve
show_samples_curve(results, run)

# %% [markdown]
# ## 5. Comparison across models, with what training measured
# *モデル間の比較と、学習時の指標（検証損失、報酬の正解率）です。*
#
# `val_loss_*` come from an SFT run's `metrics.jsonl`, `*reward_*` from a DPO run's; models that
# are not run directories (e.g. "tiny") have no training columns.

# %%
from tunekit.evaluate.evaluation import comparison_table, summary
comparison = comparison_table(results)
display(comparison.round(3))
final = run.finish(summary(results))

# %%
# NBVAL_CHECK_OUTPUT
from tunekit.evaluate.evaluation import check_summary
print(check_summary(results))
