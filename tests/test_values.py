"""One value parser for every entry point: `-p` on `notebooks run` and `job submit`, params
files, the job's params.yaml and notebook globals. A str parameter keeps exactly what was typed;
other types follow explicit rules (tunekit.values) and refuse what does not fit, in one sentence.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_pbs"))
from pbs_helpers import ReportParams, install_fake_pbs, register_stand_ins  # noqa: E402

from tunekit import atomic  # noqa: E402
from tunekit.cli import main as cli_main, parse_args  # noqa: E402
from tunekit.errors import UserError  # noqa: E402
from tunekit import paramfile  # noqa: E402
from tunekit.jobs.cli import request_from_args  # noqa: E402
from tunekit.jobs.spec import plan_job  # noqa: E402
from tunekit.notebooks import convert_params, params_from_args, spec  # noqa: E402
from tunekit.values import Text, ValueProblem, convert  # noqa: E402

# Each case of the issue, and the neighbours a YAML 1.1 reader gets wrong.
CONVERTED = [
    (str, "team #1 runs", "team #1 runs"), (str, "0100", "0100"), (str, "0x10", "0x10"),
    (str, ".inf", ".inf"), (str, "null", "null"), (str, "~", "~"), (str, "yes", "yes"),
    (str, "off", "off"), (str, "2e-5", "2e-5"), (str, "", ""), (str, " a\n", " a\n"),
    (str, "2026-01-05", "2026-01-05"), (str, "[a, b]", "[a, b]"), (str, "a: b", "a: b"),
    (int, "100", 100), (int, "-1", -1), (int, "1_000", 1000), (int, "0x10", 16), (int, " 7 ", 7),
    (float, "2e-5", 2e-5), (float, "3", 3.0), (float, ".5", 0.5), (float, "-1.5e3", -1500.0),
    (bool, "true", True), (bool, "False", False),
    (list[str], "[tiny, runs/sft/a, 0100]", ["tiny", "runs/sft/a", "0100"]),
    (list[str], '["a b", "c"]', ["a b", "c"]),
    (dict[str, Any], '{"math": {"max_train_samples": 10, "split_dev": false}}',
     {"math": {"max_train_samples": 10, "split_dev": False}}),
    (dict[str, Any], "{math: {upsampling_factor: 2, note: 0100}}",
     {"math": {"upsampling_factor": 2, "note": "0100"}}),
    (Literal["head", "hash"], "hash", "hash"), (int | None, "null", None), (int | None, "4", 4),
]
REFUSED = [
    (int, "0100", "leading zeros are not allowed"), (int, "1e3", "not a whole number"),
    (int, "true", "not a whole number"), (int, "1" * 5000, "5000 characters"),
    (float, ".inf", "not a number"), (float, "nan", "not a number"), (float, "inf", "not a number"),
    (float, "1e400", "not a finite number"), (float, "2e-5x", "not a number"),
    (bool, "yes", "neither true nor false"), (bool, "on", "neither true nor false"),
    (bool, "1", "neither true nor false"), (list[str], "[a, b", "not a list or mapping"),
    (Literal["head", "hash"], "tail", "not one of head, hash"), (str, "a\ud800b", "not valid Unicode"),
]


@pytest.mark.parametrize("annotation, text, want", CONVERTED)
def test_text_is_converted_by_the_declared_type(annotation, text, want):
    got = convert(annotation, Text(text))
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("annotation, text, needle", REFUSED)
def test_text_that_does_not_fit_is_refused(annotation, text, needle):
    with pytest.raises(ValueProblem, match=needle):
        convert(annotation, Text(text))


def test_params_file_scalars_follow_the_same_rules(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("note: team #1 runs\ncount: 0x10\n", encoding="utf-8")  # YAML comment after ' #'
    values = ReportParams.convert(paramfile.load(f), str(f))
    assert values == {"note": "team", "count": 16}
    f.write_text("note: '0100'\ncount: 0100\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"p.yaml: parameter 'count': '0100' is not a whole number"):
        ReportParams.parse(paramfile.load(f), str(f))
    f.write_text("note: 0100\ncount: 3\n", encoding="utf-8")
    assert ReportParams.parse(paramfile.load(f), str(f)).note == "0100"


def test_notebook_globals_go_through_the_same_parser():
    assert ReportParams.from_globals({"note": "0100", "count": 3}).note == "0100"
    with pytest.raises(UserError, match="parameter 'count'"):
        ReportParams.from_globals({"count": "3"})  # a value typed in a notebook is already Python


@pytest.fixture
def stand_ins(tmp_path, monkeypatch, runs_dir):
    register_stand_ins(monkeypatch, tmp_path / "nbs")
    for name in ("WANDB_API_KEY", "HF_TOKEN", "TUNEKIT_ABCI_GROUP"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _job_params(argv: list[str]) -> dict[str, Any]:
    return plan_job(request_from_args(parse_args(argv))).params


def test_both_cli_entry_points_read_2e_5_alike(stand_ins):
    """`notebooks run -p lr 2e-5` was refused while `job submit -p lr 2e-5` accepted it."""
    lr = ["-p", "lr", "2e-5", "-p", "min_lr", "2e-6"]
    run = convert_params(spec("30_sft"), params_from_args(parse_args(["notebooks", "run", "30_sft", *lr])))
    job = _job_params(["job", "submit", "30_sft", *lr, "--group", "gab50000", "--queue", "rt_HC",
                       "--run-name", "x"])
    assert run["lr"] == job["lr"] == 2e-5 and type(run["lr"]) is type(job["lr"]) is float


def _notebook_receives(params: dict[str, Any], notebook: Path) -> ReportParams:
    """What the notebook's validation cell builds after papermill injects `params`."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(notebook)), params, kernel_name="tunekit",
                               language="python")
    namespace: dict[str, Any] = {}
    for cell in nb.cells[:2]:  # the parameters cell, then papermill's injected cell
        exec(cell.source, namespace)  # noqa: S102 - the kit's own test notebook
    return ReportParams.from_globals(namespace)


def _params_json(cfg, folder: Path) -> dict[str, Any]:
    atomic.write_json(folder / "params.json", cfg.to_dict())  # the writer start_run uses
    return json.loads((folder / "params.json").read_text(encoding="utf-8"))


HOSTILE_STRINGS = ["team #1 runs", "0100", "0x10", ".inf", "null", "~", "yes", "no", "on", "off",
                   "2e-5", "-1", "-x", "--", "--a=b", "-p", "a=b", "", " ", "\t", "\n", "a\r\nb",
                   "\r", "'", '"', "'\"", "\\", '\\"', "\\n", "# c", "a #b", "&a", "*a", "!!int 3",
                   "{a: 1}", "[1]", "? x", "- x", "|", ">", "%YAML", "---", "...", "=", "<<",
                   "\x85", "\u2028", "\ufeff", "\x00", "\x1b[31m", "日本語 ＃ 全角", "e\u0301",
                   "😀", "\U0010ffff", "$(touch PWNED)", "`x`", "$HOME", "a" * 300]


@pytest.mark.slow
def test_str_parameters_round_trip_any_string(stand_ins):
    """CLI -> job params.yaml -> papermill -> notebook -> params.json, and CLI -> notebooks run
    -> papermill -> notebook: a str parameter arrives exactly as typed (hypothesis strings plus
    the hostile ones above, derandomised so every run checks the same inputs)."""
    report = spec("97_report")

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.text(max_size=40))
    def round_trip(s):
        job = _job_params(["job", "submit", "97_report", "-p", "note", s, "-p", "count", "7",
                           "--group", "gab50000", "--queue", "rt_HC", "--run-name", "x"])
        text = paramfile.dumps(job, header="params")
        from papermill.iorw import NoDatesSafeLoader

        in_job = yaml.load(text, Loader=NoDatesSafeLoader)  # papermill -f, inside the job
        cfg = _notebook_receives(in_job, report.ipynb)
        assert cfg.note == s and cfg.count == 7
        assert _params_json(cfg, stand_ins)["note"] == s
        local = convert_params(report, params_from_args(
            parse_args(["notebooks", "run", "97_report", "-p", "note", s])))
        assert _notebook_receives(local, report.ipynb).note == s

    for s in HOSTILE_STRINGS:
        round_trip = example(s)(round_trip)
    round_trip()


@pytest.mark.slow
def test_hostile_string_arrives_in_real_runs(stand_ins, monkeypatch):
    """The same through real processes: a job under the fake PBS and `tunekit notebooks run`."""
    from tunekit.jobs.submit import latest_submission
    from tunekit.paths import repo_root, runs_root

    fake = install_fake_pbs(monkeypatch, stand_ins / "pbs")
    nasty = "team #1 runs: 0100 0x10 .inf null ~ yes -x 'q' \"d\" \\ 日本語\n\tsecond line"
    try:
        assert cli_main(["job", "submit", "97_report", "-p", "note", nasty, "-p", "count", "0x10",
                         "--group", "gab50000", "--queue", "rt_HC", "--run-name", "job"]) == 0
        [job] = fake.wait(latest_submission(runs_root() / "dummy" / "job")["job_ids"], timeout=300)
    finally:
        for record in (stand_ins / "pbs" / "jobs").glob("*.json"):  # the job logs go to <repo>/logs
            for log in (repo_root() / "logs").glob(f"{json.loads(record.read_text())['name']}-*"):
                log.unlink()
    assert job["exit_status"] == 0, job
    assert cli_main(["notebooks", "run", "97_report", "-p", "note", nasty, "-p", "count", "16",
                     "-p", "run_name", "local"]) == 0
    for run in ("job", "local"):
        d = runs_root() / "dummy" / run
        assert json.loads((d / "params.json").read_text(encoding="utf-8"))["note"] == nasty
        seen = json.loads((d / "seen.json").read_text(encoding="utf-8"))
        assert seen["note"] == nasty and seen["count"] == 16
