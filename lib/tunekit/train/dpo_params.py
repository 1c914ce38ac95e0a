"""Typed parameters of notebooks/40_dpo: the official DPO config's knobs under their official names.

Field order, names, types and defaults mirror the notebook's `parameters` cell exactly. Where the
official kit (NeMo-Aligner's `model.dpo.*`, FACTS.md section 4) has a name, it is used:
`ref_policy_kl_penalty` (beta), `preference_loss`, `gt_reward_scale`, `sft_loss_weight`,
`preference_loss_weight`, `preference_average_log_probs`, `global_batch_size`/`micro_batch_size`
(counted in PAIRS, as officially), `lr`/`min_lr`, the `datasets` map. The engine knobs (schedule,
checkpoints, launch, logging) are the SFT notebook's, see `tunekit.train.params.TrainParams`.

Defaults are the tiny CPU demo; the llm-jp-4-8b values are in
job_templates/params/llm-jp-4-8b/dpo/official.yaml.
"""
from __future__ import annotations

from typing import Any, ClassVar

from .dpo_losses import PreferenceLossConfig
from ..errors import UserError
from .params import TrainParams

OVERLONG_CHOICES = ("drop", "truncate_prompt")
TINY = "tiny"


class DPOParams(TrainParams):
    """Parameters of notebooks/40_dpo (field order = the notebook's parameters cell)."""

    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = TrainParams.RESUME_MAY_CHANGE | {"pack_pairs"}

    init: str = ""
    data_dir: str = "datasets"
    data_version: str = "sample"
    datasets: dict[str, Any] = {
        "math_pref": {"max_train_samples": -1, "split_dev": True, "upsampling_factor": 1},
    }
    max_dev_samples: int = 100
    max_dev_ratio: float = 0.2
    dev_split: str = "head"
    upsample_dev: bool = False
    dpo_overlong: str = "drop"
    template_style: str = "kit"
    on_error: str = "raise"
    max_seq_length: int = 256
    global_batch_size: int = 16
    micro_batch_size: int = 8
    epochs: int = 6
    max_steps: int = -1
    lr: float = 0.003
    min_lr: float = 0.0003
    warmup_steps: int = 2
    constant_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    grad_clip: float = 1.0
    peft: str = "none"
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: str = "attention_qkv"
    lora_reference: str = "cache"
    ref_policy_kl_penalty: float = 0.5
    preference_loss: str = "dpo"
    gt_reward_scale: float = 1.0
    preference_loss_weight: float = 1.0
    sft_loss_weight: float = 0.0
    preference_average_log_probs: bool = False
    label_smoothing: float = 0.0
    pack_pairs: bool = True
    val_interval: int = 5
    save_interval: int = 10
    keep_top_k: int = 1
    publish: str = "final"
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
        return "dpo"

    @property
    def model(self) -> str:
        """The starting policy (= the reference) as a model spec: `init`, or 'tiny' when empty."""
        return self.init.strip() or TINY

    def loss_config(self) -> PreferenceLossConfig:
        """The loss knobs as the pure loss functions take them."""
        return PreferenceLossConfig(
            preference_loss=self.preference_loss, ref_policy_kl_penalty=self.ref_policy_kl_penalty,
            gt_reward_scale=self.gt_reward_scale, preference_loss_weight=self.preference_loss_weight,
            sft_loss_weight=self.sft_loss_weight,
            preference_average_log_probs=self.preference_average_log_probs,
            label_smoothing=self.label_smoothing)

    def _problems(self) -> list[str]:
        p = self._check_common()
        if self.max_dev_samples < 0 or not 0 <= self.max_dev_ratio <= 1:
            p.append("max_dev_samples must be >= 0 and max_dev_ratio in [0, 1]")
        for name, choices in (("dev_split", ("head", "hash")), ("dpo_overlong", OVERLONG_CHOICES),
                              ("template_style", ("kit", "official")), ("on_error", ("raise", "skip"))):
            if getattr(self, name) not in choices:
                p.append(f"{name} must be one of {'|'.join(choices)} (got {getattr(self, name)!r})")
        p.extend(self.loss_config().problems())
        if not p:
            p.extend(_data_problems(self))
        return p


def _data_problems(cfg: DPOParams) -> list[str]:
    """What tunekit.data's DataConfig says about the data fields (e.g. a bad `datasets` map)."""
    from ..data.config import DataConfig

    try:
        DataConfig.parse(cfg.to_dict(), source="DPO parameters")
    except UserError as exc:
        return [str(exc)]
    return []
