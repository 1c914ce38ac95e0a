"""`backend: vllm` through the evaluation environment: one sentence without it; with it (here a
stand-in vLLM, tests/fake_vllm, in a real subprocess) the same records as the transformers path,
one worker process per model, and prompt ids checked against the training template."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from test_eval_generate import GOLD, build_tiny
from tunekit.errors import UserError
from tunekit.evaluate import evaluation, vllm_backend
from tunekit.evaluate.generate import Decoding, generate_answers

FAKE = Path(__file__).resolve().parent / "fake_vllm"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-env")
    return [build_tiny(root / "a"), build_tiny(root / "b")]


@pytest.fixture
def no_eval_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNEKIT_EVAL_PYTHON", raising=False)
    monkeypatch.setattr(vllm_backend, "EVAL_VENV", ".venv-eval-absent")  # a checkout without .venv-eval/
    import importlib.util

    assert importlib.util.find_spec("vllm") is None  # the training env never holds vLLM


@pytest.fixture
def eval_env(monkeypatch):
    monkeypatch.setenv("TUNEKIT_EVAL_PYTHON", sys.executable)
    monkeypatch.setenv("TUNEKIT_EVAL_PYTHONPATH", str(FAKE))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_vllm_without_the_evaluation_environment_is_one_sentence(models, no_eval_env):
    from tunekit.evaluate.params import EvalParams

    with pytest.raises(UserError) as err:
        generate_answers(models[0], [g["problem"] for g in GOLD[:2]], backend="vllm", progress=False)
    msg = str(err.value)
    assert "make setup-eval" in msg and "\n" not in msg and "ModuleNotFoundError" not in msg
    with pytest.raises(UserError, match="make setup-eval"):
        EvalParams(backend="vllm").job_preflight()  # what `tunekit job submit` runs before qsub
    EvalParams(backend="transformers").job_preflight()
    assert not vllm_backend.eval_python()


def test_job_submit_refuses_backend_vllm_without_the_evaluation_environment(no_eval_env, runs_dir):
    from tunekit.jobs.spec import JobRequest, plan_job

    req = JobRequest(notebook="50_evaluate", group="gaa00000", queue="rt_HG", params={"backend": "vllm"})
    with pytest.raises(UserError, match="backend vllm needs the evaluation environment"):
        plan_job(req)
    assert plan_job(JobRequest(notebook="50_evaluate", group="gaa00000", queue="rt_HG",
                               params={"backend": "transformers"})).stage == "evaluate"


def test_a_missing_eval_python_is_named(monkeypatch, models):
    monkeypatch.setenv("TUNEKIT_EVAL_PYTHON", "/nowhere/bin/python")
    with pytest.raises(UserError, match="TUNEKIT_EVAL_PYTHON=/nowhere/bin/python: no such file"):
        vllm_backend.require_eval_python()


def test_vllm_backend_writes_the_same_records_one_process_per_model(models, eval_env, tmp_path):
    import psutil

    dec = Decoding(max_new_tokens=6)
    ref = evaluation.evaluate_models([str(m) for m in models], GOLD, tmp_path / "tf", decoding=dec,
                                     backend="transformers", scorer="tunekit", progress=False)
    pids = []
    real = vllm_backend.run_worker

    def spy(*a, **k):
        out = real(*a, **k)
        pids.append(out["pid"])
        assert not psutil.pid_exists(out["pid"]) or psutil.Process(out["pid"]).status() == psutil.STATUS_ZOMBIE
        return out

    vllm_backend.run_worker = spy
    try:
        got = evaluation.evaluate_models([str(m) for m in models], GOLD, tmp_path / "vllm", decoding=dec,
                                         backend="vllm", scorer="tunekit", progress=False)
    finally:
        vllm_backend.run_worker = real
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids  # a worker per model, each gone
    for a, b in zip(ref, got):
        assert b.generation.backend == "vllm" and b.generation.outputs == a.generation.outputs
        assert b.generation.new_tokens == a.generation.new_tokens
        pa, pb = (r.folder / "predictions.jsonl" for r in (a, b))
        assert pa.read_text(encoding="utf-8") == pb.read_text(encoding="utf-8")
        assert b.report.overall_accuracy == a.report.overall_accuracy


def test_prompt_ids_that_differ_from_the_training_template_are_reported(models, eval_env, monkeypatch, capsys):
    problems = [g["problem"] for g in GOLD[:3]]
    generate_answers(models[0], problems, decoding=Decoding(max_new_tokens=2), backend="vllm", progress=False)
    assert "differ from the chat-template ids" not in capsys.readouterr().out
    monkeypatch.setenv("FAKE_VLLM_EXTRA_BOS", "1")  # a vLLM that would send another prompt
    generate_answers(models[0], problems, decoding=Decoding(max_new_tokens=2), backend="vllm", progress=False)
    assert "for 3 of 3 problems (first: #0) vLLM's prompt ids differ" in capsys.readouterr().out


def test_a_failing_worker_is_one_sentence_with_its_last_line(eval_env, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError) as err:
        vllm_backend.run_worker(tmp_path, [[{"role": "user", "content": "1+1"}]], Decoding(), progress=False)
    assert "vLLM generation failed in the evaluation environment" in str(err.value)
    assert "exit 1" in str(err.value)


def test_sampling_parameters_follow_the_decoding():
    assert vllm_backend.sampling(Decoding(max_new_tokens=64)) == {
        "n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 0}
    assert vllm_backend.sampling(Decoding(temperature=0.7, top_p=0.9, n_samples=4, seed=3))["n"] == 4


def test_make_setup_eval_refuses_a_flavour_pypi_cannot_resolve(tmp_path):
    # Only the CUDA 13.0 builds of vLLM 0.32.0 / torch 2.13.0 resolve from PyPI (test_env_resolution.py):
    # asking for cu128 stops before building anything, in one sentence naming the way out.
    import subprocess

    repo = FAKE.parents[1]
    done = subprocess.run(["make", "-s", "setup-eval", "CUDA=cu128", f"EVAL_VENV={tmp_path / 'eval'}"], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "CUDA=cu128" in done.stderr and "backend: transformers" in done.stderr
    assert not (tmp_path / "eval").exists()


def test_backend_auto_picks_vllm_only_with_the_environment_and_a_gpu(models, monkeypatch):
    from tunekit.evaluate import generate

    class Chosen(Exception):
        pass

    def fake_vllm(*a, **k):
        raise Chosen("vllm")

    def fake_transformers(path):
        raise Chosen("transformers")

    monkeypatch.setattr(vllm_backend, "generate_vllm", fake_vllm)
    monkeypatch.setattr(generate, "load_model", fake_transformers)
    problems = [GOLD[0]["problem"]]
    for has_env, device, want in ((True, "cuda", "vllm"), (True, "cpu", "transformers"),
                                  (False, "cuda", "transformers")):
        monkeypatch.setattr(vllm_backend, "eval_python", lambda e=has_env: sys.executable if e else None)
        monkeypatch.setattr(generate, "pick_device", lambda d=device: d)
        assert generate.vllm_available() is (want == "vllm")
        with pytest.raises(Chosen, match=f"^{want}$"):
            generate_answers(models[0], problems, backend="auto", progress=False)
