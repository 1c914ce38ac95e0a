"""The SFT loss the engine trains with: equal to transformers' own loss, chunked so logits stay bounded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tunekit.train.engine as engine
from helpers import tiny_lm
from tunekit.train.batches import collate_packed
from tunekit.train.engine import CausalLMForTraining, token_logprobs
from tunekit.train.sft import sft_loss


def _inputs(seed=0, b=2, t=11, h=8, v=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :4] = -100
    labels[1, -3:] = -100
    return hidden, weight, labels


def test_sft_loss_equals_transformers_causal_lm_loss_and_gradients(one_thread):
    """sft_loss / labelled tokens == LlamaForCausalLM(labels=...).loss, gradients included."""
    lm = tiny_lm(seed=2).train()
    ids = np.random.default_rng(0).integers(5, 61, size=(3, 17))
    labels = np.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]  # the kit's labels are already shifted
    labels[0, :5] = -100  # a prompt that is not trained on
    items = [{"input_ids": i, "labels": lab, "position_ids": np.arange(ids.shape[1]),
              "doc_lens": np.array([ids.shape[1]], dtype=np.int32)} for i, lab in zip(ids, labels)]
    batch = collate_packed(items)
    ours = sft_loss(CausalLMForTraining(lm, chunk_tokens=7), batch) / batch.weight
    ours.backward()
    ours_grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    hf_labels = torch.as_tensor(ids).clone()
    hf_labels[0, :6] = -100  # transformers shifts internally: the same targets as above
    theirs = lm(input_ids=torch.as_tensor(ids), labels=hf_labels).loss
    theirs.backward()
    assert batch.weight == int((labels != -100).sum())
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    for n, p in lm.named_parameters():
        torch.testing.assert_close(ours_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_chunked_head_matches_full_logits():
    hidden, weight, labels = _inputs()
    lp = token_logprobs(hidden, weight, labels, chunk_tokens=3)
    full = torch.log_softmax((hidden @ weight.T).float(), -1)
    mask = labels != -100
    ref = full.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    torch.testing.assert_close(lp, ref, rtol=1e-6, atol=1e-6)
    lp.sum().backward()
    g_h, g_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref.sum().backward()
    torch.testing.assert_close(hidden.grad, g_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, g_w, rtol=1e-5, atol=1e-6)


def test_logits_are_never_built_for_more_than_one_chunk(monkeypatch):
    seen = []
    real = engine._chunk_logprobs

    def spy(h, w, y):
        seen.append(h.shape[0])
        return real(h, w, y)

    monkeypatch.setattr(engine, "_chunk_logprobs", spy)
    hidden, weight, labels = _inputs(t=40)
    n_labelled = int((labels != -100).sum())
    token_logprobs(hidden, weight, labels, chunk_tokens=7).sum().backward()  # backward recomputes per chunk
    assert max(seen) <= 7
    assert sum(seen) == 2 * n_labelled  # each labelled row once forward, once in recompute


def test_token_logprobs_zero_where_unlabelled_and_connected_when_empty():
    hidden, weight, labels = _inputs()
    lp = token_logprobs(hidden, weight, labels, chunk_tokens=4)
    assert lp.shape == labels.shape and lp.dtype == torch.float32
    assert torch.all(lp[labels == -100] == 0) and torch.all(lp[labels != -100] < 0)
    empty = token_logprobs(hidden, weight, torch.full_like(labels, -100))
    empty.sum().backward()  # must not raise: FSDP needs a graph even for a batch without labels
    assert float(empty.detach().abs().sum()) == 0.0


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunk_size_does_not_change_the_value(chunk):
    hidden, weight, labels = _inputs(seed=1)
    ref = token_logprobs(hidden, weight, labels, chunk_tokens=1000).sum()
    got = token_logprobs(hidden, weight, labels, chunk_tokens=chunk).sum()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
