"""Load an HF causal LM for training and shard it with FSDP2.

The model is built on the meta device on every rank, each decoder layer and then the root are
wrapped with `fully_shard`, storage is allocated only for each rank's shard, and rank 0 streams
the safetensors weights to the others (`broadcast_from_rank0`). So an 8B model never sits whole
in every rank's memory, and the same code path runs for the tiny model on one CPU process.

Master weights and the optimiser are fp32. On GPU the forward/backward compute in bf16 with fp32
gradient reduction (`MixedPrecisionPolicy`); on CPU everything is fp32 (tests and the demo need
bit-stable numbers). The root module is `CausalLMForTraining`, which returns per-token
log-probabilities from the chunked head in `tunekit.train.loss` instead of full logits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .distributed import DistEnv
from .loss import token_logprobs

WEIGHT_PREFIX = "lm."  # CausalLMForTraining keeps the HF model as `.lm`


class CausalLMForTraining(nn.Module):
    """An HF causal LM whose forward returns log p(label) per position via the chunked head."""

    def __init__(self, lm: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, labels: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """[B, T] fp32 log-probs of `labels` (0 where labels == -100)."""
        out = self.lm.model(use_cache=False, **model_inputs)
        hidden = out.last_hidden_state
        lp = token_logprobs(hidden, self.lm.lm_head.weight, labels.reshape(hidden.shape[:2]),
                            self.chunk_tokens)
        # A fresh tensor, not a view: FSDP2 hooks backward onto the root's output, and an
        # in-place op on a view of it would silently skip that hook.
        return lp.reshape(labels.shape).clone()


@dataclass(frozen=True)
class ModelSetup:
    """What was loaded and how: attention kernel, compute dtype, sizes."""

    model_dir: Path
    attn_implementation: str
    compute_dtype: torch.dtype
    n_params: int
    max_position_embeddings: int
    vocab_size: int
    n_trainable: int = 0  # < n_params with LoRA (adapters only)


def resolve_precision(precision: str, env: DistEnv) -> torch.dtype:
    """auto = bf16 compute on GPU, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if env.is_cuda else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def flash_attn_available() -> bool:
    """True if the flash-attn package imports (GPU nodes with environment.gpu.yml)."""
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a CUDA/ABI mismatch raising at import
        return False
    return True


def resolve_attention(requested: str, env: DistEnv) -> str:
    """auto = FlashAttention-2 varlen on GPU when installed, else PyTorch SDPA with a block mask."""
    if requested == "auto":
        return "flash_attention_2" if env.is_cuda and flash_attn_available() else "sdpa"
    if requested == "flash_attention_2" and not (env.is_cuda and flash_attn_available()):
        raise UserError("attn_implementation: flash_attention_2 needs a GPU and the flash-attn "
                        "package (use 'auto' or 'sdpa')")
    return requested


def read_config(model_dir: Path):
    """The model's transformers config, with a one-sentence error for a dir that is not a model."""
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no config.json (give an HF model directory, 'tiny', or a run dir)")
    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types for unreadable configs
        raise UserError(f"{model_dir}/config.json: cannot be read as a transformers config ({exc})") from None


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors weights (convert the checkpoint to safetensors)")
    return files


def load_full_state_dict(model_dir: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """All weights of an HF model dir, cast to `dtype` (rank 0 only; others pass {})."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in _weight_files(model_dir):
        for k, v in load_file(str(f)).items():
            sd[k] = v.to(dtype)
    return sd


def _reinit_rotary_buffers(model: nn.Module) -> None:
    # Non-persistent buffers are not in the checkpoint; after to_empty() they hold garbage.
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and hasattr(mod, "config"):
            fresh = type(mod)(config=mod.config)
            for name, buf in fresh.named_buffers(recurse=False):
                getattr(mod, name).copy_(buf.to(getattr(mod, name).device))
            if hasattr(fresh, "attention_scaling"):
                mod.attention_scaling = fresh.attention_scaling


def load_for_training(model_dir: Path, env: DistEnv, *, precision: str = "auto",
                      attn_implementation: str = "auto", activation_checkpointing: bool = False,
                      chunk_tokens: int = 1024, lora=None) -> tuple[CausalLMForTraining, ModelSetup]:
    """Build the FSDP2-sharded training model from an HF model dir (collective: all ranks call).

    `lora` (a tunekit.train.lora.LoraSpec) adds LoRA adapters and freezes everything else.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    config = read_config(model_dir)
    attn = resolve_attention(attn_implementation, env)
    compute_dtype = resolve_precision(precision, env)
    config.use_cache = False
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if not (hasattr(lm, "model") and hasattr(lm.model, "layers") and hasattr(lm, "lm_head")):
        raise UserError(f"{model_dir}: {type(lm).__name__} is not a LLaMA-format decoder "
                        "(expected .model.layers and .lm_head)")
    if activation_checkpointing:
        # Recompute each decoder layer in backward: activations drop from O(layers) to O(1) layers.
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        from .lora import attach_lora

        # Before fully_shard: each adapter joins the FSDP unit of the frozen linear it adapts.
        attach_lora(lm, lora, frozen_dtype=compute_dtype)
    model = CausalLMForTraining(lm, chunk_tokens)
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
        if compute_dtype != torch.float32 else MixedPrecisionPolicy()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if not tied:
        # Its own unit: the 0.8B-parameter embedding of llm-jp is gathered only around its use.
        fully_shard(lm.model.embed_tokens, mp_policy=mp)
    for layer in lm.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)  # root: final norm + lm_head (+ embedding if tied)
    model.to_empty(device=env.device)
    with torch.no_grad():
        _reinit_rotary_buffers(model)
    full = load_full_state_dict(model_dir) if env.is_main else {}
    if env.is_main:
        if tied:
            full.pop("lm_head.weight", None)
        full = {WEIGHT_PREFIX + k: v for k, v in full.items()}
        if lora is not None:  # base weights under peft's names + the adapters' initial values
            from .lora import complete_state_dict

            full = complete_state_dict(model, full, lora)
    result = set_model_state_dict(model, full, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, strict=not tied))
    missing = [k for k in (result.missing_keys or []) if not (tied and k.endswith("lm_head.weight"))]
    if missing or result.unexpected_keys:
        raise UserError(f"{model_dir}: weights do not match the config (missing {missing[:3]}, "
                        f"unexpected {list(result.unexpected_keys)[:3]})")
    del full
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    setup = ModelSetup(model_dir, attn, compute_dtype, n_params,
                       int(getattr(config, "max_position_embeddings", 0) or 0), int(config.vocab_size),
                       sum(p.numel() for p in model.parameters() if p.requires_grad))
    return model, setup
