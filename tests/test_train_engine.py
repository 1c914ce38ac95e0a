"""The SFT engine in this process (world size 1, gloo, FSDP2): learning, records, publish, exact resume."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import read_wandb_history, synthetic_packed
from tunekit.runs import start_run
from tunekit.train import plan as plan_mod
from tunekit.train.checkpoint import list_checkpoints
from tunekit.train.params import SFTParams
from tunekit.train.sft import train_sft

SEQ = 64
pytestmark = pytest.mark.usefixtures("one_thread")  # CPU matmul results depend on the thread count


@pytest.fixture(scope="module")
def data():
    return synthetic_packed(120, SEQ, 96, seed=1), synthetic_packed(30, SEQ, 96, seed=2)


def _cfg(tmp_path, name, **over):
    base = dict(max_seq_length=SEQ, global_batch_size=8, micro_batch_size=2, max_steps=8, lr=0.01,
                min_lr=0.001, warmup_steps=2, constant_steps=1, val_interval=4, save_interval=2,
                run_name=name, runs_dir=str(tmp_path / "runs"), publish="final")
    base.update(over)
    return SFTParams(**base)


def _train(cfg, model_dir, data):
    run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
    return run, train_sft(cfg, run, datasets=(data[0], data[1], {"n": len(data[0])}), model_dir=model_dir)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_train_learns_records_and_publishes(tmp_path, model_dir, data):
    cfg = _cfg(tmp_path, "a", max_steps=12, val_interval=4, save_interval=4, keep_top_k=1, publish="best")
    run, res = _train(cfg, model_dir, data)
    assert res["status"] == "completed" and res["step"] == 12
    assert res["final_val_loss"] < res["initial_val_loss"] - 0.05
    recs = run.metrics()
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "loss_tokens"):
        assert key in train[0]
    assert train[-1]["tokens_seen"] > train[0]["tokens_seen"] > 0
    assert [r["step"] for r in recs if "val_loss" in r] == [0, 4, 8, 12]
    # keep last + top-1 by val loss; the best is published
    kept = [c.step for c in list_checkpoints(run.path("checkpoints"))]
    assert 12 in kept and len(kept) <= 2
    hf = run.path("hf_model")
    assert {"config.json", "model.safetensors", "tunekit_training.json"} <= {p.name for p in hf.iterdir()}
    prov = json.loads((hf / "tunekit_training.json").read_text())
    assert prov["step"] == res["best_step"] == res["published_step"]


def test_published_model_loads_and_matches_training_weights(tmp_path, model_dir, data):
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tmp_path, "b", max_steps=4, publish="final")
    run, res = _train(cfg, model_dir, data)
    model = AutoModelForCausalLM.from_pretrained(run.path("hf_model"))
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[1, 10, 11, 12, 13]])
    with torch.no_grad():
        changed = (model(ids).logits - base(ids).logits).abs().max().item()
    assert changed > 1e-4  # trained weights, not the base copied over
    assert model.config.use_cache is True


def test_deadline_stop_then_resume_equals_uninterrupted(tmp_path, model_dir, data, monkeypatch):
    _, ref = _train(_cfg(tmp_path, "ref"), model_dir, data)
    calls = {"n": 0}
    real = plan_mod.Deadline.remaining

    def soon(self, now=None):
        calls["n"] += 1
        return 0.0 if calls["n"] > 3 else float("inf")  # allow 3 steps, then "the walltime is near"

    monkeypatch.setattr(plan_mod.Deadline, "remaining", soon)
    cfg = _cfg(tmp_path, "cut")
    run, first = _train(cfg, model_dir, data)
    assert first["status"] == "deadline" and first["step"] == 3 and first["hf_model"] is None
    assert 3 in [c.step for c in list_checkpoints(run.path("checkpoints"))]
    monkeypatch.setattr(plan_mod.Deadline, "remaining", real)
    run2, second = _train(cfg, model_dir, data)
    assert run2.resumed and second["resumed_from"] == 3 and second["status"] == "completed"
    assert second["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-6)
    trained = [r["loss"] for r in run2.metrics() if "loss" in r]
    assert len(trained) == 8  # records of redone steps are not duplicated
    a, b = _weights(run2.path("hf_model")), _weights(tmp_path / "runs" / "sft" / "ref" / "hf_model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # a third run of a completed run trains nothing and reports the same
    _, third = _train(cfg, model_dir, data)
    assert third["status"] == "completed" and third["resumed_from"] == 8


def test_changed_params_on_an_existing_run_are_refused(tmp_path, model_dir, data):
    from tunekit.errors import UserError

    _train(_cfg(tmp_path, "c", max_steps=2), model_dir, data)
    with pytest.raises(UserError, match="different parameters"):
        start_run("sft", _cfg(tmp_path, "c", max_steps=2, lr=0.02), "c", str(tmp_path / "runs"))
    # a new walltime is allowed on resume
    start_run("sft", _cfg(tmp_path, "c", max_steps=2, max_train_minutes=30.0), "c", str(tmp_path / "runs"))


def test_delete_optimizer_state_keeps_weights(tmp_path, model_dir, data):
    cfg = _cfg(tmp_path, "d", max_steps=4, delete_optimizer_state=True)
    run, res = _train(cfg, model_dir, data)
    cks = list_checkpoints(run.path("checkpoints"))
    assert cks and all(not c.has_optimizer and (c.path / "model").is_dir() for c in cks)
    assert res["status"] == "completed"


def test_activation_checkpointing_changes_nothing_numerically(tmp_path, model_dir, data):
    _, plain = _train(_cfg(tmp_path, "ac0", max_steps=3), model_dir, data)
    _, ac = _train(_cfg(tmp_path, "ac1", max_steps=3, activation_checkpointing=True), model_dir, data)
    assert ac["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-6)


def test_bf16_compute_on_cpu_stays_close_to_fp32(tmp_path, model_dir, data):
    _, fp32 = _train(_cfg(tmp_path, "p32", max_steps=2), model_dir, data)
    _, bf16 = _train(_cfg(tmp_path, "p16", max_steps=2, precision="bf16"), model_dir, data)
    assert bf16["compute_dtype"] == "bfloat16"
    assert bf16["final_loss"] == pytest.approx(fp32["final_loss"], rel=2e-2)


def test_wandb_offline_run_holds_every_step(tmp_path, model_dir, data, monkeypatch):
    """The real wandb package in offline mode (no network): its run file has every step's loss."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, res = _train(_cfg(tmp_path, "wb", max_steps=3, val_interval=2, wandb="offline"), model_dir, data)
    history = read_wandb_history(run.dir)
    logged = {step: float(items["train/loss"]) for step, items in history.items() if "train/loss" in items}
    ours = {r["step"]: r["loss"] for r in run.metrics() if "lr" in r}
    assert sorted(logged) == [1, 2, 3] and logged == pytest.approx(ours, rel=1e-12)
    assert {step for step, items in history.items() if "val/val_loss" in items} == {0, 2, 3}
    assert res["status"] == "completed"


def test_wandb_problems_are_one_sentence(monkeypatch):
    import sys

    from tunekit.errors import UserError
    from tunekit.train.monitor import check_wandb

    check_wandb("disabled")
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(UserError, match="wandb package is not installed"):
        check_wandb("offline")
    monkeypatch.setitem(sys.modules, "wandb", object())
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(UserError, match="WANDB_API_KEY is not set"):
        check_wandb("online")


def test_activation_checkpointing_keeps_fewer_tensors_for_backward(model_dir, data):
    from tunekit.train.batches import collate_packed
    from tunekit.train.distributed import init_distributed
    from tunekit.train.engine import load_for_training

    env = init_distributed()
    batch = collate_packed(data[0][:2], varlen=True)
    saved = {}
    # off, every layer, every 2nd layer (the tiny model has 2: layer 0 recomputed, layer 1 kept)
    for ac, every in ((False, 1), (True, 1), (True, 2)):
        model, _ = load_for_training(model_dir, env, activation_checkpointing=ac, checkpoint_every=every)
        count = [0]

        def pack(t):
            count[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp = model(labels=batch.labels, **batch.model_inputs())
        (-lp.sum()).backward()
        saved[(ac, every)] = count[0]
    assert saved[(True, 1)] < saved[(False, 1)] / 2
    assert saved[(True, 1)] < saved[(True, 2)] < saved[(False, 1)]
