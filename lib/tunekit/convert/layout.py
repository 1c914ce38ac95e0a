"""The tensor layout of a LLaMA model in HF and in NeMo/Megatron-core, as one declarative table.

NeMo (Megatron-core GPT, the official kit) stores, under a `model.` prefix:

    embedding.word_embeddings.weight                          [V, H]
    decoder.layers.self_attention.linear_qkv.layer_norm_weight [L, H]      input RMSNorm (fused key)
    decoder.layers.self_attention.linear_qkv.weight            [L, (nh + 2 ng) d, H]
    decoder.layers.self_attention.linear_proj.weight           [L, H, nh d]
    decoder.layers.mlp.linear_fc1.layer_norm_weight            [L, H]      post-attention RMSNorm
    decoder.layers.mlp.linear_fc1.weight                       [L, 2 F, H]  gate rows, then up rows
    decoder.layers.mlp.linear_fc2.weight                       [L, H, F]
    decoder.final_layernorm.weight                             [H]
    output_layer.weight                                        [V, H]

Layer tensors are stacked along a leading layer axis (Megatron's `prepend_axis`), one chunk per
layer (fc1: two chunks per layer, gate and up, exactly as Megatron's SwiGLU sharding writes them).
linear_qkv is grouped per KV head: for each of the ng groups, its nh/ng query heads, then its key
head, then its value head. Megatron applies RoPE with the same rotate-half convention as HF, so no
head permutation is needed. Each `Rule` below maps one NeMo tensor to its HF tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

NEMO_PREFIX = "model."

# Megatron modules that carry an `_extra_state` object per layer under the TransformerEngine spec
# the official kit trains with (the local spec has the first four). Values are None (no FP8 state);
# loaders that do not ask for them ignore them, loaders that do (NeMo with TE, see NeMo issue
# #10386 for core_attention) find them.
EXTRA_STATE_MODULES = (
    "self_attention.linear_qkv",
    "self_attention.linear_proj",
    "self_attention.core_attention",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)

# HF keys that are buffers, not weights (old transformers saved RoPE's inv_freq); skipped, counted.
HF_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class LlamaSpec:
    """Everything about a LLaMA model that its weights and both config files depend on."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    init_std: float = 0.02

    def __post_init__(self):
        problems = []
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_heads",
                     "num_query_groups", "head_dim", "vocab_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_query_groups >= 1 and self.num_heads % self.num_query_groups:
            problems.append(f"num_heads={self.num_heads} is not a multiple of "
                            f"num_query_groups={self.num_query_groups}")
        if problems:
            raise UserError(f"model config: {'; '.join(problems)}")

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_query_groups

    def num_params(self) -> int:
        """Parameter count (what the conversion moves)."""
        return sum(r.numel(self) * (self.num_layers if r.stacked else 1) for r in RULES)


@dataclass(frozen=True)
class Rule:
    """One NeMo tensor and the HF tensor(s) it is made of.

    join: "one" (same tensor), "qkv" (grouped per KV head) or "rows" (HF parts stacked by rows,
    stored as one chunk per part, like Megatron's SwiGLU fc1).
    """

    nemo: str
    hf: tuple[str, ...]
    stacked: bool
    join: str = "one"

    def nemo_key(self, prefix: str = NEMO_PREFIX) -> str:
        return prefix + self.nemo

    def hf_names(self, layer: int | None) -> tuple[str, ...]:
        return tuple(h.format(l=layer) for h in self.hf)

    def hf_shape(self, spec: LlamaSpec, part: int) -> tuple[int, ...]:
        """Shape of the HF tensor `self.hf[part]`."""
        return _HF_SHAPES[self.hf[part].rsplit(".", 2)[-2]](spec)

    def shape(self, spec: LlamaSpec) -> tuple[int, ...]:
        """Shape of the NeMo tensor for one layer (without the stacked layer axis)."""
        parts = [self.hf_shape(spec, i) for i in range(len(self.hf))]
        if self.join == "one":
            return parts[0]
        return (sum(p[0] for p in parts), *parts[0][1:])

    def global_shape(self, spec: LlamaSpec) -> tuple[int, ...]:
        return ((spec.num_layers,) if self.stacked else ()) + self.shape(spec)

    def numel(self, spec: LlamaSpec) -> int:
        n = 1
        for s in self.shape(spec):
            n *= s
        return n

    def to_nemo(self, spec: LlamaSpec, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Fuse the HF tensors of one layer into this NeMo tensor."""
        if self.join == "one":
            return tensors[0]
        if self.join == "qkv":
            return fuse_qkv(spec, *tensors)
        return torch.cat(tensors, dim=0)

    def to_hf(self, spec: LlamaSpec, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Split this NeMo tensor of one layer into its HF tensors (contiguous)."""
        if self.join == "one":
            return [tensor]
        if self.join == "qkv":
            return list(split_qkv(spec, tensor))
        sizes = [self.hf_shape(spec, i)[0] for i in range(len(self.hf))]
        return [t.contiguous() for t in torch.split(tensor, sizes, dim=0)]


# HF projection name -> its shape. The key is the second-to-last dotted part of the HF name.
_HF_SHAPES = {
    "embed_tokens": lambda s: (s.vocab_size, s.hidden_size),
    "lm_head": lambda s: (s.vocab_size, s.hidden_size),
    "norm": lambda s: (s.hidden_size,),
    "input_layernorm": lambda s: (s.hidden_size,),
    "post_attention_layernorm": lambda s: (s.hidden_size,),
    "q_proj": lambda s: (s.num_heads * s.head_dim, s.hidden_size),
    "k_proj": lambda s: (s.num_query_groups * s.head_dim, s.hidden_size),
    "v_proj": lambda s: (s.num_query_groups * s.head_dim, s.hidden_size),
    "o_proj": lambda s: (s.hidden_size, s.num_heads * s.head_dim),
    "gate_proj": lambda s: (s.ffn_hidden_size, s.hidden_size),
    "up_proj": lambda s: (s.ffn_hidden_size, s.hidden_size),
    "down_proj": lambda s: (s.hidden_size, s.ffn_hidden_size),
}

_L = "model.layers.{l}."
RULES: tuple[Rule, ...] = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), stacked=False),
    Rule("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
         (_L + "input_layernorm.weight",), stacked=True),
    Rule("decoder.layers.self_attention.linear_qkv.weight",
         (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight",
          _L + "self_attn.v_proj.weight"), stacked=True, join="qkv"),
    Rule("decoder.layers.self_attention.linear_proj.weight",
         (_L + "self_attn.o_proj.weight",), stacked=True),
    Rule("decoder.layers.mlp.linear_fc1.layer_norm_weight",
         (_L + "post_attention_layernorm.weight",), stacked=True),
    Rule("decoder.layers.mlp.linear_fc1.weight",
         (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), stacked=True, join="rows"),
    Rule("decoder.layers.mlp.linear_fc2.weight", (_L + "mlp.down_proj.weight",), stacked=True),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",), stacked=False),
    Rule("output_layer.weight", ("lm_head.weight",), stacked=False),
)
GLOBAL_RULES = tuple(r for r in RULES if not r.stacked)
LAYER_RULES = tuple(r for r in RULES if r.stacked)


def read_groups(spec: LlamaSpec):
    """(rules, layer) in streaming order: embedding alone, final norm + output layer, then layers.

    The embedding and output layer are the largest single tensors, so they are handled one at a time.
    """
    yield GLOBAL_RULES[:1], None
    yield GLOBAL_RULES[1:], None
    for layer in range(spec.num_layers):
        yield LAYER_RULES, layer


def fuse_qkv(spec: LlamaSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HF q/k/v projections -> Megatron linear_qkv, grouped per KV head ([q.., k, v] per group)."""
    g, d, h = spec.num_query_groups, spec.head_dim, spec.hidden_size
    return torch.cat([q.reshape(g, spec.heads_per_group * d, h), k.reshape(g, d, h),
                      v.reshape(g, d, h)], dim=1).reshape(-1, h)


def split_qkv(spec: LlamaSpec, qkv: torch.Tensor):
    """Megatron linear_qkv -> contiguous HF q, k, v projections (inverse of `fuse_qkv`)."""
    g, d, h, per = spec.num_query_groups, spec.head_dim, spec.hidden_size, spec.heads_per_group
    w = qkv.reshape(g, (per + 2) * d, h)
    q = w[:, : per * d].reshape(-1, h).contiguous()
    k = w[:, per * d: (per + 1) * d].reshape(-1, h).contiguous()
    v = w[:, (per + 1) * d:].reshape(-1, h).contiguous()
    return q, k, v


def hf_expected(spec: LlamaSpec) -> dict[str, tuple[int, ...]]:
    """Every HF weight name of the model with its shape, in file order (embeddings, layers, head)."""
    out: dict[str, tuple[int, ...]] = {}
    for r in GLOBAL_RULES[:1]:
        out[r.hf[0]] = r.hf_shape(spec, 0)
    for layer in range(spec.num_layers):
        for r in LAYER_RULES:
            for i, name in enumerate(r.hf_names(layer)):
                out[name] = r.hf_shape(spec, i)
    for r in GLOBAL_RULES[1:]:
        out[r.hf[0]] = r.hf_shape(spec, 0)
    return out


def nemo_expected(spec: LlamaSpec, prefix: str = NEMO_PREFIX) -> dict[str, tuple[int, ...]]:
    """Every NeMo weight key (with prefix) and its global shape (layer axis included)."""
    return {r.nemo_key(prefix): r.global_shape(spec) for r in RULES}


def extra_state_keys(spec: LlamaSpec, prefix: str = NEMO_PREFIX) -> list[str]:
    """The `_extra_state` object keys (Megatron ShardedObject unique keys) written per layer."""
    n = spec.num_layers
    return [f"{prefix}decoder.layers.{m}._extra_state/shard_{layer}_{n}"
            for layer in range(n) for m in EXTRA_STATE_MODULES]
