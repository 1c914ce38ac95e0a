"""Typed parameters of the training notebooks (30_sft, 40_dpo), composed of groups declared once.

    TrainParams       batch layout, optimiser, schedule, intervals, checkpoints, launch, logging
    LoraParams        peft / lora_* (the official kit's names and defaults)
    PreferenceParams  the DPO loss family under the official `model.dpo.*` names
    SFTParams = model, datasets + DataParams + PackingParams + TrainParams + LoraParams + RunParams
    DPOParams = init, datasets + DataParams + PairParams + PreferenceParams + TrainParams + LoraParams + RunParams

A shared field is declared once (type, limits, help); a stage only restates the tiny default it
wants (`stage_default`). The notebooks' parameters cells are generated from these classes
(`tunekit notebooks sync`). Checks here need only the values; checks that need the world size or
the model config (global batch vs micro batch x processes, sequence length vs the model limit)
run in `tunekit.train.plan` before any work.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..data.params import DataParams, Datasets, PackingParams, PairParams, datasets_map, knobs
from ..errors import UserError
from ..params import NotebookParams, RunParams, stage_default
from .lora import resolve_target_modules
from .plan import check_layout

TINY = "tiny"
PREFERENCE_LOSSES = ("dpo", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl")


class TrainParams(NotebookParams):
    """What every training stage shares: batch layout, optimiser, schedule, checkpoints, launch, logging."""

    SECTION: ClassVar[str] = "training"
    # Changing these between a run and its resumption cannot change the numbers (or is meant to
    # change: a new walltime, more processes on more nodes - DCP reshards on load).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({
        "nproc_per_node", "max_train_minutes", "walltime_margin_minutes", "wandb", "wandb_project",
        "activation_checkpointing", "activation_checkpointing_every", "compile_layers", "attn_implementation",
        "loss_chunk_tokens", "keep_top_k", "delete_optimizer_state",
    })

    global_batch_size: int = Field(
        8, ge=1, description="sequences per optimizer step, all processes together (official: 64)")
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward/backward per process (official: 4)")
    epochs: int = Field(1, ge=0, description="passes over the training data (official: 2)")
    max_steps: int = Field(-1, ge=-1, description="-1: epochs decide; > 0: exactly this many optimizer steps")
    lr: float = Field(0.003, gt=0, description="peak learning rate (official: 2e-5)")
    min_lr: float = Field(0.0003, ge=0, description="final learning rate of the cosine (official: 2e-6)")
    warmup_steps: int = Field(5, ge=0, description="linear warmup steps (official: 20)")
    constant_steps: int = Field(5, ge=0, description="steps held at min_lr at the end (official: 100)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices (official: 0.1)")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1 (official: 0.9)")
    adam_beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2 (official: 0.98)")
    grad_clip: float = Field(1.0, ge=0, description="gradient-norm clip, 0 turns it off (official: 1.0)")
    val_interval: int = Field(10, ge=0, description="validate every N steps, 0: only at checkpoints (official: 500)")
    save_interval: int = Field(
        20, ge=0, description="checkpoint every N steps and at the end, 0: only at the end (official: 500)")
    keep_top_k: int = Field(1, ge=0, description="keep the last checkpoint plus this many with the lowest val loss")
    publish: Literal["best", "final"] = Field(
        "best", description="weights written to hf_model/: best (lowest val loss) | final")
    delete_optimizer_state: bool = Field(
        False, description="drop optimizer state after training to save disk (official: yes)")
    seed: int = Field(1234, description="random seed (data order is a function of seed and step)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 compute on GPU, fp32 on CPU | bf16 | fp32")
    activation_checkpointing: bool = Field(
        False, description="recompute layers in backward: less memory, ~25% slower")
    activation_checkpointing_every: int = Field(
        1, ge=1, description="with activation_checkpointing: recompute every n-th layer only (1: all; 2: half, "
                             "faster, more memory)")
    compile_layers: bool = Field(False, description="torch.compile each decoder layer (GPU: faster after a warm-up)")
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager"] = Field(
        "auto", description="auto/varlen: per-document attention (FlashAttention varlen on GPU) | sdpa | eager "
                            "(dense block mask)")
    loss_chunk_tokens: int = Field(
        1024, ge=1, description="tokens per chunk of the output layer + loss (bounds logits memory)")
    nproc_per_node: int = Field(1, ge=1, description="training processes per node (GPUs per node on ABCI: 8)")
    max_train_minutes: float = Field(
        0.0, ge=0, description="stop (checkpointed) after this many minutes, 0: no own limit")
    walltime_margin_minutes: float = Field(
        10.0, ge=0, description="in PBS: checkpoint and stop this long before the walltime")
    wandb: Literal["disabled", "offline", "online"] = Field(
        "disabled", description="disabled | offline | online (key only from $WANDB_API_KEY)")
    wandb_project: str = Field("tunekit", description="wandb project name")

    @model_validator(mode="after")
    def _consistent(self):
        p = []
        if self.global_batch_size % self.micro_batch_size:
            p.append(f"global_batch_size {self.global_batch_size} is not a multiple of "
                     f"micro_batch_size {self.micro_batch_size}")
        if self.min_lr > self.lr:
            p.append(f"min_lr must be between 0 and lr={self.lr} (got {self.min_lr})")
        if self.epochs < 1 and self.max_steps <= 0:
            p.append("set epochs >= 1 or max_steps > 0 (both say there is nothing to train)")
        if self.max_steps == 0:
            p.append(f"max_steps must be -1 (use epochs) or > 0 (got {self.max_steps})")
        if self.keep_top_k == 0 and self.publish == "best":
            p.append("publish='best' needs keep_top_k >= 1 (the best checkpoint must be kept)")
        p.extend(self._stage_problems())
        if p:
            raise ValueError("\n".join(p))
        return self

    def _stage_problems(self) -> list[str]:
        """Checks across parameters of the stage's own groups (one sentence each)."""
        return []

    @property
    def stage(self) -> str:
        """The run stage (folder under runs/) of this config."""
        return type(self).STAGE

    def check_layout(self, world_size: int, max_positions: int | None) -> None:
        """Raise UserError if these params cannot run on `world_size` processes with this model."""
        check_layout(self, world_size, max_positions)


class LoraParams(NotebookParams):
    """Parameter-efficient fine-tuning with the official kit's LoRA names and defaults (see lora.py)."""

    SECTION: ClassVar[str] = "LoRA"

    peft: Literal["none", "lora"] = Field(
        "none",
        description="none: full fine-tuning | lora: train LoRA adapters only, base frozen (official peft_scheme)")
    lora_rank: int = Field(32, ge=1, description="LoRA rank r (official adapter_dim: 32)")
    lora_alpha: float = Field(
        32.0, gt=0, description="LoRA alpha, updates are scaled by alpha / rank (official: alpha equals adapter_dim)")
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the adapter input (official adapter_dropout: 0.0)")
    lora_target_modules: str = Field(
        "attention_qkv", description="comma list: attention_qkv, attention_dense, mlp_fc1, mlp_fc2, attention, mlp, "
                                     "all, or HF names (q_proj, ..., down_proj)")

    @field_validator("lora_target_modules")
    @classmethod
    def _targets(cls, value: str) -> str:
        try:
            resolve_target_modules(value)
        except UserError as exc:
            raise ValueError(str(exc).removeprefix("lora_target_modules: ")) from None
        return value


class PreferenceParams(NotebookParams):
    """The official kit's preference-loss knobs (NeMo-Aligner `model.dpo.*`), read by tunekit.train.dpo_loss."""

    SECTION: ClassVar[str] = "DPO loss"
    # Same numbers (up to float rounding) with either layout or reference source.
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({"pack_pairs", "reference"})

    ref_policy_kl_penalty: float = Field(
        0.5, gt=0, description="beta: strength of the KL anchor to the reference (official: 0.5)")
    preference_loss: Literal[PREFERENCE_LOSSES] = Field(
        "dpo", description="dpo | ipo | rpo_sq | rpo_bwd_kl | rpo_fwd_kl (official names)")
    gt_reward_scale: float = Field(
        1.0, description="scale of the ground-truth reward gap in the rpo_* losses (official: 1.0)")
    preference_loss_weight: float = Field(1.0, ge=0, description="weight of the preference loss (official: 1)")
    sft_loss_weight: float = Field(0.0, ge=0, description="weight of the NLL of the chosen response (official: 0)")
    preference_average_log_probs: bool = Field(
        False, description="per-token mean instead of sum of log-probs (official: false)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="conservative DPO: assumed share of flipped labels, dpo only (0: off)")
    pack_pairs: bool = Field(
        True, description="True: a micro-batch's sequences packed by their real lengths, kept apart | False: one "
                          "padded row each")
    reference: Literal["cached", "live"] = Field(
        "cached", description="cached: reference log-probs computed once before training | live: every step (a "
                              "frozen copy of the model; with LoRA the policy with adapters off)")

    def loss_problems(self) -> list[str]:
        """Checks across the loss knobs, one sentence each."""
        p = []
        if self.preference_loss_weight == 0 and self.sft_loss_weight == 0:
            p.append("preference_loss_weight and sft_loss_weight cannot both be 0 (nothing to train)")
        if self.label_smoothing and self.preference_loss != "dpo":
            p.append(f"label_smoothing applies to preference_loss=dpo only (got {self.preference_loss})")
        return p

    @model_validator(mode="after")
    def _loss_consistent(self):
        p = self.loss_problems()
        if p and not isinstance(self, TrainParams):  # a stage reports them with its other checks
            raise ValueError("\n".join(p))
        return self


class SFTParams(DataParams, PackingParams, TrainParams, LoraParams, RunParams):
    """Parameters of notebooks/30_sft."""

    STAGE: ClassVar[str] = "sft"
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = TrainParams.RESUME_MAY_CHANGE

    model: str = Field(TINY, description='base model: "tiny", an HF model dir, or a run dir (uses its hf_model/)')
    datasets: Datasets = Field(default_factory=lambda: knobs(math_drill={}, math_chat={}),
                               description="datasets map with the official knobs; {} for every file")
    max_seq_length: int = stage_default(DataParams, "max_seq_length", 512, "packed sequence length (llm-jp-4-8b: 4096)")
    # The tiny defaults train long enough for the sample's answers to be learnt (about 650 steps,
    # a few minutes on 2 CPU cores): evaluation then shows the SFT model beating the base model.
    epochs: int = stage_default(TrainParams, "epochs", 16, "passes over the training data (official: 2)")
    val_interval: int = stage_default(TrainParams, "val_interval", 50,
                                      "validate every N steps, 0: only at checkpoints (official: 500)")
    save_interval: int = stage_default(TrainParams, "save_interval", 200, "checkpoint every N steps and at "
                                       "the end, 0: only at the end (official: 500)")

    @field_validator("datasets", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return datasets_map(value)

    def _stage_problems(self) -> list[str]:
        return [] if self.model.strip() else ["model must name a model: 'tiny', an HF model dir or a run dir"]


class DPOParams(DataParams, PairParams, PreferenceParams, TrainParams, LoraParams, RunParams):
    """Parameters of notebooks/40_dpo: the official DPO config's knobs under their official names.

    Batch sizes count PAIRS, as in the official config. The llm-jp-4-8b values are in
    job_templates/params/llm-jp-4-8b/dpo/full.yaml (and lora.yaml).
    """

    STAGE: ClassVar[str] = "dpo"
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = TrainParams.RESUME_MAY_CHANGE | PreferenceParams.RESUME_MAY_CHANGE

    init: str = Field("", description="starting policy and reference: an SFT run dir, an HF model dir or tiny; "
                                      "empty: the tiny base model")
    datasets: Datasets = Field(default_factory=lambda: knobs(math_pref={}),
                               description="datasets map with the official knobs; {} for every file")
    data_dir: str = stage_default(DataParams, "data_dir", "datasets",
                                  "folder holding <data_version>/preference/train/*.jsonl")
    max_seq_length: int = stage_default(DataParams, "max_seq_length", 256, "longest prompt + response, per "
                                        "chosen/rejected sequence (llm-jp-4-8b: 4096)")
    global_batch_size: int = stage_default(TrainParams, "global_batch_size", 16,
                                           "pairs per optimizer step, all processes together (official: 256)")
    micro_batch_size: int = stage_default(TrainParams, "micro_batch_size", 8,
                                          "pairs per forward/backward per process (official: 2)")
    # The tiny defaults start from an SFT run (`init`) and must not wreck it: a tenth of the SFT
    # lr, two epochs, and the chosen responses' NLL next to the preference loss (measured on the
    # sample with several seeds, docs/dpo.md; the official recipe is in job_templates/params).
    epochs: int = stage_default(TrainParams, "epochs", 2, "passes over the training pairs (official: 2)")
    lr: float = stage_default(TrainParams, "lr", 0.0003, "peak learning rate (official: 9e-7)")
    min_lr: float = stage_default(TrainParams, "min_lr", 0.00003, "final learning rate of the cosine (official: 5e-7)")
    sft_loss_weight: float = stage_default(PreferenceParams, "sft_loss_weight", 1.0, "weight of the NLL of the "
                                           "chosen response (official: 0; keeps a small model's answers intact)")
    warmup_steps: int = stage_default(TrainParams, "warmup_steps", 2, "linear warmup steps")
    constant_steps: int = stage_default(TrainParams, "constant_steps", 0, "steps held at min_lr at the end")
    weight_decay: float = stage_default(TrainParams, "weight_decay", 0.0, "AdamW weight decay on matrices")
    val_interval: int = stage_default(TrainParams, "val_interval", 5,
                                      "validate every N steps, 0: only at checkpoints (official: 200)")
    save_interval: int = stage_default(TrainParams, "save_interval", 10, "checkpoint every N steps and at the "
                                       "end, 0: only at the end (official: 200)")
    publish: Literal["best", "final"] = stage_default(
        TrainParams, "publish", "final", "weights written to hf_model/: final | best (lowest dev DPO loss, the "
                                         "official top-1)")

    @field_validator("datasets", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return datasets_map(value)

    @property
    def model(self) -> str:
        """The starting policy (= the reference) as a model spec: `init`, or 'tiny' when empty."""
        return self.init.strip() or TINY

    def _stage_problems(self) -> list[str]:
        return self.loss_problems()

