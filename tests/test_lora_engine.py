"""`peft: lora` through the real engine (train_sft / train_dpo, world size 1): learns, checkpoints
only adapters, resumes exactly, publishes a merged model and a PEFT adapter that agree.

"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import synthetic_packed
from tunekit.runs import start_run
from tunekit.train import plan as plan_mod
from tunekit.train.checkpoint import list_checkpoints
from tunekit.train.params import DPOParams, SFTParams

SEQ, VOCAB = 64, 96
LORA = dict(peft="lora", lora_rank=4, lora_alpha=8.0, lora_target_modules="attention,mlp_fc2")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path, one_thread):
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data():
    # Token ids below 24 only: rank-4 adapters on a frozen random hidden-32 model move the loss
    # clearly within a dozen steps on this narrower distribution (on all 96 ids they barely can).
    return synthetic_packed(120, SEQ, 24, seed=1), synthetic_packed(30, SEQ, 24, seed=2)


def _sft(tmp_path, name, model_dir, data, **over):
    from tunekit.train.sft import train_sft

    base = dict(max_seq_length=SEQ, global_batch_size=8, micro_batch_size=2, max_steps=8, lr=0.01,
                min_lr=0.001, warmup_steps=2, constant_steps=1, val_interval=4, save_interval=2,
                run_name=name, runs_dir=str(tmp_path / "runs"), publish="final", **LORA)
    base.update(over)
    cfg = SFTParams(**base)
    run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
    return run, train_sft(cfg, run, datasets=(data[0], data[1], {"n": len(data[0])}), model_dir=model_dir)


def _logps(lm, ids):
    with torch.no_grad():
        return lm(input_ids=ids).logits.float().log_softmax(-1)


def test_sft_lora_learns_checkpoints_adapters_and_publishes_both(tmp_path, model_dir, data):
    import torch.distributed.checkpoint as dcp
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, res = _sft(tmp_path, "lora", model_dir, data, max_steps=12, val_interval=4, save_interval=4,
                    lr=0.02, min_lr=0.002)
    assert res["status"] == "completed" and res["peft"] == "lora"
    assert res["final_val_loss"] < res["initial_val_loss"] - 0.1
    assert 0 < res["trainable_params"] < res["n_params"] / 5
    # checkpoints: adapters + their optimizer state only
    ck = list_checkpoints(run.path("checkpoints"))[-1]
    keys = set(dcp.FileSystemReader(str(ck.path / "model")).read_metadata().state_dict_metadata)
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    # published: merged HF model (plain names) + PEFT adapter; both give the same model
    hf, adapter = run.path("hf_model"), run.path("lora_adapter")
    assert res["hf_model"] == str(hf) and res["lora_adapter"] == str(adapter)
    prov = json.loads((hf / "tunekit_training.json").read_text())
    assert prov["merged"] is True and prov["lora"]["rank"] == 4
    merged = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([[1, 10, 11, 12, 13, 40, 41, 42]])
    torch.testing.assert_close(_logps(merged, ids), _logps(peft_model, ids), atol=2e-5, rtol=0)
    with peft_model.disable_adapter():
        assert (_logps(peft_model, ids) - _logps(merged, ids)).abs().max() > 1e-3


def test_sft_lora_deadline_stop_then_resume_equals_uninterrupted(tmp_path, model_dir, data, monkeypatch):
    from safetensors.torch import load_file

    _, ref = _sft(tmp_path, "ref", model_dir, data)
    calls = {"n": 0}
    real = plan_mod.Deadline.remaining

    def soon(self, now=None):
        calls["n"] += 1
        return 0.0 if calls["n"] > 3 else float("inf")  # 3 steps, then "the walltime is near"

    monkeypatch.setattr(plan_mod.Deadline, "remaining", soon)
    run, first = _sft(tmp_path, "cut", model_dir, data)
    assert first["status"] == "deadline" and first["step"] == 3
    monkeypatch.setattr(plan_mod.Deadline, "remaining", real)
    run2, second = _sft(tmp_path, "cut", model_dir, data)
    assert second["resumed_from"] == 3 and second["status"] == "completed"
    assert second["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-6)
    for d in ("hf_model", "lora_adapter"):
        name = "model.safetensors" if d == "hf_model" else "adapter_model.safetensors"
        a = load_file(str(run2.path(d) / name))
        b = load_file(str(tmp_path / "runs" / "sft" / "ref" / d / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_sft_lora_with_activation_checkpointing_changes_nothing(tmp_path, model_dir, data):
    _, plain = _sft(tmp_path, "ac0", model_dir, data, max_steps=3)
    _, ac = _sft(tmp_path, "ac1", model_dir, data, max_steps=3, activation_checkpointing=True)
    assert ac["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-6)
    assert ac["final_loss"] != pytest.approx(ac["val_history"][0][1], rel=1e-3)  # it did train


def test_bad_lora_params_are_one_sentence(tmp_path):
    from tunekit.errors import UserError

    with pytest.raises(UserError, match="parameter 'lora_target_modules' unknown module 'qkv'"):
        SFTParams.parse({"peft": "lora", "lora_target_modules": "qkv"})
    with pytest.raises(UserError, match=r"parameter 'peft' must be one of none\|lora"):
        SFTParams.parse({"peft": "qlora"})


# ------------------------------------------------------------------------------ DPO
def _pairs(n: int, seed: int):
    """Learnable preference pairs: chosen continues the prompt +1, rejected is random."""
    from tunekit.train.batches import make_pair

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = rng.integers(5, VOCAB - 8, rng.integers(3, 8))
        out.append(make_pair([1, *p.tolist()], (p[:4] + 1).tolist(), rng.integers(5, VOCAB, 4).tolist()))
    return out


def _dpo(tmp_path, name, model_dir, reference, **over):
    from tunekit.train.dpo import train_dpo

    base = dict(max_seq_length=SEQ, global_batch_size=8, micro_batch_size=4, max_steps=10, lr=0.02,
                min_lr=0.002, warmup_steps=1, val_interval=5, save_interval=5, publish="final",
                run_name=name, runs_dir=str(tmp_path / "runs"), reference=reference, **LORA)
    base.update(over)
    cfg = DPOParams(**base)
    run = start_run("dpo", cfg, cfg.run_name, cfg.runs_dir)
    res = train_dpo(cfg, run, datasets=(_pairs(64, 3), _pairs(16, 4), {}), model_dir=model_dir)
    return run, res


def test_dpo_lora_learns_with_either_reference_and_both_agree(tmp_path, model_dir):
    runs = {ref: _dpo(tmp_path, ref, model_dir, ref) for ref in ("cached", "live")}
    for ref, (run, res) in runs.items():
        dev = [r for r in run.metrics() if "val_reward_accuracy" in r]
        assert res["status"] == "completed" and res["peft"] == "lora", ref
        assert dev[-1]["val_reward_accuracy"] > dev[0]["val_reward_accuracy"] + 0.2, ref
        assert run.path("lora_adapter", "adapter_config.json").is_file()
    assert runs["cached"][1]["data"]["reference_cache"]["hit"] is False
    assert runs["live"][1]["data"]["reference_cache"]["key"] is None  # no cache involved
    assert "adapters disabled" in runs["live"][1]["data"]["reference"]  # no second model with LoRA
    la = [r["loss"] for r in runs["cached"][0].metrics() if "loss" in r]
    lb = [r["loss"] for r in runs["live"][0].metrics() if "loss" in r]
    assert len(la) == len(lb) == 10
    for a, b in zip(la, lb):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)


