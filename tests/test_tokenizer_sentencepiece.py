"""The cache tokenises SentencePiece-based tokenizers with `sentencepiece` itself: same ids as HF.

`tunekit.data.tokenizer.sentencepiece_twin` swaps the HF `tokenizers` encoder for the
`sentencepiece` library (about 6x faster on llm-jp). Training data must not change, so this file
compares the two on the real llm-jp model (../shared/fixtures) (the tiny fixture keeps HF): raw texts,
then whole SFT and DPO records through the kit's template (both styles), hundreds of them.

Realistic records (the sample data, the benchmark's corpus) must give identical ids. Records
assembled from fragments chosen to break tokenisers (special-token text, byte fallback, whitespace,
emoji, empty strings, long runs of one character) must too, with one documented exception: where
two segmentations have exactly the same score (runs like 'ああ'*15 can be split 'ああああ'+'ああ' or
'ああ'+'ああああ'), the two libraries' Viterbi searches break the tie differently. There the test
requires the same text, the same loss mask and the same total score, i.e. an equally optimal
segmentation (none occurs in 25k realistic texts, measured when this was written).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunekit import paths
from tunekit.data import encode
from tunekit.data.tokenizer import LightTokenizer, SentencePieceTokenizer, load_tokenizer, sentencepiece_twin

LLMJP = paths.shared_fixture("llm-jp-tokenizer-v4.0-alpha1.0.model")
REPO = Path(__file__).resolve().parents[1]

# Fragments that records are assembled from: template markers, special-token text of both
# namings, byte fallback, whitespace of every kind, emoji sequences, maths, empty strings.
FRAGMENTS = [
    "", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u3000", "\u00a0", "\u200b", "\x00", "\x01", "\x7f",
    "### 指示:", "### 応答:", "\n\n### 指示:\n", "\n\n### 応答:\n", "<|bos|>", "<|eos|>", "<|pad|>",
    "<|unk|>", "<|mask|>", "<|eod|>", "<|sep|>", "<|cls|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>",
    "<CLS>", "<EOD>", "<SEP>", "<RESERVED_000>", "<0x0A>", "<|", "|>", "<|eos", "😀", "👍🏽", "👨‍👩‍👧",
    "🇯🇵", "𠮷", "𩸽", "é", "e\u0301", "Ｆｕｌｌ", "１２３", "x", "ABC", "don't", "3.14", "-42",
    "$\\boxed{\\frac{1}{2}}$", "\\sqrt{3}", "x^2 - 5x + 6 = 0", "答えは", "です。", "次の方程式を解きなさい。",
    "    indented", "trailing   ", "#", "##", "###", "####", "a" * 50, "あ" * 30,
]


def _same_or_tie(twin: SentencePieceTokenizer, got: list[int], want: list[int]) -> bool:
    """Identical ids, or an exact-score tie: same decoded text, same total piece score."""
    if got == want:
        return True
    score = lambda ids: sum(twin.sp.get_score(i) for i in ids)  # noqa: E731
    return twin.sp.decode(got) == twin.sp.decode(want) and abs(score(got) - score(want)) < 1e-3


def _fragment_text(rng: random.Random) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 8)))


def _sample_records(kind: str) -> list[dict]:
    sub = "tuning" if kind == "sft" else "preference"
    out = []
    for path in sorted((REPO / "datasets" / "sample" / sub / "train").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:150]]
    return out


def _fuzz_records(kind: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": _fragment_text(rng)}]
        for turn in range(rng.randint(1, 3)):
            msgs.append({"role": "user", "content": _fragment_text(rng)})
            if kind == "sft" or turn < 2:
                msgs.append({"role": "assistant", "content": _fragment_text(rng)})
        if kind == "dpo":
            if msgs[-1]["role"] == "assistant":
                msgs.append({"role": "user", "content": _fragment_text(rng)})
            out.append({"messages": msgs, "chosen_response": _fragment_text(rng),
                        "rejected_response": _fragment_text(rng)})
        else:
            out.append({"messages": msgs})
    return out


@pytest.fixture(scope="module", params=["llmjp"])
def pair(request) -> tuple[LightTokenizer, SentencePieceTokenizer]:
    """(HF tokenizer, its sentencepiece twin) for the real llm-jp model (the tiny fixture has none:
    `test_a_model_whose_ties_break_differently_keeps_the_hf_tokenizer`)."""
    from tunekit.model import llmjp_tokenizer_dir, tiny_tokenizer_dir

    if request.param == "llmjp" and not LLMJP.is_file():
        pytest.skip(f"{LLMJP} is absent (the real llm-jp tokenizer model ships in ../shared/fixtures)")
    d = llmjp_tokenizer_dir() if request.param == "llmjp" else tiny_tokenizer_dir()
    hf = load_tokenizer(d)
    twin = sentencepiece_twin(d, hf)
    assert isinstance(hf, LightTokenizer) and twin is not None
    return hf, twin


def _realistic_texts() -> list[str]:
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_data import render, records

    texts = [render(r) for r in records(400, seed=5)]
    for kind in ("sft", "dpo"):
        for r in _sample_records(kind):
            texts += [m["content"] for m in r["messages"]] + [r.get("chosen_response", "")]
    return texts


def test_realistic_and_fragment_texts_give_the_same_ids(pair):
    hf, twin = pair
    texts = FRAGMENTS + _realistic_texts()
    assert len(texts) > 1000
    assert twin.encode_texts(texts) == encode.encode_batch(hf, texts)
    assert encode.probe(twin) == encode.probe(hf)


def test_fuzzed_texts_give_the_same_ids_or_an_exact_tie(pair):
    hf, twin = pair
    rng = random.Random(1)
    texts = [_fragment_text(rng) for _ in range(600)]
    got, want = twin.encode_texts(texts), encode.encode_batch(hf, texts)
    assert all(_same_or_tie(twin, g, w) for g, w in zip(got, want))
    assert sum(g == w for g, w in zip(got, want)) > 0.9 * len(texts)


@pytest.mark.parametrize("style", ["kit", "official"])
def test_sft_records_give_the_same_ids_and_masks(pair, style):
    hf, twin = pair
    info = encode.probe(hf)
    sample, fuzz = _sample_records("sft"), _fuzz_records("sft", 300, seed=2)
    if style == "official":  # refuses an empty system prompt by design; those are covered by "kit"
        fuzz = [r for r in fuzz if r["messages"][0]["content"]]
    assert len(sample) + len(fuzz) >= 400
    assert encode.encode_sft_records(sample, twin, info, style) == encode.encode_sft_records(sample, hf, info, style)
    got, want = (encode.encode_sft_records(fuzz, t, info, style) for t in (twin, hf))
    for (g_ids, g_runs), (w_ids, w_runs) in zip(got, want):
        assert g_ids == w_ids or (_same_or_tie(twin, g_ids, w_ids)
                                  and encode.runs_to_mask(g_runs) == encode.runs_to_mask(w_runs))


@pytest.mark.parametrize("style", ["kit", "official"])
def test_dpo_records_give_the_same_ids(pair, style):
    hf, twin = pair
    info = encode.probe(hf)
    sample, fuzz = _sample_records("dpo"), _fuzz_records("dpo", 300, seed=3)
    if style == "official":
        fuzz = [r for r in fuzz if r["messages"][0]["content"]]
    assert len(sample) + len(fuzz) >= 400
    assert (encode.encode_dpo_records(sample, twin, info, style, True)
            == encode.encode_dpo_records(sample, hf, info, style, True))
    got, want = (encode.encode_dpo_records(fuzz, t, info, style, True) for t in (twin, hf))
    for g, w in zip(got, want):
        assert g == w or all(_same_or_tie(twin, list(a), list(b)) for a, b in zip(g, w))


def test_a_twin_that_disagrees_is_refused(tmp_path):
    """A tokenizer.model that does not match tokenizer.json (here: another model's) is not used."""
    import shutil

    from tunekit.model import llmjp_tokenizer_dir, tiny_tokenizer_dir

    if not LLMJP.is_file():
        pytest.skip(f"{LLMJP} is absent")
    d = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir(), d)
    shutil.copyfile(llmjp_tokenizer_dir() / "tokenizer.model", d / "tokenizer.model")
    assert sentencepiece_twin(d, load_tokenizer(d)) is None
    (d / "tokenizer.model").write_bytes(b"not a model")
    assert sentencepiece_twin(d, load_tokenizer(d)) is None
    (d / "tokenizer.model").unlink()
    assert sentencepiece_twin(d, load_tokenizer(d)) is None


def test_a_model_whose_ties_break_differently_keeps_the_hf_tokenizer():
    """The tiny fixture's unigram model has exact score ties ("###" = "#"+"##" = "##"+"#") that
    sentencepiece and HF `tokenizers` resolve differently inside whole records: it gets no twin, so
    its caches are tokenised by HF, whose ids are the ones inference uses."""
    import sentencepiece as spm

    from tunekit.data.tokenizer import TWIN_BATTERY
    from tunekit.model import tiny_tokenizer_dir

    d = tiny_tokenizer_dir()
    hf = load_tokenizer(d)
    assert sentencepiece_twin(d, hf) is None
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    plain = [t for t in TWIN_BATTERY if "<" not in t]  # no special-token text: raw sentencepiece = the twin
    differ = [(t, sp.encode(t), ids) for t, ids in zip(plain, encode.encode_batch(hf, plain)) if sp.encode(t) != ids]
    assert differ, "the tiny model's twin would agree: this test no longer shows a refusal"
    for text, got, want in differ:  # a tie: same text, same total score, other pieces
        assert sp.decode(got) == sp.decode(want)
        assert abs(sum(sp.get_score(i) for i in got) - sum(sp.get_score(i) for i in want)) < 1e-3


def test_sft_arrays_equal_the_record_by_record_assembly(pair):
    """The cache's numpy assembly (`encode_sft_arrays`) gives exactly the ids, masks and counts of
    `encode_sft_records` + `join_runs`, with either encoder."""
    import sys

    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_data import records

    recs = _sample_records("sft") + _fuzz_records("sft", 300, seed=4) + records(300, seed=6)
    trailing = {"messages": recs[0]["messages"] + [{"role": "user", "content": "続きは？"}]}
    recs += [trailing, {"messages": [{"role": "system", "content": ""}, *recs[1]["messages"][1:]]}]
    for tok in pair:
        info = encode.probe(tok)
        want = encode.encode_sft_records(recs, tok, info, "kit")
        got = encode.encode_sft_arrays(recs, tok, info)
        assert got["tokens"].tolist() == [t for ids, _ in want for t in ids]
        assert got["mask"].tolist() == [m for _, runs in want for m in encode.runs_to_mask(runs)]
        assert got["tokens_len"].tolist() == [len(ids) for ids, _ in want]
        assert got["loss_tokens"].tolist() == [sum(runs[1::2]) for _, runs in want]
        assert (got["tokens"].dtype, got["mask"].dtype) == (np.int32, np.uint8)
        empty = encode.encode_sft_arrays([], tok, info)
        assert all(len(v) == 0 for v in empty.values())


def _range_job_noting_handlers(job, tok=None, info=None):
    import os
    import signal

    from tunekit.data import cache

    out = cache._range_job_unpatched(job, tok, info)
    out["handlers"] = (os.getpid(), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                       signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                       getattr(cache, "_test_parent", None))   # set in the parent: a forked worker has it
    return out


def test_forked_workers_give_the_serial_arrays_with_fresh_signal_handlers(pair, tmp_path, monkeypatch):
    """With the sentencepiece encoder the workers are forked from the building process (they
    inherit the loaded model): same arrays and report as a one-process build, and the parent's
    signal handlers (a training run's "finish the step" handler) are not the workers'."""
    import os
    import signal
    import sys

    from tunekit.data import cache
    from tunekit.model import llmjp_tokenizer_dir

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_data import generate

    data = tmp_path / "gen.jsonl"
    generate(data, 300)
    with data.open("a", encoding="utf-8") as f:   # a bad line and a duplicate, reported by the workers
        f.write('{"messages": [{"role": "system", "content": "x"}], "a": 1, "a": 2}\n')
        f.write(data.read_text(encoding="utf-8").splitlines()[0] + "\n")
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "c1"))
    serial = cache.tokenize_file(data, "sft", llmjp_tokenizer_dir(), workers=1, show_progress=False)
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "c2"))
    monkeypatch.setattr(cache, "PARALLEL_MIN_RECORDS", 1)
    monkeypatch.setattr(cache, "CHUNK_RECORDS", 40)
    monkeypatch.setattr(cache, "_range_job_unpatched", cache._range_job, raising=False)
    monkeypatch.setattr(cache, "_range_job", _range_job_noting_handlers)
    monkeypatch.setattr(cache, "_test_parent", os.getpid(), raising=False)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("parent handler"))
    try:
        real_pool = cache._run_pool

        def pool(*args, **kw):
            results = real_pool(*args, **kw)
            seen.extend(r["handlers"] for r in results)
            return results

        monkeypatch.setattr(cache, "_run_pool", pool)
        forked = cache.tokenize_file(data, "sft", llmjp_tokenizer_dir(), workers=2, show_progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    build = forked.manifest["build"]
    assert (build["processes"], build["encoder"]) == (2, "sentencepiece")
    pids = {pid for pid, *_ in seen}   # (one worker may take every chunk when the other starts late)
    assert len(seen) == build["chunks"] > 1 and 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert all(term and intr and parent == os.getpid() for _, term, intr, parent in seen)
    for name in ("tokens", "mask", "offsets", "lines", "hashes", "loss_tokens"):
        assert forked.array(name).tolist() == serial.array(name).tolist(), name
    assert forked.report.summary() == {**serial.report.summary(), "path": forked.report.path}
    assert forked.report.skipped == 1 and forked.report.warnings >= 1


def test_the_encoder_loads_once_per_process_and_only_for_a_new_file(pair, tmp_path, monkeypatch):
    """A process that tokenises several files with one tokenizer loads its SentencePiece model
    once (in a thread, while the first new file is hashed); opening a cached file loads nothing."""
    import sys

    from tunekit.data import cache, fingerprint, tokenizer
    from tunekit.model import llmjp_tokenizer_dir

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_data import generate

    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "RACY_S", 0)   # digests of files written just now are trusted
    tok_dir = llmjp_tokenizer_dir()
    files = [tmp_path / f"{k}.jsonl" for k in range(3)]
    for k, f in enumerate(files):
        generate(f, 30, seed=k)
    cache.tokenize_file(files[0], "sft", tok_dir, show_progress=False)   # the tokenizer facts, memoised
    monkeypatch.setattr(cache, "_ENCODERS", {})
    loads = []
    real = tokenizer.SentencePieceTokenizer.__init__

    def counting(self, *a, **kw):
        loads.append(1)
        real(self, *a, **kw)

    monkeypatch.setattr(tokenizer.SentencePieceTokenizer, "__init__", counting)
    built = [cache.tokenize_file(f, "sft", tok_dir, workers=1, show_progress=False) for f in files[1:]]
    assert [tf.built for tf in built] == [True, True] and loads == [1]
    monkeypatch.setattr(cache, "_ENCODERS", {})
    again = [cache.tokenize_file(f, "sft", tok_dir, show_progress=False) for f in files]
    assert not any(tf.built for tf in again) and loads == [1] and cache._ENCODERS == {}
