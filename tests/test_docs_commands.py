"""Every command in the README and docs/ works as written, or is checked as far as this machine allows.

The commands are the lines of the ```bash blocks of README.md, docs/*.md, datasets/README.md and
lib/tunekit/data/README.md (continuation lines joined, comments dropped). `RULES` says how each is
exercised, and every command must match one, so a new command in the docs cannot go untested:

    run      executed here, in a scratch copy of the repository (with this venv): `make help`, the
             sample generator, `tunekit notebooks run` of the tiny inspect notebook and `--help`, the
             papermill recipe (venv papermill, --cwd, run_name: notebook and run record in ONE
             folder), `tunekit job submit ... --dry-run`, `tunekit job status`;
    covered  executed by another test, named in the rule (the demo chain, `make lab`, `make setup`);
    parse    what cannot run here (PBS, ABCI paths, 8 GPUs, hours of training) is parsed by the
             kit's own command-line parser, its notebook parameters validated, and every file of the
             repository it names must exist;
    abci     shell lines for ABCI (module, qsub, conda, ssh, links to /groups): only the repository
             files they name are checked.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "datasets" / "README.md",
        REPO / "lib" / "tunekit" / "data" / "README.md"]

TK = r"^(\.venv/bin/)?tunekit "
# (pattern, kind, why); the first match decides.
RULES = [
    (r"^make (demo|test)\b", "covered", "tests/test_pipeline.py runs the demo chain; `make test` is this suite"),
    (r"^make lab\b", "covered", "tests/browser/test_jupyterlab.py starts `make lab` and drives it"),
    (r"^(PYTHON=\S+ )?make setup\b", "covered", "tests/test_git_filter.py runs `make setup`"),
    (r"^make help\b", "run", ""),
    (r"^make gpu-smoke$", "covered", "tests/test_gpu_smoke.py runs it simulated on CPU (the real run needs a GPU)"),
    (r"^\.venv/bin/python datasets/generate_sample\.py", "run", ""),
    (TK + r"notebooks run \S+ --help$", "run", ""),
    (TK + r"notebooks run 10_inspect_data ", "run", ""),
    (r"^mkdir -p runs/inspect_data/", "run", ""),
    (r"^\.venv/bin/papermill .*notebooks/10_inspect_data\.ipynb", "run", ""),
    (TK + r"job submit .* --dry-run$", "run", ""),
    (TK + r"job status$", "run", ""),
    (TK, "parse", "needs PBS, ABCI paths, GPUs or hours"),
    (r"^(torchrun|python) .*-m tunekit\.cli ", "parse", "needs 8 GPUs"),
    (r"^\.venv/bin/papermill ", "parse", "trains for minutes (the 10_inspect_data recipe runs)"),
    (r"^(conda|mamba|pip|python3? -m (venv|ipykernel)|source|module|qsub|ssh|mpirun|export|ln -s|mkdir -p|"
     r"tail|bash scripts/|git clone|cd |cat > \S+ <<|set -euo pipefail$|exec > |SH$)", "abci", "ABCI shell"),
]


def commands() -> list[tuple[str, str]]:
    """(doc file, command) for every command line of every bash block."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"```(bash|sh|shell)\n(.*?)```", text, re.S):
            body = re.sub(r"\\\n\s*", " ", m.group(2))
            for line in body.splitlines():
                line = re.sub(r"\s+#.*$", "", line.strip()) if not line.strip().startswith("#") else ""
                if line:
                    out.append((str(doc.relative_to(REPO)), line))
    return out


def kind_of(command: str) -> tuple[str, str]:
    for pattern, kind, why in RULES:
        if re.search(pattern, command):
            return kind, why
    return "", ""


ALL = commands()


def test_every_documented_command_has_a_rule():
    assert len(ALL) > 40
    missing = [f"{doc}: {cmd}" for doc, cmd in ALL if not kind_of(cmd)[0]]
    assert not missing, "no rule says how these are tested (add one to RULES):\n" + "\n".join(missing)


def _repo_paths(command: str) -> list[str]:
    """Repository files a command names (relative paths into the kit's own folders)."""
    roots = ("job_templates/", "notebooks/", "datasets/generate", "tools/", "environment", "docs/", "lib/")
    return [tok for tok in shlex.split(command.replace("$((", "").replace("<(", "("))
            if tok.startswith(roots) and not tok.endswith("/")]


@pytest.mark.parametrize("doc, command", [c for c in ALL if kind_of(c[1])[0] in ("parse", "abci")],
                         ids=[f"{d}:{c[:60]}" for d, c in ALL if kind_of(c)[0] in ("parse", "abci")])
def test_static_commands_name_real_files_and_parse(doc, command):
    for rel in _repo_paths(command):
        assert (REPO / rel).exists(), f"{doc}: `{command}` names {rel}, which does not exist"
    if kind_of(command)[0] != "parse":
        return
    from tunekit.cli import build_parser, verbatim_params
    from tunekit.notebooks import check_params, params_from_args, spec
    from tunekit.values import Text

    # Placeholders: <N> is a number, <anything else> a name.
    words = shlex.split(re.sub(r"<[^>]+>", "x", command.replace("<N>", "2")))
    if words[0].endswith("papermill"):
        notebook = next(w for w in words if w.endswith(".ipynb"))
        params = {words[i + 1]: Text(words[i + 2]) for i, w in enumerate(words) if w == "-p"}
        check_params(spec(notebook), params, source=doc)  # papermill itself would only warn
        return
    if "tunekit.cli" in words:  # torchrun / python -m tunekit.cli ...
        words = ["tunekit", *words[words.index("tunekit.cli") + 1:]]
    args = build_parser().parse_args(verbatim_params(words[1:]))
    assert getattr(args, "func", None), f"{doc}: `{command}` is not a tunekit command"
    if getattr(args, "nb_command", None) == "run":
        check_params(spec(args.notebook), params_from_args(args), source=doc)


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The working tree (tracked and new files) in a scratch folder, with this venv as .venv."""
    root = tmp_path_factory.mktemp("docs") / "tunekit"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    (root / ".venv").symlink_to(VENV)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("doc, command", [c for c in ALL if kind_of(c[1])[0] == "run"],
                         ids=[f"{d}:{c[:60]}" for d, c in ALL if kind_of(c)[0] == "run"])
def test_runnable_commands_work_as_written(copy, tmp_path, doc, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEKIT_")}
    env.update(TUNEKIT_ROOT=str(copy), TUNEKIT_CACHE_DIR=str(REPO / ".cache" / "tunekit"), HF_HUB_OFFLINE="1",
               PATH=f"{VENV / 'bin'}:{env['PATH']}")
    shell = command.replace("/tmp/s", str(tmp_path / "s"))  # the one path outside the repository
    done = subprocess.run(["bash", "-c", shell], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{doc}: `{command}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if "run_name my-run" in command and "10_inspect_data" in command:
        # The executed notebook and the run record land in one folder, the one the docs name.
        run = copy / "runs" / "inspect_data" / "my-run"
        assert (run / "10_inspect_data.ipynb").is_file() and (run / "summary.json").is_file(), \
            sorted(p.name for p in run.parent.glob("*/*"))
    if command.startswith(".venv/bin/python datasets/generate_sample.py"):
        out = tmp_path / "s" if "--out" in command else copy / "datasets" / "sample"
        for f in (REPO / "datasets" / "sample").rglob("*.jsonl"):
            assert (out / f.relative_to(REPO / "datasets" / "sample")).read_bytes() == f.read_bytes()
    if command.endswith("--help") and "notebooks run" in command:
        assert "parameters of" in done.stdout and "lr" in done.stdout
