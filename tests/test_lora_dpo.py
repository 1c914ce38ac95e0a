"""DPO with LoRA: the adapters-off reference equals the cached reference (refcache) and gives the
same loss and gradients in a training step."""
from __future__ import annotations

import pytest
import torch

from helpers import LORA_SPEC as SPEC
from helpers import micro_batches, perturb_adapters, random_pairs, training_model
from tunekit.train.batches import build_pair_batch, policy_logps
from tunekit.train.dpo import DPOTask, adapters_off_logps, cached_reference
from tunekit.train.params import PreferenceParams
from tunekit.train.refcache import ensure_reference_logps

PAD = 4
pytestmark = pytest.mark.usefixtures("one_thread")  # CPU matmul results depend on the thread count


@pytest.fixture(scope="module")
def pairs():
    return random_pairs(10, seed=11)


@pytest.fixture(scope="module")
def cached(model_dir, pairs, tmp_path_factory):
    """Reference log-probs through the DPO stage's cache path: the init model without adapters."""
    ref_model, env = training_model(model_dir, None)
    ref_model.eval()
    return ensure_reference_logps(lambda pb: policy_logps(ref_model, pb), pairs, model_dir=model_dir,
                                  template="t", max_seq_length=64, compute_dtype="float32",
                                  micro_batch_size=4, pad_id=PAD, device=env.device,
                                  cache_dir=tmp_path_factory.mktemp("cache"), log=lambda _m: None)


@pytest.fixture(scope="module")
def trained_lora(model_dir):
    model, _ = training_model(model_dir, SPEC)
    perturb_adapters(model, seed=2, scale=0.2)  # as after some training: policy != reference
    return model


@pytest.mark.parametrize("packed", [True, False])
def test_adapters_off_reference_equals_the_cache(cached, trained_lora, pairs, packed):
    assert cached.info["hit"] is False and len(cached) == len(pairs)
    for group in micro_batches(pairs, 3):
        pb = build_pair_batch(group, packed=packed, pad_id=PAD)
        c_cache, r_cache = cached.for_batch(pb)
        c_off, r_off = adapters_off_logps(trained_lora, pb)
        torch.testing.assert_close(c_off, c_cache, atol=2e-5, rtol=0)
        torch.testing.assert_close(r_off, r_cache, atol=2e-5, rtol=0)
        # and the policy itself (adapters on) is really different from it
        c_pol, _ = policy_logps(trained_lora, pb)
        assert (c_pol.detach() - c_cache).abs().max() > 1e-2


def test_training_step_is_the_same_with_either_reference(cached, trained_lora, pairs):
    cfg = PreferenceParams(ref_policy_kl_penalty=0.5)
    model = trained_lora.train()
    pb = build_pair_batch(pairs[:4], packed=True, pad_id=PAD)
    results = []
    for task in (DPOTask(cfg, cached_reference(cached), pad_id=PAD), DPOTask(cfg, adapters_off_logps, pad_id=PAD)):
        model.zero_grad(set_to_none=True)
        loss, extras = task.loss(model, pb)
        loss.backward()
        grads = {n: p.grad.full_tensor().clone() if hasattr(p.grad, "full_tensor") else p.grad.clone()
                 for n, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss.detach()), {k: float(v) for k, v in extras.items()}, grads))
    (l1, e1, g1), (l2, e2, g2) = results
    assert l1 == pytest.approx(l2, abs=1e-5)
    assert e1.keys() == e2.keys() and all(e1[k] == pytest.approx(e2[k], abs=1e-5) for k in e1)
    assert g1.keys() == g2.keys() and any(g.abs().sum() > 0 for g in g1.values())
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], atol=1e-5, rtol=1e-4, msg=n)
    # only adapters got gradients; the frozen base has none
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    model.zero_grad(set_to_none=True)

