"""Publish trained weights as a plain HF model directory: `<run_dir>/hf_model/` (+ `lora_adapter/`).

The directory is what every later stage (DPO, evaluation, conversion, the submission image)
loads with `from_pretrained`: safetensors weights (sharded at 5 GB with an index for 8B), the
base model's config and generation config, and its tokenizer with the kit's chat template
installed, plus `tunekit_training.json` saying which run and step the weights come from. It is
built in a temp folder and renamed into place, so a killed publish never leaves a model that looks
complete.

A LoRA run publishes two directories:

    <run_dir>/hf_model/       W + (alpha / rank) * B @ A for every adapted linear, plain HF names;
                              indistinguishable from a full fine-tuning result (DPO, evaluation,
                              NeMo export take it unchanged)
    <run_dir>/lora_adapter/   adapter_config.json + adapter_model.safetensors (PEFT names:
                              base_model.model.<module>.lora_A.weight), tunekit_training.json

Merging happens in fp32 on rank 0 from the gathered full state dict, then the weights are cast to
the base model's dtype like any other. The adapter dir is written first, so a published
`hf_model/` (the marker the engine trusts) implies its adapter dir is complete.
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
from .lora import _LORA_KEY, LoraSpec, base_key, lora_spec_of

PROVENANCE = "tunekit_training.json"
WEIGHT_PREFIX = "lm."  # engine.CausalLMForTraining keeps the HF model as `.lm`
ADAPTER_DIR = "lora_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's parameters
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
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


def _copy_tokenizer(base: Path, out: Path) -> bool:
    """Save the base model's tokenizer, with the kit's chat template, into `out`; False if it has none.

    A base dir without any tokenizer file (e.g. a bare weights-only test model) publishes weights
    only, and the caller says so; a tokenizer that is there but cannot be loaded is an error
    (UserError naming the folder). Written portably so that transformers 4.47 / 4.57 (official
    training env, submission image) load it with the same ids.
    """
    from ..model.portable import publish_tokenizer

    if not any((base / name).is_file() for name in _TOKENIZER_FILES):
        return False
    # The kit's chat template = the prompt format training used, for apply_chat_template/vLLM.
    publish_tokenizer(base, out, template="kit")
    return True


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

    from ..model.portable import portable_model_config

    sd = gather_full_state_dict(model)
    if env.is_main:
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
            has_tokenizer = _copy_tokenizer(base_model_dir, tmp)
            if not has_tokenizer:
                print(f"note: {base_model_dir} has no tokenizer, so {out_dir} is published without one "
                      "(stages that tokenize need a model dir with tokenizer files)", flush=True)
            config["use_cache"] = True  # training switched it off; inference wants it
            # Legacy keys too, so transformers 4.x (submission image, official kit) reads the same RoPE.
            atomic.write_json(tmp / "config.json", portable_model_config(config))
            save_torch_state_dict(sd, tmp, max_shard_size="5GB", safe_serialization=True)
            atomic.write_json(tmp / PROVENANCE, dict(provenance, tokenizer=has_tokenizer))
            _share_like_umask(tmp)
    del sd
    barrier(env)
    return out_dir if env.is_main else None


# ------------------------------------------------------------------ LoRA: merged model + adapter dir
def split_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                               dict[str, dict[str, torch.Tensor]]]:
    """(base weights under HF names, {module: {"A": lora_A, "B": lora_B}}) of a peft-wrapped state dict."""
    base: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _LORA_KEY.match(k)
        if m:
            adapters.setdefault(m.group("module"), {})[m.group("ab")] = v
        else:
            base[base_key(k)] = v
    for module, ab in adapters.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{module}: adapter without both lora_A and lora_B ({sorted(ab)})")
    return base, adapters


def merge_adapters(base: Mapping[str, torch.Tensor], adapters: Mapping[str, Mapping[str, torch.Tensor]],
                   scaling: float) -> dict[str, torch.Tensor]:
    """W' = W + scaling * B @ A for every adapted module (computed in fp32, kept in fp32)."""
    merged = {k: v for k, v in base.items()}
    for module, ab in adapters.items():
        key = f"{module}.weight"
        if key not in merged:
            raise ValueError(f"{module}: adapter for a module without a base weight")
        delta = ab["B"].float() @ ab["A"].float()
        merged[key] = merged[key].float() + scaling * delta
    return merged


def adapter_state_dict(adapters: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The adapters under PEFT's saved names (`base_model.model.<module>.lora_A.weight`)."""
    out = {}
    for module, ab in sorted(adapters.items()):
        for which in ("A", "B"):
            out[f"{PEFT_PREFIX}{module}.lora_{which}.weight"] = ab[which].float().contiguous()
    return out


def write_adapter_dir(out_dir: Path, adapters: Mapping[str, Mapping[str, torch.Tensor]], spec: LoraSpec,
                      base_model_dir: Path, provenance: Mapping[str, Any]) -> Path:
    """Write a PEFT adapter directory atomically (config, safetensors, provenance); returns it."""
    from safetensors.torch import save_file

    with atomic.atomic_dir(out_dir, overwrite=True) as tmp:
        spec.peft_config(str(Path(base_model_dir).resolve())).save_pretrained(str(tmp))
        save_file(adapter_state_dict(adapters), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        atomic.write_json(tmp / PROVENANCE, dict(provenance, lora=spec.to_dict()))
    return out_dir


def publish_hook(model, sd: dict[str, torch.Tensor], out_dir: Path, base_model_dir: Path,
                 provenance: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rank 0, inside publishing: (weights to publish, provenance) - merged, adapter dir written.

    Without LoRA both come back unchanged. `sd` is the gathered HF-named full state dict;
    the adapter dir goes next to `out_dir` (`<run_dir>/lora_adapter/`).
    """
    spec = lora_spec_of(model)
    if spec is None:
        return sd, dict(provenance)
    base, adapters = split_state_dict(sd)
    adapter_dir = Path(out_dir).parent / ADAPTER_DIR
    write_adapter_dir(adapter_dir, adapters, spec, base_model_dir, provenance)
    merged = merge_adapters(base, adapters, spec.scaling)
    prov = dict(provenance, lora=spec.to_dict(), lora_adapter=str(adapter_dir), merged=True)
    return merged, prov


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json of a published adapter dir."""
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
