"""The chunked loss equals the plain full-logits loss (value and gradients) and bounds the logits block."""
from __future__ import annotations

import pytest
import torch

import tunekit.train.loss as loss_mod
from tunekit.train.loss import plain_sft_loss, sft_loss_sum, token_logprobs


def _inputs(seed=0, b=2, t=11, h=8, v=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :4] = -100
    labels[1, -3:] = -100
    return hidden, weight, labels


def test_chunked_loss_matches_plain_loss_and_gradients():
    hidden, weight, labels = _inputs()
    total, n = sft_loss_sum(hidden, weight, labels, chunk_tokens=3)
    (total / n).backward()
    g_h, g_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = plain_sft_loss(hidden @ weight.T, labels)
    ref.backward()
    assert n == int((labels != -100).sum())
    torch.testing.assert_close(total / n, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, g_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, g_w, rtol=1e-5, atol=1e-6)


def test_logits_are_never_built_for_more_than_one_chunk(monkeypatch):
    seen = []
    real = loss_mod._chunk_logprobs

    def spy(h, w, y):
        seen.append(h.shape[0])
        return real(h, w, y)

    monkeypatch.setattr(loss_mod, "_chunk_logprobs", spy)
    hidden, weight, labels = _inputs(t=40)
    n_labelled = int((labels != -100).sum())
    total, _ = sft_loss_sum(hidden, weight, labels, chunk_tokens=7)
    total.backward()  # backward recomputes chunk by chunk (activation checkpointing)
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
    ref, _ = sft_loss_sum(hidden, weight, labels, chunk_tokens=1000)
    got, _ = sft_loss_sum(hidden, weight, labels, chunk_tokens=chunk)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
