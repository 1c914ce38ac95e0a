"""Golden trajectories: the exact numbers the training engine produces on a tiny model.

SFT and DPO (full fine-tuning and LoRA) on synthetic data, in this process and in 2 gloo processes:
the loss of every step, the validation losses and a digest of the published weights. They were
recorded before the engine was reorganised and must not change while the code moves: a refactor
that changes one of them changed what training computes. If a change is MEANT to alter the numbers
(a new loss, a new default), record the new values in the same commit and say why.

Everything runs in fp32 with one thread per process, so results are bit-stable on one machine
kind; the 2-process values differ from the 1-process ones only by summation order.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import tiny_llama_dir, train_synthetic, weights_digest
from tunekit.runs import read_metrics

HERE = Path(__file__).resolve().parent
VOCAB = 96
COMMON = dict(max_seq_length=64, global_batch_size=8, micro_batch_size=2, max_steps=4, val_interval=2,
              save_interval=2, publish="final", seed=5)
SFT = dict(COMMON, lr=0.01, min_lr=0.001, warmup_steps=2, constant_steps=1)
DPO = dict(COMMON, lr=0.003, min_lr=0.0003, warmup_steps=1, sft_loss_weight=0.0)  # as recorded: pure DPO
LORA = dict(peft="lora", lora_rank=4, lora_alpha=8.0, lora_target_modules="attention,mlp_fc2")
SIZES = {"sft": (40, 10), "dpo": (32, 8)}

# stage, params -> (train loss per step, [(step, val loss)], digest of hf_model/model.safetensors)
GOLDEN = {
    "sft": ([4.57378358891941, 4.542087828713741, 4.34648103935774, 4.332886239756709],
            [(0, 4.576050482855903), (2, 4.557853529188368), (4, 4.561170281304253)],
            "46a0ca93d2e678700a0c08ab179692bdbc4a80e694deac64effd85de7d8dac39"),
    "sft-2proc": ([4.57378358891941, 4.5420876826966206, 4.346480968386628, 4.332886156828507],
                  [(0, 4.576050482855903), (2, 4.557853529188368), (4, 4.561170281304253)],
                  "3696d7e7c596b216bf8449525d2791cbb603c0a417916d9e6953fb33fee8eb13"),
    "dpo": ([0.6931471824645996, 0.6639816761016846, 0.6861211508512497, 0.6947616636753082],
            [(0, 0.6931471824645996), (2, 0.6682780683040619), (4, 0.6627393662929535)],
            "8ab4be1801d8b3e7d28fc68b989ece79ff3ccc5fc4c8ef1e05ba38f0debdc751"),
    "dpo-2proc": ([0.6931471824645996, 0.6639816462993622, 0.6861211061477661, 0.6947617381811142],
                  [(0, 0.6931471824645996), (2, 0.6682780236005783), (4, 0.6627393811941147)],
                  "2ad8554927572e2f697e2e9c41a6f19ea272d689d14ab4d295411e54f0c30fe5"),
    "sft-lora": ([4.57378358891941, 4.567730844306033, 4.565631884197856, 4.557159755540931],
                 [(0, 4.576050482855903), (2, 4.568715074327257), (4, 4.567456563313802)],
                 "6acecb7a2b44bd2fe7980492d86682424a78fc3960a9367ec6f1830686451b5e"),
    "dpo-lora-base": ([0.6931471824645996, 0.6909486651420593, 0.6917677521705627, 0.6940265595912933],
                      [(0, 0.6931471824645996), (2, 0.6926504969596863), (4, 0.6924281269311905)],
                      "b2314ed8b7e565c86a5df1cfbcfe579a8879e7d6cc1110503288f822c8cd9908"),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("golden") / "model", vocab=VOCAB)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))  # DPO reference log-probs


def _observed(run_dir: Path):
    records = read_metrics(run_dir)
    losses = [r["loss"] for r in records if "lr" in r]
    vals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return losses, vals, weights_digest(run_dir / "hf_model" / "model.safetensors")


def _in_process(tmp_path, model_dir, stage, params):
    from tunekit.train.distributed import init_distributed

    params = dict(params, run_name="golden", runs_dir=str(tmp_path / "runs"))
    run, result = train_synthetic(stage, params, model_dir, *SIZES[stage], env=init_distributed())
    assert result["status"] == "completed"
    return _observed(run.dir)


def _two_processes(tmp_path, model_dir, stage, params):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(dict(params, run_name="golden", runs_dir=str(tmp_path / "runs"))))
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNEKIT_HEADLESS="1", PYTHONHASHSEED="0")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    n_train, n_dev = SIZES[stage]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "helpers.py"), stage, "--params", str(p), "--model-dir", str(model_dir),
           "--n-train", str(n_train), "--n-dev", str(n_dev)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return _observed(tmp_path / "runs" / stage / "golden")


def _check(name, observed):
    losses, vals, digest = observed
    want_losses, want_vals, want_digest = GOLDEN[name]
    assert losses == want_losses
    assert vals == [tuple(v) for v in want_vals]
    assert digest == want_digest


@pytest.mark.parametrize("name, stage, params", [
    ("sft", "sft", SFT),
    ("dpo", "dpo", DPO),
    ("sft-lora", "sft", dict(SFT, **LORA)),
    ("dpo-lora-base", "dpo", dict(DPO, **LORA, lora_reference="base")),
])
def test_one_process(tmp_path, model_dir, one_thread, name, stage, params):
    _check(name, _in_process(tmp_path, model_dir, stage, params))


@pytest.mark.slow
@pytest.mark.parametrize("name, stage, params", [("sft-2proc", "sft", SFT), ("dpo-2proc", "dpo", DPO)])
def test_two_processes(tmp_path, model_dir, name, stage, params):
    _check(name, _two_processes(tmp_path, model_dir, stage, params))
