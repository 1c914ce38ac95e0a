"""Every shipped params file (job_templates/params/<model>/<stage>/<variant>.yaml) is valid for its
notebook, and the submit command in its header passes every check `tunekit job submit` makes."""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tunekit.cli import build_parser
from tunekit import paramfile
from tunekit.jobs.cli import request_from_args
from tunekit.jobs.site import templates_dir
from tunekit.jobs.spec import plan_job
from tunekit.notebooks import check_params, declared_parameters, spec

PARAMS_DIR = templates_dir() / "params"
FILES = sorted(PARAMS_DIR.glob("*/*/*.yaml"))


def _id(path: Path) -> str:
    return str(path.relative_to(PARAMS_DIR))


def test_params_files_exist_for_both_models_and_only_in_the_documented_layout():
    assert {p.relative_to(PARAMS_DIR).parts[0] for p in FILES} == {"llm-jp-4-8b", "tiny"}
    stray = [p for p in PARAMS_DIR.rglob("*") if p.is_file() and p not in FILES]
    assert not stray, f"files outside params/<model>/<stage>/<variant>.yaml: {stray}"
    for model in ("llm-jp-4-8b", "tiny"):
        assert (PARAMS_DIR / model / "sft").is_dir() and (PARAMS_DIR / model / "dpo").is_dir()


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_params_file_validates_with_its_notebooks_parameters_model(path):
    nb = spec(path.parent.name)  # the <stage> folder names the notebook
    values = paramfile.load(path)
    cfg = nb.params_model().parse({**values, "run_name": "check"}, source=str(path))
    assert cfg.run_name == "check"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_params_file_names_only_parameters_its_notebook_declares(path):
    nb = spec(path.parent.name)
    if not nb.exists():
        pytest.skip(f"notebooks/{nb.name}.ipynb is not built yet (checked against its params model only)")
    values = paramfile.load(path)
    assert set(values) <= set(declared_parameters(nb.ipynb))
    check_params(nb, values, source=str(path))


def _submit_line(path: Path) -> list[str]:
    lines = [line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()
             if re.match(r"^#\s+tunekit job submit ", line)]
    assert len(lines) == 1, f"{path}: the header must show one `tunekit job submit` command"
    argv = shlex.split(lines[0])
    assert argv[:3] == ["tunekit", "job", "submit"]
    assert f"job_templates/params/{_id(path)}" in argv, "the command must use this very file"
    return argv[1:]


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_the_documented_submit_command_passes_validation(path, runs_dir, monkeypatch):
    argv = _submit_line(path)
    nb = spec(path.parent.name)
    if not nb.exists():
        pytest.skip(f"notebooks/{nb.name}.ipynb is not built yet")
    monkeypatch.chdir(templates_dir().parent)  # the commands are written for the repository root
    # backend: vllm files need the evaluation environment (make setup-eval); any python stands in.
    monkeypatch.setenv("TUNEKIT_EVAL_PYTHON", sys.executable)
    args = build_parser().parse_args([a.replace("gaXXXXX", "gaa00000") for a in argv])
    plan = plan_job(request_from_args(args))
    assert plan.stage == nb.stage and plan.group == "gaa00000"
    if path.parts[-3] == "llm-jp-4-8b" and nb.stage in ("sft", "dpo"):
        want = ("rt_HG", 1, 1) if path.stem == "lora" else ("rt_HF", 2, 16)  # LoRA: one H200
        assert (plan.queue, plan.nodes, plan.world_size) == want
