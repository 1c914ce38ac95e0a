"""Loading tokenizers for tokenisation: the `tokenizers` library alone when that is exact.

Importing transformers costs seconds per process, which adds up over tokeniser worker processes
and notebook runs; the builders only need `backend_tokenizer`, the special ids and the vocabulary.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError


class LightTokenizer:
    """What the builders use of an HF fast tokenizer (`backend_tokenizer`, special ids, vocab),
    loaded with the `tokenizers` library alone: importing transformers costs seconds per process,
    which adds up over worker processes and notebook runs."""

    def __init__(self, tok_dir: Path):
        from tokenizers import Tokenizer

        self.name_or_path = str(tok_dir)
        self.backend_tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        cfg = _read_json(tok_dir / "tokenizer_config.json")
        special = {**_read_json(tok_dir / "special_tokens_map.json"), **cfg}
        for role in ("bos", "eos", "pad", "unk"):
            name = special.get(f"{role}_token")
            name = name.get("content") if isinstance(name, dict) else name
            setattr(self, f"{role}_token", name)
            setattr(self, f"{role}_token_id", self.backend_tokenizer.token_to_id(name) if name else None)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def __call__(self, texts, add_special_tokens: bool = False):
        single = isinstance(texts, str)
        enc = self.backend_tokenizer.encode_batch([texts] if single else list(texts),
                                                  add_special_tokens=add_special_tokens)
        ids = [e.ids for e in enc]
        return {"input_ids": ids[0] if single else ids}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# tokenizer_config classes that load tokenizer.json unchanged (class-specific ones such as
# LlamaTokenizer may rewrite the normaliser from config flags, so those go through transformers).
_GENERIC_CLASSES = {None, "PreTrainedTokenizerFast", "TokenizersBackend"}


def load_tokenizer(tok_dir: str | os.PathLike, full: bool = False):
    """Load a tokenizer from a directory (local files only).

    full=False gives a `LightTokenizer` when that is exactly equivalent (a tokenizer.json with a
    generic tokenizer class), else the transformers tokenizer; full=True always the latter
    (needed for decode and chat templates).
    """
    tok_dir = Path(tok_dir)
    cls = _read_json(tok_dir / "tokenizer_config.json").get("tokenizer_class")
    if not full and (tok_dir / "tokenizer.json").is_file() and cls in _GENERIC_CLASSES:
        return LightTokenizer(tok_dir)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{tok_dir}: cannot load a tokenizer from here ({exc}) (pass an HF model "
                        "or tokenizer directory)") from None
