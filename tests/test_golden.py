"""Golden trajectories: the exact numbers the training engine produces on a tiny model.

SFT and DPO (full fine-tuning and LoRA) on synthetic data, in this process and in 2 gloo processes:
the loss of every step, the validation losses and a digest of the published weights. They were
recorded before the engine was reorganised and must not change while the code moves: a refactor
that changes one of them changed what training computes. If a change is MEANT to alter the numbers
(a new loss, a new default), record the new values in the same commit and say why.

Everything runs in fp32 with one thread per process, so results are bit-stable on one machine
kind; the 2-process values differ from the 1-process ones only by summation order.

The runs use the dense block-mask attention (`attn_implementation: sdpa`), the reference path;
`*-varlen` pins the default per-document path too. Re-recorded values: the DPO ones when pairs
stopped sharing one row per micro-batch (rows as wide as the longest document, batches.pair_rows:
the same documents, other float summation order; SFT values unchanged), and `dpo-lora-base` when
`lora_reference: base` became `reference: live`.
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
              save_interval=2, publish="final", seed=5, attn_implementation="sdpa")
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
    "dpo": ([0.6931471824645996, 0.663981705904007, 0.6861210763454437, 0.6947618573904037],
            [(0, 0.6931471824645996), (2, 0.6682781130075455), (4, 0.6627393513917923)],
            "5a42852f70bdb352c41d1348fa2f7c398a772b5a1115624e998fedfc22780e04"),
    "dpo-2proc": ([0.6931471824645996, 0.6639815717935562, 0.6861212402582169, 0.694761797785759],
                  [(0, 0.6931471824645996), (2, 0.6682780683040619), (4, 0.6627393364906311)],
                  "ceff5729b011d32b3d017a2fb6333d9069980436f0ced838b33dab7a1caaa08d"),
    "sft-lora": ([4.57378358891941, 4.567730844306033, 4.565631884197856, 4.557159755540931],
                 [(0, 4.576050482855903), (2, 4.568715074327257), (4, 4.567456563313802)],
                 "6acecb7a2b44bd2fe7980492d86682424a78fc3960a9367ec6f1830686451b5e"),
    "dpo-lora-base": ([0.6931471824645996, 0.6909485161304474, 0.6917677521705627, 0.6940266191959381],
                      [(0, 0.6931471824645996), (2, 0.6926504522562027), (4, 0.6924281269311905)],
                      "78148229802269750875dd9aacc673e0448fefc413148a017941883702dd023e"),
    # The default attention (per-document, attention.py) on the same runs: within float rounding
    # of the dense-mask values above, recorded separately so both paths are pinned.
    "sft-varlen": ([4.57378358891941, 4.542087828713741, 4.346480968386628, 4.332886239756709],
                   [(0, 4.576050482855903), (2, 4.557853529188368), (4, 4.561169772677951)],
                   "c56d510c3f541ba8f1aeb386e0941c931dd89e5a00d2702cfe285e302a2ed119"),
    "dpo-varlen": ([0.6931471824645996, 0.6639814674854279, 0.6861209869384766, 0.6947616785764694],
                   [(0, 0.6931471824645996), (2, 0.6682778894901276), (4, 0.6627392768859863)],
                   "a5e153d2a4822dfb62b6cfaafc4cbd30479be6ab4a1f5f814472b6c507985868"),
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
    ("dpo-lora-base", "dpo", dict(DPO, **LORA, reference="live")),
    ("sft-varlen", "sft", dict(SFT, attn_implementation="varlen")),
    ("dpo-varlen", "dpo", dict(DPO, attn_implementation="varlen")),
])
def test_one_process(tmp_path, model_dir, one_thread, name, stage, params):
    _check(name, _in_process(tmp_path, model_dir, stage, params))


@pytest.mark.slow
@pytest.mark.parametrize("name, stage, params", [("sft-2proc", "sft", SFT), ("dpo-2proc", "dpo", DPO)])
def test_two_processes(tmp_path, model_dir, name, stage, params):
    _check(name, _two_processes(tmp_path, model_dir, stage, params))
