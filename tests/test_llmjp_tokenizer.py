"""The HF tokenizers built from SentencePiece models give SentencePiece's ids (real llm-jp and tiny)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunekit import paths

LLMJP = paths.shared_fixture("llm-jp-tokenizer-v4.0-alpha1.0.model")
REPO = Path(__file__).resolve().parents[1]

# Texts chosen to hit every rule the converter mirrors: dummy prefix, leading/trailing/multiple
# spaces, tabs/newlines/CR (byte fallback), digits split one by one, full-width forms, emoji and
# rare characters (byte fallback), user-defined symbols inside text, and strings that look like
# control or byte pieces (which SentencePiece never matches from text).
VARIED = [
    "", " ", "  ", "\t", "\n", "\r\n", " \n ", "a", " a", "a ", "  a  b   c  ", "\tindent\ttab\t",
    "line1\nline2\n\nline4\n", "こんにちは、世界！", "吾輩は猫である。名前はまだ無い。",
    "方程式 3x + 5 = 20 を解きなさい。", "カタカナとひらがなと漢字、そしてＡＢＣ全角英字。",
    "ｘ＝３，ｙ＝－４　（全角スペース）", "１２３４５６７８９０", "1234567890", "3.14159", "-42", "1,000,000",
    "The quick brown fox jumps over the lazy dog.", "HELLO World", "don't stop", "e-mail: a@b.co",
    "$\\frac{1}{2} + \\sqrt{3}$", "\\boxed{x^2 - 16x + 64}", "f'(x) = 2x + 3", "∫_0^1 x dx = 1/2", "±√∞≠≤≥∑∏",
    "😀👍🏽👨‍👩‍👧 emoji", "𠮷野家", "é è ê ë", "e\u0301", "\u200b\u200d", "\x00\x01\x7f", "العربية", "עברית",
    "한국어 텍스트", "Ελληνικά", "Русский текст", "<mask>", "a<mask>b", "<RESERVED_000>x", "<CLS><SEP>",
    "<s></s>", "<0x41>", "<unk>x", "<pad", "### 指示:\n問題\n\n### 応答:\n答え", "a" * 300, "あ" * 100,
]
# Atomic special tokens (the competition's names), and the SentencePiece names of the renamed
# user-defined symbols: raw SentencePiece maps that text to the symbol, HF (like the competition's
# own tokenizer) treats it as ordinary text.
SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>", "<|mask|>", "<|cls|>", "<|eod|>", "<|sep|>"]
RENAMED_SYMBOLS = ["<mask>", "<pad>", "<CLS>", "<EOD>", "<SEP>"]


def _sample_texts() -> list[str]:
    texts = []
    for path in sorted((REPO / "datasets" / "sample").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[:80]:
            row = json.loads(line)
            texts += [m["content"] for m in row.get("messages", [])]
            texts += [row[k] for k in ("chosen_response", "rejected_response", "problem") if k in row]
    return texts


def _fuzz(n: int, seed: int = 0) -> list[str]:
    """Random strings over many Unicode blocks (surrogates excluded), seeded."""
    r = random.Random(seed)
    blocks = [(0x20, 0x7E), (0x0, 0x20), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xFF00, 0xFFEF),
              (0x80, 0x2FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F6FF), (0x20000, 0x2A6DF), (0xE000, 0xF8FF)]
    return ["".join(chr(r.randint(*r.choice(blocks))) for _ in range(r.randint(0, 30))) for _ in range(n)]


def _no_specials(texts: list[str]) -> list[str]:
    return [t for t in texts if not any(s in t for s in SPECIALS + RENAMED_SYMBOLS)]


def _check_same_ids(sp, tok, texts: list[str]) -> None:
    backend = tok.backend_tokenizer
    for text in texts:
        want = sp.encode(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == want, repr(text)
        assert backend.encode(text, add_special_tokens=False).ids == want, repr(text)
        assert tok.decode(want) == sp.decode(want) == text, repr(text)


@pytest.fixture(scope="session")
def llmjp():
    """(SentencePiece processor, HF tokenizer) for the real llm-jp model, built once per session."""
    if not LLMJP.is_file():
        pytest.skip(f"{LLMJP} is absent (the real llm-jp tokenizer model ships in ../shared/fixtures)")
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from tunekit.model import llmjp_tokenizer_dir

    return spm.SentencePieceProcessor(model_file=str(LLMJP)), AutoTokenizer.from_pretrained(llmjp_tokenizer_dir())


@pytest.fixture(scope="session")
def tiny():
    """(SentencePiece processor, HF tokenizer) for the tiny fixture tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from tunekit.model import tiny_tokenizer_dir

    d = tiny_tokenizer_dir()
    return spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")), AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("which", ["llmjp", "tiny"])
def test_ids_equal_sentencepiece_on_varied_text(which, request):
    sp, tok = request.getfixturevalue(which)
    _check_same_ids(sp, tok, _no_specials(VARIED + _sample_texts() + _fuzz(1500)))


@pytest.mark.parametrize("which", ["llmjp", "tiny"])
def test_special_token_text_is_atomic_and_splits_the_text(which, request):
    sp, tok = request.getfixturevalue(which)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    # Raw SentencePiece spells `<|eos|>` as ordinary pieces; the HF tokenizer maps it to id 2.
    assert sp.encode("<|eos|>") != [2] and enc("<|eos|>") == [2]
    # Each stretch between special tokens is encoded as SentencePiece encodes it alone.
    for text in ["答え<|eos|>", "\n42<|eos|>", "<|bos|>system", "a <|pad|> b", "x<|unk|>y", "<|bos|><|eos|>"]:
        want, rest = [], text
        while rest:
            hits = [(rest.find(s), s) for s in SPECIALS if s in rest]
            if not hits:
                want += sp.encode(rest)
                break
            pos, s = min(hits)
            want += sp.encode(rest[:pos]) + [tok.convert_tokens_to_ids(s)]
            rest = rest[pos + len(s):]
        assert enc(text) == want, repr(text)
    # With split_special_tokens the HF tokenizer is raw SentencePiece for every text (except the
    # renamed symbols' old names, below).
    for text in ["<|eos|>", "a <|pad|> b", "<unk>", "<|unk|>", "x<|bos|>y"] + _no_specials(VARIED):
        assert tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == sp.encode(text)


@pytest.mark.parametrize("which", ["llmjp", "tiny"])
def test_old_symbol_names_are_ordinary_text_as_in_the_competition_tokenizer(which, request):
    sp, tok = request.getfixturevalue(which)
    for old, new in [("<pad>", "<|pad|>"), ("<mask>", "<|mask|>")]:
        assert sp.piece_to_id(old) in sp.encode(old)                # SentencePiece: the symbol itself
        ids = tok(f"a {old} b", add_special_tokens=False)["input_ids"]
        assert sp.piece_to_id(old) not in ids and tok.decode(ids) == f"a {old} b"
        assert tok(new, add_special_tokens=False)["input_ids"] == [sp.piece_to_id(old)]


@pytest.mark.parametrize("which", ["llmjp", "tiny"])
def test_special_ids_names_and_bos_eos_policy(which, request):
    from tunekit.template import CHAT_TEMPLATE

    sp, tok = request.getfixturevalue(which)
    # The names of the competition's tokenizer (llm-jp-tokenizer hf/ver4.0/alpha_1.0, Sept. 2025).
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<|unk|>", "<|bos|>", "<|eos|>", "<|pad|>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 4)
    assert tok.convert_ids_to_tokens([3, 4]) == ["<|mask|>", "<|pad|>"] and tok.mask_token == "<|mask|>"
    if which == "llmjp":
        assert tok.convert_ids_to_tokens([5, 6, 7]) == ["<|cls|>", "<|eod|>", "<|sep|>"]
        assert (tok.cls_token, tok.sep_token) == ("<|cls|>", "<|sep|>")
    assert len(tok) == sp.get_piece_size()
    ids = tok("1 + 1 = 2")["input_ids"]
    assert ids == [1] + sp.encode("1 + 1 = 2")  # add_bos_token true, add_eos_token false
    assert tok.decode(ids, skip_special_tokens=True) == "1 + 1 = 2"
    assert tok.chat_template == CHAT_TEMPLATE


def test_chat_template_prompt_matches_training_ids(llmjp):
    from tunekit.template import DEFAULT_SYSTEM

    sp, tok = llmjp
    msgs = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": "1 + 2 を計算しなさい。"}]
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    # Official SFT semantics (FACTS section 3): [bos] + sp(system) + sp(instruction + user + response)[1:]
    want = [1] + sp.encode(DEFAULT_SYSTEM) + sp.encode("\n\n### 指示:\n1 + 2 を計算しなさい。\n\n### 応答:\n")[1:]
    assert list(ids) == want


def test_converter_refuses_models_it_cannot_reproduce(tmp_path):
    if not LLMJP.is_file():
        pytest.skip(f"{LLMJP} is absent")
    from tunekit.errors import UserError
    from tunekit.model import fixtures, sp_convert

    proto = sp_convert.load_proto(LLMJP.read_bytes())
    proto.normalizer_spec.name = "nmt_nfkc"
    bad = tmp_path / "nfkc.model"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(UserError, match="cannot convert exactly.*identity"):
        fixtures.build_llmjp_tokenizer(bad, tmp_path / "out")
