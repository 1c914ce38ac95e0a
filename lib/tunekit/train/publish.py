"""Publish trained weights as a plain HF model directory: `<run_dir>/hf_model/`.

The directory is what every later stage (DPO, evaluation, conversion, the submission image)
loads with `from_pretrained`: safetensors weights (sharded at 5 GB with an index for 8B), the
base model's config and generation config, and its tokenizer with the kit's chat template
installed, plus `tunekit_training.json` saying which run and step the weights come from. It is
built in a temp folder and renamed into place, so a killed publish never leaves a model that looks
complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import atomic
from .distributed import DistEnv, barrier
from .modeling import WEIGHT_PREFIX

PROVENANCE = "tunekit_training.json"
# Files of the base model dir worth carrying over (weights are rewritten; fixture/provenance
# files of the base would describe the wrong model).
_CARRY_PREFIXES = ("config", "generation_config", "tokenizer", "special_tokens_map", "added_tokens",
                   "chat_template", "vocab", "merges", "sentencepiece")
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def gather_full_state_dict(model) -> dict[str, torch.Tensor]:
    """The unsharded HF-named weights on rank 0 (CPU), {} elsewhere (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len(WEIGHT_PREFIX):] if k.startswith(WEIGHT_PREFIX) else k: v for k, v in sd.items()}


def _base_dtype(config: Mapping[str, Any]) -> torch.dtype:
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return getattr(torch, name, torch.float32)


def _copy_tokenizer(base: Path, out: Path) -> None:
    from ..convert.hf_files import has_tokenizer
    from ..model.portable import publish_tokenizer

    if not has_tokenizer(base):  # no tokenizer in the base dir: the model is still publishable
        return
    # With the kit's chat template (the prompt format training used, for apply_chat_template/vLLM),
    # written so that transformers 4.47 / 4.57 (official training env, submission image) load it.
    publish_tokenizer(base, out, template="kit")


def _share_like_umask(folder: Path) -> None:
    # Temp-file writers create 0600 files; a published model is meant to be read by the team
    # (ABCI groups share one /groups area), so apply the usual umask-derived mode.
    mask = os.umask(0)
    os.umask(mask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def publish_hf_model(model, env: DistEnv, base_model_dir: Path, out_dir: Path,
                     provenance: Mapping[str, Any]) -> Path | None:
    """Write the model's current weights as an HF model dir at `out_dir` (collective; rank 0 writes)."""
    from huggingface_hub import save_torch_state_dict

    from ..convert.configs import portable_config

    sd = gather_full_state_dict(model)
    if env.is_main:
        from .lora_publish import publish_hook

        # LoRA: writes <run_dir>/lora_adapter/ and returns the merged weights (else a no-op).
        sd, provenance = publish_hook(model, sd, out_dir, base_model_dir, provenance)
        config = json.loads((base_model_dir / "config.json").read_text(encoding="utf-8"))
        dtype = _base_dtype(config)
        # tied output weights are saved once, as transformers does
        if config.get("tie_word_embeddings"):
            sd.pop("lm_head.weight", None)
        # copy=True: gathered tensors can be views into a larger buffer, which safetensors refuses.
        sd = {k: v.to(dtype=dtype, copy=True).contiguous() for k, v in sd.items()}
        with atomic.atomic_dir(out_dir, overwrite=True) as tmp:
            for f in base_model_dir.iterdir():
                if (f.is_file() and f.name.startswith(_CARRY_PREFIXES)
                        and not f.name.endswith(_SKIP_SUFFIXES) and "index" not in f.name):
                    shutil.copy2(f, tmp / f.name)
            _copy_tokenizer(base_model_dir, tmp)
            config["use_cache"] = True  # training switched it off; inference wants it
            # Legacy keys too, so transformers 4.x (submission image, official kit) reads the same RoPE.
            atomic.write_json(tmp / "config.json", portable_config(config))
            save_torch_state_dict(sd, tmp, max_shard_size="5GB", safe_serialization=True)
            atomic.write_json(tmp / PROVENANCE, dict(provenance))
            _share_like_umask(tmp)
    del sd
    barrier(env)
    return out_dir if env.is_main else None
