"""Multi-process and crash behaviour of the SFT engine, in real subprocesses (tiny model, 8 steps).

- 2 gloo processes under torchrun follow the 1-process loss trajectory (same global batch);
- SIGKILL in the middle of training, then a re-run: same final loss and weights as uninterrupted;
- SIGKILL in the middle of a checkpoint write: that checkpoint is never loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_worker, tiny_llama_dir
from tunekit.runs import read_metrics
from tunekit.train.checkpoint import latest_checkpoint, list_checkpoints

pytestmark = pytest.mark.slow


def _params(tmp: Path, name: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(dict(
        max_seq_length=64, global_batch_size=8, micro_batch_size=2, max_steps=8, lr=0.01, min_lr=0.001,
        warmup_steps=2, constant_steps=1, val_interval=4, save_interval=2, keep_top_k=1, publish="final",
        seed=5, run_name=name, runs_dir=str(tmp / "runs"))))
    return p


def _worker(tmp: Path, model: Path, name: str, *kill: str, nproc: int = 1):
    """The synthetic-data SFT rank (tests/helpers.py); `kill` = ("--kill-after-step", "5") etc."""
    args = ["sft", "--params", str(_params(tmp, name)), "--model-dir", str(model), "--n-train", "120",
            "--n-dev", "30", *kill]
    return run_worker(args, nproc=nproc, timeout=300)


def _run_dir(tmp: Path, name: str) -> Path:
    return tmp / "runs" / "sft" / name


def _losses(tmp: Path, name: str) -> list[float]:
    return [r["loss"] for r in read_metrics(_run_dir(tmp, name)) if "loss" in r]


def _weights(tmp: Path, name: str):
    from safetensors.torch import load_file

    return load_file(str(_run_dir(tmp, name) / "hf_model" / "model.safetensors"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    model = tiny_llama_dir(tmp / "model", vocab=96)
    ref = _worker(tmp, model, "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    return tmp, model


def test_two_processes_follow_the_one_process_trajectory(setup):
    tmp, model = setup
    two = _worker(tmp, model, "two", nproc=2)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    one_l, two_l = _losses(tmp, "ref"), _losses(tmp, "two")
    assert len(one_l) == len(two_l) == 8
    for a, b in zip(one_l, two_l):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    val1 = [r["val_loss"] for r in read_metrics(_run_dir(tmp, "ref")) if "val_loss" in r]
    val2 = [r["val_loss"] for r in read_metrics(_run_dir(tmp, "two")) if "val_loss" in r]
    assert val2 == pytest.approx(val1, rel=1e-5)
    assert json.loads((_run_dir(tmp, "two") / "train_result.json").read_text())["world_size"] == 2


def test_sigkill_mid_training_then_resume_equals_uninterrupted(setup):
    tmp, model = setup
    killed = _worker(tmp, model, "killed", "--kill-after-step", "5")
    assert killed.returncode == -9
    assert [c.step for c in list_checkpoints(_run_dir(tmp, "killed") / "checkpoints")][-1] == 4
    resumed = _worker(tmp, model, "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((_run_dir(tmp, "killed") / "train_result.json").read_text())
    assert result["resumed_from"] == 4 and result["status"] == "completed"
    assert _losses(tmp, "killed") == pytest.approx(_losses(tmp, "ref"), rel=1e-6)
    a, b = _weights(tmp, "killed"), _weights(tmp, "ref")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-6, k


def test_save_killed_mid_write_is_never_loaded(setup):
    tmp, model = setup
    killed = _worker(tmp, model, "torn", "--kill-in-save", "6")
    assert killed.returncode == -9
    ck = _run_dir(tmp, "torn") / "checkpoints"
    assert (ck / ".step_00000006.partial" / "model").is_dir()  # half-written, under a name never trusted
    assert latest_checkpoint(ck).step == 4
    resumed = _worker(tmp, model, "torn")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((_run_dir(tmp, "torn") / "train_result.json").read_text())
    assert result["resumed_from"] == 4
    assert _losses(tmp, "torn") == pytest.approx(_losses(tmp, "ref"), rel=1e-6)
    assert not (ck / ".step_00000006.partial").exists()  # cleaned by the next save of that step


def test_notebook_entry_launches_two_workers(tmp_path, monkeypatch):
    """What 30_sft does with nproc_per_node=2: prepare in the kernel, then torchrun workers."""
    from tunekit.runs import start_run
    from tunekit.train.params import SFTParams
    from tunekit.train.sft import prepare_sft, run_sft

    for name in ("RANK", "WORLD_SIZE", "PBS_NODEFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = SFTParams(max_seq_length=256, max_steps=2, nproc_per_node=2, val_interval=0, save_interval=0,
                    run_name="nb2", runs_dir=str(tmp_path / "runs"))
    run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
    prep = prepare_sft(cfg)
    assert prep.spawn and prep.plan.world_size == 2 and prep.plan.grad_accum == 1
    res = run_sft(cfg, run, prep)
    assert res["world_size"] == 2 and res["status"] == "completed" and res["step"] == 2
    assert (run.path("hf_model") / "model.safetensors").is_file()
    assert [r["step"] for r in run.metrics() if "loss" in r] == [1, 2]


def test_resume_on_a_different_process_count(setup):
    """DCP reshards on load: a 1-process run killed at step 5 finishes on 2 processes."""
    tmp, model = setup
    assert _worker(tmp, model, "reshard", "--kill-after-step", "5").returncode == -9
    resumed = _worker(tmp, model, "reshard", nproc=2)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    result = json.loads((_run_dir(tmp, "reshard") / "train_result.json").read_text())
    assert result["resumed_from"] == 4 and result["world_size"] == 2
    assert _losses(tmp, "reshard") == pytest.approx(_losses(tmp, "ref"), rel=1e-5)
