"""Typed parameters of the training notebooks (30_sft; 40_dpo adds `DPOParams` beside it).

`TrainParams` holds what every training stage shares (model, batch layout, optimiser, schedule,
intervals, checkpoints, launch, logging); `SFTParams` adds the SFT data and loss knobs. Field
order, names, types and defaults mirror the `parameters` cell of the notebook exactly.

Checks here need only the values themselves; checks that need the world size or the model config
(global batch vs micro batch x data-parallel size, sequence length vs the model limit) live in
`tunekit.train.layout` and run before any work.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import model_validator

from ..errors import UserError
from ..params import NotebookParams
from .lora import param_problems as _lora_problems

WANDB_MODES = ("disabled", "offline", "online")
PUBLISH_CHOICES = ("best", "final")
ATTN_CHOICES = ("auto", "sdpa", "flash_attention_2", "eager")
PRECISION_CHOICES = ("auto", "bf16", "fp32")

# Changing these between a run and its resumption cannot change the numbers (or is meant to
# change: a new walltime, more processes on more nodes - DCP reshards on load).
_TRAIN_RESUME_MAY_CHANGE = frozenset({
    "run_name", "runs_dir", "nproc_per_node", "max_train_minutes", "walltime_margin_minutes",
    "wandb", "wandb_project", "activation_checkpointing", "attn_implementation",
    "loss_chunk_tokens", "keep_top_k", "delete_optimizer_state",
})


class TrainParams(NotebookParams):
    """Parameters shared by SFT and DPO: model, batch layout, optimiser, schedule, checkpoints."""

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = _TRAIN_RESUME_MAY_CHANGE

    def _check_common(self) -> list[str]:
        """Problems in the shared fields, one sentence each."""
        p: list[str] = []
        if self.max_seq_length < 8:
            p.append(f"max_seq_length must be at least 8 (got {self.max_seq_length})")
        if self.micro_batch_size < 1:
            p.append(f"micro_batch_size must be >= 1 (got {self.micro_batch_size})")
        if self.global_batch_size < 1:
            p.append(f"global_batch_size must be >= 1 (got {self.global_batch_size})")
        elif self.micro_batch_size >= 1 and self.global_batch_size % self.micro_batch_size:
            p.append(f"global_batch_size {self.global_batch_size} is not a multiple of "
                     f"micro_batch_size {self.micro_batch_size}")
        if not self.lr > 0:
            p.append(f"lr must be > 0 (got {self.lr})")
        if self.min_lr < 0 or self.min_lr > self.lr:
            p.append(f"min_lr must be between 0 and lr={self.lr} (got {self.min_lr})")
        for name in ("warmup_steps", "constant_steps", "val_interval", "save_interval"):
            if getattr(self, name) < 0:
                p.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.epochs < 1 and self.max_steps <= 0:
            p.append("set epochs >= 1 or max_steps > 0 (both say there is nothing to train)")
        if self.max_steps == 0 or self.max_steps < -1:
            p.append(f"max_steps must be -1 (use epochs) or > 0 (got {self.max_steps})")
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            p.append(f"adam betas must be in [0, 1) (got {self.adam_beta1}, {self.adam_beta2})")
        if self.weight_decay < 0:
            p.append(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if self.grad_clip < 0:
            p.append(f"grad_clip must be >= 0, 0 = off (got {self.grad_clip})")
        if self.keep_top_k < 0:
            p.append(f"keep_top_k must be >= 0 (got {self.keep_top_k})")
        elif self.keep_top_k == 0 and self.publish == "best":
            p.append("publish='best' needs keep_top_k >= 1 (the best checkpoint must be kept)")
        if self.loss_chunk_tokens < 1:
            p.append(f"loss_chunk_tokens must be >= 1 (got {self.loss_chunk_tokens})")
        if self.nproc_per_node < 1:
            p.append(f"nproc_per_node must be >= 1 (got {self.nproc_per_node})")
        if self.max_train_minutes < 0 or self.walltime_margin_minutes < 0:
            p.append("max_train_minutes and walltime_margin_minutes must be >= 0")
        for name, choices in (("wandb", WANDB_MODES), ("publish", PUBLISH_CHOICES),
                              ("attn_implementation", ATTN_CHOICES), ("precision", PRECISION_CHOICES)):
            if getattr(self, name) not in choices:
                p.append(f"{name} must be one of {'|'.join(choices)} (got {getattr(self, name)!r})")
        if not self.model.strip():
            p.append("model must name a model: 'tiny', an HF model dir or a run dir")
        p.extend(_lora_problems(self))  # peft / lora_* fields (none: nothing to check)
        return p

    def check(self) -> None:
        """Raise UserError listing every problem (one sentence each); subclasses extend `_problems`."""
        problems = self._problems()
        if problems:
            raise UserError("; ".join(f"parameters: {m}" for m in problems))

    def _problems(self) -> list[str]:
        return self._check_common()

    @model_validator(mode="after")
    def _validate(self):
        self.check()
        return self

    @property
    def stage(self) -> str:
        """The run stage (folder under runs/) of this config."""
        raise NotImplementedError


class SFTParams(TrainParams):
    """Parameters of notebooks/30_sft (field order = the notebook's parameters cell)."""

    model: str = "tiny"
    data_dir: str = "datasets"
    data_version: str = "sample"
    datasets: dict[str, Any] = {
        "math_drill": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1},
        "math_chat": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1},
    }
    max_dev_samples: int = 100
    max_dev_ratio: float = 0.1
    dev_split: str = "head"
    upsample_dev: bool = False
    packing: str = "isolated"
    overlong: str = "truncate"
    template_style: str = "kit"
    on_error: str = "raise"
    max_seq_length: int = 512
    global_batch_size: int = 8
    micro_batch_size: int = 4
    epochs: int = 1
    max_steps: int = -1
    lr: float = 0.003
    min_lr: float = 0.0003
    warmup_steps: int = 5
    constant_steps: int = 5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    grad_clip: float = 1.0
    peft: str = "none"
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: str = "attention_qkv"
    val_interval: int = 10
    save_interval: int = 20
    keep_top_k: int = 1
    publish: str = "best"
    delete_optimizer_state: bool = False
    seed: int = 1234
    precision: str = "auto"
    activation_checkpointing: bool = False
    attn_implementation: str = "auto"
    loss_chunk_tokens: int = 1024
    nproc_per_node: int = 1
    max_train_minutes: float = 0.0
    walltime_margin_minutes: float = 10.0
    wandb: str = "disabled"
    wandb_project: str = "tunekit"
    run_name: str = ""
    runs_dir: str = ""

    @property
    def stage(self) -> str:
        return "sft"

    def _problems(self) -> list[str]:
        p = self._check_common()
        if self.max_dev_samples < 0 or not 0 <= self.max_dev_ratio <= 1:
            p.append("max_dev_samples must be >= 0 and max_dev_ratio in [0, 1]")
        for name, choices in (("dev_split", ("head", "hash")), ("packing", ("isolated", "official")),
                              ("overlong", ("truncate", "drop")), ("template_style", ("kit", "official")),
                              ("on_error", ("raise", "skip"))):
            if getattr(self, name) not in choices:
                p.append(f"{name} must be one of {'|'.join(choices)} (got {getattr(self, name)!r})")
        if not p:
            p.extend(_data_config_problems(self))
        return p


def _data_config_problems(cfg) -> list[str]:
    """What tunekit.data's DataConfig says about the data fields (e.g. a bad `datasets` map)."""
    try:
        from ..data.config import DataConfig
    except ImportError:  # data area absent: its own checks run when the data is built
        return []
    try:
        DataConfig.parse(cfg.to_dict(), source="SFT parameters")
    except UserError as exc:
        return [str(exc)]
    return []
