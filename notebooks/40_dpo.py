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
# # 40 Preference training (DPO)
# *SFT モデルから DPO（選好学習）を行います。既定値は SFT の実行ディレクトリを `init` に指定して使う前提の、モデルを壊さない設定です。*
#
# Direct preference optimisation of the SFT model (`init`: an SFT run directory, any HF model
# directory, or the tiny base model when empty) on the official-layout preference data, with the
# official kit's loss family (`dpo`, `ipo`, and the reward-aware `rpo_sq`, `rpo_bwd_kl`,
# `rpo_fwd_kl`) and its parameter names. The reference model is the starting model; its
# log-probabilities of every pair are computed once and cached on disk by content, so no second
# model sits in memory during training and a sweep over beta or lr never recomputes them
# (`reference: live` computes them every step instead). Training reuses the SFT engine (FSDP2,
# checkpoints with exact resume, `hf_model/` publishing); every step records loss, reward
# accuracy, margins, rewards, log-probs and an implicit KL estimate. With `peft: lora` only LoRA
# adapters train (docs/lora.md); `reference: live` then takes the reference log-probs from the
# policy with its adapters switched off (no second model).
#
# **Prompt ids: `template_style`.** The default `kit` style builds every DPO prompt exactly like
# the SFT conversation and the chat template (what vLLM's `llm.chat` sends), so SFT, DPO and
# inference see the same ids. The official code does not: its DPO prompt is one string, with no
# `<|eos|>` after earlier answers and no `▁` before later instructions (its own SFT has both), so
# **multi-turn DPO prompts** differ by two ids per earlier turn. With an **empty system prompt** the
# official SFT drops the first instruction's `▁` and its DPO keeps it; `kit` keeps it in both (a
# chat template cannot drop it), so the kit's ids match official DPO there but not official SFT.
# Single-turn prompts with a system text are identical. `official` reproduces the official ids
# exactly for the llm-jp tokenizer (tested against the official steps run with it); it refuses
# tokenizers with a Metaspace pre-tokenizer, with which those ids cannot be reproduced. Use the
# same style as the SFT run.

# %% tags=["parameters"]
init: str = ""  # starting policy and reference: an SFT run dir, an HF model dir or tiny; empty: the tiny base model
datasets: dict = {"math_pref": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1}}  # datasets map with the official knobs; {} for every file
# --- data
data_dir: str = "datasets"  # folder holding <data_version>/preference/train/*.jsonl
data_version: str = "sample"  # data version subfolder (competition: tuning_data20251105)
max_seq_length: int = 256  # longest prompt + response, per chosen/rejected sequence (llm-jp-4-8b: 4096)
max_dev_samples: int = 100  # at most this many dev records per dataset (official)
max_dev_ratio: float = 0.1  # at most this share of each dataset goes to dev (official)
dev_split: str = "head"  # head: the first lines of each file (official) | hash: by content hash
upsample_dev: bool = False  # True: also repeat dev records by upsampling_factor (official kit)
template_style: str = "kit"  # kit | official (differ only for an empty system prompt)
on_error: str = "raise"  # raise: stop on bad data lines | skip: train without them (counted)
# --- DPO pairs
dpo_overlong: str = "drop"  # DPO pairs longer than max_seq_length: drop | truncate_prompt (both counted)
# --- DPO loss
ref_policy_kl_penalty: float = 0.5  # beta: strength of the KL anchor to the reference (official: 0.5)
preference_loss: str = "dpo"  # dpo | ipo | rpo_sq | rpo_bwd_kl | rpo_fwd_kl (official names)
gt_reward_scale: float = 1.0  # scale of the ground-truth reward gap in the rpo_* losses (official: 1.0)
preference_loss_weight: float = 1.0  # weight of the preference loss (official: 1)
sft_loss_weight: float = 1.0  # weight of the NLL of the chosen response (official: 0; keeps a small model's answers intact)
preference_average_log_probs: bool = False  # per-token mean instead of sum of log-probs (official: false)
label_smoothing: float = 0.0  # conservative DPO: assumed share of flipped labels, dpo only (0: off)
pack_pairs: bool = True  # True: a micro-batch's sequences packed by their real lengths, kept apart | False: one padded row each
reference: str = "cached"  # cached: reference log-probs computed once before training | live: every step (a frozen copy of the model; with LoRA the policy with adapters off)
# --- training
global_batch_size: int = 16  # pairs per optimizer step, all processes together (official: 256)
micro_batch_size: int = 8  # pairs per forward/backward per process (official: 2)
epochs: int = 2  # passes over the training pairs (official: 2)
max_steps: int = -1  # -1: epochs decide; > 0: exactly this many optimizer steps
lr: float = 0.0003  # peak learning rate (official: 9e-7)
min_lr: float = 3e-05  # final learning rate of the cosine (official: 5e-7)
warmup_steps: int = 2  # linear warmup steps
constant_steps: int = 0  # steps held at min_lr at the end
weight_decay: float = 0.0  # AdamW weight decay on matrices
adam_beta1: float = 0.9  # AdamW beta1 (official: 0.9)
adam_beta2: float = 0.98  # AdamW beta2 (official: 0.98)
grad_clip: float = 1.0  # gradient-norm clip, 0 turns it off (official: 1.0)
val_interval: int = 5  # validate every N steps, 0: only at checkpoints (official: 200)
save_interval: int = 10  # checkpoint every N steps and at the end, 0: only at the end (official: 200)
keep_top_k: int = 1  # keep the last checkpoint plus this many with the lowest val loss
publish: str = "final"  # weights written to hf_model/: final | best (lowest dev DPO loss, the official top-1)
delete_optimizer_state: bool = False  # drop optimizer state after training to save disk (official: yes)
seed: int = 1234  # random seed (data order is a function of seed and step)
precision: str = "auto"  # auto: bf16 compute on GPU, fp32 on CPU | bf16 | fp32
activation_checkpointing: bool = False  # recompute layers in backward: less memory, ~25% slower
activation_checkpointing_every: int = 1  # with activation_checkpointing: recompute every n-th layer only (1: all; 2: half, faster, more memory)
compile_layers: bool = False  # torch.compile each decoder layer (GPU: faster after a warm-up)
attn_implementation: str = "auto"  # auto/varlen: per-document attention (FlashAttention varlen on GPU) | sdpa | eager (dense block mask)
loss_chunk_tokens: int = 1024  # tokens per chunk of the output layer + loss (bounds logits memory)
nproc_per_node: int = 1  # training processes per node (GPUs per node on ABCI: 8)
max_train_minutes: float = 0.0  # stop (checkpointed) after this many minutes, 0: no own limit
walltime_margin_minutes: float = 10.0  # in PBS: checkpoint and stop this long before the walltime
wandb: str = "disabled"  # disabled | offline | online (key only from $WANDB_API_KEY)
wandb_project: str = "tunekit"  # wandb project name
# --- LoRA
peft: str = "none"  # none: full fine-tuning | lora: train LoRA adapters only, base frozen (official peft_scheme)
lora_rank: int = 32  # LoRA rank r (official adapter_dim: 32)
lora_alpha: float = 32.0  # LoRA alpha, updates are scaled by alpha / rank (official: alpha equals adapter_dim)
lora_dropout: float = 0.0  # dropout on the adapter input (official adapter_dropout: 0.0)
lora_target_modules: str = "attention_qkv"  # comma list: attention_qkv, attention_dense, mlp_fc1, mlp_fc2, attention, mlp, all, or HF names (q_proj, ..., down_proj)
# --- run record
run_name: str = ""  # run folder name (empty: automatic); the same name reopens (resumes) that run
runs_dir: str = ""  # runs root (empty: <repo>/runs)

# %%
from tunekit.runtime import notebook_setup, seed_everything
notebook_setup()
import pandas as pd
from tunekit.runs import start_run
from tunekit.train import report
from tunekit.train.dpo import prepare_dpo, run_dpo
from tunekit.train.params import DPOParams

cfg = DPOParams.from_globals(globals())
run = start_run("dpo", cfg, cfg.run_name, cfg.runs_dir)
seed_everything(cfg.seed)
run

# %% [markdown]
# ## 1. Starting model, pairs and plan
# *開始モデル、選好ペア（長すぎるペアの扱いを含む）、学習計画を確認します。*
#
# `init` is resolved to an HF model directory (an SFT run's `hf_model/`). The pairs are validated,
# tokenised with that model's tokenizer (content-addressed cache) and split with the official
# knobs. A pair whose prompt + longer response exceeds `max_seq_length` is dropped or gets its
# prompt shortened from the front (`dpo_overlong`); either way it is counted below, never lost
# silently. Batch sizes count pairs, as in the official config.

# %%
prep = prepare_dpo(cfg)
print(f"starting model (policy and reference): {prep.model_dir}")
report.sources(prep)

# %%
report.overlong(prep)

# %%
report.pair_preview(prep, 3)

# %%
report.plan_table(prep)

# %% [markdown]
# ## 2. Train
# *参照モデルの対数確率を一度だけ計算してキャッシュし、DPO 学習を行います。*
#
# First the reference log-probabilities: loaded from the cache, or computed once with the starting
# model (a progress bar) and stored. Then training: each micro-batch puts every chosen and rejected
# sequence through one forward pass, packed with isolated documents; only response tokens are
# scored. Re-running with the same `run_name` resumes from the latest complete checkpoint.

# %%
result = run_dpo(cfg, run, prep)
report.result_table(result)

# %%
pd.Series(result["data"]["reference_cache"], name="reference log-probs").to_frame()

# %% [markdown]
# ## 3. Rewards, accuracy and margins
# *報酬の正解率（同点は別に表示、偶然なら 0.5）、マージン、KL の推移です。*
#
# The implicit reward of a response is beta x (log pi - log ref). Reward accuracy is the share of
# pairs whose chosen reward is strictly higher; ties count as wrong and are shown on their own
# (`reward_ties`): at step 0 the policy is the reference, so every pair is a tie and the accuracy
# reads 0, not "all wrong" - chance is 0.5. The margin is chosen minus rejected reward; `kl`
# estimates KL(policy || reference) on the data's sequences.

# %%
fig = report.dpo_figure(run.metrics(), title=f"DPO {run.name}")
png = run.save_figure(fig, "dpo_rewards")

# %%
train_hist, dev_hist = report.dpo_history(run.metrics())
dev_hist[["step", "val_loss", "val_reward_accuracy", "val_reward_ties", "val_reward_margin", "val_chosen_reward",
          "val_rejected_reward", "val_chosen_logp", "val_rejected_logp", "val_kl"]].round(4)

# %% [markdown]
# ## 4. The trained model
# *学習済みモデル（`hf_model/`）は評価でそのまま使えます。*
#
# `hf_model/` is a plain HF model directory (safetensors, config, tokenizer with the kit's chat
# template). Use the run directory as a model in `50_evaluate`.

# %%
report.published_files(result)

# %%
summary = run.finish(report.dpo_summary(result, run.metrics()))

# %%
# NBVAL_CHECK_OUTPUT
print(report.dpo_check(summary))
