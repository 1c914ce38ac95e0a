"""Publishing a LoRA run: a merged HF model dir (what vLLM and the submission load) and a PEFT
adapter dir (small, loadable with `peft.PeftModel.from_pretrained(base, dir)`).

    <run_dir>/hf_model/       W + (alpha / rank) * B @ A for every adapted linear, plain HF names;
                              indistinguishable from a full fine-tuning result (DPO, evaluation,
                              NeMo export take it unchanged)
    <run_dir>/lora_adapter/   adapter_config.json + adapter_model.safetensors (PEFT names:
                              base_model.model.<module>.lora_A.weight), tunekit_training.json

Merging happens in fp32 on rank 0 from the gathered full state dict, then the weights are cast to
the base model's dtype by the normal publisher. The adapter dir is written first, so a published
`hf_model/` (the marker session.py trusts) implies its adapter dir is complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import atomic
from .lora import _LORA_KEY, LoraSpec, base_key, lora_spec_of

ADAPTER_DIR = "lora_adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROVENANCE = "tunekit_training.json"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's parameters


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
