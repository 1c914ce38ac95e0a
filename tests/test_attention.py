"""Per-document attention (attention.py) equals the dense block-mask path: logits and gradients.

The GPU path hands the batch's cu_seqlens to torch's FlashAttention varlen kernel through the
same transformers AttentionInterface entry that runs here with the per-document SDPA reference;
so everything but the kernel itself (offsets, shapes, GQA, flattening, the no-op mask, the
engine's wiring) is exercised on the CPU against the dense-mask path the kit used before.
`make gpu-smoke` compares the real kernel with the same dense path in bf16.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_pairs, synthetic_packed
from tunekit.train import attention
from tunekit.train.batches import build_pair_batch, collate_packed, policy_logps
from tunekit.train.engine import CausalLMForTraining

VOCAB = 64


def _model(impl: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    attention.register()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=impl).train()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = a[name].abs().max().item()
        assert scale > 0, name  # every parameter got a gradient (the comparison is not vacuous)
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_reference_kernel_follows_the_varlen_contract():
    # [T, H, D] in and out, causal window (-1, 0), GQA: each document alone equals SDPA on it alone.
    torch.manual_seed(0)
    lens = [5, 1, 9, 3]
    q, k, v = torch.randn(18, 4, 8), torch.randn(18, 2, 8), torch.randn(18, 2, 8)
    cu = torch.tensor(np.cumsum([0] + lens), dtype=torch.int32)
    out = attention.varlen_reference(q, k, v, cu, cu, max(lens), max(lens), window_size=(-1, 0), enable_gqa=True)
    assert out.shape == q.shape
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[s:e].transpose(0, 1)[None], k[s:e].transpose(0, 1)[None], v[s:e].transpose(0, 1)[None],
            is_causal=True, enable_gqa=True)[0].transpose(0, 1)
        torch.testing.assert_close(out[s:e], alone)
    with pytest.raises(ValueError, match="enable_gqa"):
        attention.varlen_reference(q, k, v, cu, cu, 9, 9, window_size=(-1, 0))
    with pytest.raises(ValueError, match="full or causal"):
        attention.varlen_reference(q, k, k, cu, cu, 9, 9, window_size=(4, 0), enable_gqa=True)


def test_packed_sft_logits_and_gradients_equal_the_dense_mask_path():
    items = synthetic_packed(14, 48, VOCAB, seed=2, min_len=3, max_len=30)
    assert len(items) >= 3 and max(len(it["doc_lens"]) for it in items) >= 3
    dense, varlen = _model("sdpa"), _model(attention.IMPLEMENTATION)
    varlen.load_state_dict(dense.state_dict())
    results = {}
    for name, model, flat in (("dense", dense, False), ("varlen", varlen, True)):
        batch = collate_packed(items, varlen=flat, pad_id=4)
        assert (batch.attention_mask is None) == flat and (batch.cu_seqlens is not None) == flat
        logits = model(**batch.model_inputs()).logits.reshape(len(items), 48, VOCAB)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch.labels.reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        results[name] = (logits.detach(), _grads(model))
    torch.testing.assert_close(results["varlen"][0], results["dense"][0], rtol=1e-5, atol=1e-5)
    _assert_grads_close(results["dense"][1], results["varlen"][1])


def test_packed_sft_equals_each_document_alone_and_padded():
    # Three independent layouts of the same documents: per-document attention over the packed rows,
    # each document in a forward of its own (no padding, no mask), and all of them right-padded to
    # the longest in one batch with a padding mask (the plain HF way). Logits agree on real tokens.
    from helpers import make_documents, pack_documents

    docs = make_documents(9, VOCAB, 3, 30, seed=5)
    items = pack_documents(docs, 48, pad_id=4)
    assert max(len(it["doc_lens"]) for it in items) >= 3
    model = _model(attention.IMPLEMENTATION, seed=1)
    plain = _model("sdpa", seed=1)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        packed = model(**collate_packed(items, varlen=True, pad_id=4).model_inputs()).logits.reshape(-1, VOCAB)
        longest = max(len(d.ids) for d in docs)
        ids = torch.full((len(docs), longest), 4, dtype=torch.long)
        mask = torch.zeros((len(docs), longest), dtype=torch.long)
        for i, d in enumerate(docs):
            ids[i, :len(d.ids)], mask[i, :len(d.ids)] = torch.as_tensor(d.ids), 1
        padded = plain(input_ids=ids, attention_mask=mask).logits
        at, doc = 0, 0
        for it in items:
            off = 0
            for n in it["doc_lens"].tolist():
                if it["input_ids"][off] == 1:  # a document (bos); otherwise the row's padding
                    np.testing.assert_array_equal(it["input_ids"][off:off + n], docs[doc].ids)
                    alone = plain(input_ids=torch.as_tensor(docs[doc].ids)[None]).logits[0]
                    torch.testing.assert_close(packed[at + off:at + off + n], alone, rtol=1e-5, atol=1e-5)
                    torch.testing.assert_close(padded[doc, :n], alone, rtol=1e-5, atol=1e-5)
                    doc += 1
                off += n
            at += len(it["input_ids"])
        assert doc == len(docs)  # every document was found and compared


def test_the_comparison_can_fail_documents_that_leak_change_the_logits():
    # Guard: per-document attention over WRONG offsets (one document per row) differs clearly.
    items = synthetic_packed(14, 48, VOCAB, seed=2, min_len=3, max_len=30)
    model = _model(attention.IMPLEMENTATION)
    batch = collate_packed(items, varlen=True, pad_id=4)
    good = model(**batch.model_inputs()).logits
    inputs = batch.model_inputs()
    inputs["cu_seq_lens_q"] = inputs["cu_seq_lens_k"] = torch.arange(0, 48 * len(items) + 1, 48, dtype=torch.int32)
    inputs["max_length_q"] = inputs["max_length_k"] = 48
    leaky = model(**inputs).logits
    assert (good - leaky).abs().max().item() > 1e-2


@pytest.mark.parametrize("packed", [True, False])
def test_dpo_pair_logps_and_gradients_equal_the_dense_mask_path(packed):
    pairs = random_pairs(5, vocab=VOCAB)
    dense, varlen = _model("sdpa", seed=3), _model(attention.IMPLEMENTATION, seed=3)
    varlen.load_state_dict(dense.state_dict())
    out = {}
    for name, lm, flat in (("dense", dense, False), ("varlen", varlen, True)):
        pb = build_pair_batch(pairs, packed=packed, pad_id=4, varlen=flat)
        chosen, rejected = policy_logps(CausalLMForTraining(lm, chunk_tokens=7), pb)
        (chosen.sum() - 2.0 * rejected.sum()).backward()
        out[name] = (torch.stack([chosen, rejected]).detach(), _grads(lm))
    torch.testing.assert_close(out["varlen"][0], out["dense"][0], rtol=1e-5, atol=1e-5)
    _assert_grads_close(out["dense"][1], out["varlen"][1])


def test_the_attention_function_refuses_what_it_cannot_do():
    model = _model(attention.IMPLEMENTATION)
    ids = torch.randint(5, VOCAB, (2, 8))
    with pytest.raises(ValueError, match="needs the batch's cu_seq_lens_q"):
        model(input_ids=ids)  # a plain batch: no offsets, so no silent cross-document attention
    cu = torch.tensor([0, 8, 16], dtype=torch.int32)
    with pytest.raises(ValueError, match="flattened to one row"):
        model(input_ids=ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=8, max_length_k=8)


def test_kernel_choice_by_device_and_dtype():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert attention.uses_flash_kernel(cuda, torch.bfloat16) and attention.uses_flash_kernel(cuda, torch.float16)
    assert not attention.uses_flash_kernel(cuda, torch.float32)  # FlashAttention has no fp32 kernel
    assert not attention.uses_flash_kernel(cpu, torch.bfloat16)
    assert attention.kernel_for(torch.zeros(1, 1, 8)) is attention.varlen_reference
    assert "FlashAttention" in attention.describe(cuda, torch.bfloat16)
    assert "reference" in attention.describe(cpu, torch.float32)


def test_auto_is_per_document_attention_in_the_engine(model_dir):
    from tunekit.train.distributed import init_distributed
    from tunekit.train.engine import load_for_training, resolve_attention

    env = init_distributed()
    assert resolve_attention("auto", env) == resolve_attention("varlen", env) == attention.IMPLEMENTATION
    assert resolve_attention("sdpa", env) == "sdpa"
    items = synthetic_packed(10, 32, 96, seed=4, min_len=3, max_len=20)
    logps = {}
    for requested in ("auto", "sdpa"):
        model, setup = load_for_training(model_dir, env, attn_implementation=requested)
        batch = collate_packed(items, varlen=requested == "auto", pad_id=4)
        with torch.no_grad():
            logps[requested] = model(labels=batch.labels, **batch.model_inputs())
        assert setup.attn_implementation == ("varlen" if requested == "auto" else "sdpa")
    torch.testing.assert_close(logps["auto"], logps["sdpa"], rtol=1e-5, atol=1e-5)
