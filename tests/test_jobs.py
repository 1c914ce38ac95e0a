"""PBS job plumbing without running any job: validation, rendering, quoting, chain decisions."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_pbs"))
from pbs_helpers import install_fake_pbs, register_stand_ins  # noqa: E402

from tunekit.cli import main as cli_main  # noqa: E402
from tunekit.errors import UserError  # noqa: E402
from tunekit import paramfile  # noqa: E402
from tunekit.jobs import chain, node, pbs, resources  # noqa: E402
from tunekit.jobs.render import render_script, shell_word  # noqa: E402
from tunekit.jobs.site import load_site, templates_dir  # noqa: E402
from tunekit.jobs.spec import JobRequest, plan_job  # noqa: E402
from tunekit.jobs.submit import submit_job  # noqa: E402

HOSTILE = "a b'c\"d $(touch PWNED) `touch PWNED2`; touch PWNED3 & \\ $HOME * ~"


@pytest.fixture
def stand_ins(tmp_path, monkeypatch, runs_dir):
    register_stand_ins(monkeypatch, tmp_path / "nbs")
    monkeypatch.delenv("TUNEKIT_ABCI_GROUP", raising=False)
    for name in ("WANDB_API_KEY", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def plan(**kw):
    base = dict(notebook="97_report", group="gab50000", queue="rt_HC", walltime="00:10:00")
    base.update(kw)
    return plan_job(JobRequest(**base))


# ---------------------------------------------------------------- resources
def test_walltime_parse_and_format_round_trip():
    assert resources.parse_walltime("12:00:00") == 43200
    assert resources.parse_walltime("1:02:03") == 3723
    assert resources.parse_walltime("168:00:00") == 168 * 3600
    assert resources.format_walltime(3723) == "01:02:03"
    assert resources.format_walltime(200 * 3600) == "200:00:00"


@pytest.mark.parametrize("queue, nodes, walltime, needle", [
    ("rt_HG", 2, "01:00:00", "only allowed on rt_HF"),
    ("rt_HC", 2, "01:00:00", "only allowed on rt_HF"),
    ("rt_HF", 129, "01:00:00", "at most 128 nodes"),
    ("rt_HF", 0, "01:00:00", "positive whole number"),
    ("rt_XX", 1, "01:00:00", "unknown resource type"),
    ("rt_HF", 1, "169:00:00", "at most 168 h"),
    ("rt_HF", 1, "00:00:30", "too short"),
    ("rt_HF", 1, "12h", "not HH:MM:SS"),
    ("rt_HF", 1, "1:99:00", "not HH:MM:SS"),
])
def test_bad_resources_are_one_sentence(queue, nodes, walltime, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        resources.check_resources(queue, nodes, walltime)


def test_multi_node_rt_hf_is_fine():
    rt, secs = resources.check_resources("rt_HF", 16, "24:00:00")
    assert rt.gpus_per_node == 8 and secs == 86400


@pytest.mark.parametrize("group", [None, "", "-P evil", "gab;rm", "g" * 70, "1abc"])
def test_group_is_required_and_plain(group):
    with pytest.raises(UserError, match="--group"):
        resources.check_group(group)


# ---------------------------------------------------------------- params files
def test_params_file_values_are_converted_by_declared_type(tmp_path):
    from tunekit.params import NotebookParams

    class P(NotebookParams):
        lr: float = 0.1
        min: float = 0.1
        n: int = 1
        day: str = ""
        name: str = ""
        code: str = ""

    data = paramfile.loads("lr: 2e-5\nmin: 1.0e-6\nn: 3\nday: 2026-01-05\nname: '2e-5'\ncode: 0100\n", "x.yaml")
    typed = P.convert(data, "x.yaml")
    assert typed == {"lr": 2e-5, "min": 1e-6, "n": 3, "day": "2026-01-05", "name": "2e-5", "code": "0100"}
    assert isinstance(typed["lr"], float)
    text = paramfile.dumps({**typed, "note": HOSTILE + "\nsecond line"}, header="a\nb")
    assert text.startswith("# a\n# b\n")
    # papermill reads the job's file with its own loader: it must get the same values back.
    from papermill.iorw import NoDatesSafeLoader

    assert yaml.load(text, Loader=NoDatesSafeLoader) == {**typed, "note": HOSTILE + "\nsecond line"}


@pytest.mark.parametrize("text, needle", [("- 1\n- 2\n", "must be a YAML mapping"),
                                          ("a: [1,\n", "x.yaml:")])
def test_params_loader_errors_name_the_file(text, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        paramfile.loads(text, "x.yaml")


# ---------------------------------------------------------------- validation before qsub
def test_plan_fixes_run_dir_and_params(stand_ins, runs_dir):
    p = plan(params={"note": "x", "count": 3}, run_name="r1")
    assert p.run_dir == runs_dir / "dummy" / "r1"
    assert p.params == {"note": "x", "count": 3, "run_name": "r1"}
    assert p.launcher == "single" and p.world_size == 1 and p.job_name == "dummy-r1"
    assert p.script_path == p.run_dir / "job" / p.submission / "job.sh"


def test_generated_run_name_is_shared_by_the_chain(stand_ins):
    p = plan(notebook="98_fake_train", chain=3, queue="rt_HF", nproc_per_node=1)
    assert re.match(r"^\d{8}-\d{6}-[0-9a-f]{8}$", p.run_name)
    assert p.params["run_name"] == p.run_name


@pytest.mark.parametrize("kw, needle", [
    ({"params": {"nope": 1}}, "has no parameter(s) nope"),
    ({"params": {"count": "three"}}, "parameter 'count'"),
    ({"params": {"count": 2.5}}, "parameter 'count'"),
    ({"group": None}, "no ABCI group"),
    ({"nodes": 2}, "only allowed on rt_HF"),
    ({"queue": "rt_HF", "nodes": 2}, "runs in one process"),
    ({"chain": 2}, "only training runs"),
    ({"chain": 0}, "--chain"),
    ({"run_name": "a/b"}, "not a valid run name"),
    ({"run_name": "a b"}, "not a valid run name"),
    ({"run_name": "line\nbreak"}, "not a valid run name"),
    ({"env": {"WANDB_API_KEY": "x"}}, "secrets are never written"),
    ({"env": {"PBS_JOBID": "x"}}, "set by the job script"),
    ({"env": {"A-B": "x"}}, "not a valid environment variable"),
    ({"env": {"X": "a\nb"}}, "control character"),
    ({"modules": ["cuda/12.6 ; rm"]}, "not an environment-module name"),
    ({"activate": "venv:/nonexistent"}, "bin/activate not found"),
    ({"activate": "pip:x"}, "use venv:PATH"),
])
def test_bad_requests_fail_before_anything_is_written(stand_ins, runs_dir, kw, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        plan(**kw)
    assert not runs_dir.exists()


@pytest.mark.parametrize("kw, needle", [
    # 2 nodes x 8 GPUs = 16 processes: 24 sequences cannot be split evenly.
    ({"nodes": 2, "params": {"global_batch_size": 24}}, "not divisible by micro_batch_size 1 x 16"),
    ({"queue": "rt_HG", "nproc_per_node": 2}, "has 1 GPU(s)"),
    ({"nproc_per_node": 2, "params": {"nproc_per_node": 4}}, "disagree"),
])
def test_training_layout_is_checked_for_the_job_size(stand_ins, kw, needle):
    base = dict(notebook="98_fake_train", queue="rt_HF")
    base.update(kw)
    with pytest.raises(UserError, match=re.escape(needle)):
        plan(**base)


def test_training_gets_one_process_per_gpu_and_the_right_launcher(stand_ins):
    p = plan(notebook="98_fake_train", queue="rt_HF", nodes=2)
    assert (p.nproc_per_node, p.world_size, p.launcher) == (8, 16, "mpirun")
    assert p.params["nproc_per_node"] == 8  # the notebook launches 8 workers per node
    one = plan(notebook="98_fake_train", queue="rt_HF")
    assert (one.world_size, one.launcher) == (8, "torchrun")
    cpu = plan(notebook="98_fake_train", queue="rt_HC")
    assert (cpu.world_size, cpu.launcher) == (1, "single")


def test_existing_run_with_other_params_is_refused(stand_ins, runs_dir):
    run_dir = runs_dir / "dummy" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "params.json").write_text(json.dumps({"note": "old", "count": 1, "run_name": "r1",
                                                     "runs_dir": ""}))
    # Nothing but a failed start there: a corrected submission may replace it.
    assert plan(params={"note": "new"}, run_name="r1").run_dir == run_dir
    (run_dir / "summary.json").write_text("{}")  # a result: from now on its parameters are fixed
    with pytest.raises(UserError, match="note: 'old' -> 'new'"):
        plan(params={"note": "new"}, run_name="r1")
    assert plan(params={"note": "old"}, run_name="r1").run_dir == run_dir  # same params: resume


# ---------------------------------------------------------------- rendering
def _variants(stand_ins, tmp_path, monkeypatch):
    conda_base = tmp_path / "conda"
    (conda_base / "bin").mkdir(parents=True)
    monkeypatch.setenv("CONDA_EXE", str(conda_base / "bin" / "conda"))
    return [
        plan(),
        plan(modules=[], activate="none"),
        plan(activate="conda:tunekit", env={"NCCL_DEBUG": "INFO"}),
        plan(notebook="98_fake_train", queue="rt_HF", nodes=1),
        plan(notebook="98_fake_train", queue="rt_HF", nodes=4, chain=3, params={"global_batch_size": 64}),
        plan(notebook="98_fake_train", queue="rt_HG"),
    ]


def _shellcheck(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["shellcheck", "--shell=bash", *extra, str(path)], capture_output=True, text=True)


def _need_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (Debian package `shellcheck`; CI must install it)")
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")


def test_every_template_renders_and_passes_bash_n_and_shellcheck(stand_ins, tmp_path, monkeypatch):
    _need_shellcheck()
    templates = sorted(p.name for p in templates_dir().glob("*.jinja"))
    assert templates, "no job templates found"
    for template in templates:
        for i, p in enumerate(_variants(stand_ins, tmp_path, monkeypatch)):
            script = render_script(p, template=template)
            path = tmp_path / f"{template}.{i}.sh"
            path.write_text(script)
            syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert syntax.returncode == 0, f"{template} variant {i}: {syntax.stderr}"
            lint = _shellcheck(path)
            assert lint.returncode == 0, f"{template} variant {i}:\n{lint.stdout}"


def test_rendered_script_has_the_pbs_and_papermill_essentials(stand_ins):
    p = plan(notebook="98_fake_train", queue="rt_HF", nodes=2, walltime="12:00:00")
    s = render_script(p)
    for line in ["#PBS -P gab50000", "#PBS -q rt_HF", "#PBS -l select=2", "#PBS -l walltime=12:00:00",
                 f"#PBS -N {p.job_name}", 'cd "$PBS_O_WORKDIR"',
                 'exec > "logs/${JOB_NAME}-${JOBNUM}.out" 2> "logs/${JOB_NAME}-${JOBNUM}.err"',
                 "source /etc/profile.d/modules.sh", "module load hpcx/2.20", 'export TMPDIR="${LOCAL_DIR}/tmp"',
                 'export HF_HOME="${LOCAL_DIR}/hf"', "ulimit -n 65536", "export CUDA_DEVICE_ORDER=PCI_BUS_ID",
                 'python -m tunekit.cli notebooks execute "$NOTEBOOK_IN" "$NOTEBOOK_OUT" -f "$PARAMS_FILE" &',
                 """kill -s TERM "$child" 2> /dev/null' TERM""", "command -v mpirun",
                 "export TUNEKIT_DEADLINE=$((JOB_START + WALLTIME_S - 60))"]:
        assert line in s, line
    assert "ncpus" not in s.replace("No ncpus is requested", "")
    assert "LOCAL_DIR=${PBS_LOCALDIR:-/tmp}" in s


def test_template_never_puts_values_inside_double_quotes():
    """Inside "...", single quotes are literal, so a quoted value would no longer be inert."""
    for path in templates_dir().glob("*.jinja"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"\{\{", line):
                before = re.sub(r"\\.", "", line[:m.start()])
                assert before.count('"') % 2 == 0, f"{path.name}:{n}: value inside double quotes"


def test_shell_word_refuses_what_cannot_be_quoted():
    assert shell_word("a b") == "'a b'" and shell_word(3) == "3"
    with pytest.raises(TypeError):
        shell_word(True)
    with pytest.raises(TypeError):
        shell_word(None)
    with pytest.raises(ValueError):
        shell_word("a\x00b")


def test_hostile_values_are_one_literal_word_each(stand_ins, tmp_path, monkeypatch, runs_dir):
    """Execute the rendered value block: every variable equals its Python value, nothing ran."""
    weird_runs = tmp_path / HOSTILE.replace("/", "_")
    venv = tmp_path / ("venv " + HOSTILE.replace("/", "_"))
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    cache = tmp_path / ("cache " + HOSTILE.replace("/", "_"))
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(cache))
    # Run names are plain folder names (tunekit.runs.check_run_name); every other value is hostile.
    p = plan(run_name="r-hostile", params={"note": HOSTILE, "runs_dir": str(weird_runs)},
             env={"JOB_TEST_VALUE": HOSTILE}, activate=f"venv:{venv}")
    script = render_script(p)
    head = script.split("# ---- logs")[0]
    env_line = next(line for line in script.splitlines() if line.startswith("export JOB_TEST_VALUE="))
    activate_line = next(line for line in script.splitlines() if line.startswith("source ") and "activate" in line)
    probe = tmp_path / "probe.sh"
    probe.write_text(head + env_line + "\n" + activate_line.replace("source ", "ACT=", 1) + "\n"
                     + 'printf "%s\\0" "$RUN_DIR" "$RUNS_ROOT" "$PARAMS_FILE" "$JOB_TEST_VALUE" "$ACT" '
                     + '"$CACHE_DIR"\n')
    out = subprocess.run(["bash", str(probe)], cwd=tmp_path, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    values = out.stdout.decode().split("\0")[:-1]
    assert values == [str(p.run_dir), str(weird_runs), str(p.params_path), HOSTILE,
                      f"{venv}/bin/activate", str(cache)]
    assert 'export TUNEKIT_CACHE_DIR="$CACHE_DIR"' in script
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    bad = subprocess.run(["bash", "-n", str(probe)], capture_output=True)
    assert bad.returncode == 0
    if shutil.which("shellcheck"):
        path = tmp_path / "hostile.sh"
        path.write_text(script)
        # SC2016 ("expressions don't expand in single quotes") is the point of the quoting here.
        lint = _shellcheck(path, "--exclude=SC2016")
        assert lint.returncode == 0, lint.stdout


def test_secrets_pass_by_name_only(stand_ins, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sk-very-secret-123")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_456")
    sub = submit_job("97_report", group="gab50000", queue="rt_HC", walltime="00:10:00",
                     run_name="s1", dry_run=True)
    everything = sub.script + "\n".join(sub.commands)
    assert "sk-very-secret-123" not in everything and "hf_secret_456" not in everything
    assert "TUNEKIT_CHAIN_LENGTH=1,WANDB_API_KEY,HF_TOKEN" in everything


# ---------------------------------------------------------------- dry run and CLI
def test_dry_run_prints_script_and_exact_commands_and_writes_nothing(stand_ins, runs_dir, tmp_path,
                                                                     monkeypatch, capsys):
    fake = install_fake_pbs(monkeypatch, tmp_path / "pbs")
    rc = cli_main(["job", "submit", "98_fake_train", "--group", "gab50000", "--queue", "rt_HF",
                   "--nodes", "2", "--walltime", "02:00:00", "--chain", "3", "--run-name", "long",
                   "-p", "total_steps", "9", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "#PBS -l select=2" in out and "tunekit.cli notebooks execute" in out
    assert "JOB1=$(qsub -v TUNEKIT_CHAIN_LINK=1,TUNEKIT_CHAIN_LENGTH=3 " in out
    assert 'JOB3=$(qsub -W depend=afterany:"$JOB2" -v TUNEKIT_CHAIN_LINK=3,TUNEKIT_CHAIN_LENGTH=3' in out
    assert not runs_dir.exists() and fake.count() == 0


def test_cli_reports_user_errors_as_one_line(stand_ins, capsys):
    rc = cli_main(["job", "submit", "97_report", "--group", "gab50000", "--queue", "rt_HC",
                   "-p", "nope", "1", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "nope" in err and "Traceback" not in err


def test_qsub_failure_is_a_user_error(stand_ins, runs_dir, tmp_path, monkeypatch):
    install_fake_pbs(monkeypatch, tmp_path / "pbs")
    # The fake qsub refuses a queue it does not know; the plan cannot produce one, so call pbs directly.
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/bash\n#PBS -q rt_ZZ\n#PBS -P g\ntrue\n")
    with pytest.raises(UserError, match="qsub refused the job: qsub: Unknown queue"):
        pbs.submit(["qsub", str(script)], tmp_path)


def test_missing_qsub_says_where_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="ABCI login node"):
        pbs.submit(["qsub", "x.sh"], tmp_path)


# ---------------------------------------------------------------- qstat parsing
def test_qstat_json_is_matched_to_the_ids_we_asked_for():
    text = json.dumps({"Jobs": {"123.pbs1.example": {"job_state": "F", "Exit_status": 0},
                                "124.pbs1.example": {"job_state": "R"}}})
    found = pbs._match_ids(pbs._parse_json(text), ["123.pbs1", "124.pbs1", "125.pbs1"])
    assert found["123.pbs1"].finished and found["123.pbs1"].exit_status == 0
    assert found["124.pbs1"].state == "R" and "125.pbs1" not in found


def test_format_command_round_trips_through_the_shell(tmp_path):
    argv = ["printf", "%s\\n", HOSTILE, "two words"]
    out = subprocess.run(["bash", "-c", pbs.format_command(argv)], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.splitlines() == [HOSTILE, "two words"]
    assert not list(tmp_path.glob("PWNED*"))


# ---------------------------------------------------------------- node helpers
def test_gpu_uuids_become_indices():
    table = [("0", "GPU-aaaa-1111"), ("1", "GPU-bbbb-2222"), ("2", "GPU-cccc-3333")]
    assert node.numeric_visible_devices("GPU-cccc-3333,GPU-aaaa-1111", table) == "2,0"
    assert node.numeric_visible_devices("GPU-bbbb", table) == "1"  # unique prefix, as CUDA allows
    assert node.numeric_visible_devices("1,2", table) == "1,2"
    assert node.numeric_visible_devices(None, table) == "0,1,2"
    assert node.numeric_visible_devices("", []) == ""
    assert node.numeric_visible_devices("GPU-zzzz", table) == "GPU-zzzz"  # unknown: CUDA will say


def test_gpu_table_reads_nvidia_smi_csv(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, GPU-aaaa'\necho '1, GPU-bbbb'\n")
    smi.chmod(0o755)
    assert node.gpu_table(str(smi)) == [("0", "GPU-aaaa"), ("1", "GPU-bbbb")]
    assert node.gpu_table(str(tmp_path / "missing")) == []


def test_site_defaults_load():
    site = load_site()
    assert "hpcx/2.20" in site.modules and site.nofile >= 1024 and site.template.endswith(".jinja")


# ---------------------------------------------------------------- chain decisions
def _result(run_dir: Path, status: str) -> None:
    (run_dir / "train_result.json").write_text(json.dumps({"status": status}))


@pytest.fixture
def dirs(tmp_path):
    run_dir = tmp_path / "run"
    job_dir = run_dir / "job" / "s1"
    job_dir.mkdir(parents=True)
    return run_dir, job_dir


def test_chain_runs_resumes_and_skips_when_done(dirs, capsys):
    run_dir, job_dir = dirs
    assert chain.gate(run_dir, job_dir, "sft", 1, 3, environ={"PBS_JOBID": "1.x"}) == chain.GATE_RUN
    _result(run_dir, "deadline")
    assert chain.record_end(run_dir, job_dir, "sft", 1, 3, 0) == chain.INCOMPLETE
    assert chain.gate(run_dir, job_dir, "sft", 2, 3, environ={}) == chain.GATE_RUN
    assert "resuming" in chain.read_link(job_dir, 2)["note"]
    _result(run_dir, "completed")
    assert chain.record_end(run_dir, job_dir, "sft", 2, 3, 0) == chain.DONE
    assert chain.gate(run_dir, job_dir, "sft", 3, 3, environ={}) == chain.GATE_SKIP
    assert chain.read_link(job_dir, 3)["state"] == chain.SKIPPED


def test_chain_stops_after_a_failure_but_not_after_a_kill(dirs):
    run_dir, job_dir = dirs
    chain.gate(run_dir, job_dir, "sft", 1, 3, environ={})
    # Link 1 was killed (walltime): no end record, its state stays "running".
    assert chain.gate(run_dir, job_dir, "sft", 2, 3, environ={}) == chain.GATE_RUN
    assert "killed" in chain.read_link(job_dir, 2)["note"]
    assert chain.record_end(run_dir, job_dir, "sft", 2, 3, 1) == chain.FAILED
    assert chain.gate(run_dir, job_dir, "sft", 3, 3, environ={}) == chain.GATE_STOP
    assert chain.read_link(job_dir, 3)["state"] == chain.STOPPED


def test_chain_failed_notebook_after_a_clean_deadline_stop_still_continues(dirs):
    run_dir, job_dir = dirs
    chain.gate(run_dir, job_dir, "sft", 1, 2, environ={})
    _result(run_dir, "deadline")
    assert chain.record_end(run_dir, job_dir, "sft", 1, 2, 1) == chain.INCOMPLETE


def test_a_new_submission_of_a_done_run_still_runs_its_first_job(dirs):
    run_dir, job_dir = dirs
    _result(run_dir, "completed")
    assert chain.gate(run_dir, job_dir, "sft", 1, 1, environ={}) == chain.GATE_RUN


def test_non_training_stages_are_done_when_the_notebook_succeeds(dirs):
    run_dir, job_dir = dirs
    chain.gate(run_dir, job_dir, "evaluate", 1, 1, environ={})
    assert chain.record_end(run_dir, job_dir, "evaluate", 1, 1, 0) == chain.DONE
    assert chain.record_end(run_dir, job_dir, "evaluate", 1, 1, 2) == chain.FAILED


# ---------------------------------------------------------------- status without PBS
def test_status_reads_the_run_records_when_qstat_is_missing(stand_ins, runs_dir, monkeypatch):
    from tunekit.jobs.submit import format_status, job_status

    assert job_status() == [] and format_status([]) == "no submitted jobs found"
    run_dir = runs_dir / "sft" / "r9"
    job_dir = run_dir / "job" / "s1"
    job_dir.mkdir(parents=True)
    (run_dir / "job" / "latest").write_text("s1\n")
    (job_dir / "submission.json").write_text(json.dumps(
        {"submission": "s1", "stage": "sft", "chain": 2, "job_ids": ["11.pbs1", "12.pbs1"]}))
    chain.gate(run_dir, job_dir, "sft", 1, 2, environ={})
    _result(run_dir, "deadline")
    chain.record_end(run_dir, job_dir, "sft", 1, 2, 0)
    monkeypatch.setenv("PATH", "/nonexistent")
    rows = job_status("r9")
    assert [(r["link"], r["pbs_state"], r["job_state"]) for r in rows] == [
        ("1/2", "qstat not available", "incomplete"), ("2/2", "qstat not available", "not started")]
    assert job_status(run_dir) == rows and job_status() == rows
    assert "not done" in format_status(rows)
    with pytest.raises(UserError, match="no submitted run"):
        job_status("nope")


# ---------------------------------------------------------------- jobs address exactly one run
def _submitted(runs_dir: Path, name: str, ids: list, latest: str = "s1", stage: str = "sft") -> Path:
    run_dir = runs_dir / stage / name
    job_dir = run_dir / "job" / "s1"
    job_dir.mkdir(parents=True)
    (run_dir / "job" / "latest").write_text(latest + "\n")
    (job_dir / "submission.json").write_text(json.dumps(
        {"submission": "s1", "stage": stage, "chain": len(ids), "job_ids": ids}))
    return run_dir


@pytest.fixture
def pbs_calls(monkeypatch):
    """Every qstat/qdel command line, recorded instead of run (qstat reports each job as running)."""
    calls = []

    def run(argv, **kw):
        calls.append(list(argv))
        jobs = {a: {"job_state": "R"} for a in argv[1:] if a[:1].isdigit()}
        out = json.dumps({"Jobs": jobs}) if "qstat" in argv[0] else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(pbs.subprocess, "run", run)
    monkeypatch.setattr(pbs.shutil, "which", lambda name: f"/usr/bin/{name}")
    return calls


def test_cancel_matches_the_run_name_exactly_never_as_a_pattern(stand_ins, runs_dir, pbs_calls):
    from tunekit.jobs import cancel_job

    _submitted(runs_dir, "victim-a", ["101.pbs1"])
    _submitted(runs_dir, "mine", ["202.pbs1"])
    with pytest.raises(UserError, match="not a valid run name"):
        cancel_job("victim*")
    with pytest.raises(UserError, match="no submitted run"):
        cancel_job("victim")
    assert pbs_calls == []
    assert cancel_job("mine") == {"202.pbs1": "deleted"}
    assert pbs_calls[-1] == ["/usr/bin/qdel", "--", "202.pbs1"]  # ids after `--`: never an option
    assert pbs_calls[0][:6] == ["/usr/bin/qstat", "-x", "-f", "-F", "json", "--"]


def test_job_ids_read_from_run_records_are_checked_before_qstat_or_qdel(stand_ins, runs_dir, pbs_calls):
    from tunekit.jobs import cancel_job, job_status

    _submitted(runs_dir, "edited", ["-x", "303.pbs1"])
    with pytest.raises(UserError, match=r"submission.json: job_ids: '-x' is not a PBS job id"):
        cancel_job("edited")
    with pytest.raises(UserError, match="is not a PBS job id"):
        job_status("edited")
    assert pbs_calls == []


def test_a_latest_marker_pointing_outside_its_run_is_refused(stand_ins, runs_dir, pbs_calls):
    from tunekit.jobs import cancel_job

    _submitted(runs_dir, "other", ["404.pbs1"])
    _submitted(runs_dir, "tricked", ["505.pbs1"], latest="../../other/job/s1")
    with pytest.raises(UserError, match="not a submission folder of this run"):
        cancel_job("tricked")
    assert pbs_calls == []


def test_chain_continues_after_a_signal_stop_with_a_checkpoint(dirs):
    run_dir, job_dir = dirs
    chain.gate(run_dir, job_dir, "sft", 1, 2, environ={})
    (run_dir / "train_result.json").write_text(json.dumps({"status": "interrupted", "stop_signal": "SIGTERM"}))
    assert chain.record_end(run_dir, job_dir, "sft", 1, 2, 143) == chain.INCOMPLETE
    assert "stopped by SIGTERM" in chain.read_link(job_dir, 1)["note"]
    assert chain.gate(run_dir, job_dir, "sft", 2, 2, environ={}) == chain.GATE_RUN


def test_a_link_stopped_by_a_signal_before_any_checkpoint_counts_as_killed_not_failed(dirs):
    run_dir, job_dir = dirs
    chain.gate(run_dir, job_dir, "evaluate", 1, 2, environ={})
    assert chain.record_end(run_dir, job_dir, "evaluate", 1, 2, 143) == chain.KILLED
    assert chain.gate(run_dir, job_dir, "evaluate", 2, 2, environ={}) == chain.GATE_RUN
    assert "stopped by SIGTERM" in chain.read_link(job_dir, 2)["note"]


def test_the_notebooks_exit_status_survives_a_signal_racing_its_end(tmp_path):
    """qdel signals the job script and the notebook together. Where the notebook ends as the
    script's trap runs, bash's last `wait` may answer -1 for a status an earlier `wait` already
    took (this made a cancelled link read "failed", rc -1): the script must keep 128 + 15. The
    template's own lines run here, with a sleeper in place of the notebook, against the race 40
    times (before the fix about one run in five gave -1)."""
    import signal
    import time

    from tunekit.paths import repo_root

    text = (repo_root() / "job_templates" / "notebook.pbs.jinja").read_text(encoding="utf-8")
    start = text.index('python -m tunekit.cli notebooks execute')
    end = text.index("trap - TERM INT", start)
    body = text[start:end].split("\n", 1)[1]   # from `child=$!` to the status kept
    script = tmp_path / "race.sh"
    script.write_text('set +e\npython3 -c "import time; time.sleep(5)" &\n' + body + 'echo "rc=$rc"\n')
    seen = []
    for k in range(40):
        proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(0.03 + 0.002 * (k % 10))   # the sleeper is running; hit both at (nearly) once
        os.killpg(proc.pid, signal.SIGTERM)
        seen.append(proc.communicate(timeout=30)[0].strip().splitlines()[-1])   # (after the trap's line)
    assert set(seen) == {"rc=143"}, seen
