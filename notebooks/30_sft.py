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
# # 30 Supervised fine-tuning (SFT)
# *SFT（教師ありファインチューニング）を行います。既定値は CPU で数分の小さな設定で、評価で SFT がベースモデルを上回るまで学習します。*
#
# Full-parameter SFT of a LLaMA-format HF model (the tiny fixture here, llm-jp-4-8b on ABCI) with
# PyTorch FSDP2, on the official-layout data packed with isolated documents. The loss is token-mean
# cross entropy over the global batch, the learning-rate schedule is the official warmup + cosine +
# hold, and every run keeps `metrics.jsonl`, a loss curve, atomic checkpoints (re-running the same
# parameters on the same run resumes exactly) and the trained model as an HF directory in
# `<run_dir>/hf_model/`, ready for DPO and evaluation. With `peft: lora` only LoRA adapters train
# (base frozen, one GPU is enough for 8B; see docs/lora.md): checkpoints hold the adapters, `hf_model/`
# gets the merged model and `lora_adapter/` the adapter alone. With `nproc_per_node` > 1, or in a multi-node
# PBS job, this same notebook launches the training processes (torchrun / mpirun) and waits for them.

# %% tags=["parameters"]
model: str = "tiny"  # base model: "tiny", an HF model dir, or a run dir (uses its hf_model/)
datasets: dict = {"math_drill": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1}, "math_chat": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1}}  # datasets map with the official knobs; {} for every file
# --- data
data_dir: str = "datasets"  # folder holding <data_version>/{tuning,preference}/train/*.jsonl
data_version: str = "sample"  # data version subfolder (competition: tuning_data20251105)
max_seq_length: int = 512  # packed sequence length (llm-jp-4-8b: 4096)
max_dev_samples: int = 100  # at most this many dev records per dataset (official)
max_dev_ratio: float = 0.1  # at most this share of each dataset goes to dev (official)
dev_split: str = "head"  # head: the first lines of each file (official) | hash: by content hash
upsample_dev: bool = False  # True: also repeat dev records by upsampling_factor (official kit)
template_style: str = "kit"  # kit | official (differ only for an empty system prompt)
on_error: str = "raise"  # raise: stop on bad data lines | skip: train without them (counted)
# --- SFT packing
packing: str = "isolated"  # isolated: documents never attend to each other | official: stream-and-cut
overlong: str = "drop"  # SFT examples longer than max_seq_length: drop | truncate (cuts the answer's end)
# --- training
global_batch_size: int = 8  # sequences per optimizer step, all processes together (official: 64)
micro_batch_size: int = 4  # sequences per forward/backward per process (official: 4)
epochs: int = 16  # passes over the training data (official: 2)
max_steps: int = -1  # -1: epochs decide; > 0: exactly this many optimizer steps
lr: float = 0.003  # peak learning rate (official: 2e-5)
min_lr: float = 0.0003  # final learning rate of the cosine (official: 2e-6)
warmup_steps: int = 5  # linear warmup steps (official: 20)
constant_steps: int = 5  # steps held at min_lr at the end (official: 100)
weight_decay: float = 0.1  # AdamW weight decay on matrices (official: 0.1)
adam_beta1: float = 0.9  # AdamW beta1 (official: 0.9)
adam_beta2: float = 0.98  # AdamW beta2 (official: 0.98)
grad_clip: float = 1.0  # gradient-norm clip, 0 turns it off (official: 1.0)
val_interval: int = 50  # validate every N steps, 0: only at checkpoints (official: 500)
save_interval: int = 200  # checkpoint every N steps and at the end, 0: only at the end (official: 500)
keep_top_k: int = 1  # keep the last checkpoint plus this many with the lowest val loss
publish: str = "best"  # weights written to hf_model/: best (lowest val loss) | final
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
from tunekit.runs import start_run
from tunekit.train import report
from tunekit.train.params import SFTParams
from tunekit.train.sft import prepare_sft, run_sft

cfg = SFTParams.from_globals(globals())
run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
seed_everything(cfg.seed)
run

# %% [markdown]
# ## 1. Model, data and plan
# *モデルとデータを準備し、学習計画（ステップ数など）を学習前に確認します。*
#
# The data is validated, tokenised with the model's own tokenizer (content-addressed cache, shared
# with `10_inspect_data`), split and mixed with the official knobs, then packed into sequences of
# `max_seq_length` tokens. Position ids restart per document and attention is block-diagonal, so a
# packed sequence trains exactly like its documents run one by one. The parallel layout is checked
# here, before anything is trained.

# %%
prep = prepare_sft(cfg)
print(f"model: {prep.model_dir}")
report.sources(prep)

# %%
report.packing(prep)

# %%
report.sft_preview(prep, 5)

# %%
report.plan_table(prep)

# %% [markdown]
# ## 2. Train
# *学習します。JupyterLab では進捗バーと損失のグラフがその場で更新されます。同じ `run_name` で再実行すると続きから再開します。*
#
# In JupyterLab a progress bar and a plot of the training and validation loss update in place
# while it trains; headless (papermill, PBS) a log line every 30 s instead. Every step is appended
# to `metrics.jsonl` in the run directory. If this run already has checkpoints, training continues
# from the latest complete one with the exact same data order.

# %%
result = run_sft(cfg, run, prep)
report.result_table(result)

# %% [markdown]
# ## 3. Loss curve
# *学習損失と検証損失の推移です。*

# %%
fig = report.loss_curve_figure(run.metrics(), title=f"SFT {run.name}")
png = run.save_figure(fig, "loss_curve")

# %%
report.val_history(result)

# %% [markdown]
# ## 4. The trained model
# *学習済みモデル（`hf_model/`）は DPO と評価でそのまま使えます。*
#
# `hf_model/` is a plain HF model directory (safetensors, config, tokenizer with the kit's chat
# template). Use the run directory itself as `init` in `40_dpo`, or in `models` of `50_evaluate`.

# %%
report.published_files(result)

# %%
summary = run.finish(report.sft_summary(result))

# %%
# NBVAL_CHECK_OUTPUT
print(report.sft_check(summary))
