"""The run record cannot be corrupted: one writer per run, owner-aware temp cleanup, run names that
stay inside the runs root, refused starts that change nothing, a launch history, and full disks.

Disk-full tests mount a small tmpfs (root only, as in CI and on this machine); elsewhere they skip
and say why.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tunekit import atomic, runlock
from tunekit.errors import DiskFull, UserError
from tunekit.params import NotebookParams
from tunekit.runs import check_run_name, read_metrics, start_run


class P(NotebookParams):
    lr: float = 1e-3
    steps: int = 10
    run_name: str = ""
    runs_dir: str = ""


# ------------------------------------------------------------------ a small file system
@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted for this test and unmounted after it (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI and the dev container run the tests as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill the file system with a filler file, then free about `leave` bytes of it."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    if leave:
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave))
    return filler


# ------------------------------------------------------------------ run names
@pytest.mark.parametrize("bad", ["../../../outside-repo", "a b", "a/b", ".hidden", "-x", "x\ny", "", "é",
                                 "x" * 101, "run*", "victim?"])
def test_bad_run_names_are_refused_with_the_rule(bad):
    with pytest.raises(UserError, match="letters a-z A-Z, digits, '-', '_' and '.'"):
        check_run_name(bad)


@pytest.mark.parametrize("good", ["run-1", "job1234", "a.b_c", "2026-01-01_x", "_x"])
def test_plain_run_names_pass(good):
    assert check_run_name(good) == good


def test_every_params_model_refuses_a_bad_run_name():
    from tunekit.notebooks import NOTEBOOKS

    for nb in NOTEBOOKS:
        with pytest.raises(UserError, match=r"parameter 'run_name' is not a valid run name"):
            nb.params_model().parse({"run_name": "a b"}, source="p.yaml")


def test_runner_refuses_an_escaping_run_name_before_creating_anything(repo, tmp_path):
    runs = tmp_path / "deep" / "er" / "runs"
    env = dict(os.environ, TUNEKIT_RUNS_DIR=str(runs))
    out = subprocess.run([sys.executable, "-m", "tunekit.cli", "notebooks", "run", "10_inspect_data",
                          "-p", "run_name", "../../../outside-repo"], capture_output=True, text=True,
                         cwd=repo, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is not a valid run name" in out.stderr and "Traceback" not in out.stderr
    assert not runs.exists() and not (tmp_path / "outside-repo").exists()


# ------------------------------------------------------------------ one writer per run
HOLDER = textwrap.dedent("""
    import sys, time
    from tunekit.runs import start_run
    start_run("sft", {"steps": 1}, "shared", sys.argv[1])
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(runs_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(runs_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as exc:
            start_run("sft", {"steps": 1}, "shared", str(runs_dir))
        msg = str(exc.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}, started 20" in msg
        assert "another process is writing this run" in msg
        assert len(read_metrics(runs_dir / "sft" / "shared")) == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The OS released the lock of the killed holder: the run resumes at once.
    run = start_run("sft", {"steps": 1}, "shared", str(runs_dir))
    assert run.resumed and runlock.holds(run.dir)
    run.close()
    assert not runlock.holds(run.dir)


def test_the_same_process_reopens_its_own_run(runs_dir):
    a = start_run("sft", P(), "mine")
    b = start_run("sft", P(), "mine")  # e.g. Run All twice in one JupyterLab kernel
    assert b.resumed and a.dir == b.dir
    b.finish({"ok": True})
    assert not runlock.holds(a.dir)


CHILD = textwrap.dedent("""
    import sys
    from tunekit.runs import start_run
    run = start_run("sft", {"steps": 1}, "family", sys.argv[1])
    run.log(step=1, loss=1.0)
    print("child wrote", flush=True)
""")


def test_processes_started_by_the_holder_share_its_run(runs_dir):
    """papermill's kernel under the notebook runner, torchrun's ranks under a training kernel."""
    start_run("sft", {"steps": 1}, "family", str(runs_dir))
    out = subprocess.run([sys.executable, "-c", CHILD, str(runs_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "child wrote" in out.stdout, out.stderr[-2000:]
    assert [r["step"] for r in read_metrics(runs_dir / "sft" / "family")] == [1]


# ------------------------------------------------------------------ atomic_dir and live owners
BUILDER = textwrap.dedent("""
    import sys, time
    from tunekit.atomic import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        (tmp / "part").write_text("mine")
        print(tmp, flush=True)
        time.sleep(120)
""")


def test_atomic_dir_never_removes_a_live_owners_folder_only_a_dead_ones(tmp_path, capsys):
    target = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        theirs = Path(proc.stdout.readline().strip())
        assert (theirs / "part").read_text() == "mine"
        foreign = tmp_path / "model.tmp-node9.example-4242-abcdef"
        foreign.mkdir()
        with atomic.atomic_dir(target) as mine:
            (mine / "x").write_text("y")
        assert (theirs / "part").read_text() == "mine", "a live writer's temp folder was deleted"
        assert foreign.is_dir() and "node9.example" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with atomic.atomic_dir(target, overwrite=True):
        pass
    assert not theirs.exists(), "a dead writer's temp folder is left behind"
    assert foreign.is_dir()


# ------------------------------------------------------------------ launches and failed starts
def test_every_launch_is_kept_in_launches_jsonl(runs_dir, monkeypatch):
    monkeypatch.setenv("PBS_JOBID", "1111.pbs1")
    first = start_run("sft", P(), "hist")
    first.close()
    monkeypatch.setenv("PBS_JOBID", "2222.pbs1")
    start_run("sft", P(), "hist").close()
    lines = (runs_dir / "sft" / "hist" / "launches.jsonl").read_text().splitlines()
    launches = [json.loads(x) for x in lines]
    assert [x["launch"] for x in launches] == [1, 2]
    assert [x["pbs_job_id"] for x in launches] == ["1111.pbs1", "2222.pbs1"]
    assert [x["resumed"] for x in launches] == [False, True]
    for x in launches:
        assert x["host"] == socket.gethostname() and x["pid"] == os.getpid() and x["started"]
        assert "sha" in x["git"] and "torch" in x["packages"]
    assert json.loads((runs_dir / "sft" / "hist" / "env.json").read_text())["resumed"] is True


def test_a_failed_start_is_replaced_by_a_corrected_retry(runs_dir):
    bad = start_run("sft", P(lr=5.0), "retry")
    bad.log(step=0, val_loss=3.0)  # the failed attempt got as far as its first validation
    bad.close()
    good = start_run("sft", P(lr=1e-3), "retry")
    assert not good.resumed
    assert json.loads((good.dir / "params.json").read_text())["lr"] == 1e-3
    assert read_metrics(good.dir) == []
    launches = [json.loads(x) for x in (good.dir / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 2 and launches[1]["replaces_failed_start"] == ["lr: 5.0 -> 0.001"]


def test_a_run_with_results_refuses_other_params_and_keeps_everything(runs_dir):
    run = start_run("sft", P(steps=4), "done")
    run.log(step=1, loss=2.0)
    run.finish({"loss": 2.0})
    before = {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"different parameters \(steps: 4 -> 5\) and holds results \(summary.json\)"):
        start_run("sft", P(steps=5), "done")
    assert {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()} == before


# ------------------------------------------------------------------ full disks
def test_a_json_write_on_a_full_disk_keeps_the_old_file_and_says_where(small_fs):
    target = small_fs / "summary.json"
    atomic.write_json(target, {"v": 1})
    fill(small_fs)
    with pytest.raises(DiskFull, match=f"disk full at {target}"):
        atomic.write_json(target, {"v": "x" * 200_000})
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "summary.json"]


def test_metrics_on_a_full_disk_never_keep_a_torn_line(small_fs, monkeypatch):
    monkeypatch.setenv("TUNEKIT_RUNS_DIR", str(small_fs / "runs"))
    run = start_run("sft", P(), "full")
    for step in range(1, 4):
        run.log(step=step, loss=1.0 / step)
    fill(small_fs, leave=3000)
    with pytest.raises(DiskFull, match="disk full at .*metrics.jsonl"):
        for step in range(4, 200):
            run.log(step=step, loss=1.0, note="x" * 900)
    text = (run.dir / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    steps = [json.loads(line)["step"] for line in text.splitlines()]  # every line parses
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3


def test_a_line_torn_by_a_kill_is_cut_before_the_next_record(runs_dir):
    run = start_run("sft", P(), "torn")
    run.log(step=1, loss=1.0)
    with open(run.dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # the process was killed mid-write
    run.log(step=2, loss=0.5)
    assert [json.loads(x)["step"] for x in (run.dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_held_lock_survives_only_while_the_holder_lives(runs_dir):
    """The lock file names the last holder; a dead holder's record does not block anyone."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(runs_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    info = runlock.holder(runs_dir / "sft" / "shared")
    assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    runlock.check_free(runs_dir / "sft" / "shared")  # no error: the record is stale, the lock is free


# ------------------------------------------------------------------ the notebook runner
def _tunekit(repo: Path, runs: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TUNEKIT_RUNS_DIR=str(runs))
    return subprocess.run([sys.executable, "-m", "tunekit.cli", *args], capture_output=True, text=True,
                          cwd=repo, env=env, timeout=timeout)


def test_a_refused_rerun_leaves_the_run_and_its_notebook_as_they_were(repo, runs_dir):
    from tunekit.data.params import InspectParams

    run = start_run("inspect_data", InspectParams(), "kept")
    (run.dir / "10_inspect_data.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, '
                                                   '"nbformat_minor": 5, "marker": "first run"}')
    run.finish({"ok": True})
    before = {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()}
    out = _tunekit(repo, runs_dir, "notebooks", "run", "10_inspect_data", "-p", "run_name", "kept",
                   "-p", "max_dev_samples", "5")
    assert out.returncode == 2 and "different parameters (max_dev_samples: 100 -> 5)" in out.stderr, out.stderr
    assert {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_a_failed_first_attempt_does_not_block_a_corrected_retry(repo, runs_dir):
    bad = _tunekit(repo, runs_dir, "notebooks", "run", "10_inspect_data", "-p", "run_name", "fix",
                   "-p", "data_version", "no_such_version")
    assert bad.returncode == 2 and "no_such_version" in bad.stderr, bad.stderr[-2000:]
    good = _tunekit(repo, runs_dir, "notebooks", "run", "10_inspect_data", "-p", "run_name", "fix")
    assert good.returncode == 0, good.stderr[-2000:]
    run_dir = runs_dir / "inspect_data" / "fix"
    assert json.loads((run_dir / "params.json").read_text())["data_version"] == "sample"
    assert (run_dir / "summary.json").is_file()
    launches = [json.loads(x) for x in (run_dir / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 2 and "data_version" in launches[1]["replaces_failed_start"][0]


@pytest.mark.slow
def test_the_executed_notebook_survives_a_full_disk(repo, small_fs):
    """The disk fills up right after the notebook's first save: every later save fails, the last
    complete copy stays valid JSON, and the runner says where the disk is full."""
    import threading

    import nbformat

    runs = small_fs / "runs"
    out_nb = runs / "inspect_data" / "full" / "10_inspect_data.ipynb"

    def fill_after_first_save():
        end = time.time() + 300
        while not out_nb.exists() and time.time() < end:
            time.sleep(0.05)
        fill(small_fs)

    filler = threading.Thread(target=fill_after_first_save, daemon=True)
    filler.start()
    out = _tunekit(repo, runs, "notebooks", "run", "10_inspect_data", "-p", "run_name", "full")
    filler.join(timeout=10)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: disk full at " in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    nb = nbformat.read(out_nb, as_version=4)  # valid JSON: the last complete save
    assert nb.cells and not list(out_nb.parent.glob(".*.tmp"))
    for record in out_nb.parent.glob("*.json"):  # whatever the kernel got to write is whole
        json.loads(record.read_text())


# ------------------------------------------------------------------ training and disk space
def _tiny_sft(runs: Path, name: str, **over):
    from helpers import synthetic_packed
    from tunekit.train.params import SFTParams

    base = dict(max_seq_length=64, global_batch_size=8, micro_batch_size=2, max_steps=4, save_interval=2,
                val_interval=0, run_name=name, runs_dir=str(runs), publish="final")
    base.update(over)
    cfg = SFTParams(**base)
    data = (synthetic_packed(40, 64, 96, seed=1), synthetic_packed(8, 64, 96, seed=2), {})
    return cfg, start_run("sft", cfg, cfg.run_name, cfg.runs_dir), data


def test_training_stops_before_its_first_step_when_the_next_checkpoint_cannot_fit(small_fs, model_dir, one_thread):
    from tunekit.train.sft import train_sft

    cfg, run, data = _tiny_sft(small_fs / "runs", "tight")
    fill(small_fs, leave=256 * 1024)  # the tiny model's checkpoint needs ~1.4 MiB (estimate)
    with pytest.raises(DiskFull, match=f"disk full at {run.dir / 'checkpoints'} .*needed"):
        train_sft(cfg, run, datasets=data, model_dir=model_dir)
    assert read_metrics(run.dir) == [] and not (run.dir / "checkpoints").exists()


def test_the_checkpoint_estimate_covers_a_real_checkpoint(tmp_path, model_dir, one_thread):
    from helpers import training_model
    from tunekit.train.checkpoint import checkpoint_bytes, list_checkpoints
    from tunekit.train.sft import train_sft

    cfg, run, data = _tiny_sft(tmp_path / "runs", "size", max_steps=2)
    train_sft(cfg, run, datasets=data, model_dir=model_dir)
    (ckpt,) = list_checkpoints(run.dir / "checkpoints")
    actual = sum(p.stat().st_size for p in ckpt.path.rglob("*") if p.is_file())
    model, _ = training_model(model_dir)
    n = sum(p.numel() for p in model.parameters())
    assert 12 * n <= actual <= checkpoint_bytes(model), (n, actual, checkpoint_bytes(model))


def test_a_record_that_cannot_be_written_stops_training_with_the_reason(tmp_path, model_dir, one_thread,
                                                                      monkeypatch):
    from tunekit import atomic as atomic_mod
    from tunekit.runs import Run
    from tunekit.train.sft import train_sft

    cfg, run, data = _tiny_sft(tmp_path / "runs", "rec", max_steps=6)
    real = Run.log

    def log(self, **rec):
        if rec.get("step") == 3 and "loss" in rec:
            raise atomic_mod.disk_full(self.dir / "metrics.jsonl")
        real(self, **rec)

    monkeypatch.setattr(Run, "log", log)
    with pytest.raises(UserError, match=r"disk full at .*metrics.jsonl .*training stopped after step 3; "
                                        r"the last checkpoint is step 2"):
        train_sft(cfg, run, datasets=data, model_dir=model_dir)
