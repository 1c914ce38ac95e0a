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
# # 21 Convert an HF model to NeMo (for the official kit)
# *HF モデルを公式キット用の NeMo 形式に変換し、検証します。*
#
# Turns an HF LLaMA model (the tiny fixture, llm-jp-4-8b, or the `hf_model/` of one of our SFT/DPO
# runs) into a NeMo directory in the official kit's layout: `model_config.yaml`, `model_weights/`
# (a Megatron-core torch_dist checkpoint with the official key names, QKV grouped per KV head,
# fused layer-norm keys, gate/up concatenated in `linear_fc1`) and `tokenizer/`. The weights are
# streamed tensor by tensor (memory stays near one tensor), and before the folder gets its final
# name the result is verified: every tensor converts back to HF bit for bit, and a Megatron-core
# GPTModel built from `model_config.yaml` and loaded by Megatron's own loader gives the same
# logits as transformers on fixed Japanese prompts. Runs on CPU (ABCI `rt_HC` is enough).
# The same conversion is `tunekit convert hf-to-nemo SRC DST`.

# %% tags=["parameters"]
src: str = "tiny"  # tiny, an HF model dir, or a run dir (its hf_model/); relative paths start at the repo root
dst: str = ""  # NeMo dir to write (empty: <run dir>/nemo/)
dtype: str = "auto"  # auto (keep the source dtype) | bf16 | fp32
# --- conversion
verify_logits: bool = True  # also compare Megatron-core and HF logits (first, middle and last layer; the weights are bit-exact anyway)
overwrite: bool = False  # replace an existing dst (the run-dir default is always this run's own)
# --- run record
run_name: str = ""  # run folder name (empty: automatic); the same name reopens (resumes) that run
runs_dir: str = ""  # runs root (empty: <repo>/runs)

# %%
from tunekit.runtime import notebook_setup
notebook_setup()
from tunekit.convert import hf_to_nemo, report
from tunekit.convert.configs import read_yaml
from tunekit.convert.params import HFToNemoParams
from tunekit.runs import start_run

cfg = HFToNemoParams.from_globals(globals())
run = start_run("convert_hf_to_nemo", cfg, cfg.run_name, cfg.runs_dir)
out, ours = report.output_dir(cfg.dst, run, "nemo")
run

# %% [markdown]
# ## 1. Convert and verify
# *変換と検証を行います。*
#
# The log says which model was read, how much was written and how fast, and the verification
# verdict. A conversion that fails verification leaves no output folder behind.

# %%
result = hf_to_nemo(cfg.src, out, dtype=cfg.dtype, verify_logits=cfg.verify_logits,
                    overwrite=cfg.overwrite or ours)
run.log(**{k: v for k, v in result.summary.items() if isinstance(v, (int, float, str))})
report.verification_table(result.summary)

# %% [markdown]
# ## 2. What was written
# *出力された NeMo ディレクトリのファイル一覧です。*
#
# The NeMo directory, and the checkpoint entries as Megatron-core sees them: one stacked tensor per
# weight kind with a leading layer axis (one chunk per layer; `linear_fc1` has two per layer, gate
# and up), plus the `_extra_state` objects NeMo's TransformerEngine layers expect.

# %%
report.files_table(out)

# %%
report.nemo_keys_table(out / "model_weights")

# %%
nemo_cfg = read_yaml(out / "model_config.yaml")
report.config_table(nemo_cfg, ["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                               "num_query_groups", "kv_channels", "normalization", "activation",
                               "rotary_base", "layernorm_epsilon", "max_position_embeddings",
                               "override_vocab_size", "make_vocab_size_divisible_by"])

# %% [markdown]
# ## 3. Logits: transformers vs Megatron-core
# *transformers と Megatron-core の logits の差です（一致していれば変換は正しい）。*
#
# Each point is one vocabulary logit at one position of the first prompt; on the diagonal the two
# frameworks agree. Both run in fp32 with the weights rounded to the output dtype.

# %%
fig = report.plot_logits(result, "HF -> NeMo")
_ = run.save_figure(fig, "logits_hf_vs_megatron")

# %% [markdown]
# ## 4. Next
# *次の手順：公式キットでこのディレクトリを使う方法です。*
#
# Hand `out` to the official kit, e.g. `bash scripts/abci/train/run_sft.sh llmjp4_8b 2 <out>`,
# or convert it back with notebook 20 (`src` = this run directory). See docs/nemo.md.

# %%
summary = run.finish(result.summary)
print(out)

# %%
# NBVAL_CHECK_OUTPUT
for key, value in report.check_summary(summary).items():
    print(f"{key}: {value}")
