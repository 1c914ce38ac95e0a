"""LoRA for the FSDP2 engine: the official kit's target names, peft adapters inside FSDP units,
adapter-only checkpoints and an adapters-off switch (DPO's reference without a cache).

The official kit (NeMo `model.peft.lora_tuning`) names targets by Megatron module; LLaMA-format
HF models name the same linears differently, and Megatron's fused layers are split in HF:

    official          HF LlamaForCausalLM modules
    attention_qkv     q_proj, k_proj, v_proj   (NeMo: one adapter on the fused QKV; here 3)
    attention_dense   o_proj
    mlp_fc1           gate_proj, up_proj        (NeMo: one adapter on the fused gate+up; here 2)
    mlp_fc2           down_proj
    attention         attention_qkv + attention_dense
    mlp               mlp_fc1 + mlp_fc2
    all               every one of the above

HF names are accepted as well, mixed freely. Official defaults: `attention_qkv`, adapter_dim
(rank) 32, alpha = adapter_dim, dropout 0; the update is scaled by alpha / rank as in both peft
and NeMo. A starts random (peft's default Kaiming-uniform; NeMo used Xavier), B starts at zero, so
the model before the first step IS the base model - which is what makes the adapters-off
reference for DPO exact.

How the engine uses this module (all hooks are no-ops without LoRA):
    attach_lora(lm, spec)          on the meta-device model, BEFORE fully_shard: each adapter sits
                                   in the same FSDP unit as the linear it adapts; base frozen
    complete_state_dict(model, sd) rank 0: base weights renamed to peft's `base_layer` names and
                                   the adapters' initial values added, then loaded as usual
    checkpoint_options(model)      DCP state-dict options: frozen weights are never checkpointed
    adapters_disabled(model)       context: the policy computes like the base model
Publishing (merged HF model + PEFT adapter dir) is in `publish.py`; the parameters (peft, lora_*)
are declared in `params.py`.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping, Sequence

from ..errors import UserError

HF_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OFFICIAL_TARGETS: dict[str, tuple[str, ...]] = {
    "attention_qkv": ("q_proj", "k_proj", "v_proj"),
    "attention_dense": ("o_proj",),
    "mlp_fc1": ("gate_proj", "up_proj"),
    "mlp_fc2": ("down_proj",),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all": HF_TARGETS,
}
DEFAULT_RANK = 32          # official adapter_dim
DEFAULT_ALPHA = 32.0       # official alpha = adapter_dim
DEFAULT_DROPOUT = 0.0      # official adapter_dropout
DEFAULT_TARGETS = "attention_qkv"
ADAPTER_NAME = "default"   # peft's name for the single adapter
SPEC_ATTR = "tunekit_lora_spec"  # where attach_lora records the spec on the HF model
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def resolve_target_modules(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Official and/or HF target names (comma list or sequence) -> HF module names, canonical order."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)]
    names = [n for n in names if n]
    if not names:
        raise UserError("lora_target_modules: no target module given (use e.g. attention_qkv, "
                        "attention, mlp, all, or HF names like q_proj,v_proj)")
    chosen: set[str] = set()
    for n in names:
        if n in OFFICIAL_TARGETS:
            chosen.update(OFFICIAL_TARGETS[n])
        elif n in HF_TARGETS:
            chosen.add(n)
        else:
            raise UserError(f"lora_target_modules: unknown module {n!r} (official names: "
                            f"{', '.join(OFFICIAL_TARGETS)}; HF names: {', '.join(HF_TARGETS)})")
    return tuple(t for t in HF_TARGETS if t in chosen)


@dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how: rank, alpha, dropout, HF target modules, init seed."""

    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    dropout: float = DEFAULT_DROPOUT
    targets: tuple[str, ...] = OFFICIAL_TARGETS[DEFAULT_TARGETS]
    seed: int = 0

    @property
    def scaling(self) -> float:
        """The factor on B @ A (alpha / rank)."""
        return self.alpha / self.rank

    def peft_config(self, base_model_name_or_path: str | None = None):
        """The equivalent `peft.LoraConfig` (what the adapter dir's adapter_config.json holds)."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), bias="none", task_type="CAUSAL_LM",
                          base_model_name_or_path=base_model_name_or_path)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (run records, provenance)."""
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["scaling"] = self.scaling
        return d


# ------------------------------------------------------------------------------ from the params
def spec_from_params(cfg) -> LoraSpec | None:
    """The LoraSpec of a notebook config, or None for full fine-tuning (or configs without `peft`)."""
    if getattr(cfg, "peft", "none") != "lora":
        return None
    return LoraSpec(rank=cfg.lora_rank, alpha=float(cfg.lora_alpha), dropout=float(cfg.lora_dropout),
                    targets=resolve_target_modules(cfg.lora_target_modules), seed=int(cfg.seed))


# ------------------------------------------------------------------------------ engine hooks
def attach_lora(lm, spec: LoraSpec, frozen_dtype=None) -> None:
    """Inject peft LoRA adapters into an HF causal LM (meta device is fine) and freeze the rest.

    Call BEFORE fully_shard: an adapter then lives in the same FSDP2 unit as the linear it adapts,
    whose other parameters are frozen; FSDP2 allows such mixed units (it reduce-scatters only the
    gradients that exist). `frozen_dtype` (e.g. bf16 on GPU) stores the frozen weights in that
    dtype: they are never updated, so fp32 master copies of them would only waste memory.
    """
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(spec.peft_config(), lm, adapter_name=ADAPTER_NAME, low_cpu_mem_usage=True)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"lora_target_modules: {type(lm).__name__} has no module named "
                        f"{'/'.join(spec.targets)} ({exc})") from None
    for name, p in lm.named_parameters():
        p.requires_grad_(is_lora_param(name))
        if frozen_dtype is not None and not p.requires_grad and p.dtype != frozen_dtype:
            p.data = p.data.to(frozen_dtype)
    setattr(lm, SPEC_ATTR, spec)
    if not any(p.requires_grad for p in lm.parameters()):  # peft raises first; belt and braces
        raise UserError("lora: no adapter was created (check lora_target_modules)")


def is_lora_param(name: str) -> bool:
    """True for a LoRA adapter parameter name (peft's lora_A / lora_B)."""
    return ".lora_A." in name or ".lora_B." in name


def lora_spec_of(model) -> LoraSpec | None:
    """The LoraSpec recorded by attach_lora on `model` or any submodule (None: no LoRA)."""
    for m in model.modules():
        spec = getattr(m, SPEC_ATTR, None)
        if spec is not None:
            return spec
    return None


def base_key(name: str) -> str:
    """The HF checkpoint name of a (possibly peft-wrapped) parameter name: drops `.base_layer`."""
    return name.replace(".base_layer.", ".")


def initial_adapter_weights(model, spec: LoraSpec) -> dict[str, Any]:
    """Full-size initial values of every adapter parameter, deterministic in spec.seed.

    A: Kaiming-uniform(a=sqrt(5)) as peft's default; B: zeros. Drawn on CPU from one generator in
    parameter-name order, so every process (and a resumed run) gets the same adapters.
    """
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    out = {}
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not is_lora_param(name):
            continue
        t = torch.zeros(tuple(p.shape), dtype=torch.float32)  # p.shape is global for DTensors
        if ".lora_A." in name:
            torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
        out[name] = t
    return out


def complete_state_dict(model, full: Mapping[str, Any], spec: LoraSpec | None = None) -> dict[str, Any]:
    """An HF-named full state dict (already prefixed like `model`) -> one that loads into `model`.

    Base weights of adapted linears move to peft's `<module>.base_layer.weight` names and take the
    parameters' storage dtype; adapter weights get their initial values. Without LoRA the dict is
    returned unchanged.
    """
    spec = spec or lora_spec_of(model)
    if spec is None:
        return dict(full)
    params = dict(model.named_parameters())
    wanted = {base_key(n): n for n in params if not is_lora_param(n)}
    out = {}
    for k, v in full.items():
        name = wanted.get(k, k)
        # Cast to the parameter's storage dtype here (bf16 for a frozen base on GPU): the
        # broadcast from rank 0 then moves half the bytes and nobody casts again.
        p = params.get(name)
        out[name] = v.to(p.dtype) if p is not None and hasattr(v, "to") and v.dtype != p.dtype else v
    out.update(initial_adapter_weights(model, spec))
    return out


def checkpoint_options(model, **extra):
    """DCP StateDictOptions for `model`: with frozen weights, only trainable ones are saved/loaded.

    The frozen base never changes, so it is reloaded from the base model dir instead of being
    copied into every checkpoint (~17 GB of bf16 weights per checkpoint for llm-jp-4-8b). Loading is then
    non-strict on the module side; DCP itself still fails if the checkpoint lacks a requested key.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen, **extra)


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Within the block the LoRA layers compute the base model only (restored afterwards).

    peft's own `enable_adapters(False)` also flips requires_grad of the adapters; doing that to
    FSDP2-managed parameters between a step's forward and backward is not safe, so only the
    layers' disable flag is toggled here.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise UserError("the LoRA live reference (adapters off) needs a model with LoRA adapters (peft='lora')")
    before = [m._disable_adapters for m in layers]
    try:
        for m in layers:
            m._disable_adapters = True
        yield
    finally:
        for m, flag in zip(layers, before):
            m._disable_adapters = flag


# ------------------------------------------------------------------------------ sizes (memory estimate)
def _cfg(config, name: str, default=None):
    # transformers configs are objects, config.json is a dict: accept both.
    value = config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)
    return default if value is None else value


def adapter_shapes(config, spec: LoraSpec) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target module of a LLaMA config (object or dict), one layer."""
    h = int(_cfg(config, "hidden_size"))
    heads = int(_cfg(config, "num_attention_heads"))
    kv = int(_cfg(config, "num_key_value_heads", heads))
    hd = int(_cfg(config, "head_dim", h // heads))
    ffn = int(_cfg(config, "intermediate_size"))
    dims = {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd),
            "o_proj": (heads * hd, h), "gate_proj": (h, ffn), "up_proj": (h, ffn), "down_proj": (ffn, h)}
    return {t: dims[t] for t in spec.targets}


def count_adapter_params(config, spec: LoraSpec) -> int:
    """Trainable LoRA parameters for a LLaMA config: rank x (in + out) per target per layer."""
    per_layer = sum(spec.rank * (i + o) for i, o in adapter_shapes(config, spec).values())
    return per_layer * int(_cfg(config, "num_hidden_layers"))
