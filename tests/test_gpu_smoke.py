"""`make gpu-smoke` (tools/gpu_smoke.py): on a GPU it runs its checks for real (marker `gpu`); here it
must stop cleanly with the reason, refuse visible-but-unusable GPUs, and run every check with tiny
sizes on the CPU (`--simulate-on-cpu`), so the script is exercised by every `make test`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "tools" / "gpu_smoke.py"


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "TUNEKIT_EXPECT_GPUS",
                                                            "TUNEKIT_DEVICE")}
    env.update(TUNEKIT_RUNS_DIR=str(tmp_path / "runs"), **extra)
    return env


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `make gpu-smoke` on a GPU node)")
def test_gpu_smoke_passes_on_this_gpu(tmp_path):
    done = subprocess.run([sys.executable, str(SMOKE)], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "all checks passed" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the real smoke test runs instead")
def test_make_gpu_smoke_stops_cleanly_without_a_gpu(tmp_path):
    done = subprocess.run(["make", "-s", "gpu-smoke"], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gpu-smoke: SKIPPED - no GPU here" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith("[gpu] torch ")  # the versions line comes first


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose torch cannot use CUDA")
def test_visible_but_unusable_gpus_fail_before_any_check(tmp_path):
    done = subprocess.run([sys.executable, str(SMOKE)], env=_env(tmp_path, CUDA_VISIBLE_DEVICES="0"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "gpu-smoke: FAILED before any check: GPUs are visible (CUDA_VISIBLE_DEVICES=0)" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow
def test_every_check_runs_simulated_on_the_cpu(tmp_path):
    env = _env(tmp_path, TUNEKIT_EVAL_PYTHON=sys.executable, TUNEKIT_EVAL_PYTHONPATH=str(REPO / "tests" / "fake_vllm"),
               OMP_NUM_THREADS="1", GPU_SMOKE_TRACEBACK="1")
    done = subprocess.run([sys.executable, str(SMOKE), "--simulate-on-cpu"], env=env, capture_output=True,
                          text=True, timeout=900)
    lines = [x for x in done.stdout.splitlines() if x.startswith("[")]
    assert done.returncode == 0, "\n".join(lines) + done.stderr[-3000:]
    names = ["versions", "cuda", "nccl", "varlen", "sft", "dpo", "resume", "eval env"]
    assert [x[:6] for x in lines] == ["[ok  ]"] * 8, lines
    assert [x[9:].split("  ")[0].strip() for x in lines] == names
    assert "all checks passed (8 of 8)" in done.stdout and "SIMULATED on the CPU" in done.stdout
    assert done.stdout.split("gpu-smoke summary:\n")[1].splitlines()[:8] == [
        f"  {i:>2} {n:<9} PASS" for i, n in enumerate(names, 1)]
    assert list((tmp_path / "runs" / "gpu-smoke").glob("*/smoke.json"))


def _smoke_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke", SMOKE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_verdict_never_calls_a_skipped_check_passed():
    smoke = _smoke_module()
    res = [{"check": n, "status": "ok"} for n in ("versions", "cuda", "nccl")]
    assert smoke.verdict(res) == "all checks passed (3 of 3)"
    res[2]["status"] = "skip"
    assert smoke.verdict(res) == "PASSED 2 of 3 checks, 1 skipped and NOT checked (nccl)"
    res[1]["status"] = "FAIL"
    assert smoke.verdict(res) == "FAILED - 1 of 3 checks failed (cuda)"
    assert smoke.table(res).splitlines() == ["gpu-smoke summary:", "   1 versions  PASS", "   2 cuda      FAIL",
                                             "   3 nccl      SKIP"]
