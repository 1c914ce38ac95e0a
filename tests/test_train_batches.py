"""Packed batches keep documents apart: masks, varlen offsets, and loss isolation on a real model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tunekit.train.batches import (IGNORE_INDEX, block_causal_mask, collate_packed, cu_seqlens_from,
                                   real_token_count)
from helpers import Doc, labels_of, make_documents, pack_documents


def test_block_causal_mask_by_hand():
    m = block_causal_mask([2, 3], 5).int()
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 1, 1, 1]])
    assert torch.equal(m, expected)
    with pytest.raises(ValueError):
        block_causal_mask([2, 2], 5)


def test_cu_seqlens_flattens_the_batch():
    cu, longest = cu_seqlens_from([np.array([3, 1], np.int32), np.array([4], np.int32)])
    assert cu.tolist() == [0, 3, 4, 8] and cu.dtype == torch.int32 and longest == 4


def test_packing_follows_the_contract():
    docs = [Doc(np.array([1, 10, 11, 12]), np.array([0, 0, 1, 1], np.int8)),
            Doc(np.array([1, 20, 21]), np.array([0, 1, 1], np.int8))]
    (item,) = pack_documents(docs, 9, pad_id=4)
    assert item["input_ids"].tolist() == [1, 10, 11, 12, 1, 20, 21, 4, 4]
    # shifted labels: predict the next token where it is trained on; last token of a doc -> -100
    assert item["labels"].tolist() == [-100, 11, 12, -100, 20, 21, -100, -100, -100]
    assert item["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1]
    assert item["doc_lens"].tolist() == [4, 3, 2] and item["doc_lens"].dtype == np.int32
    assert real_token_count(item["input_ids"], item["labels"], item["doc_lens"], pad_id=4) == 7
    batch = collate_packed([item, item], pad_id=4)
    assert batch.attention_mask.shape == (2, 1, 9, 9) and batch.real_tokens == 14
    assert batch.loss_tokens == 2 * 4
    flat = collate_packed([item], varlen=True).model_inputs()
    assert flat["input_ids"].shape == (1, 9) and flat["cu_seq_lens_q"].tolist() == [0, 4, 7, 9]


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def _doc_loss_sum(model, doc: Doc) -> float:
    ids = torch.as_tensor(doc.ids)[None]
    labels = torch.as_tensor(labels_of(doc))[None]
    logits = model(input_ids=ids).logits.float()
    return torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=IGNORE_INDEX,
                                             reduction="sum").item()


def test_packed_loss_equals_sum_of_documents_alone():
    model = _tiny_model()
    docs = make_documents(5, vocab=64, min_len=5, max_len=14, seed=3)
    items = pack_documents(docs, 40, pad_id=4)
    assert len(items) >= 2 and any(len(it["doc_lens"]) >= 3 for it in items)
    batch = collate_packed(items, pad_id=4)
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits.float()
        packed = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), batch.labels.reshape(-1),
                                                   ignore_index=IGNORE_INDEX, reduction="sum").item()
        alone = sum(_doc_loss_sum(model, d) for d in docs)
        # The same batch without the block mask lets documents see each other: clearly different.
        leaky_logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits.float()
        leaky = torch.nn.functional.cross_entropy(leaky_logits.reshape(-1, 64), batch.labels.reshape(-1),
                                                  ignore_index=IGNORE_INDEX, reduction="sum").item()
    assert packed == pytest.approx(alone, rel=1e-5, abs=1e-4)
    assert abs(leaky - alone) > 1e-2
