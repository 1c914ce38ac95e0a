"""DPO batches: prompt never scored, one forward for both responses, packing keeps documents apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_pairs, tiny_lm
from tunekit.train.batches import (IGNORE_INDEX, build_pair_batch, document, make_pair, policy_logps,
                                   sequence_logps)
from tunekit.train.engine import CausalLMForTraining

VOCAB = 61


def reference_logp(lm, ids: np.ndarray, n_prompt: int) -> float:
    """log p(response | prompt) of one document run alone, from full logits (the plain way)."""
    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=x).logits.float(), -1)[0]
    targets = x[0, n_prompt:]
    return float(logp[n_prompt - 1:-1].gather(-1, targets[:, None]).sum())


def test_labels_score_only_the_response():
    ids, labels = document(np.array([1, 7, 8, 9]), np.array([20, 21, 2]))
    assert ids.tolist() == [1, 7, 8, 9, 20, 21, 2]
    # position t predicts ids[t+1]: the prompt's last position predicts the first response token.
    assert labels.tolist() == [IGNORE_INDEX] * 3 + [20, 21, 2, IGNORE_INDEX]
    _, empty = document(np.array([1, 7]), np.array([], dtype=np.int64))
    assert (empty == IGNORE_INDEX).all()


def test_packed_layout_keeps_pairs_in_one_row_and_separate_documents():
    pairs = random_pairs(3)
    pb = build_pair_batch(pairs, packed=True, pad_id=4, pad_multiple=8)
    b = pb.batch
    assert b.input_ids.shape[0] == 1 and b.input_ids.shape[1] % 8 == 0
    lens = [n for p in pairs for n in p.lengths]
    assert b.doc_lens[0][:6].tolist() == lens and int(b.doc_lens[0].sum()) == b.input_ids.shape[1]
    assert pb.tokens == sum(lens)
    # every document restarts its positions at 0, and the mask never crosses a boundary
    starts = np.cumsum([0] + lens[:-1])
    assert all(int(b.position_ids[0, s]) == 0 for s in starts)
    mask = b.attention_mask[0, 0]
    assert not mask[starts[1], starts[1] - 1] and mask[starts[1] + 1, starts[1]]
    # scored tokens = response tokens only
    n_scored = int((b.labels != IGNORE_INDEX).sum())
    assert n_scored == sum(len(p.chosen) + len(p.rejected) for p in pairs)
    assert pb.n_chosen.tolist() == [len(p.chosen) for p in pairs]


@pytest.mark.parametrize("packed", [True, False])
def test_batch_logps_equal_each_document_run_alone(packed):
    lm = tiny_lm()
    model = CausalLMForTraining(lm, chunk_tokens=3)  # tiny chunks: the chunked head is exercised
    pairs = random_pairs(4)
    pb = build_pair_batch(pairs, packed=packed, pad_id=4)
    with torch.no_grad():
        chosen, rejected = policy_logps(model, pb)
    for i, p in enumerate(pairs):
        want_c = reference_logp(lm, np.concatenate([p.prompt, p.chosen]), len(p.prompt))
        want_r = reference_logp(lm, np.concatenate([p.prompt, p.rejected]), len(p.prompt))
        assert chosen[i].item() == pytest.approx(want_c, abs=2e-5)
        assert rejected[i].item() == pytest.approx(want_r, abs=2e-5)


def test_without_isolation_the_logps_would_differ():
    # Guard that the test above can fail: the same packed row with a plain causal mask differs.
    lm = tiny_lm()
    model = CausalLMForTraining(lm, chunk_tokens=4)
    pb = build_pair_batch(random_pairs(3), packed=True, pad_id=4)
    with torch.no_grad():
        isolated = torch.stack(policy_logps(model, pb))
        b = pb.batch
        b.attention_mask = torch.tril(torch.ones_like(b.attention_mask))
        b.position_ids = torch.arange(b.input_ids.shape[1])[None]
        leaky = torch.stack(policy_logps(model, pb))
    assert (isolated - leaky).abs().max().item() > 1e-3


def test_sequence_logps_sums_per_document_and_drops_padding():
    pairs = [make_pair([1, 5], [6, 7], [8]), make_pair([1], [9], [10, 11, 12])]
    pb = build_pair_batch(pairs, packed=True, pad_id=4, pad_multiple=16)
    token_lp = torch.zeros(pb.batch.labels.shape)
    token_lp[pb.batch.labels != IGNORE_INDEX] = -1.0
    token_lp[pb.doc_index == 2 * pb.n_pairs] = -100.0  # padding must not leak into any sum
    c, r = sequence_logps(token_lp, pb)
    assert c.tolist() == [-2.0, -1.0] and r.tolist() == [-1.0, -3.0]


def test_gradients_flow_through_the_packed_forward():
    lm = tiny_lm()
    model = CausalLMForTraining(lm, chunk_tokens=5).train()
    pb = build_pair_batch(random_pairs(2), packed=True, pad_id=4)
    c, r = policy_logps(model, pb)
    (c - r).sum().backward()
    assert lm.model.embed_tokens.weight.grad is not None
    assert lm.lm_head.weight.grad.abs().sum().item() > 0


def test_digest_depends_on_content_only():
    a = make_pair([1, 5], [6, 7], [8])
    assert a.digest() == make_pair([1, 5], [6, 7], [8], chosen_reward=3.0).digest()
    assert a.digest() != make_pair([1, 5, 6], [7], [8]).digest()  # boundary moved
    assert a.digest() != make_pair([1, 5], [6, 7], [9]).digest()
