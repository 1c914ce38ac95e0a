"""Core plumbing: typed params, run records, atomic writes, the environment file, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunekit import atomic
from tunekit.errors import UserError
from tunekit.params import NotebookParams
from tunekit.runs import read_metrics, start_run


class DemoParams(NotebookParams):
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    datasets: dict = {}
    run_name: str = ""
    runs_dir: str = ""


def test_params_accept_defaults_and_int_for_float():
    cfg = DemoParams.parse({"lr": 1, "steps": 3})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.steps == 3


@pytest.mark.parametrize("bad, needle", [
    ({"steps": "3"}, "parameter 'steps'"),
    ({"steps": 2.5}, "parameter 'steps'"),
    ({"lr": "fast"}, "parameter 'lr'"),
    ({"nope": 1}, "unknown parameter(s) nope"),
])
def test_params_reject_bad_values_with_one_sentence(bad, needle):
    with pytest.raises(UserError) as exc:
        DemoParams.parse(bad, source="p.yaml")
    assert needle in str(exc.value) and str(exc.value).startswith("p.yaml:")


def test_params_from_globals_takes_only_fields():
    cfg = DemoParams.from_globals({"lr": 0.5, "unrelated": object(), "__name__": "x"})
    assert cfg.lr == 0.5 and cfg.steps == 10


def test_run_record_files_and_resume(runs_dir):
    cfg = DemoParams.parse({"steps": 4})
    run = start_run("sft", cfg, "r1")
    assert run.dir == runs_dir / "sft" / "r1" and not run.resumed
    assert json.loads((run.dir / "params.json").read_text())["steps"] == 4
    env = json.loads((run.dir / "env.json").read_text())
    assert {"packages", "git", "devices", "python"} <= set(env)
    assert "torch" in env["packages"]
    run.log(step=1, loss=2.0)
    run.log(step=2, loss=1.5)
    with open(run.dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a line torn by a kill
    assert [m["step"] for m in read_metrics(run.dir)] == [1, 2]
    again = start_run("sft", cfg, "r1")
    assert again.resumed
    again.finish({"steps": 4})  # a result: from now on the parameters are fixed
    with pytest.raises(UserError, match="different parameters.*steps: 4 -> 5"):
        start_run("sft", DemoParams.parse({"steps": 5}), "r1")


def test_run_name_must_be_a_plain_folder(runs_dir):
    with pytest.raises(UserError, match="not a valid run name"):
        start_run("sft", DemoParams(), "../escape")


def test_non_zero_rank_writes_nothing(runs_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run = start_run("sft", DemoParams(), "r2")
    run.log(step=1)
    run.finish({"x": 1})
    assert not (runs_dir / "sft" / "r2").exists()


def test_env_json_never_holds_secrets(runs_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sekrit-wandb")
    monkeypatch.setenv("HF_TOKEN", "sekrit-hf")
    run = start_run("sft", DemoParams(), "r3")
    blob = "".join(p.read_text() for p in run.dir.iterdir())
    assert "sekrit" not in blob


def test_atomic_dir_failure_leaves_nothing_trusted(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as d:
            (d / "half").write_text("x")
            raise RuntimeError("killed")
    assert not target.exists()
    with atomic.atomic_dir(target) as d:
        (d / "whole").write_text("y")
    assert (target / "whole").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_write_json_roundtrip(tmp_path):
    atomic.write_json(tmp_path / "a" / "b.json", {"z": 1, "a": "日本"})
    assert json.loads((tmp_path / "a" / "b.json").read_text(encoding="utf-8")) == {"z": 1, "a": "日本"}
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_environment_yml_is_the_pip_source(repo):
    sys.path.insert(0, str(repo / "tools"))
    try:
        from env_requirements import pip_requirements
    finally:
        sys.path.pop(0)
    reqs = pip_requirements(str(repo / "environment.yml"))
    assert "torch==2.13.0" in reqs and "megatron-core==0.16.1" in reqs
    training_path = ["torch", "transformers", "tokenizers", "sentencepiece", "safetensors", "peft"]
    pinned = {r.split("==")[0] for r in reqs if "==" in r}
    assert set(training_path) <= pinned, "the training path must be pinned exactly"


def test_cli_user_error_is_one_line_exit_2(repo):
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "notebooks", "run", "no_such_nb"],
                         capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: unknown notebook 'no_such_nb'")
    assert "Traceback" not in out.stderr


def test_atomic_files_respect_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_train_worker_entry_reports_missing_params_in_one_line(repo, stage):
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "train", stage, "--params", "missing.yaml"],
                         capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "missing.yaml" in out.stderr
