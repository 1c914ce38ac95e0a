"""Deterministic local fixtures: the tiny tokenizer and LLaMA, the real llm-jp HF tokenizer, model specs.

Nothing is downloaded. Each fixture is built on first use into `tunekit.paths.fixtures_dir()` under
a name holding a hash of everything its bytes depend on (builder version, input file contents, chat
template, library versions), so a changed input builds a new fixture instead of reusing a stale one.
Builds run under a file lock (concurrent processes build once) into a temp folder renamed into place
(`tunekit.atomic.atomic_dir`), so a half-built fixture is never visible.

* tiny tokenizer: a SentencePiece Unigram model trained on the bundled sample data with llm-jp's
  settings and special-token layout, exported by `sp_convert` (the same converter as the real one);
* tiny model: a random LlamaForCausalLM (GQA, untied embeddings, RMSNorm, SwiGLU, RoPE), fixed seed;
* llm-jp tokenizer: the competition's SentencePiece model as an HF fast tokenizer.
Tokenizer folders are written by `tunekit.model.portable` (they load in transformers 4.47-5.x).
Same inputs and seed give the same bytes in every file (tested).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

from .. import paths
from ..atomic import atomic_dir
from ..errors import UserError
from . import sp_convert

BUILDER_VERSION = 3
LLMJP_MODEL_NAME = "llm-jp-tokenizer-v4.0-alpha1.0.model"
TINY_SEED = 0
# The corpus is small and templated: the trainer keeps what it supports (583 pieces today, incl.
# 256 bytes and the printable ASCII), fewer than asked; hard_vocab_limit=False allows that.
TINY_VOCAB_REQUEST = 1024
TINY_MAX_LENGTH = 1024
LLMJP_MAX_LENGTH = 4096

# The tiny LLaMA: llm-jp-4-8b's architecture (FACTS section 4) at toy size.
TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=TINY_MAX_LENGTH, rms_norm_eps=1e-5,
    rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False, attention_bias=False,
    mlp_bias=False, initializer_range=0.02,
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model")


# ------------------------------------------------------------------ inputs and cache keys

def _versions(*dists: str) -> dict[str, str]:
    return {d: metadata.version(d) for d in dists}


def _chat_template() -> str:
    # Owned by the data area; imported late so that this module stays importable on its own.
    from ..template import CHAT_TEMPLATE

    return CHAT_TEMPLATE


def sample_root() -> Path:
    """datasets/sample of the repository (or, when TUNEKIT_ROOT points elsewhere, of this checkout)."""
    for root in (paths.repo_root(), Path(__file__).resolve().parents[3]):
        if (root / "datasets" / "sample").is_dir():
            return root / "datasets" / "sample"
    return paths.repo_root() / "datasets" / "sample"


def sample_files(data_dir: Path | None = None) -> list[Path]:
    """The bundled sample jsonl files the tiny tokenizer is trained on, in a fixed order."""
    root = data_dir or sample_root()
    files = sorted(p for p in root.rglob("*.jsonl") if p.is_file())
    if not files:
        raise UserError(f"{root}: no sample data found (run `python datasets/generate_sample.py`)")
    return files


def tiny_corpus(files: list[Path]) -> list[str]:
    """Training sentences for the tiny tokenizer: every line of every text in the sample data.

    Texts are cut at newlines because llm-jp has no newline piece (newlines fall back to bytes);
    the prompt-format markers are added once per message so they get pieces of their own.
    """
    sentences: list[str] = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts = []
            for msg in row.get("messages", []):
                texts += [{"user": "### 指示:", "assistant": "### 応答:"}.get(msg["role"], ""), msg["content"]]
            texts += [row[k] for k in ("chosen_response", "rejected_response", "problem") if k in row]
            sentences += [s for t in texts for s in t.split("\n") if s]
    return sentences


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_tokenizer_key(files: list[Path]) -> dict:
    # Contents only (in the fixed file order), so the same data anywhere gives the same fixture.
    return {"builder": BUILDER_VERSION, "converter": sp_convert.CONVERTER_VERSION,
            "vocab": TINY_VOCAB_REQUEST, "data": [_file_sha(p) for p in files],
            "template": hashlib.sha256(_chat_template().encode()).hexdigest(),
            "libs": _versions("sentencepiece", "tokenizers")}


def _cached(kind: str, key: dict, build: Callable[[Path], None]) -> Path:
    """Return fixtures_dir()/<kind>-<hash(key)>, building it once (locked, atomic) if missing."""
    from filelock import FileLock

    final = paths.fixtures_dir() / f"{kind}-{_digest(key)}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another process built it while we waited
            return final
        with atomic_dir(final) as tmp:
            build(tmp)
            (tmp / "fixture_key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
    return final


# ------------------------------------------------------------------ builders (write into a folder)

def train_tiny_sentencepiece(sentences: list[str]) -> bytes:
    """Train the tiny SentencePiece Unigram model; deterministic (one thread, no sampling)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=out,
        model_type="unigram", vocab_size=TINY_VOCAB_REQUEST, hard_vocab_limit=False,
        # llm-jp-tokenizer v4.0's settings (read from its ModelProto):
        character_coverage=1.0, byte_fallback=True, split_digits=True, split_by_whitespace=True,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=["<mask>", "<pad>"],  # ids 3 and 4, as in llm-jp
        # Every printable ASCII character gets a piece even if the sample lacks it, as in llm-jp;
        # the exact HF conversion needs the characters of `<|eos|>`, `<0x0A>`... (sp_convert).
        required_chars="".join(chr(c) for c in range(0x21, 0x7F)),
        # One deviation: on this tiny templated corpus, script splitting leaves the seed search
        # almost no multi-character candidates (e.g. `\boxed{` mixes scripts), so pieces would be
        # mostly single characters. It only changes which pieces exist, not how text is encoded.
        split_by_unicode_script=False,
        # Determinism: one thread, all sentences, no shuffling.
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
    )
    return out.getvalue()


def build_tiny_tokenizer(out: Path, files: list[Path] | None = None) -> None:
    """Train the tiny tokenizer on the sample data and write it as an HF tokenizer directory."""
    model = train_tiny_sentencepiece(tiny_corpus(files or sample_files()))
    sp_convert.write_hf_tokenizer(model, out, _chat_template(), model_max_length=TINY_MAX_LENGTH)


def build_llmjp_tokenizer(model_file: Path, out: Path) -> None:
    """Convert a real llm-jp SentencePiece `.model` into an HF fast tokenizer directory."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise UserError(f"{model_file}: SentencePiece model not found (pass the llm-jp tokenizer .model file)")
    try:
        sp_convert.write_hf_tokenizer(model_file.read_bytes(), out, _chat_template(),
                                      model_max_length=LLMJP_MAX_LENGTH)
    except ValueError as exc:  # a model this converter cannot reproduce exactly
        raise UserError(f"{model_file}: cannot convert exactly ({exc})") from None


def tiny_config(vocab_size: int):
    """The tiny LlamaConfig for a tokenizer with `vocab_size` pieces (llm-jp special ids)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=4, **TINY_CONFIG)


def build_tiny_model(out: Path, tokenizer_dir: Path, seed: int = TINY_SEED) -> None:
    """Write a random tiny LlamaForCausalLM (safetensors, fp32) plus the tokenizer files into `out`."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    config = tiny_config(len(vocab))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=4)
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    # A "Writing model shards" bar per fixture build is noise in notebooks and test logs.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    from .portable import portable_model_config

    # transformers 5 writes rope_parameters/dtype only; add the keys 4.x reads (same values).
    cfg_path = out / "config.json"
    cfg_path.write_text(json.dumps(portable_model_config(json.loads(cfg_path.read_text(encoding="utf-8"))),
                                   indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out / name)


def build_tiny(out: Path, seed: int = TINY_SEED) -> None:
    """Write the tiny tokenizer and model together into `out` (what `tunekit fixtures tiny` does)."""
    tok = out / ".tokenizer-build"
    build_tiny_tokenizer(tok)
    build_tiny_model(out, tok, seed)
    shutil.rmtree(tok)


# ------------------------------------------------------------------ cached fixtures (public)

def tiny_tokenizer_dir() -> Path:
    """The tiny HF tokenizer directory (built on first use, cached by content)."""
    files = sample_files()
    return _cached("tiny-tokenizer", _tiny_tokenizer_key(files), lambda out: build_tiny_tokenizer(out, files))


def tiny_model_dir() -> Path:
    """The tiny HF LlamaForCausalLM directory, tokenizer included (built on first use, cached)."""
    tok_dir = tiny_tokenizer_dir()
    key = {"builder": BUILDER_VERSION, "tokenizer": tok_dir.name, "seed": TINY_SEED, "config": TINY_CONFIG,
           "libs": _versions("torch", "transformers", "safetensors")}
    return _cached("tiny-model", key, lambda out: build_tiny_model(out, tok_dir, TINY_SEED))


def llmjp_tokenizer_dir(model_file: str | os.PathLike | None = None) -> Path:
    """The llm-jp-tokenizer v4.0 HF fast tokenizer directory (from the shared `.model`, cached)."""
    src = Path(model_file) if model_file else paths.shared_fixture(LLMJP_MODEL_NAME)
    if not src.is_file():
        raise UserError(f"{src}: llm-jp SentencePiece model not found (\"llmjp\" builds the competition "
                        "tokenizer from this file; instead give the llm-jp-4-8b model's own HF folder as the "
                        "tokenizer, e.g. /groups/<group>/models/llm-jp-4-8b on ABCI, or put the file there, or "
                        "set TUNEKIT_SHARED_FIXTURES to the folder holding it)")
    key = {"builder": BUILDER_VERSION, "converter": sp_convert.CONVERTER_VERSION, "model": _file_sha(src),
           "template": hashlib.sha256(_chat_template().encode()).hexdigest(),
           "libs": _versions("sentencepiece", "tokenizers")}
    return _cached("llmjp-tokenizer", key, lambda out: build_llmjp_tokenizer(src, out))


def resolve_model(spec: str | os.PathLike) -> Path:
    """Turn a model spec into an HF model directory: "tiny", an HF model dir, or a run dir (its hf_model/)."""
    text = str(spec).strip()
    if text == "tiny":
        return tiny_model_dir()
    expected = ("expected 'tiny', an HF model directory (with config.json) or a run directory "
                "(with params.json and a published hf_model/)")
    if not text:
        raise UserError(f"model spec is empty ({expected})")
    path = paths.resolve(text)
    if not path.exists():
        raise UserError(f"model {text!r}: {path} does not exist ({expected}; relative paths are taken "
                        "from the repository root, and models are never downloaded)")
    if path.is_dir() and (path / "params.json").is_file():
        hf = path / "hf_model"
        if (hf / "config.json").is_file():
            return hf
        raise UserError(f"model {text!r}: run directory {path} has not published a model yet "
                        f"({hf}/config.json is missing; let the run finish or pick another run)")
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise UserError(f"model {text!r}: {path} is neither an HF model directory nor a run directory ({expected})")
