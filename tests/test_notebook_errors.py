"""A UserError raised in a notebook cell reaches the person: as the failing cell's output (what
JupyterLab shows; the browser test checks the page itself), in papermill's executed notebook, in
nbval's failure report, and as the one-line `error:` of `tunekit notebooks run`, exit code 2,
never a traceback. Two real causes: a bad parameter and a bad data line with on_error="raise".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
SYS = {"role": "system", "content": "s"}


def write_bad_data(root: Path) -> Path:
    """A data version whose SFT file has one bad line (line 3); returns the data dir."""
    good = [{"messages": [SYS, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]
    sft = root / "v1" / "tuning" / "train" / "drill.jsonl"
    sft.parent.mkdir(parents=True)
    lines = [json.dumps(r) for r in good]
    lines.insert(2, '{"messages": [')  # line 3: cut off mid-record
    sft.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pref = root / "v1" / "preference" / "train" / "pref.jsonl"
    pref.parent.mkdir(parents=True)
    pref.write_text("".join(json.dumps({"messages": [SYS, {"role": "user", "content": f"q{i}"}],
                                        "chosen_response": "c", "rejected_response": f"r{i}"}) + "\n"
                            for i in range(6)), encoding="utf-8")
    return root


def tunekit(args, tmp_path, timeout=600):
    env = {**os.environ, "TUNEKIT_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def error_outputs(notebook: Path) -> list[dict]:
    nb = nbformat.read(notebook, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def assert_one_sentence(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in out.stderr and "CellExecutionError" not in out.stderr
    return lines[0]


CASES = {
    "bad parameter": (["sft", "-p", "model", "nonexistent_model"], ["nonexistent_model"]),
    "bad data line": (["inspect_data", "-p", "data_version", "v1", "-p", "sft_datasets", "{}",
                       "-p", "dpo_datasets", "{}"], ["drill.jsonl:3", "invalid JSON"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_cli_and_papermill_show_the_sentence(tmp_path, case):
    args, needles = CASES[case]
    args = ["notebooks", "run", *args, "-p", "run_name", "r"]
    if case == "bad data line":
        args += ["-p", "data_dir", str(write_bad_data(tmp_path / "data"))]
    out = tunekit(args, tmp_path)
    line = assert_one_sentence(out, *needles)
    executed = next((tmp_path / "runs").glob("*/r/*.ipynb"))
    assert str(executed) in line  # says where the partial notebook is
    errors = error_outputs(executed)
    assert len(errors) == 1, errors
    shown = "\n".join(errors[0]["traceback"])
    assert shown.startswith("error: ") and all(n in shown for n in needles), shown
    assert "Traceback" not in shown and "File \"" not in shown


@pytest.mark.slow
def test_nbval_reports_the_sentence(tmp_path):
    """nbval runs the notebook cell by cell; its failure report must carry the sentence."""
    nb = nbformat.read(REPO / "notebooks" / "30_sft.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('model: str = "tiny"', 'model: str = "nonexistent_model"')
    assert "nonexistent_model" in params.source
    target = tmp_path / "bad_param.ipynb"
    nbformat.write(nb, target)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "TUNEKIT_RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--nbval-lax", "--nbval-current-env", "-c", str(tmp_path / "pytest.ini"),
                          "--rootdir", str(tmp_path), str(target)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "Notebook cell execution failed" in out.stdout, out.stdout[-3000:]
    # The first failure is the cell that raised; later cells fail on names it never defined.
    report = out.stdout[out.stdout.index("Notebook cell execution failed"):].split("\n____")[0]
    assert "prepare_sft(cfg)" in report, report[:3000]
    assert "error: " in report and "nonexistent_model" in report, report[:3000]
    assert "most recent call last" not in report and "File \"" not in report, report[:3000]


def test_user_error_renders_as_one_sentence_in_ipython():
    """The IPython protocol the three front ends rely on: showtraceback uses _render_traceback_."""
    from IPython.core.interactiveshell import InteractiveShell

    from tunekit.errors import UserError

    shell = InteractiveShell.instance()
    shown = []
    shell._showtraceback = lambda etype, evalue, stb: shown.append(stb)
    try:
        result = shell.run_cell("from tunekit.errors import UserError\n"
                                "from tunekit.runtime import notebook_setup\nnotebook_setup()\n"
                                "raise UserError('x.yaml: parameter lr: bad (write 2e-5)')")
    finally:
        InteractiveShell.clear_instance()
    assert isinstance(result.error_in_exec, UserError)
    assert shown == [["error: x.yaml: parameter lr: bad (write 2e-5)"]]


@pytest.mark.slow
def test_ctrl_c_says_interrupted_without_a_kernel_traceback(tmp_path):
    """Ctrl-C reaches the whole foreground process group (tunekit and its kernel): the terminal shows
    the run's notebook and `interrupted`, not the kernel's ZMQError traceback (that goes to kernel.log)."""
    import signal
    import time

    tunekit = Path(sys.executable).parent / "tunekit"
    env = dict(os.environ, TUNEKIT_PROGRESS_SECONDS="1")
    proc = subprocess.Popen([str(tunekit), "notebooks", "run", "30_sft", "-p", "runs_dir", str(tmp_path),
                             "-p", "run_name", "ctrlc"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until training is under way
        seen.append(line)
        if line.startswith("step=0 val_loss") or time.time() > deadline:
            break
    assert any(x.startswith("step=0 val_loss") for x in seen), "".join(seen)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does in a terminal
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    last = rest.rstrip().splitlines()[-1]
    # One sentence: the stop, the checkpoint it saved, how to resume, where the notebook is.
    assert last.startswith("error: SIGINT received: training stopped after step"), rest
    assert "status interrupted" in last and "same run_name to resume" in last, rest
    assert str(tmp_path / "sft" / "ctrlc" / "30_sft.ipynb") in last, rest
    assert "Traceback" not in rest and "ZMQError" not in rest, rest
    assert (tmp_path / "sft" / "ctrlc" / "kernel.log").is_file()
