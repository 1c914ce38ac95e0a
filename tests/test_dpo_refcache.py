"""Reference log-prob cache: equal to a live reference, computed once, keyed by content, atomic."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from helpers import live_reference, micro_batches, random_pairs, tiny_lm
from tunekit.train.batches import build_pair_batch, policy_logps
from tunekit.train.engine import CausalLMForTraining
from tunekit.train.refcache import (ReferenceLogps, _file_lock, cache_key, ensure_reference_logps, entry_dir,
                                    weights_fingerprint)


@pytest.fixture()
def model_dir(tmp_path):
    lm = tiny_lm(seed=3)
    out = tmp_path / "ref_model"
    lm.save_pretrained(out)
    return out


def _counting(model):
    calls = {"n": 0}

    def fn(pb):
        calls["n"] += 1
        return policy_logps(model, pb)
    return fn, calls


def _ensure(fn, pairs, model_dir, cache, **kw):
    args = dict(model_dir=model_dir, template="t1", max_seq_length=64, compute_dtype="float32",
                micro_batch_size=3, pad_id=4, cache_dir=cache, log=lambda _m: None)
    args.update(kw)
    return ensure_reference_logps(fn, pairs, **args)


def test_cached_equals_live_reference_and_is_computed_once(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    model = CausalLMForTraining(AutoModelForCausalLM.from_pretrained(model_dir), chunk_tokens=4)
    pairs = random_pairs(7)
    pairs = pairs + pairs[:2]  # duplicates (upsampling) are computed once
    fn, calls = _counting(model)
    first = _ensure(fn, pairs, model_dir, cache)
    assert first.info["hit"] is False and len(first) == 7 and calls["n"] == 3  # ceil(7 / 3)
    again = _ensure(fn, pairs, model_dir, cache)
    assert again.info["hit"] is True and calls["n"] == 3  # nothing recomputed
    # A live reference (its own copy of the model) on the training batches gives the same numbers.
    live = live_reference(CausalLMForTraining(AutoModelForCausalLM.from_pretrained(model_dir), 7))
    for group in micro_batches(pairs, 2):  # a different grouping than the cache was built with
        pb = build_pair_batch(group, packed=True, pad_id=4)
        cached_c, cached_r = again.for_batch(pb)
        live_c, live_r = live(None, pb)
        torch.testing.assert_close(cached_c, live_c, rtol=0, atol=2e-5)
        torch.testing.assert_close(cached_r, live_r, rtol=0, atol=2e-5)
        assert not live_c.requires_grad


def test_key_follows_content(model_dir, tmp_path):
    pairs = random_pairs(4)
    w = weights_fingerprint(model_dir, tmp_path)
    base = dict(weights=w, template="t1", max_seq_length=64, compute_dtype="float32")
    k0, parts = cache_key(pairs, **base)
    assert parts["unique_pairs"] == 4
    assert cache_key(list(reversed(pairs)), **base)[0] == k0      # order does not matter
    assert cache_key(pairs[:3], **base)[0] != k0                  # the data does
    for change in ({"template": "t2"}, {"max_seq_length": 128}, {"compute_dtype": "bfloat16"}):
        assert cache_key(pairs, **{**base, **change})[0] != k0
    # the weights' content, not their path: a copy has the same fingerprint, an edit another one
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert weights_fingerprint(copy, tmp_path) == w
    tiny_lm(seed=4).save_pretrained(copy)
    assert weights_fingerprint(copy, tmp_path) != w


def test_a_failed_computation_leaves_no_entry(model_dir, tmp_path):
    cache = tmp_path / "cache"
    pairs = random_pairs(5)
    n = {"calls": 0}

    def boom(pb):
        n["calls"] += 1
        if n["calls"] == 2:
            raise RuntimeError("killed")
        return torch.zeros(pb.n_pairs), torch.zeros(pb.n_pairs)

    with pytest.raises(RuntimeError):
        _ensure(boom, pairs, model_dir, cache)
    key, _ = cache_key(pairs, weights=weights_fingerprint(model_dir, cache), template="t1",
                       max_seq_length=64, compute_dtype="float32")
    assert not entry_dir(key, cache).exists()
    # the next run computes it properly and stores it
    ok = _ensure(lambda pb: (torch.ones(pb.n_pairs), -torch.ones(pb.n_pairs)), pairs, model_dir, cache)
    assert ok.info["hit"] is False and entry_dir(key, cache).is_dir()
    loaded = ReferenceLogps.load(entry_dir(key, cache))
    assert loaded.lookup([pairs[0].digest()])[1].item() == -1.0


def test_lock_makes_a_second_process_wait(tmp_path):
    lock = tmp_path / "x.lock"
    events = []

    def holder():
        with _file_lock(lock):
            events.append("held")
            time.sleep(0.4)
            events.append("released")

    t = threading.Thread(target=holder)
    t.start()
    while not events:
        time.sleep(0.01)
    with _file_lock(lock, on_wait=lambda: events.append("waited")):
        events.append("acquired")
    t.join()
    assert events == ["held", "waited", "released", "acquired"]


def test_missing_pair_is_a_clear_error():
    ref = ReferenceLogps({})
    with pytest.raises(KeyError, match="no cached reference"):
        ref.lookup([b"0" * 16])


def test_dpo_loss_with_cached_reference_equals_live_reference(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunekit.train.dpo import DPOTask, cached_reference
    from tunekit.train.params import PreferenceParams

    pairs = random_pairs(6, seed=9)
    dev = random_pairs(5, seed=10)
    ref_model = CausalLMForTraining(AutoModelForCausalLM.from_pretrained(model_dir), chunk_tokens=8)
    cached = _ensure(lambda pb: policy_logps(ref_model, pb), pairs, model_dir, tmp_path / "c",
                     eval_pairs=dev, micro_batch_size=2)
    live_model = CausalLMForTraining(AutoModelForCausalLM.from_pretrained(model_dir), 8)
    live = live_reference(live_model)
    policy = CausalLMForTraining(tiny_lm(seed=11), chunk_tokens=8).train()  # a different model
    cfg = PreferenceParams(preference_loss="dpo", ref_policy_kl_penalty=0.5)
    for group in micro_batches(pairs, 3):
        pb = build_pair_batch(group, packed=True, pad_id=4)
        loss_cached, m_cached = DPOTask(cfg, cached_reference(cached)).loss(policy, pb)
        loss_live, m_live = DPOTask(cfg, live).loss(policy, pb)
        torch.testing.assert_close(loss_cached, loss_live, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(m_cached["reward_margin"], m_live["reward_margin"], rtol=1e-6, atol=1e-5)
        loss_live.backward()
    assert all(p.grad is None for p in live_model.parameters())  # the reference never gets gradients
    assert any(p.grad is not None for p in policy.parameters())
    # dev pairs were cached in the evaluation layout (groups of 2 filled with pair 0): bit-identical
    for i in range(0, len(dev), 2):
        group = dev[i:i + 2]
        group = group + [dev[0]] * (2 - len(group))
        pb = build_pair_batch(group, packed=True, pad_id=4)
        c, r = cached.for_batch(pb)
        lc, lr = live(None, pb)
        assert torch.equal(c, lc.float()) and torch.equal(r, lr.float())


def _flip_byte(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flipped byte in logps.npz", "truncated logps.npz", "garbage meta.json"])
def test_a_damaged_entry_names_its_file_and_is_recomputed(model_dir, tmp_path, damage):
    cache = tmp_path / "cache"
    pairs = random_pairs(5)
    fn = lambda pb: (torch.arange(pb.n_pairs, dtype=torch.float32), -torch.ones(pb.n_pairs))  # noqa: E731
    first = _ensure(fn, pairs, model_dir, cache)
    target = entry_dir(first.info["key"], cache)
    npz = target / "logps.npz"
    if damage == "flipped byte in logps.npz":
        # the last byte of the stored `chosen` floats (npz members are stored uncompressed)
        import struct
        import zipfile

        with zipfile.ZipFile(npz) as z:
            info = z.getinfo("chosen.npy")
        raw = npz.read_bytes()
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        _flip_byte(npz, info.header_offset + 30 + name_len + extra_len + info.compress_size - 1)
    elif damage == "truncated logps.npz":
        npz.write_bytes(npz.read_bytes()[:100])
    else:
        (target / "meta.json").write_text("{not json", encoding="utf-8")
    said = []
    calls = {"n": 0}

    def counted(pb):
        calls["n"] += 1
        return fn(pb)

    again = _ensure(counted, pairs, model_dir, cache, log=said.append)
    name = "meta.json" if "meta" in damage else "logps.npz"
    assert any(f"cache entry {target} is damaged: {name}" in m and "recomputing it" in m for m in said), said
    assert again.info["hit"] is False and calls["n"] > 0
    assert {d: again.table[d] for d in first.table} == first.table
    third = _ensure(counted, pairs, model_dir, cache)
    assert third.info["hit"] is True
