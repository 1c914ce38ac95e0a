"""SentencePiece Unigram model -> HF fast tokenizer directory with the competition's token names.

One converter serves both the real llm-jp-tokenizer v4.0 `.model` and the tiny fixture tokenizer.
The result tokenises text exactly as SentencePiece does (same ids), with two deliberate differences,
both as in the competition's own HF tokenizer (llm-jp-tokenizer `hf/ver4.0/alpha_1.0`, Sept. 2025,
whose tokenizer_config names `<|unk|>`, `<|bos|>`, `<|eos|>`, `<|pad|>`, `<|mask|>`, `<|cls|>`,
`<|sep|>`, `<|eod|>`):

* The special pieces are renamed and are atomic special tokens in HF: `<unk>` (0) -> `<|unk|>`,
  `<s>` (1) -> `<|bos|>`, `</s>` (2) -> `<|eos|>`, `<mask>` (3) -> `<|mask|>`, `<pad>` (4) ->
  `<|pad|>`, and, where present, `<CLS>` -> `<|cls|>`, `<EOD>` -> `<|eod|>`, `<SEP>` -> `<|sep|>`.
  Where their new name occurs in text it becomes that one id, and each stretch of text between
  them is encoded exactly as SentencePiece encodes that stretch on its own (with its own dummy
  prefix `▁`). Raw SentencePiece knows nothing of `<|bos|>`/`<|eos|>` (`<|eos|>` is `▁<`,`|`,`eos`,
  `|>`). This is what the competition's training code relies on: `"\\n" + answer + "<|eos|>"` ends
  in the eos id. With `split_special_tokens=True` the HF tokenizer gives SentencePiece's ids for
  every text.
* The OLD names of the renamed user-defined symbols (`<mask>`, `<pad>`, `<CLS>`, `<EOD>`,
  `<SEP>`) are ordinary text in HF (SentencePiece maps that text to the symbol's id): the
  competition's tokenizer renamed them the same way. `<RESERVED_...>` symbols keep their names.

How SentencePiece's encoder is mirrored (sentencepiece `unigram_model.cc`, `normalizer.cc`):
* identity normalisation: only ' ' -> '▁' and a dummy `▁` prefix on non-empty text (no NFKC, no
  whitespace squeezing; tabs and newlines fall back to bytes);
* one Viterbi pass over the whole string (no pre-tokenizer): SentencePiece does not split at
  whitespace when encoding, its vocabulary simply has no piece with an inner `▁`;
* user-defined symbols (`<RESERVED_...>`) get SentencePiece's lattice bonus score
  (`len * max(max_normal_score, FLT_MIN) - 0.1`) so they are always taken whole;
* control, unknown, byte, unused and renamed pieces are not in SentencePiece's lattice (or not
  under their new name); here they stay in the vocabulary (HF needs them for ids and byte
  fallback) with an unreachable score so the lattice never picks them from text (literal `<0x41>`
  or `<|unk|>` with split_special_tokens stay ordinary text, as in SentencePiece); this needs every
  character of their names to be a piece (`<`, `|`, `0`-`9`, `A`-`F`, `x`, `>`...);
* characters that are not single pieces become UTF-8 byte pieces (byte fallback) in both. The one
  place the unknown-character score could matter, an unknown character inside a longer piece, cannot
  happen when every character of every normal piece is itself a piece; `check_convertible` asserts
  that (user-defined symbols outscore any path through an unknown character in both).

The folder is written by `tunekit.model.portable` (the kit's one tokenizer writer), so it loads
with the same ids in transformers 4.47, 4.57 and 5.x.
"""
from __future__ import annotations

import struct
from pathlib import Path

BOS, EOS, UNK, PAD, MASK = "<|bos|>", "<|eos|>", "<|unk|>", "<|pad|>", "<|mask|>"
SPECIAL_IDS = {UNK: 0, BOS: 1, EOS: 2, MASK: 3, PAD: 4}
# SentencePiece names -> the competition's HF names (ids 0-4 always; the rest where present).
RENAMED = {"<unk>": UNK, "<s>": BOS, "</s>": EOS, "<mask>": MASK, "<pad>": PAD,
           "<CLS>": "<|cls|>", "<EOD>": "<|eod|>", "<SEP>": "<|sep|>"}
# tokenizer attributes of the renamed tokens (eod has no transformers attribute)
ROLES = {UNK: "unk_token", BOS: "bos_token", EOS: "eos_token", PAD: "pad_token", MASK: "mask_token",
         "<|cls|>": "cls_token", "<|sep|>": "sep_token"}
CONVERTER_VERSION = 2

# sentencepiece ModelProto.SentencePiece.Type values
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_FLT_MIN = struct.unpack("f", struct.pack("f", 1.1754943508222875e-38))[0]
# Far below any real path score (a million characters at the worst piece score is ~ -3e7), so
# Viterbi never selects such a piece, yet finite so it survives JSON.
UNREACHABLE_SCORE = -1e9


def load_proto(model_bytes: bytes):
    """Parse a SentencePiece `.model` into its ModelProto."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def exported_name(i: int, piece) -> str:
    """The HF token name of SentencePiece piece `i` (special pieces get the competition's names)."""
    if piece.type in (_UNKNOWN, _CONTROL, _USER_DEFINED) and piece.piece in RENAMED:
        return RENAMED[piece.piece]
    return piece.piece


def special_names(proto) -> dict[str, int]:
    """The renamed special tokens of this model: {HF name: id}."""
    return {exported_name(i, p): i for i, p in enumerate(proto.pieces)
            if p.type in (_UNKNOWN, _CONTROL, _USER_DEFINED) and p.piece in RENAMED}


def check_convertible(proto) -> None:
    """Raise ValueError if the model uses a feature this converter does not reproduce exactly."""
    t, n = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if t.model_type != 1:  # UNIGRAM
        problems.append(f"model_type {t.model_type} is not UNIGRAM")
    if not t.byte_fallback:
        problems.append("byte_fallback is off")
    if n.name != "identity" or n.precompiled_charsmap:
        problems.append(f"normalizer {n.name!r} is not identity")
    if n.remove_extra_whitespaces or not n.escape_whitespaces or t.treat_whitespace_as_suffix:
        problems.append("whitespace handling differs from llm-jp (remove_extra_whitespaces off, escape on)")
    if proto.HasField("denormalizer_spec") and proto.denormalizer_spec.name:
        problems.append("a denormalizer is set")
    layout = {0: (_UNKNOWN, "<unk>"), 1: (_CONTROL, "<s>"), 2: (_CONTROL, "</s>"),
              3: (_USER_DEFINED, "<mask>"), 4: (_USER_DEFINED, "<pad>")}
    for i, (typ, name) in layout.items():
        if len(proto.pieces) <= i or proto.pieces[i].type != typ or proto.pieces[i].piece != name:
            problems.append(f"piece {i} is not {name!r} (the llm-jp layout: <unk> 0, <s> 1, </s> 2, "
                            "<mask> 3, <pad> 4)")
            break
    byte_names = {p.piece for p in proto.pieces if p.type == _BYTE}
    if byte_names != {f"<0x{b:02X}>" for b in range(256)}:
        problems.append("the 256 byte pieces are incomplete")
    # An unknown character inside a user-defined symbol is harmless: the symbol's bonus score beats
    # every path through an unknown-character node in both implementations.
    singles = {p.piece for p in proto.pieces if p.type in (_NORMAL, _USER_DEFINED) and len(p.piece) == 1}
    for p in proto.pieces:
        if p.type == _NORMAL and any(ch not in singles for ch in p.piece):
            problems.append(f"piece {p.piece!r} contains a character that is not itself a piece")
            break
    # Reserved pieces stay matchable in HF's lattice at UNREACHABLE_SCORE; they lose to the plain
    # single-character path only if that path exists (an unknown-character node scores lower still).
    for i, p in enumerate(proto.pieces):
        name = exported_name(i, p)
        if p.type in (_UNKNOWN, _CONTROL, _BYTE, _UNUSED) and any(ch not in singles for ch in name):
            problems.append(f"reserved piece {name!r} contains a character that is not itself a piece")
            break
    if problems:
        raise ValueError("; ".join(problems))


def build_tokenizer(proto):
    """A `tokenizers.Tokenizer` equivalent to the SentencePiece model (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    check_convertible(proto)
    normal = [p.score for p in proto.pieces if p.type == _NORMAL]
    max_score = max(max(normal), _FLT_MIN)
    specials = special_names(proto)
    vocab = []
    for i, p in enumerate(proto.pieces):
        name = exported_name(i, p)
        if p.type == _NORMAL:
            vocab.append((p.piece, p.score))
        elif p.type == _USER_DEFINED and name == p.piece:
            # SentencePiece's EncodeOptimized scores user symbols by their UTF-8 length.
            vocab.append((p.piece, len(p.piece.encode("utf-8")) * max_score - 0.1))
        else:  # unknown, control, byte, unused, renamed: never produced from text
            vocab.append((name, UNREACHABLE_SCORE))
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 1)])
    for name, idx in specials.items():
        assert tok.token_to_id(name) == idx, (name, tok.token_to_id(name))
    return tok


def hf_tokenizer(proto, chat_template: str, model_max_length: int):
    """The converted tokenizer as a transformers fast tokenizer (special tokens, template, limits)."""
    from transformers import PreTrainedTokenizerFast

    roles = {ROLES[name]: name for name in special_names(proto) if name in ROLES}
    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(proto), model_max_length=model_max_length,
                                  padding_side="right", clean_up_tokenization_spaces=False, **roles)
    # Decoding must give back the text exactly; HF's clean-up would glue " ." etc.
    tok.chat_template = chat_template
    return tok


def write_hf_tokenizer(model_bytes: bytes, out: Path, chat_template: str, model_max_length: int = 4096) -> None:
    """Write the HF tokenizer folder (portable: see tunekit.model.portable) plus the raw tokenizer.model."""
    from .portable import write_portable_tokenizer

    proto = load_proto(model_bytes)
    write_portable_tokenizer(hf_tokenizer(proto, chat_template, model_max_length), out,
                             chat_template=chat_template)
    # The raw model travels with the HF files: NeMo configs and parity checks need it.
    (out / "tokenizer.model").write_bytes(model_bytes)
