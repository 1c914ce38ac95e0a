"""Packing: the item contract the SFT engine relies on, isolation, over-length policy, official mode."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tunekit.data.cache import tokenize_file
from tunekit.data.packing import IGNORE_INDEX, best_fit_decreasing, pack_sft
from tunekit.model import tiny_tokenizer_dir

S = 64


@pytest.fixture(scope="module")
def tok_dir():
    return tiny_tokenizer_dir()


@pytest.fixture
def tf(tmp_path, monkeypatch, tok_dir):
    """A cached SFT file with examples of varied length (some longer than S)."""
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(60):
        answer = " ".join(str(x) for x in rng.integers(0, 99, size=int(rng.integers(1, 30))))
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": f"問題 {i}"},
                {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": msgs}, ensure_ascii=False))
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tokenize_file(path, "sft", tok_dir, show_progress=False)


def docs_of(item):
    """Split a packed item back into its documents: (ids, labels) per document, padding excluded."""
    out, t = [], 0
    for n in item["doc_lens"]:
        out.append((item["input_ids"][t:t + n], item["labels"][t:t + n], item["position_ids"][t:t + n]))
        t += n
    return out


def check_contract(ds):
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"input_ids", "labels", "position_ids", "doc_lens"}
        for k in ("input_ids", "labels", "position_ids"):
            assert item[k].shape == (S,) and item[k].dtype == np.int64
        assert item["doc_lens"].dtype == np.int32 and int(item["doc_lens"].sum()) == S
        for ids, labels, pos in docs_of(item):
            assert np.array_equal(pos, np.arange(len(ids)))         # positions restart per document
            assert labels[-1] == IGNORE_INDEX                          # nothing predicted across docs
            on = labels[:-1] != IGNORE_INDEX
            assert np.array_equal(labels[:-1][on], ids[1:][on])        # shifted: label t = token t+1


def test_isolated_packing_contract_and_content(tf):
    src, rec = np.zeros(len(tf), np.int32), np.arange(len(tf))
    ds = pack_sft([tf], src, rec, max_seq_length=S, pad_id=4, overlong="drop")
    check_contract(ds)
    st = ds.stats
    assert st.examples == st.packed + st.dropped_overlong + st.dropped_no_loss
    assert st.dropped_overlong == int((tf.lengths() > S).sum()) > 0
    # every kept example appears exactly once, intact, with its loss mask turned into labels
    want = Counter()
    for r in range(len(tf)):
        ids, mask = tf.sft(r)
        if len(ids) <= S:
            labels = np.where(mask[1:] > 0, ids[1:], IGNORE_INDEX)
            want[(tuple(ids), tuple(labels))] += 1
    got = Counter()
    for i in range(len(ds)):
        item = ds[i]
        docs = docs_of(item)
        if ds.real_tokens(i) < S:     # trailing padding is its own final document
            ids, labels, _ = docs.pop()
            assert (ids == 4).all() and (labels == IGNORE_INDEX).all()
        for ids, labels, _ in docs:
            got[(tuple(ids), tuple(labels[:-1]))] += 1
    assert got == want
    assert st.tokens == sum(ds.real_tokens(i) for i in range(len(ds)))
    assert st.loss_tokens == sum(int((ds[i]["labels"] != IGNORE_INDEX).sum()) for i in range(len(ds)))
    assert 0 < st.utilisation <= 1 and st.docs_per_sequence > 1


def test_truncate_policy_counts_and_keeps_heads(tf):
    src, rec = np.zeros(len(tf), np.int32), np.arange(len(tf))
    ds = pack_sft([tf], src, rec, max_seq_length=S, pad_id=4, overlong="truncate")
    check_contract(ds)
    over = tf.lengths() > S
    assert ds.stats.truncated == int(over.sum())
    assert ds.stats.truncated_tokens == int((tf.lengths()[over] - S).sum())
    assert ds.stats.packed + ds.stats.dropped_no_loss == len(tf)
    full = [d for i in range(len(ds)) for d in docs_of(ds[i]) if len(d[0]) == S]
    assert full and all(d[0][0] == 1 for d in full)                      # truncated docs keep their head


def test_examples_without_a_trained_token_are_dropped(tf):
    # At S=12 the truncated examples keep only system + prompt tokens: nothing to learn from them.
    src, rec = np.zeros(len(tf), np.int32), np.arange(len(tf))
    ds = pack_sft([tf], src, rec, max_seq_length=12, pad_id=4, overlong="truncate")
    assert ds.stats.dropped_no_loss > 0
    assert ds.stats.examples == ds.stats.packed + ds.stats.dropped_no_loss
    assert all((ds[i]["labels"] != IGNORE_INDEX).any() for i in range(len(ds)))


def test_official_stream_and_cut(tf):
    src, rec = np.zeros(len(tf), np.int32), np.arange(len(tf))
    ds = pack_sft([tf], src, rec, max_seq_length=S, pad_id=4, packing="official")
    stream = np.concatenate([tf.sft(r)[0] for r in range(len(tf))])
    mask = np.concatenate([tf.sft(r)[1] for r in range(len(tf))])
    n_win = len(stream) // (S + 1)
    assert ds.stats.remainder_tokens_dropped == len(stream) - n_win * (S + 1)
    assert len(ds) + ds.stats.windows_dropped_no_loss == n_win
    for i in range(len(ds)):
        item = ds[i]
        start = int(ds.windows[i])
        assert start % (S + 1) == 0
        assert np.array_equal(item["input_ids"], stream[start:start + S])
        assert np.array_equal(item["labels"], np.where(mask[start + 1:start + S + 1] > 0,
                                                       stream[start + 1:start + S + 1], IGNORE_INDEX))
        assert np.array_equal(item["position_ids"], np.arange(S)) and item["doc_lens"].tolist() == [S]


def test_best_fit_decreasing_packs_everything_within_capacity():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, size=500)
    bins = best_fit_decreasing(lengths, 100)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(500))
    assert all(lengths[b].sum() <= 100 for b in bins)
    assert len(bins) <= int(np.ceil(lengths.sum() / 100 * 1.25))   # FFD-class bound, not the optimum
    assert bins == best_fit_decreasing(lengths, 100)                # deterministic


def test_pickles_without_the_token_data(tf):
    import pickle

    src, rec = np.zeros(len(tf), np.int32), np.arange(len(tf))
    ds = pack_sft([tf], src, rec, max_seq_length=S, pad_id=4)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000
    again = pickle.loads(blob)
    assert all(np.array_equal(again[3][k], ds[3][k]) for k in ds[3])


# ---------------------------------------------------------------- what max_seq_length costs
def test_drop_is_the_default_and_truncation_reports_answers_that_lose_their_end(tf, capsys):
    """Truncating cuts the END of an answer (its final \\boxed{} and eos): the default drops such
    examples (counted), and `truncate` says how many answers lose their end and how many trained
    tokens go with them."""
    from tunekit.data.params import DataConfig

    assert DataConfig().overlong == "drop"
    src, rec = np.zeros(len(tf), np.int32), np.arange(len(tf))
    dropped = pack_sft([tf], src, rec, max_seq_length=S, pad_id=4)
    over = tf.lengths() > S
    assert dropped.stats.dropped_overlong == int(over.sum()) > 0 and dropped.stats.truncated == 0
    assert dropped.stats.dropped_overlong_tokens == int(tf.lengths()[over].sum())
    assert "lose the end of an answer" not in capsys.readouterr().err
    cut = pack_sft([tf], src, rec, max_seq_length=S, pad_id=4, overlong="truncate")
    # brute force: trained tokens at positions >= S of each over-long example
    lost = [int(tf.sft(r)[1][S:].sum()) for r in range(len(tf)) if over[r]]
    assert cut.stats.answers_cut == sum(n > 0 for n in lost) > 0
    assert cut.stats.truncated_loss_tokens == sum(lost)
    err = capsys.readouterr().err
    assert f"warning: {cut.stats.answers_cut} of {len(tf)} SFT examples lose the end of an answer" in err
    assert f"max_seq_length={S} ({sum(lost)} trained tokens" in err and err.count("warning") == 1


def test_lost_tokens_table_per_dataset(tmp_path, monkeypatch):
    """10_inspect_data's table: per dataset and split, what is lost at max_seq_length, both policies."""
    from tunekit.data.mixing import build_mixture
    from tunekit.data.stats import lost_tokens

    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    train = tmp_path / "v" / "tuning" / "train"
    train.mkdir(parents=True)
    for name, words, step in (("short", 2, 0), ("long", 60, 1)):
        lines = [json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"},
                                          {"role": "assistant", "content": " ".join(["12"] * (words + step * i))}]})
                 for i in range(20)]
        (train / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    mix = build_mixture({"data_dir": str(tmp_path), "data_version": "v", "tokenizer": "tiny"}, "sft",
                        show_progress=False)
    for policy in ("drop", "truncate"):
        table = lost_tokens(mix, S, policy).set_index(["dataset", "split"])
        assert table.loc[("short", "train"), "over_length"] == 0 and table.loc[("short", "train"), "tokens_lost"] == 0
        src = next(s for s in mix.sources if s.name == "long")
        idx = src.train_idx
        n = src.file.lengths()[idx]
        row = table.loc[("long", "train")]
        assert row["over_length"] == int((n > S).sum()) > 0
        masks = [src.file.sft(int(r))[1] for r in idx if src.file.lengths()[r] > S]
        assert row["answers_cut"] == sum(int(m[S:].sum()) > 0 for m in masks)
        if policy == "drop":
            assert row["examples_lost"] == row["over_length"] and row["tokens_lost"] == int(n[n > S].sum())
            assert row["trained_tokens_lost"] == sum(int(m.sum()) for m in masks)
        else:
            assert row["examples_lost"] == 0 and row["tokens_lost"] == int((n[n > S] - S).sum())
            assert row["trained_tokens_lost"] == sum(int(m[S:].sum()) for m in masks)
