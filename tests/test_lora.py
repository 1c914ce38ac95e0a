"""LoRA building blocks (tunekit.train.lora): names, FSDP2 units, checkpoints, the adapters-off switch.

Models are the engine's own (engine.load_for_training: meta device -> attach_lora -> fully_shard
per layer + root -> to_empty -> weights from rank 0), in this process (world size 1, gloo).
A 2-process gloo run is in test_lora_dist.py.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import LORA_SPEC as SPEC
from helpers import benchmark_module, perturb_adapters, trainable_summary, training_model
from helpers import random_batch as batch
from tunekit.errors import UserError
from tunekit.train.engine import build_optimizer, read_config
from tunekit.train.lora import (LoraSpec, adapters_disabled, attach_lora, checkpoint_options, lora_spec_of,
                                resolve_target_modules, spec_from_params)
from tunekit.train.params import DPOParams, SFTParams

pytestmark = pytest.mark.usefixtures("one_thread")  # CPU matmul results depend on the thread count


def build_lora_model(model_dir: Path, spec: LoraSpec | None, bf16: bool = False):
    """The engine's own FSDP2 training model (what train() trains), LoRA attached when `spec`."""
    return training_model(model_dir, spec, precision="bf16" if bf16 else "fp32")


def base_logps(model_dir: Path, ids, labels):
    """Per-token log p(label) of the plain HF base model (full logits, the plain way)."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = base(input_ids=ids).logits.float().log_softmax(-1)
    return lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def full(t) -> torch.Tensor:
    """The whole tensor of a parameter or gradient (DTensor when sharded, plain when FSDP2 has it gathered)."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ------------------------------------------------------------------------------ names, params
def test_official_names_map_to_hf_modules():
    assert resolve_target_modules("attention_qkv") == ("q_proj", "k_proj", "v_proj")
    assert resolve_target_modules("attention_dense") == ("o_proj",)
    assert resolve_target_modules("mlp_fc1") == ("gate_proj", "up_proj")
    assert resolve_target_modules("mlp_fc2") == ("down_proj",)
    assert resolve_target_modules("attention") == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert resolve_target_modules("mlp") == ("gate_proj", "up_proj", "down_proj")
    assert resolve_target_modules("all") == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj")
    # HF names, mixed with official ones, any order, lists too; duplicates collapse
    assert resolve_target_modules(" v_proj, mlp_fc2 ,q_proj,v_proj") == ("q_proj", "v_proj", "down_proj")
    assert resolve_target_modules(["attention_dense", "up_proj"]) == ("o_proj", "up_proj")


@pytest.mark.parametrize("bad", ["attention_qvk", "lm_head", "", " , "])
def test_unknown_or_empty_targets_are_one_sentence(bad):
    with pytest.raises(UserError, match="lora_target_modules"):
        resolve_target_modules(bad)


def test_defaults_are_the_official_ones():
    s = LoraSpec()
    assert (s.rank, s.alpha, s.dropout, s.targets) == (32, 32.0, 0.0, ("q_proj", "k_proj", "v_proj"))
    assert s.scaling == 1.0


def test_params_become_a_spec():
    ok = SFTParams(peft="lora", lora_rank=8, lora_alpha=16.0, lora_dropout=0.1,
                   lora_target_modules="attention,mlp_fc1", seed=5)
    spec = spec_from_params(ok)
    assert spec == LoraSpec(8, 16.0, 0.1, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"), 5)
    assert spec_from_params(SFTParams()) is None
    with pytest.raises(UserError) as err:
        SFTParams.parse({"peft": "qlora", "lora_rank": 0, "lora_alpha": 0.0, "lora_dropout": 1.0,
                         "lora_target_modules": "attn"})
    assert len(str(err.value).splitlines()) == 5  # one sentence per bad LoRA parameter
    with pytest.raises(UserError, match=r"unknown parameter\(s\) lora_reference"):
        DPOParams.parse({"peft": "lora", "lora_reference": "base"})  # now `reference: live`


# ------------------------------------------------------------------------------ model + FSDP2
def test_attached_model_starts_as_the_base_and_trains_only_adapters(model_dir):
    model, _ = build_lora_model(model_dir, SPEC)
    assert lora_spec_of(model) == SPEC
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # one adapter pair per target per layer, and the count formula agrees with the model
    assert len(names) == 2 * len(SPEC.targets) * 2
    config = read_config(model_dir)
    estimate = benchmark_module("memory_estimate")
    assert trainable_summary(model)["trainable_params"] == estimate.count_adapter_params(config, SPEC)
    # every adapter lives in the same FSDP unit as its frozen base weight (DTensor params of the layer)
    layer0 = model.lm.model.layers[0]
    assert type(layer0).__name__.startswith("FSDP")
    assert all(type(p).__name__ == "DTensor" for p in layer0.parameters())
    ids, labels = batch()
    lp = model(labels=labels, input_ids=ids)
    torch.testing.assert_close(lp.detach(), base_logps(model_dir, ids, labels), atol=2e-6, rtol=0)
    # AdamW over trainable params only; a step changes adapters, never the base
    opt = build_optimizer(model, SimpleNamespace(weight_decay=0.1, lr=0.01, adam_beta1=0.9, adam_beta2=0.98))
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters() if p.requires_grad}
    before = {n: full(p).clone() for n, p in model.named_parameters()}
    (-lp.sum()).backward()
    assert all((p.grad is None) != p.requires_grad for p in model.parameters())
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], full(p))}
    assert changed == {n for n in names if ".lora_B." in n} | {n for n in names if ".lora_A." in n}
    lp2 = model(labels=labels, input_ids=ids)
    assert (lp2 - lp).abs().max() > 1e-3


def test_frozen_base_in_compute_dtype_with_fp32_adapters(model_dir):
    # GPU layout: base stored bf16 (no fp32 master copy), adapters fp32 masters, bf16 compute.
    model, _ = build_lora_model(model_dir, SPEC, bf16=True)
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n
    ids, labels = batch()
    lp = model(labels=labels, input_ids=ids)
    torch.testing.assert_close(lp.detach().float(), base_logps(model_dir, ids, labels), atol=0.05, rtol=0)
    (-lp.sum()).backward()
    for n, p in model.named_parameters():
        if ".lora_A." in n:  # B starts at zero, so A's first gradient is exactly zero
            continue
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32, n
            assert full(p.grad).abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_adapters_disabled_computes_the_base(model_dir):
    model, _ = build_lora_model(model_dir, SPEC)
    perturb_adapters(model)
    ids, labels = batch(3)
    ref = base_logps(model_dir, ids, labels)
    with torch.no_grad():
        on = model(labels=labels, input_ids=ids)
        with adapters_disabled(model):
            off = model(labels=labels, input_ids=ids)
        again = model(labels=labels, input_ids=ids)
    assert (on - ref).abs().max() > 1e-2  # the adapters do something...
    torch.testing.assert_close(off, ref, atol=2e-6, rtol=0)  # ...and are really off inside
    torch.testing.assert_close(again, on, atol=0, rtol=0)  # and back on afterwards
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


def test_no_adapters_to_disable_is_a_user_error(model_dir):
    model, _ = build_lora_model(model_dir, None)
    with pytest.raises(UserError, match="peft='lora'"):
        with adapters_disabled(model):
            pass


def test_unknown_module_in_a_model_is_a_user_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UserError, match="no module named q_proj"):
        attach_lora(gpt2, LoraSpec(rank=2, targets=("q_proj",)))


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_holds_only_adapters_and_their_optimizer_state(model_dir, tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    hp = SimpleNamespace(weight_decay=0.0, lr=0.01, adam_beta1=0.9, adam_beta2=0.98)
    model, _ = build_lora_model(model_dir, SPEC)
    opt = build_optimizer(model, hp)
    ids, labels = batch(1)
    for _ in range(2):
        (-model(labels=labels, input_ids=ids).sum()).backward()
        opt.step()
        opt.zero_grad()
    msd, osd = get_state_dict(model, opt, options=checkpoint_options(model))
    assert msd and all(".lora_A." in k or ".lora_B." in k for k in msd)
    assert len(osd["state"]) == len(msd)
    dcp.save({"model": msd}, checkpoint_id=str(tmp_path / "model"))
    dcp.save({"optim": osd}, checkpoint_id=str(tmp_path / "optim"))
    stored = dcp.FileSystemReader(str(tmp_path / "model")).read_metadata().state_dict_metadata
    assert set(stored) == {f"model.{k}" for k in msd}  # what is on disk: adapters, nothing else

    fresh, _ = build_lora_model(model_dir, LoraSpec(**{**SPEC.__dict__, "seed": 99}))
    fopt = build_optimizer(fresh, hp)
    m2, o2 = get_state_dict(fresh, fopt, options=checkpoint_options(fresh))
    mb, ob = {"model": m2}, {"optim": o2}
    dcp.load(mb, checkpoint_id=str(tmp_path / "model"))
    dcp.load(ob, checkpoint_id=str(tmp_path / "optim"))
    set_state_dict(fresh, fopt, model_state_dict=mb["model"], optim_state_dict=ob["optim"],
                   options=checkpoint_options(fresh))
    with torch.no_grad():
        torch.testing.assert_close(fresh(labels=labels, input_ids=ids), model(labels=labels, input_ids=ids),
                                   atol=0, rtol=0)
    # the next step is identical too: moments and step counts came back
    for m, o in ((model, opt), (fresh, fopt)):
        (-m(labels=labels, input_ids=ids).sum()).backward()
        o.step()
    for (n, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(full(a), full(b), atol=0, rtol=0, msg=n)
    # a checkpoint without a requested adapter is refused by DCP, not silently half-loaded
    other, _ = build_lora_model(model_dir, LoraSpec(**{**SPEC.__dict__, "targets": SPEC.targets + ("up_proj",)}))
    box = {"model": get_state_dict(other, [], options=checkpoint_options(other))[0]}
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    with pytest.raises(CheckpointException) as err:  # DCP wraps the per-rank RuntimeError
        dcp.load(box, checkpoint_id=str(tmp_path / "model"))
    assert "Missing key" in repr(err.value) and "up_proj.lora_A" in repr(err.value)


def test_full_fine_tuning_checkpoint_options_are_unchanged(model_dir):
    model, _ = build_lora_model(model_dir, None)
    o = checkpoint_options(model)
    assert o.ignore_frozen_params is False and o.strict is True


# ------------------------------------------------------------------------------ memory estimate
def test_lora_memory_estimate_terms():
    m = benchmark_module("memory_estimate")
    GB, LLMJP_4_8B, count_params, estimate = m.GB, m.LLMJP_4_8B, m.count_params, m.estimate
    estimate_lora, count_adapter_params, main = m.estimate_lora, m.count_adapter_params, m.main

    cfg = dict(LLMJP_4_8B)
    spec = LoraSpec()
    a = count_adapter_params(cfg, spec)
    assert a == 32 * 32 * (3 * 4096 + 4096 + 2 * 1024)  # rank x (in + out) for q, k, v x 32 layers
    total = count_params(cfg)[0]
    lora = estimate_lora(cfg, spec, gpus=1, micro_batch=4, seq=4096)
    full = estimate(cfg, 1, 4, 4096)
    assert lora.sharded_state == pytest.approx((2 * total + 16 * a) / GB, abs=0.05)
    assert lora.activations == full.activations and lora.output_layer == full.output_layer
    assert lora.total < full.total - 100  # full fine-tuning state alone is 16 B/param = 137 GB
    assert main(["--lora", "--gpus", "1"]) == 0


def test_adapter_count_matches_a_real_model(model_dir):
    m = benchmark_module("memory_estimate")
    model, _ = build_lora_model(model_dir, SPEC)
    assert m.count_adapter_params(m.load_config(str(model_dir)), SPEC) == trainable_summary(model)["trainable_params"]
