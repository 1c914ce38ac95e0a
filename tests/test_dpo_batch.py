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


def test_per_document_layout_puts_the_pairs_back_to_back_in_one_row():
    pairs = random_pairs(3)
    pb = build_pair_batch(pairs, packed=True, pad_id=4, pad_multiple=8, varlen=True)
    b = pb.batch
    assert b.input_ids.shape[0] == 1 and b.input_ids.shape[1] % 8 == 0 and b.attention_mask is None
    lens = [n for p in pairs for n in p.lengths]
    assert b.doc_lens[0][:6].tolist() == lens and int(b.doc_lens[0].sum()) == b.input_ids.shape[1]
    assert b.cu_seqlens.tolist()[:7] == np.cumsum([0] + lens).tolist()
    assert pb.tokens == sum(lens) and b.input_ids.shape[1] - sum(lens) < 8  # only the rounding pads
    starts = np.cumsum([0] + lens[:-1])
    assert all(int(b.position_ids[0, s]) == 0 for s in starts)
    n_scored = int((b.labels != IGNORE_INDEX).sum())
    assert n_scored == sum(len(p.chosen) + len(p.rejected) for p in pairs)
    assert pb.n_chosen.tolist() == [len(p.chosen) for p in pairs]


def test_masked_layout_rows_are_as_wide_as_the_longest_document():
    pairs = random_pairs(6)
    lens = [n for p in pairs for n in p.lengths]
    pb = build_pair_batch(pairs, packed=True, pad_id=4, pad_multiple=8)
    b = pb.batch
    width = b.input_ids.shape[1]
    assert width == -(-max(lens) // 8) * 8 and width % 8 == 0
    # fewer rows than documents (pairs share rows), every document exactly once, none split
    assert b.input_ids.shape[0] < len(lens) and b.attention_mask.shape == (b.input_ids.shape[0], 1, width, width)
    seen = sorted(int(d) for d in pb.doc_index.unique() if d < len(lens))
    assert seen == list(range(len(lens)))
    for d, n in enumerate(lens):
        rows = (pb.doc_index == d).any(dim=1).nonzero().flatten()
        assert len(rows) == 1 and int((pb.doc_index == d).sum()) == n
    # the mask never crosses a document boundary inside a row
    for r in range(b.input_ids.shape[0]):
        where = pb.doc_index[r]
        cross = where[:, None] != where[None, :]
        assert not (b.attention_mask[r, 0] & cross).any()
    assert pb.tokens == sum(lens)
    # quadratic attention cost follows the real lengths: far below one row holding everything
    assert b.input_ids.shape[0] * width ** 2 < sum(lens) ** 2 / 2


def test_rows_padded_for_cudnn_never_have_length_64_mod_128():
    # pytorch#196678: with a mask, cuDNN's backward returns NaN on H200 at lengths of 64 mod 128.
    from tunekit.train.batches import pair_rows
    from tunekit.train.distributed import DistEnv
    from tunekit.train.engine import resolve_attention, row_multiple

    cpu = DistEnv(0, 1, 0, torch.device("cpu"), "gloo")
    cuda = DistEnv(0, 1, 0, torch.device("cuda", 0), "nccl")  # only its device type is read
    assert row_multiple("sdpa", cuda) == 128 and row_multiple("eager", cuda) == 128
    assert row_multiple("sdpa", cpu) == 8 and row_multiple(resolve_attention("auto", cuda), cuda) == 8
    lens = [40, 60, 25, 57]                   # longest 60: rounded to 8 it is 64, a NaN length
    assert pair_rows(lens, packed=True, varlen=False, pad_multiple=8)[1] % 128 == 64
    for packed in (True, False):
        _, width = pair_rows(lens, packed=packed, varlen=False, pad_multiple=row_multiple("sdpa", cuda))
        assert width == 128


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
