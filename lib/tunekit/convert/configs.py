"""The two config files of a LLaMA model: HF `config.json` and NeMo `model_config.yaml`, via LlamaSpec.

Only what LLaMA-format models such as llm-jp-4-8b use is supported (RMSNorm, SwiGLU, RoPE without
scaling, no biases, untied embeddings). Anything else is refused with the offending field named,
rather than converted into a model that silently computes something different.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .layout import LlamaSpec

# Written into model_config.yaml besides the fields derived from the spec: the values NeMo's own
# LLaMA conversion uses, so the official kit builds the same Megatron GPT model from it.
NEMO_FIXED: dict[str, Any] = {
    "mcore_gpt": True,
    "transformer_engine": True,
    "normalization": "rmsnorm",
    "activation": "fast-swiglu",
    "bias": False,
    "position_embedding_type": "rope",
    "rotary_percentage": 1.0,
    "share_embeddings_and_output_weights": False,
    "transformer_block_type": "pre_ln",
    "apply_query_key_layer_scaling": False,
    "normalize_attention_scores": True,
    "headscale": False,
    "persist_layer_norm": True,
    "masked_softmax_fusion": True,
    "bias_activation_fusion": False,
    "bias_dropout_add_fusion": False,
    "apply_rope_fusion": False,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "ffn_dropout": 0.0,
    "pre_process": True,
    "post_process": True,
    "use_cpu_initialization": False,
    "seq_len_interpolation_factor": None,
    "tensor_model_parallel_size": 1,
    "pipeline_model_parallel_size": 1,
    "micro_batch_size": 1,
    "global_batch_size": 1,
}


def _pow2_divisor(n: int, cap: int = 128) -> int:
    """Largest power of two <= cap dividing n (NeMo pads the vocab to a multiple of this)."""
    d = cap
    while n % d:
        d //= 2
    return d


# ---------------------------------------------------------------- HF side
def spec_from_hf_config(cfg: Mapping[str, Any], where: str) -> LlamaSpec:
    """Read a LlamaSpec from an HF config.json dict, refusing what the conversion cannot represent."""
    def bad(field: str, value: Any, why: str) -> UserError:
        return UserError(f"{where}: {field}={value!r} is not supported ({why})")

    if cfg.get("model_type") not in ("llama",):
        raise bad("model_type", cfg.get("model_type"), "only LLaMA-format models (llm-jp-4) convert")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise bad(flag, cfg[flag], "the official kit's LLaMA has no biases")
    if cfg.get("tie_word_embeddings"):
        raise bad("tie_word_embeddings", True, "llm-jp-4 and the official kit use untied embeddings")
    if cfg.get("hidden_act", "silu") != "silu":
        raise bad("hidden_act", cfg.get("hidden_act"), "SwiGLU needs silu")
    rope = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling")
    if legacy and legacy.get("rope_type", legacy.get("type")) not in (None, "default"):
        rope = {**rope, **legacy}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise bad("rope type", rope_type, "RoPE scaling has no equivalent in the NeMo config here")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    try:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return LlamaSpec(
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            ffn_hidden_size=int(cfg["intermediate_size"]),
            num_heads=heads,
            num_query_groups=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            vocab_size=int(cfg["vocab_size"]),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            init_std=float(cfg.get("initializer_range", 0.02)),
        )
    except KeyError as exc:
        raise UserError(f"{where}: missing field {exc.args[0]!r} (is this a LLaMA config.json?)") from None


def hf_config_dict(spec: LlamaSpec, dtype: str, token_ids: Mapping[str, int | None]) -> dict[str, Any]:
    """config.json content for a LlamaForCausalLM with these weights.

    Besides transformers 5's `rope_parameters`, the legacy top-level `rope_theta` is written too:
    older readers (transformers 4.x inside a vLLM submission image) ignore `rope_parameters` and
    would otherwise silently fall back to theta 10000.
    """
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.ffn_hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_query_groups,
        head_dim=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=spec.norm_eps, rope_theta=spec.rope_theta, initializer_range=spec.init_std,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=token_ids.get("bos"), eos_token_id=token_ids.get("eos"),
        pad_token_id=token_ids.get("pad"))
    # The diff dict (what save_pretrained writes), with every architecture field made explicit:
    # readers with other defaults (older transformers, vLLM) must not fill anything in.
    data = cfg.to_diff_dict()
    data.update({
        "model_type": "llama", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size,
        "intermediate_size": spec.ffn_hidden_size, "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_query_groups,
        "head_dim": spec.head_dim, "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.norm_eps, "initializer_range": spec.init_std, "hidden_act": "silu",
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": token_ids.get("bos"), "eos_token_id": token_ids.get("eos"),
        "pad_token_id": token_ids.get("pad")})
    data["architectures"] = ["LlamaForCausalLM"]
    data["dtype"] = {"bf16": "bfloat16", "fp32": "float32"}[dtype]
    data["torch_dtype"] = data["dtype"]  # the name transformers 4.x reads
    data["rope_theta"] = spec.rope_theta
    return data


# ---------------------------------------------------------------- NeMo side
def nemo_config_dict(spec: LlamaSpec, dtype: str, tokenizer_dir: Path | None) -> dict[str, Any]:
    """model_config.yaml content (NeMo GPT config) for these weights."""
    cfg = dict(NEMO_FIXED)
    cfg.update({
        "num_layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "ffn_hidden_size": spec.ffn_hidden_size,
        "num_attention_heads": spec.num_heads,
        "num_query_groups": spec.num_query_groups,
        "kv_channels": spec.head_dim if spec.head_dim * spec.num_heads != spec.hidden_size else None,
        "encoder_seq_length": spec.max_position_embeddings,
        "max_position_embeddings": spec.max_position_embeddings,
        "init_method_std": spec.init_std,
        "layernorm_epsilon": spec.norm_eps,
        "rotary_base": spec.rope_theta,
        "make_vocab_size_divisible_by": _pow2_divisor(spec.vocab_size),
        "override_vocab_size": spec.vocab_size,
        "precision": "bf16" if dtype == "bf16" else 32,
        "megatron_amp_O2": dtype == "bf16",
        "tokenizer": {
            "library": "huggingface",
            "type": str(tokenizer_dir) if tokenizer_dir else None,
            "model": None, "vocab_file": None, "merge_file": None, "delimiter": None,
            "sentencepiece_legacy": False, "use_fast": True,
        },
    })
    return cfg


def spec_from_nemo_config(cfg: Mapping[str, Any], vocab_size: int, where: str) -> LlamaSpec:
    """Read a LlamaSpec from a NeMo model_config.yaml dict; `vocab_size` comes from the weights."""
    def get(field: str, default: Any = None, required: bool = False) -> Any:
        if field not in cfg or cfg[field] is None:
            if required:
                raise UserError(f"{where}: missing field {field!r} (is this a NeMo GPT model_config.yaml?)")
            return default
        return cfg[field]

    checks = [("normalization", "rmsnorm", ("rmsnorm",)),
              ("activation", "fast-swiglu", ("fast-swiglu", "swiglu")),
              ("position_embedding_type", "rope", ("rope",)),
              ("bias", False, (False,)),
              ("share_embeddings_and_output_weights", False, (False,)),
              ("rotary_percentage", 1.0, (1.0,)),
              ("seq_len_interpolation_factor", None, (None,))]
    for field, default, allowed in checks:
        value = cfg.get(field, default)
        if value not in allowed:
            raise UserError(f"{where}: {field}={value!r} is not supported (a LLaMA-format model has "
                            f"{allowed[0]!r}; only such models convert)")
    heads = int(get("num_attention_heads", required=True))
    hidden = int(get("hidden_size", required=True))
    kv = get("kv_channels")
    return LlamaSpec(
        num_layers=int(get("num_layers", required=True)),
        hidden_size=hidden,
        ffn_hidden_size=int(get("ffn_hidden_size", required=True)),
        num_heads=heads,
        num_query_groups=int(get("num_query_groups", heads)),
        head_dim=int(kv) if kv else hidden // heads,
        vocab_size=vocab_size,
        norm_eps=float(get("layernorm_epsilon", 1e-5)),
        rope_theta=float(get("rotary_base", 10000.0)),
        max_position_embeddings=int(get("max_position_embeddings", get("encoder_seq_length", 4096))),
        init_std=float(get("init_method_std", 0.02)),
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`, or a UserError naming the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping of config fields")
    # PTL's hparams.yaml nests the model config under `cfg`.
    return dict(data.get("cfg", data)) if "cfg" in data and isinstance(data["cfg"], dict) else data


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a UserError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


