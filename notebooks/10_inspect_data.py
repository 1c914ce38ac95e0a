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
# # 10 Inspect the training data
# *学習前に、SFT・DPO が実際に学習するデータを確認します（全行の検証、分割と混合、トークン長、パッキング、コスト見積もり）。*
#
# Before spending GPU hours, look at exactly what SFT and DPO will train on: every line of the
# official-layout files is validated (`path:line` messages), the official `datasets:` knobs are
# applied to split and mix the data, the llm-jp prompt format is tokenised exactly as training does
# (content-addressed cache, so this also warms the cache for training), and the result is shown as
# tables and plots: token lengths, what is cut or dropped at the sequence length, one SFT example
# and one DPO pair with the trained tokens marked, packing utilisation, and a rough cost estimate.

# %% tags=["parameters"]
sft_datasets: dict = {"math_drill": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1}, "math_chat": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1}}  # SFT datasets map (official knobs); {} for every file
dpo_datasets: dict = {"math_pref": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1}}  # DPO datasets map (official knobs); {} for every file
tokenizer: str = "tiny"  # "tiny", "llmjp", an HF model/tokenizer dir or a run dir
seed: int = 1234  # random seed
# --- data
data_dir: str = "datasets"  # folder holding <data_version>/{tuning,preference}/train/*.jsonl
data_version: str = "sample"  # data version subfolder (competition: tuning_data20251105)
max_seq_length: int = 512  # training sequence length (llm-jp-4-8b: 4096)
max_dev_samples: int = 100  # at most this many dev records per dataset (official)
max_dev_ratio: float = 0.1  # at most this share of each dataset goes to dev (official)
dev_split: str = "head"  # head: the first lines of each file (official) | hash: by content hash
upsample_dev: bool = False  # True: also repeat dev records by upsampling_factor (official kit)
template_style: str = "kit"  # kit | official (differ only for an empty system prompt)
on_error: str = "raise"  # raise: stop on bad data lines | skip: train without them (counted)
# --- SFT packing
packing: str = "isolated"  # isolated: documents never attend to each other | official: stream-and-cut
overlong: str = "drop"  # SFT examples longer than max_seq_length: drop | truncate (cuts the answer's end)
# --- DPO pairs
dpo_overlong: str = "drop"  # DPO pairs longer than max_seq_length: drop | truncate_prompt (both counted)
# --- cost estimate
epochs: int = 2  # epochs for the cost estimate
nodes: int = 2  # ABCI rt_HF nodes for the cost estimate
gpus_per_node: int = 8  # H200 GPUs per node
assumed_tokens_per_s_per_gpu: float = 3000.0  # ASSUMED training throughput per GPU (not measured)
# --- run record
run_name: str = ""  # run folder name (empty: automatic); the same name reopens (resumes) that run
runs_dir: str = ""  # runs root (empty: <repo>/runs)

# %%
from tunekit.runtime import notebook_setup, seed_everything
notebook_setup()
from tunekit.data import encode, render, report, stats
from tunekit.data.tokenizer import load_tokenizer
from tunekit.data.dpo import select_pairs
from tunekit.data.mixing import build_mixture
from tunekit.data.params import InspectParams
from tunekit.data.sft import pack_split
from tunekit.runs import start_run
import pandas as pd

cfg = InspectParams.from_globals(globals())
run = start_run("inspect_data", cfg, cfg.run_name, cfg.runs_dir)
seed_everything(cfg.seed)
sft_cfg, dpo_cfg = cfg.data_config("sft"), cfg.data_config("dpo")
run

# %% [markdown]
# ## 1. Validation
# *全ファイルの全行を検証します。エラーの行は使えず、警告の行は使われます（`ファイル:行: 内容` で表示）。*
#
# Every line of every file in the data version, checked without a tokenizer. Errors make a line
# unusable (with `on_error="skip"` it is left out and counted); warnings keep it. A file that
# cannot be read at all (a directory, gzip, UTF-16, ...) is one error; duplicate records and IDs
# (within and across files), empty files and data-like names that are not read (`x.json`) are
# warnings. The same check runs as `tunekit data validate DATA_DIR --data-version V`.

# %%
reports = report.validate_version(sft_cfg)
validation = report.validation_table(reports)
validation

# %%
report.problems_table(reports, limit=20)

# %% [markdown]
# ## 2. Splits and mixture
# *公式の `datasets:` 設定（dev 件数・比率、アップサンプリング）で train/dev に分割し、トークン化します（キャッシュは学習と共有）。*
#
# Dev = the first `min(max_dev_samples, int(N * max_dev_ratio))` records of each file; train = the
# rest (at most `max_train_samples`), repeated `upsampling_factor` times. Tokenising fills the
# content-addressed cache that training reuses. `dev_dups_in_train` counts dev records whose exact
# content also occurs in train (they make the dev loss optimistic).

# %%
sft_mix = build_mixture(sft_cfg, "sft")
dpo_mix = build_mixture(dpo_cfg, "dpo")
sft_sources = sft_mix.report()
sft_sources

# %%
dpo_sources = dpo_mix.report()
dpo_sources

# %% [markdown]
# ## 3. Token lengths and what does not fit
# *トークン長の分布と、`max_seq_length` を超えて切り詰め・除外される件数です。*

# %%
sft_len = stats.sft_lengths(sft_mix)
dpo_len = stats.dpo_lengths(dpo_mix)
fig = report.plot_lengths(sft_len, dpo_len, cfg.max_seq_length)
png = run.save_figure(fig, "token_lengths")

# %%
pair_total = dpo_len["prompt_tokens"] + dpo_len[["chosen_tokens", "rejected_tokens"]].max(axis=1)
fit = pd.DataFrame([{"what": "SFT examples", **stats.over_length(sft_len["total_tokens"], cfg.max_seq_length)},
                    {"what": "DPO pairs", **stats.over_length(pair_total, cfg.max_seq_length)}])
fit

# %% [markdown]
# What `max_seq_length` costs each SFT dataset under `overlong` (`drop`, the default, leaves an
# over-long example out; `truncate` cuts its tail). `answers_cut` counts the examples whose answer
# ends past the limit: truncating them removes the end of the answer, with its final `\boxed{}`
# and eos, so the model would learn answers that stop before their result.

# %%
lost = stats.lost_tokens(sft_mix, cfg.max_seq_length, cfg.overlong)
lost

# %% [markdown]
# ## 4. One SFT example and one DPO pair
# *学習で使う ID そのものを 1 例ずつ表示します（⟦ ⟧ が損失のかかるトークン）。チャットテンプレートと一致するかも確認します。*
#
# Exactly the ids training sees; trained (loss) tokens are wrapped in ⟦ ⟧. The last line checks
# that the tokenizer's chat template (what inference and the submission use) gives the same
# prompt ids as training.

# %%
tok = load_tokenizer(sft_mix.tokenizer_dir, full=True)
source, first = sft_mix.first_train_record()
ids, mask = source.file.sft(first)
print(render.marked_text(ids, mask, tok))
render.token_table(ids, mask, tok, limit=12)

# %%
pair = select_pairs(dpo_mix, "train")[0]
print(render.pair_text(pair["prompt"], pair["chosen"], pair["rejected"], tok))

# %%
example = source.file.record(first)["messages"]
mismatches = encode.chat_template_mismatches(example, tok)
template_matches_training = not mismatches
print("chat template == training ids:", template_matches_training, mismatches)

# %%
fig = report.plot_pair_lengths(dpo_len)
png = run.save_figure(fig, "dpo_pair_lengths")

# %% [markdown]
# ## 5. Packing
# *例をシーケンスに詰めた結果です。`isolated` では例同士が互いに参照しません。*
#
# `isolated` packs whole examples (best fit, longest first) and keeps them apart: position ids
# restart per example and attention is block-diagonal. `official` reproduces the official kit's
# stream-and-cut windows, in which examples attend to each other.

# %%
train_packed = pack_split(sft_mix, "train")
dev_packed = pack_split(sft_mix, "dev")
pack_stats = pd.DataFrame([{"split": "train", **train_packed.stats.as_dict()},
                           {"split": "dev", **dev_packed.stats.as_dict()}])
pack_stats[["split", "examples", "packed", "truncated", "dropped_overlong", "dropped_no_loss",
            "sequences", "tokens", "loss_tokens", "utilisation", "docs_per_sequence"]]

# %%
fig = report.plot_packing(train_packed)
png = run.save_figure(fig, "packing")

# %% [markdown]
# ## 6. Cost estimate
# *ABCI での学習時間の目安です（GPU あたりのスループットは仮定値）。*
#
# Positions processed per epoch = packed sequences x sequence length. The per-GPU throughput is an
# ASSUMPTION (parameter `assumed_tokens_per_s_per_gpu`), not a measurement: replace it with the
# tokens/s your own SFT run logs.

# %%
estimate = stats.estimate_training(len(train_packed) * cfg.max_seq_length, cfg.epochs, cfg.nodes,
                                   cfg.gpus_per_node, cfg.assumed_tokens_per_s_per_gpu)
pd.DataFrame([estimate])

# %%
summary = {
    "validation_errors": int(validation["errors"].sum()),
    "validation_warnings": int(validation["warnings"].sum()),
    "sft_train_examples": int(sft_sources["train_upsampled"].sum()),
    "sft_dev_examples": int(sft_sources["dev"].sum()),
    "dpo_train_pairs": len(select_pairs(dpo_mix, "train")),
    "dpo_dev_pairs": len(select_pairs(dpo_mix, "dev")),
    "sft_over_length": int(fit.loc[0, "over_length"]),
    "packed_sequences": len(train_packed),
    "packing_utilisation": round(train_packed.stats.utilisation, 4),
    "template_matches_training": bool(template_matches_training),
    "estimate_node_hours": estimate["node_hours"],
}
record = run.finish(summary)

# %%
# NBVAL_CHECK_OUTPUT
for key in sorted(summary):
    value = summary[key]
    if key == "packing_utilisation":
        value = value > 0.8   # coarse: exact utilisation depends on the tiny tokenizer's pieces
        key = "packing_utilisation_above_0.8"
    elif key in ("packed_sequences", "estimate_node_hours"):
        value = value > 0
        key = f"{key}_positive"
    print(f"{key}: {value}")
