"""Write an HF tokenizer folder that loads with the same ids in transformers 4.47, 4.57 and 5.x.

Every place the kit writes a tokenizer (published models, LoRA merges, NeMo -> HF and HF -> NeMo
conversion, `tunekit submission prepare`, the local fixtures) goes through `write_portable_tokenizer`.
`save_pretrained` in transformers 5 writes `"tokenizer_class": "TokenizersBackend"`, a class that
exists only in transformers 5: the competition's submission image (transformers 4.57.0) and its
training environment (4.47.0) then fail with "Tokenizer class TokenizersBackend does not exist".

What is written instead, and why it is exact in every version:
* `tokenizer.json`: the backend (Rust `tokenizers`) tokenizer exactly as it encodes in this
  process, so every version that loads it as a plain fast tokenizer gives the same ids;
* `tokenizer_config.json` with `"tokenizer_class": "PreTrainedTokenizerFast"` (the generic fast
  class, present in 4.x and 5.x; a model-specific class such as LlamaTokenizerFast would rebuild
  parts of the pipeline from config flags), the special tokens, every added token, and the chat
  template (4.x readers older than 4.43 only look here);
* `special_tokens_map.json` and `chat_template.jinja` (where newer readers look first);
* `tokenizer.model` (the raw SentencePiece model) copied along when the source has one.
`add_bos_token` / `add_eos_token` are written as what the tokenizer actually does (the generic
class ignores them; they document the behaviour, as in the competition's own tokenizer_config).
The folder is loaded back here and must give the source's ids on probe texts and chat prompts;
`tunekit.model.compat` checks the other versions in side environments.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
# Texts and conversations whose ids must survive the round trip: the side-environment probe's.
from .compat_probe import CHATS as PROBE_CHATS
from .compat_probe import TEXTS as PROBE_TEXTS

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
# Files a previous writer may have left that would override or contradict ours.
STALE = ("chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")
_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    if value is None:
        return None
    return getattr(value, "content", value) if not isinstance(value, str) else value


def _added_tokens(tok) -> dict[str, dict[str, Any]]:
    out = {}
    for idx, t in sorted(tok.added_tokens_decoder.items()):
        out[str(idx)] = {"content": t.content, "lstrip": bool(t.lstrip), "normalized": bool(t.normalized),
                         "rstrip": bool(t.rstrip), "single_word": bool(t.single_word),
                         "special": bool(t.special)}
    return out


def _behaviour(tok) -> tuple[bool, bool]:
    """(adds bos, adds eos) as observed on a probe text."""
    ids = tok("x")["input_ids"]
    return (bool(ids) and ids[0] == tok.bos_token_id and tok.bos_token_id is not None,
            bool(ids) and ids[-1] == tok.eos_token_id and tok.eos_token_id is not None)


def portable_model_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """An HF config.json dict that transformers 4.x reads like 5.x does (legacy keys added).

    transformers 5 writes `rope_parameters` and `dtype`; 4.x (the submission image's 4.57.0, the
    official training environment's 4.47.0) read `rope_theta`, `rope_scaling` and `torch_dtype`,
    and would silently fall back to theta 10000 without them. Existing keys are kept.
    """
    out = dict(cfg)
    rope = dict(out.get("rope_parameters") or {})
    if "rope_theta" not in out and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    if "rope_scaling" not in out and rope.get("rope_type", "default") != "default":
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "torch_dtype" not in out and out.get("dtype"):
        out["torch_dtype"] = out["dtype"]
    return out


def portable_config(tok, chat_template: str | None) -> dict[str, Any]:
    """The tokenizer_config.json content for `tok` (see module doc)."""
    add_bos, add_eos = _behaviour(tok)
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": _added_tokens(tok),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": bool(getattr(tok, "clean_up_tokenization_spaces", False)),
        "padding_side": tok.padding_side,
        "truncation_side": tok.truncation_side,
    }
    for role in _ROLES:
        text = _token_text(getattr(tok, role, None))
        if text is not None:
            cfg[role] = text
    extra = [_token_text(t) for t in (getattr(tok, "additional_special_tokens", None) or [])]
    if extra:
        cfg["additional_special_tokens"] = extra
    if tok.model_max_length and tok.model_max_length < 10**12:  # HF's "no limit" is 1e30
        cfg["model_max_length"] = int(tok.model_max_length)
    if chat_template:
        cfg["chat_template"] = chat_template
    return cfg


def _ids(out) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tokenizer_fingerprint(tok) -> dict[str, Any]:
    """Ids the tokenizer gives on the probe texts and (if it has a template) chat prompts."""
    fp: dict[str, Any] = {"special": {r: getattr(tok, f"{r}_id", None) for r in _ROLES},
                          "text": [tok(t)["input_ids"] for t in PROBE_TEXTS],
                          "vocab": len(tok)}
    if getattr(tok, "chat_template", None):
        fp["chat"] = [_ids(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True))
                      for m in PROBE_CHATS]
    return fp


def write_portable_tokenizer(tok, dst: str | Path, chat_template: str | None = None,
                             source_dir: str | Path | None = None) -> list[str]:
    """Write `tok` (an HF fast tokenizer) into `dst` as a portable tokenizer folder; returns the files.

    `chat_template`: the template to store (default: the tokenizer's own, if any).
    `source_dir`: the folder `tok` came from; its raw `tokenizer.model` is copied along.
    The written folder is loaded back and must reproduce the ids, else UserError.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{getattr(tok, 'name_or_path', 'tokenizer')}: not a fast tokenizer (no "
                        "tokenizer.json backend); convert it to a fast tokenizer first")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    template = chat_template if chat_template is not None else getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # several named templates: keep the default one
        template = template.get("default")
    for name in STALE:
        (dst / name).unlink(missing_ok=True)
    (dst / "tokenizer.json").write_text(backend.to_str(pretty=True) + "\n", encoding="utf-8")
    cfg = portable_config(tok, template)
    _write_json(dst / "tokenizer_config.json", cfg)
    _write_json(dst / "special_tokens_map.json",
                {k: v for k, v in cfg.items() if k in _ROLES or k == "additional_special_tokens"})
    written = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    if template:
        (dst / "chat_template.jinja").write_text(template, encoding="utf-8")
        written.append("chat_template.jinja")
    if source_dir is not None and (Path(source_dir) / "tokenizer.model").is_file():
        shutil.copyfile(Path(source_dir) / "tokenizer.model", dst / "tokenizer.model")
        written.append("tokenizer.model")
    _check_round_trip(tok, template, dst)
    return written


def _check_round_trip(tok, template: str | None, dst: Path) -> None:
    from transformers import AutoTokenizer

    if template is not None and getattr(tok, "chat_template", None) != template:
        import copy

        tok = copy.copy(tok)
        tok.chat_template = template
    back = AutoTokenizer.from_pretrained(str(dst), local_files_only=True)
    want, got = tokenizer_fingerprint(tok), tokenizer_fingerprint(back)
    if want != got:
        diff = sorted(k for k in want if want[k] != got.get(k))
        raise UserError(f"{dst}: the written tokenizer does not reproduce the source's ids ({', '.join(diff)} "
                        "differ); please report this with the source tokenizer")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Sorted keys and a fixed layout: the same tokenizer always gives the same bytes.
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(tok_dir: str | Path):
    """The HF tokenizer of a folder (local files only), or a UserError naming the folder."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad tokenizer dir
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{tok_dir}: cannot load a tokenizer ({type(exc).__name__}: {first[:200]})") from None


def publish_tokenizer(src_dir: str | Path, dst: str | Path, template: str = "kit"):
    """Copy the tokenizer of `src_dir` into `dst`, portable (see module doc); returns the tokenizer.

    template="kit": install the kit's chat template (the training prompt format, so vLLM's
    `llm.chat` and `apply_chat_template` reproduce the training ids); "keep": keep the source's.
    """
    tok = load_tokenizer(src_dir)
    if template == "kit":
        from ..template import install_chat_template

        install_chat_template(tok)
    elif template != "keep":
        raise ValueError(f"template must be 'kit' or 'keep', not {template!r}")
    write_portable_tokenizer(tok, dst, source_dir=src_dir)
    return tok
