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
# # 20 Convert a NeMo checkpoint to HF
# *公式キットの NeMo チェックポイントを HF 形式に変換し、Megatron-core と logits が一致することを検証します。*
#
# Brings a checkpoint of the official kit (or of notebook 21) into the HF format the rest of the
# kit, vLLM and the submission use: safetensors, `config.json`, `generation_config.json` (eos =
# `<|eos|>`) and a tokenizer carrying the kit's chat template, so `apply_chat_template` produces
# exactly the training prompt. `src` may be a NeMo dir (`model_config.yaml` + `model_weights/`), an
# official-kit training output (the `step=*-last` checkpoint is picked, no `ln -s` needed; or
# `checkpoint="best"`), a single `step=*` folder, or a run directory of notebook 21. The weights are
# read layer by layer by Megatron-core itself, so any tensor/pipeline-parallel layout works, and the
# result is verified before it gets its final name (every tensor bit-exact, Megatron-core logits
# equal transformers logits on fixed Japanese prompts). The result lands in `<run dir>/hf_model/`,
# so later notebooks can take this run directory as their model.
#
# With the default `src=""` there is no earlier checkpoint to convert, so the notebook first makes
# a NeMo dir from the tiny model (exactly what 21 writes) inside this run, then converts that:
# the notebook runs on its own. `tunekit demo` passes the run directory of 21 instead.

# %% tags=["parameters"]
src: str = ""  # NeMo dir, official-kit training output, step-N folder or run dir of 21 (empty: make one from the tiny model first)
checkpoint: str = "last"  # in a training output: last (the *-last folder) | best (lowest loss in the folder name) | a folder name
dst: str = ""  # HF model dir to write (empty: <run dir>/hf_model/)
dtype: str = "auto"  # auto (keep the checkpoint dtype) | bf16 | fp32
tokenizer: str = ""  # when the checkpoint has none: llm-jp, tiny, an HF dir or a run dir (empty: the one stored with it)
max_shard_gb: float = 5.0  # safetensors shard size in GB
# --- conversion
verify_logits: bool = True  # also compare Megatron-core and HF logits (first, middle and last layer; the weights are bit-exact anyway)
overwrite: bool = False  # replace an existing dst (the run-dir default is always this run's own)
# --- run record
run_name: str = ""  # run folder name (empty: automatic); the same name reopens (resumes) that run
runs_dir: str = ""  # runs root (empty: <repo>/runs)

# %%
from tunekit.runtime import notebook_setup
notebook_setup()
from tunekit.convert import nemo_to_hf, report
from tunekit.convert.configs import read_json
from tunekit.convert.hf_files import load_tokenizer
from tunekit.convert.params import NemoToHFParams
from tunekit.runs import start_run

cfg = NemoToHFParams.from_globals(globals())
run = start_run("convert_nemo_to_hf", cfg, cfg.run_name, cfg.runs_dir)
out, ours = report.output_dir(cfg.dst, run, "hf_model")
run

# %% [markdown]
# ## 1. The input
# *入力の NeMo ディレクトリの内容です。*
#
# Which checkpoint is converted (for a training output: which `step=*` folder and why).

# %%
source = report.nemo_source_for_notebook(cfg.src, run)
source

# %% [markdown]
# ## 2. Convert and verify
# *変換と検証を行います。*

# %%
result = nemo_to_hf(source, out, dtype=cfg.dtype, checkpoint=cfg.checkpoint, tokenizer=cfg.tokenizer,
                    verify_logits=cfg.verify_logits, overwrite=cfg.overwrite or ours,
                    max_shard_gb=cfg.max_shard_gb)
run.log(**{k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))})
report.verification_table(result.summary)

# %% [markdown]
# ## 3. What was written
# *出力された HF ディレクトリのファイル一覧です。*

# %%
report.files_table(out)

# %%
hf_cfg = read_json(out / "config.json")
report.config_table(hf_cfg, ["num_hidden_layers", "hidden_size", "intermediate_size",
                             "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                             "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id", "dtype"])

# %% [markdown]
# ## 4. The chat template
# *出力されたトークナイザのチャットテンプレート（推論時のプロンプト）です。*
#
# What vLLM's `llm.chat` and `apply_chat_template` send the model for a user question: the same
# prompt format the kit trains on.

# %%
tok = load_tokenizer(out)
print(tok.apply_chat_template([{"role": "user", "content": "1 + 1 を計算しなさい。"}],
                              add_generation_prompt=True, tokenize=False))

# %% [markdown]
# ## 5. Logits: transformers vs Megatron-core
# *transformers と Megatron-core の logits の差です（一致していれば変換は正しい）。*
#
# Each point is one vocabulary logit at one position of the first prompt; on the diagonal the two
# frameworks agree.

# %%
fig = report.plot_logits(result, "NeMo -> HF")
_ = run.save_figure(fig, "logits_hf_vs_megatron")

# %%
summary = run.finish(result.summary)
print(out)

# %%
# NBVAL_CHECK_OUTPUT
for key, value in report.check_summary(summary).items():
    print(f"{key}: {value}")
