"""Loading tokenizers for tokenisation: the fastest library that gives exactly the HF ids.

Importing transformers costs seconds per process, which adds up over tokeniser worker processes
and notebook runs; the builders only need an encoder, the special ids and the vocabulary. So:

* `LightTokenizer`: the `tokenizers` library alone (a tokenizer.json with a generic class).
* `SentencePieceTokenizer`: for a SentencePiece-based tokenizer (a `tokenizer.model` beside
  tokenizer.json, as llm-jp's), the `sentencepiece` library itself, about 6x faster than
  `tokenizers` on the llm-jp model. HF tokenizers map the text of their added (special) tokens,
  e.g. `<|eos|>`, to one id and encode each stretch between them on its own; this class does the
  same. `sentencepiece_twin` uses it only after checking, on the spot, that it reproduces the HF
  tokenizer (same vocabulary size, same added tokens, same ids on a fixed battery of hard texts);
  tests/test_tokenizer_sentencepiece.py proves id identity on hundreds of varied records.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

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

    def _holds_special(self, text: str) -> bool:
        return any(c in text for c in self._leads) and self._split.search(text) is not None

    def __call__(self, texts, add_special_tokens: bool = False):
        single = isinstance(texts, str)
        enc = self.backend_tokenizer.encode_batch([texts] if single else list(texts),
                                                  add_special_tokens=add_special_tokens)
        ids = [e.ids for e in enc]
        return {"input_ids": ids[0] if single else ids}


class SentencePieceTokenizer:
    """An HF SentencePiece tokenizer's ids computed by the `sentencepiece` library (see module doc).

    `specials`: the HF added tokens {text: id}; their text inside a string becomes that one id,
    and each stretch between them is encoded on its own, exactly as HF does it. `demote`: ids of
    SentencePiece user-defined symbols that the HF tokenizer renamed (llm-jp: `<pad>` -> `<|pad|>`):
    HF reads their old text as ordinary text, so they become control pieces here, which
    SentencePiece never matches in text.
    """

    backend = "sentencepiece"

    def __init__(self, model_file: str | os.PathLike, specials: dict[str, int], roles: dict[str, str | None],
                 demote: Sequence[int] = (), threads: int = 1):
        import sentencepiece as spm

        self.model_file, self.demote = str(model_file), sorted(demote)
        if self.demote:
            proto = _load_proto(self.model_file)
            for i in self.demote:
                proto.pieces[i].type = _CONTROL
            self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        else:
            self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        self.specials = dict(specials)
        self.roles = dict(roles)
        self.threads = threads
        # Longest first, so that a special token that contains another wins (as HF's trie does).
        names = sorted(self.specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None
        # The first characters of the special tokens ("<" for llm-jp's): a text without any of them
        # holds no special token, which one `str.__contains__` per character finds (memchr speed;
        # the regex costs ~8% of a chunk's encoding).
        self._leads = sorted({n[0] for n in names})
        for role, name in self.roles.items():
            setattr(self, f"{role}_token", name)
            setattr(self, f"{role}_token_id", self.specials.get(name) if name else None)

    def spec(self) -> dict[str, Any]:
        """The constructor's arguments (what a worker process needs to build the same tokenizer)."""
        return {"model_file": self.model_file, "specials": self.specials, "roles": self.roles,
                "demote": self.demote}

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        return {**vocab, **self.specials}

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text (no bos/eos added; special-token text inside becomes its id)."""
        texts = list(texts)
        if self._split is None or not self._holds_special("\0".join(texts)):
            return self.sp.encode(texts, num_threads=self.threads)  # the common case: one C++ call
        pieces = [self._split.split(t) for t in texts]   # text, special, text, special, ..., text
        flat = self.sp.encode([p for ps in pieces for p in ps[0::2]], num_threads=self.threads)
        out, k = [], 0
        for ps in pieces:
            ids: list[int] = []
            for j, part in enumerate(ps):
                if j % 2:
                    ids.append(self.specials[part])
                else:
                    ids += flat[k]
                    k += 1
            out.append(ids)
        return out

    def _holds_special(self, text: str) -> bool:
        return any(c in text for c in self._leads) and self._split.search(text) is not None

    def __call__(self, texts, add_special_tokens: bool = False):
        single = isinstance(texts, str)
        ids = self.encode_texts([texts] if single else texts)
        if add_special_tokens and self.bos_token_id is not None:
            ids = [[self.bos_token_id] + x for x in ids]
        return {"input_ids": ids[0] if single else ids}


# Texts on which the sentencepiece twin must give the HF ids before it is used: markers, special-token
# text (alone, adjacent, inside words, with spaces around), byte fallback, whitespace runs, emoji.
TWIN_BATTERY = (
    "", " ", "  ", "\n", "\n\n", "x", " x", "x ", "\t\tx\r\n", "\u3000全角スペース\u3000",
    "\n\n### 指示:\n1 + 1 は？\n\n### 応答:\n", "答えは $\\boxed{\\frac{1}{2}}$ です。",
    "<|eos|>", "a<|eos|>b", " <|bos|> ", "<|bos|><|eos|>", "<|eos|>\n", "x<|pad|><|unk|>y",
    "<s></s><pad><unk><mask>", "<0x41> <RESERVED_000>", "👍🏽 👨‍👩‍👧 🇯🇵", "\x01\x7f\u00a0\u200b",
    "𠮷野家の𩸽", "Ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３", "##### # ## ###", "    indented\n\tcode",
    # Whole records of the competition's shape: sentencepiece and HF `tokenizers` break exact score
    # ties in the unigram lattice differently ("###" as "#"+"##" or "##"+"#"), which short texts
    # may not show; a model where they disagree here keeps the HF tokenizer.
    "\n\n### 指示:\n複素数の問題です。47x + 90 = 967 を満たす x を求めなさい。\n\n### 応答:\n"
    "両辺から 90 を引くと 47x = 877 となる。\n",
    "あなたは数学の先生です。途中の式も書いて、最後に答えを \\boxed{} で示してください。\n\n### 指示:\n"
    "図形の問題です。55x + 48 = 387 を満たす x を求めなさい。\n\n### 応答:\n",
)


def sentencepiece_twin(tok_dir: str | os.PathLike, hf_tok) -> SentencePieceTokenizer | None:
    """A `SentencePieceTokenizer` equivalent to `hf_tok`, or None when there is none (no
    tokenizer.model, added tokens HF treats specially, or any id differs on `TWIN_BATTERY`)."""
    model = Path(tok_dir) / "tokenizer.model"
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None or not model.is_file():
        return None
    added = backend.get_added_tokens_decoder()
    if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added.values()):
        return None  # whitespace-eating or normalised added tokens: not modelled here
    try:
        proto = _load_proto(model)
        demote = [i for i, p in enumerate(proto.pieces)
                  if p.type == _USER_DEFINED and backend.id_to_token(i) != p.piece]
        roles = {r: getattr(hf_tok, f"{r}_token", None) for r in ("bos", "eos", "pad", "unk")}
        twin = SentencePieceTokenizer(model, {t.content: i for i, t in added.items()}, roles, demote)
    except Exception:  # noqa: BLE001 - not a SentencePiece model (protobuf/sentencepiece errors vary)
        return None
    if twin.sp.get_piece_size() != backend.get_vocab_size(with_added_tokens=True):
        return None
    want = [e.ids for e in backend.encode_batch(list(TWIN_BATTERY), add_special_tokens=False)]
    return twin if twin.encode_texts(TWIN_BATTERY) == want else None


_CONTROL, _USER_DEFINED = 3, 4   # sentencepiece ModelProto.SentencePiece.Type


def _load_proto(model_file: str | os.PathLike):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    return proto


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
