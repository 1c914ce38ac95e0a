"""Checks run during and after every conversion, before the output gets its final name.

1. Weights, bit for bit, without a second load of the model:
   a. the mapping, in memory, as each tensor is produced: every NeMo tensor, split back into HF
      tensors, equals the HF tensors in the output dtype (`RoundTrip`);
   b. the bytes on disk: a checksum (xxh3-128) of every tensor's bytes is taken while it is
      written, and the written files are re-read once and must give the same checksums
      (`safetensors_io.ShardWriter.verify`, `torch_dist.verify_written`). Reading back only
      hashes bytes: no Megatron load, no tensor comparison against the source.
   `compare_weights` (the old full re-load through Megatron's loader) stays for tests.
2. Logits: a Megatron-core GPTModel built from `model_config.yaml`, its weights read by Megatron's
   own `dist_checkpointing.load`, gives the same logits as transformers' LlamaForCausalLM on fixed
   Japanese prompts. Both run in fp32 with the weights rounded to the output dtype, so the only
   differences left are fp32 summation order. The check runs on windows of layers (embedding,
   the window's layers, final norm, output layer; only the rows of the prompts' tokens and of an
   evenly spread sample of the vocabulary, VOCAB_SAMPLE ids). By default ("slice") the windows
   are the first, middle and last layer, one each (`slice_windows`: why that checks the mapping
   of every layer); "full" checks every layer in windows sized to a stated memory budget
   (`LOGITS_MEMORY_GB`, `logits_windows`). Each model is built, run and freed in turn,
   on all prompts at once (one right-padded batch: on CPU at these lengths a forward costs what
   streaming the weights costs, so one batched forward instead of one per prompt)
   (`verify_logits=False` skips this check).
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import torch

from ..errors import UserError
from .failures import VerificationError
from .hf_files import HFWeights
from .layout import GLOBAL_RULES, LAYER_RULES, LlamaSpec, read_groups
from .torch_dist import NemoWeights

# School-maths prompts in Japanese, like the competition's tasks (fixed: logits are compared on them).
PROMPTS = (
    "次の方程式を解きなさい。x^2 - 5x + 6 = 0",
    "三角形の内角の和は何度ですか。",
    "関数 f(x) = 2x + 3 について、f(4) の値を求めなさい。",
)
# max |logits diff| allowed = LOGITS_RTOL * max(1, max |logit|). fp32 summation-order noise is
# ~1e-6 relative; a wrong head order or a swapped gate/up gives differences of the logits' size.
LOGITS_RTOL = 1e-3
# Memory the logits check may use (GB): the whole model in one window when its fp32 copy fits,
# else windows of layers (llm-jp-4-8b: embedding + output layer 6.4 GB in fp32, 0.9 GB a layer).
LOGITS_MEMORY_GB = 4.0
# The logits compared: the prompts' tokens plus an evenly spread sample of the vocabulary, this many
# ids at most. Embedding and output rows of other ids are never loaded (their bytes are verified
# by the round trip and the checksums), so the check's memory does not grow with the vocabulary.
VOCAB_SAMPLE = 8192


class RoundTrip:
    """Check, in memory, that each converted tensor maps back to its source bit for bit (1a)."""

    def __init__(self, spec: LlamaSpec, dtype: torch.dtype):
        self.spec, self.dtype, self.compared = spec, dtype, 0
        self.error: VerificationError | None = None   # kept: torch's checkpoint writer wraps exceptions

    def _fail(self, message: str) -> None:
        self.error = VerificationError(message)
        raise self.error

    def hf_to_nemo(self, rule, layer: int | None, parts: list[torch.Tensor], nemo: torch.Tensor) -> None:
        """`nemo` (made from the HF `parts`) splits back into `parts` (all in the output dtype)."""
        back = rule.to_hf(self.spec, nemo.to(self.dtype))
        self._same(rule, layer, back, parts)

    def nemo_to_hf(self, rule, layer: int | None, nemo: torch.Tensor, parts: list[torch.Tensor]) -> None:
        """The HF `parts` (split from `nemo`) fuse back into `nemo` (all in the output dtype)."""
        again = rule.to_nemo(self.spec, [p.to(self.dtype) for p in parts])
        if not _same_bits(again, nemo.to(self.dtype)):
            self._fail(f"verification: {rule.nemo_key()} layer {layer} does not fuse back from its "
                       "HF tensors (the conversion is wrong; please report it)")
        self.compared += len(parts)

    def rows_as_stored(self, rule, layer: int | None, starts: list[int], parts: list[torch.Tensor]) -> None:
        """HF tensors taken as the stored row blocks of a "rows" NeMo tensor (fc1: gate, then up):
        each block must start where the split puts that HF tensor and have its shape."""
        row = 0
        for i, (start, t) in enumerate(zip(starts, parts)):
            if start != row or tuple(t.shape) != rule.hf_shape(self.spec, i):
                self._fail(f"verification: {rule.hf_names(layer)[i]} is not rows {row}.. of "
                           f"{rule.nemo_key()} layer {layer} (the conversion is wrong; please report it)")
            row += t.shape[0]
            self.compared += 1

    def same_part(self, rule, layer: int | None, part: int, hf: torch.Tensor, written: torch.Tensor) -> None:
        """A row block written as it came (SwiGLU gate/up) holds exactly the HF tensor."""
        self._same(rule, layer, [written], [hf], names=[rule.hf_names(layer)[part]])

    def _same(self, rule, layer, got, want, names=None) -> None:
        names = names or rule.hf_names(layer)
        for name, a, b in zip(names, got, want):
            if not _same_bits(a, b.to(self.dtype)):
                self._fail(f"verification: {name} does not come back from {rule.nemo_key()} "
                           "bit for bit (the conversion is wrong; please report it)")
            self.compared += 1


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def compare_weights(nemo: NemoWeights, hf: HFWeights, spec: LlamaSpec, dtype: torch.dtype,
                    progress=None) -> int:
    """Every NeMo tensor (split into HF tensors, cast to `dtype`) equals the HF tensor cast to `dtype`.

    Returns the number of HF tensors compared; raises VerificationError naming the first mismatch.
    """
    compared = 0
    for rules, layer in read_groups(spec):
        compared += _compare_group(nemo, hf, spec, dtype, rules, layer)
        if progress is not None and layer is not None:
            progress.update(1)
    return compared


def _compare_group(nemo, hf, spec, dtype, rules, layer) -> int:
    # A function of its own so every tensor of the group is freed before the next group is read.
    tensors = nemo.read(spec, layer, rules)
    n = 0
    for rule in rules:
        origin = f"{rule.nemo_key(nemo.prefix)}{f' layer {layer}' if layer is not None else ''}"
        for name, part in zip(rule.hf_names(layer), rule.to_hf(spec, tensors.pop(rule.nemo))):
            _compare_one(name, part.to(dtype), hf, dtype, origin)
            n += 1
    return n


def _compare_one(name: str, got: torch.Tensor, hf: HFWeights, dtype: torch.dtype, origin: str) -> None:
    # Row blocks of at most _BLOCK bytes: the embedding is the largest tensor, and reading its HF
    # twin whole would double the memory the comparison needs.
    shape = hf.entries[name].shape
    if tuple(got.shape) != tuple(shape):
        raise VerificationError(f"verification: {name} has shape {list(shape)}, {origin} gives "
                                f"{list(got.shape)} (the conversion is wrong; please report it)")
    rows = shape[0] if shape else 1
    row_bytes = max(1, got[:1].numel() * got.element_size()) if shape else got.element_size()
    step = max(1, _BLOCK // row_bytes)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        ref = hf.get_rows(name, start, stop).to(dtype) if shape else hf.get(name).to(dtype)
        mine = got[start:stop] if shape else got
        if not _same_bits(mine, ref):
            diff = (mine.float() - ref.float()).abs().max().item()
            raise VerificationError(f"verification: {name} differs from {origin} (rows {start}-{stop}, "
                                    f"max |diff| {diff}) (the conversion is wrong; please report it)")


_BLOCK = 64 * 2**20


def prompt_ids(tokenizer, vocab_size: int) -> list[list[int]]:
    """Token ids of the fixed prompts (a fixed id pattern when there is no tokenizer)."""
    if tokenizer is None:
        return [[(7 * i + 3 * j) % vocab_size for j in range(12)] for i in range(len(PROMPTS))]
    out = []
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        if max(ids) >= vocab_size:
            raise UserError(f"tokenizer: id {max(ids)} is outside the model's vocabulary of "
                            f"{vocab_size} (tokenizer and model do not belong together)")
        out.append(ids)
    return out


def build_gpt(spec: LlamaSpec):
    """A Megatron-core GPTModel (local spec, CPU, fp32, uninitialised) for a LlamaSpec.

    Must run inside `megatron_on_cpu()`.
    """
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from .megatron_cpu import quiet

    with quiet():
        cfg = TransformerConfig(
            num_layers=spec.num_layers, hidden_size=spec.hidden_size,
            ffn_hidden_size=spec.ffn_hidden_size, num_attention_heads=spec.num_heads,
            num_query_groups=spec.num_query_groups, kv_channels=spec.head_dim,
            normalization="RMSNorm", layernorm_epsilon=spec.norm_eps, gated_linear_unit=True,
            activation_func=torch.nn.functional.silu, add_bias_linear=False,
            hidden_dropout=0.0, attention_dropout=0.0, init_method_std=spec.init_std,
            params_dtype=torch.float32, use_cpu_initialization=True, perform_initialization=False,
            # Fusions are CUDA kernels; on CPU the plain torch paths run.
            bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
            bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False)
        return GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                        vocab_size=spec.vocab_size, max_sequence_length=spec.max_position_embeddings,
                        position_embedding_type="rope", rotary_base=spec.rope_theta,
                        share_embeddings_and_output_weights=False)


def load_gpt(spec: LlamaSpec, weights_dir: Path, prefix: str = "model."):
    """Build the GPTModel and load it with Megatron's own loader, as NeMo does (strict keys)."""
    from megatron.core import dist_checkpointing

    from .common_state import model_entries, safe_common_strategy

    model = build_gpt(spec)
    sharded = model.sharded_state_dict(prefix=prefix)
    try:
        state = dist_checkpointing.load(sharded, str(weights_dir), common_strategy=safe_common_strategy())
    except Exception as exc:  # Megatron raises several types for missing/mismatching keys
        raise VerificationError(f"verification: Megatron-core cannot load {weights_dir} "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
    # Megatron merges common.pt into the result: a training checkpoint's Lightning state (epoch,
    # global_step, ...) is not part of the model; the conversion report lists it.
    state, _ = model_entries(state, prefix)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise VerificationError(f"verification: Megatron-core GPTModel keys do not match "
                                f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model


def compare_logits(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    """Max |diff|, the tolerance it must meet, and the share of positions with the same argmax."""
    diff = max((a - b).abs().max().item() for a, b in zip(ref, got))
    scale = max(a.abs().max().item() for a in ref)
    agree = torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(ref, got)]).mean().item()
    tol = LOGITS_RTOL * max(1.0, scale)
    return {"logits_max_abs_diff": diff, "logits_tolerance": tol, "logits_max_abs": scale,
            "argmax_agreement": agree, "logits_match": diff <= tol, "prompts": len(ref),
            "tokens": sum(a.shape[0] for a in ref)}


def logits_windows(spec: LlamaSpec, memory_gb: float) -> list[tuple[int, int]]:
    """Layer windows [a, b) for the logits check so that one fp32 model of a window fits `memory_gb`.

    A window holds its layers in fp32 (4 bytes a parameter) and, for both models, the sampled rows
    of the embedding and output layer (read once, before the first window; that read passes one
    whole embedding-sized tensor in its stored dtype while no layer is loaded); 30% is added for
    activations and loader buffers. One window = the whole model when it fits; otherwise as many
    layers per window as fit (at least one).
    """
    fixed = 16 * min(VOCAB_SAMPLE, spec.vocab_size) * spec.hidden_size
    layer = 4 * sum(r.numel(spec) for r in LAYER_RULES)
    room = memory_gb * 2**30 / 1.3 - fixed
    per = max(1, min(spec.num_layers, int(room // layer))) if room > 0 else 1
    return [(a, min(a + per, spec.num_layers)) for a in range(0, spec.num_layers, per)]


LOGITS_LAYERS = ("slice", "full")


def slice_windows(spec: LlamaSpec) -> list[tuple[int, int]]:
    """The default logits check: the first, middle and last decoder layer, each in a window of its own
    (embedding sample -> that layer -> final norm -> output sample). Every layer goes through the
    same mapping code (one `Rule` per tensor kind, applied with the layer index), so a layout error
    (q/k/v grouping, gate/up order, norms, RoPE settings of the written config) shows on any layer;
    the three positions also catch layer indexing that is off at either end. What a slice cannot
    see, a wrong tensor for one middle layer, is what the bit-exact weight checks cover, and
    `layers="full"` runs every layer."""
    picks = sorted({0, spec.num_layers // 2, spec.num_layers - 1})
    return [(i, i + 1) for i in picks]


def _collect_if_alive(model_ref) -> None:
    """A window's model must be gone before the next is built: a full garbage collection (~0.4 s
    with Megatron loaded) only when reference cycles still keep it alive."""
    if model_ref() is not None:
        gc.collect()


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 values representable in `dtype` (the output's rounding)."""
    return t.to(dtype).float()


def vocab_sample(ids: list[list[int]], vocab_size: int, limit: int = VOCAB_SAMPLE) -> list[int]:
    """The vocabulary ids whose logits are compared: every id of the prompts, then evenly spread ids."""
    if vocab_size <= limit:
        return list(range(vocab_size))
    used = sorted({i for x in ids for i in x})
    room = max(0, min(limit, vocab_size) - len(used))
    spread = range(0, vocab_size, max(1, vocab_size // room)) if room else range(0)
    return sorted(set(used) | set(list(spread)[:room]))


def _right_padded(seqs: list[list[int]]) -> torch.Tensor:
    """The prompts as one batch, padded at the end: under a causal mask no real position sees the
    padding, so each prompt's logits are those of running it alone, while the weights (the cost
    of a CPU forward at these lengths) are streamed once per window instead of once per prompt."""
    width = max(map(len, seqs))
    return torch.tensor([x + [0] * (width - len(x)) for x in seqs])


def _remap(ids: list[list[int]], vocab: list[int]) -> list[list[int]]:
    where = {v: i for i, v in enumerate(vocab)}
    return [[where[i] for i in x] for x in ids]


def hf_globals(hf: HFWeights, spec: LlamaSpec, dtype: torch.dtype, vocab: list[int]) -> dict[str, torch.Tensor]:
    """The `vocab` rows of embedding and output layer and the final norm, from HF weights (fp32)."""
    out = {"model.norm.weight": _rounded(hf.get("model.norm.weight"), dtype)}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        out[name] = _rounded(hf.get_row_set(name, vocab), dtype)   # only the sampled rows' bytes
    return out


def hf_window_logits(hf: HFWeights, config: dict, window: tuple[int, int], ids: list[list[int]],
                     dtype: torch.dtype, vocab: list[int], globals_: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Logits (of the `vocab` ids) of transformers' LlamaForCausalLM holding only layers [a, b) of
    the HF weights (renumbered from 0) and `globals_` (`hf_globals`); fp32 compute."""
    from transformers import LlamaConfig, LlamaForCausalLM

    a, b = window
    cfg = LlamaConfig(**{**config, "num_hidden_layers": b - a, "vocab_size": len(vocab),
                         "torch_dtype": "float32", "dtype": "float32"})
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    state = {}
    for name in model.state_dict():
        if name in globals_:
            state[name] = globals_[name]
            continue
        i, rest = name[len("model.layers."):].split(".", 1)
        state[name] = _rounded(hf.get(f"model.layers.{int(i) + a}.{rest}"), dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)   # its buffer was on meta
    model.eval()
    seqs = _remap(ids, vocab)
    with torch.no_grad():
        logits = model(_right_padded(seqs)).logits
    out = [logits[i, :len(x)].clone() for i, x in enumerate(seqs)]
    alive = weakref.ref(model)
    del model, state, logits
    _collect_if_alive(alive)
    return out


# Megatron's local layer spec names the fused norms of the TE spec (the checkpoint's keys) this way.
_LOCAL_NAMES = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
                "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}


def megatron_globals(nemo: NemoWeights, spec: LlamaSpec, dtype: torch.dtype,
                     vocab: list[int]) -> dict[str, torch.Tensor]:
    """The `vocab` rows of embedding and output layer and the final norm, read by Megatron (fp32)."""
    rows, out = torch.tensor(vocab), {}
    for rule in GLOBAL_RULES:  # one whole tensor at a time, in its stored dtype
        t = nemo.read(spec, None, (rule,))[rule.nemo]
        out[rule.nemo] = _rounded(t[rows] if t.dim() == 2 else t, dtype)
        del t
    return out


def megatron_window_logits(nemo: NemoWeights, spec: LlamaSpec, window: tuple[int, int], ids: list[list[int]],
                           dtype: torch.dtype, vocab: list[int],
                           globals_: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Logits (of the `vocab` ids) of a Megatron-core GPTModel holding only layers [a, b) of a
    NeMo checkpoint, each layer read by Megatron's `dist_checkpointing.load` (`NemoWeights.read`),
    and `globals_` (`megatron_globals`); fp32 compute."""
    from dataclasses import replace

    from .megatron_cpu import causal_mask

    a, b = window
    model = build_gpt(replace(spec, num_layers=b - a, vocab_size=len(vocab)))
    state = dict(globals_)
    for j, layer in enumerate(range(a, b)):
        for key, t in nemo.read(spec, layer).items():
            rest = key[len("decoder.layers."):]
            state[f"decoder.layers.{j}.{_LOCAL_NAMES.get(rest, rest)}"] = _rounded(t, dtype)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise VerificationError(f"verification: Megatron-core GPTModel keys do not match "
                                f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    model.eval()
    seqs = _remap(ids, vocab)
    tokens = _right_padded(seqs)
    pos = torch.arange(tokens.shape[1])[None].expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, pos, causal_mask(tokens.shape[1]))
    out = [logits[i, :len(x)].clone() for i, x in enumerate(seqs)]
    alive = weakref.ref(model)
    del model, state, logits
    _collect_if_alive(alive)
    return out


def check_logits(hf_dir: Path, spec: LlamaSpec, weights_dir: Path, tokenizer, dtype: torch.dtype,
                 prefix: str = "model.", memory_gb: float = LOGITS_MEMORY_GB, layers: str = "slice") -> dict:
    """Run both models on the prompts, window by window of layers, and compare; VerificationError
    if any window disagrees. layers="slice": first, middle and last layer (`slice_windows`);
    "full": every layer, in windows whose fp32 model fits `memory_gb` (`logits_windows`).
    `spec` is what Megatron-core builds its GPTModel from: hf-to-nemo passes the one read back
    from the written model_config.yaml, so the check covers the written config too."""
    from .configs import read_json

    if layers not in LOGITS_LAYERS:
        raise UserError(f"logits check layers {layers!r} is not one of {', '.join(LOGITS_LAYERS)}")
    ids = prompt_ids(tokenizer, spec.vocab_size)
    hf, nemo = HFWeights(hf_dir), NemoWeights(weights_dir)
    config = read_json(hf_dir / "config.json")
    windows = slice_windows(spec) if layers == "slice" else logits_windows(spec, memory_gb)
    vocab = vocab_sample(ids, spec.vocab_size)
    hf_g, nemo_g = hf_globals(hf, spec, dtype, vocab), megatron_globals(nemo, spec, dtype, vocab)
    results, sample = [], None
    for window in windows:
        ref = hf_window_logits(hf, config, window, ids, dtype, vocab, hf_g)
        got = megatron_window_logits(nemo, spec, window, ids, dtype, vocab, nemo_g)
        res = compare_logits(ref, got)
        if not res["logits_match"]:
            raise VerificationError(
                f"verification: Megatron-core and transformers logits differ by {res['logits_max_abs_diff']:.3g} "
                f"(allowed {res['logits_tolerance']:.3g}) on layers {window[0]}-{window[1] - 1} (the conversion "
                "is wrong; the output was not published)")
        results.append(res)
        sample = sample or (ref[0], got[0])
    worst = max(results, key=lambda r: r["logits_max_abs_diff"] / r["logits_tolerance"])
    result = {**worst, "argmax_agreement": min(r["argmax_agreement"] for r in results),
              "layer_windows": [list(w) for w in windows], "logits_layers": layers,
              "logits_memory_gb": memory_gb if layers == "full" else None,
              "vocab_ids_compared": len(vocab)}
    result["_sample"] = sample  # for plots; popped before the summary is written
    return result
