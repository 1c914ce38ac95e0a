"""The DPO stage in real subprocesses: SIGKILL then resume equals uninterrupted; 2 processes = 1.

Uses the worker entry (`tunekit train dpo --params P.yaml`), the tiny model and a slice
of the sample preference data, with runs and caches under a temporary folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_worker
from tunekit.runs import read_metrics
from tunekit.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow


def _params(tmp: Path, name: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(dict(
        datasets={"math_pref": {"max_train_samples": 48, "split_dev": True, "upsampling_factor": 1}},
        max_dev_samples=8, max_seq_length=192, global_batch_size=8, micro_batch_size=2, max_steps=8,
        lr=0.003, min_lr=0.0003, warmup_steps=2, val_interval=4, save_interval=2, keep_top_k=1,
        publish="final", seed=5, run_name=name, runs_dir=str(tmp / "runs"))))
    return p


def _run(tmp: Path, name: str, *, kill_at: int | None = None, nproc: int = 1, cache: str = "cache"):
    """`tunekit train dpo --params P` (via tests/helpers.py, which can SIGKILL it after step N)."""
    kill = ["--kill-after-step", str(kill_at)] if kill_at else []
    args = ["cli", *kill, "train", "dpo", "--params", str(_params(tmp, name))]
    return run_worker(args, nproc=nproc, timeout=600, env={"TUNEKIT_CACHE_DIR": str(tmp / cache)})


def _dir(tmp: Path, name: str) -> Path:
    return tmp / "runs" / "dpo" / name


def _train_records(tmp: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(_dir(tmp, name)) if "lr" in r]


def _weights(tmp: Path, name: str):
    from safetensors.torch import load_file

    return load_file(str(_dir(tmp, name) / "hf_model" / "model.safetensors"))


def _cache_entries(cache: Path):
    from tunekit.train.refcache import ReferenceLogps

    return [ReferenceLogps.load(d) for d in sorted((cache / "refcache").glob("*/*")) if d.is_dir()]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo_resume")
    done = _run(tmp, "ref")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return tmp


def test_sigkill_mid_training_then_resume_equals_uninterrupted(ref):
    tmp = ref
    killed = _run(tmp, "killed", kill_at=5)
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-2000:]
    assert [c.step for c in list_checkpoints(_dir(tmp, "killed") / "checkpoints")][-1] == 4
    resumed = _run(tmp, "killed")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    result = json.loads((_dir(tmp, "killed") / "train_result.json").read_text())
    assert result["resumed_from"] == 4 and result["status"] == "completed"
    assert result["data"]["reference_cache"]["hit"] is True  # the reference was never recomputed
    a, b = _train_records(tmp, "killed"), _train_records(tmp, "ref")
    assert [r["step"] for r in a] == list(range(1, 9))  # steps 5.. were redone, not duplicated
    for key in ("loss", "reward_accuracy", "reward_margin", "kl"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6, abs=1e-7), key
    wa, wb = _weights(tmp, "killed"), _weights(tmp, "ref")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k


def test_two_processes_follow_one_and_share_the_reference_work(ref):
    tmp = ref
    # A fresh cache folder: the two ranks compute the reference log-probs together.
    two = _run(tmp, "two", nproc=2, cache="cache2")
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    result = json.loads((_dir(tmp, "two") / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["data"]["reference_cache"]["hit"] is False
    (one_cache,), (two_cache,) = _cache_entries(tmp / "cache"), _cache_entries(tmp / "cache2")
    assert one_cache.info["key"] == two_cache.info["key"] and one_cache.table.keys() == two_cache.table.keys()
    for d, (c, r) in one_cache.table.items():
        assert two_cache.table[d] == pytest.approx((c, r), rel=1e-5, abs=1e-4)
    a, b = _train_records(tmp, "two"), _train_records(tmp, "ref")
    for key in ("loss", "reward_accuracy", "reward_margin"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-4, abs=1e-5), key
