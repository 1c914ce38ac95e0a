"""Stop signals through the notebook layers, end to end:

- in a Jupyter kernel, the interrupt (SIGINT) during training saves a checkpoint and ends the cell
  with one sentence; afterwards the interrupt works as usual;
- `tunekit notebooks run 30_sft` with two torchrun workers: SIGTERM to the runner travels runner ->
  kernel (as Jupyter's interrupt) -> torchrun -> every rank; the run stops with one checkpoint, the
  runner exits 128 + 15, the executed notebook is whole, and the next run resumes it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunekit.runs import read_metrics
from tunekit.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow


def _wait_for_steps(run_dir: Path, n: int, proc=None, timeout: float = 300) -> None:
    end = time.time() + timeout
    while len([r for r in read_metrics(run_dir) if "loss" in r]) < n:
        assert proc is None or proc.poll() is None, "the run ended before it trained"
        assert time.time() < end, f"{run_dir}: fewer than {n} steps after {timeout} s"
        time.sleep(0.2)


def _reply(kc, msg_id: str, timeout: float = 300) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        msg = kc.get_shell_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg["content"]
    raise TimeoutError("no execute_reply")


TRAIN_CELL = """
from tunekit.runs import start_run
from tunekit.train.params import SFTParams
from tunekit.train.sft import prepare_sft, run_sft
cfg = SFTParams(max_seq_length=256, max_steps=400, val_interval=0, save_interval=0, run_name="kernel",
                runs_dir={runs!r})
run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
result = run_sft(cfg, run, prepare_sft(cfg))
"""


def test_jupyter_interrupt_during_training_saves_and_stops_and_stays_usable(tmp_path):
    from jupyter_client.manager import start_new_kernel

    from tunekit.notebooks import ensure_kernel

    runs = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNEKIT_RUNS_DIR=str(runs))
    km, kc = start_new_kernel(kernel_name=ensure_kernel(), env=env)
    try:
        msg_id = kc.execute(TRAIN_CELL.format(runs=str(runs)))
        run_dir = runs / "sft" / "kernel"
        _wait_for_steps(run_dir, 2)
        km.interrupt_kernel()
        reply = _reply(kc, msg_id)
        assert reply["status"] == "error" and reply["ename"] == "Interrupted", reply
        assert reply["evalue"].startswith("SIGINT received: training stopped after step ")
        assert reply["traceback"] == ["error: " + reply["evalue"]]  # one sentence, no traceback
        result = json.loads((run_dir / "train_result.json").read_text())
        assert result["status"] == "interrupted" and result["stop_signal"] == "SIGINT"
        assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [result["step"]]
        assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, result["step"] + 1))
        # After training the interrupt is Jupyter's own again.
        msg_id = kc.execute("import time; time.sleep(120)")
        time.sleep(1.5)
        t0 = time.time()
        km.interrupt_kernel()
        reply = _reply(kc, msg_id, timeout=60)
        assert reply["ename"] == "KeyboardInterrupt" and time.time() - t0 < 30
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _sigterm_after_steps(proc: subprocess.Popen, run_dir: Path, steps: int) -> tuple[str, str]:
    """SIGTERM to `proc` once its run has logged `steps` steps; its (stdout, stderr) when it ends
    (killed if it does not end within 300 s)."""
    try:
        _wait_for_steps(run_dir, steps, proc)
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()


def _run_sft(repo: Path, runs: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, TUNEKIT_RUNS_DIR=str(runs), OMP_NUM_THREADS="1")
    args = ["notebooks", "run", "30_sft", "-p", "run_name", "nbstop", "-p", "nproc_per_node", "2",
            "-p", "max_steps", "40", "-p", "max_seq_length", "256", "-p", "val_interval", "0",
            "-p", "save_interval", "0", *extra]
    return subprocess.Popen([sys.executable, "-m", "tunekit.cli", *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_to_the_notebook_runner_reaches_every_training_rank(repo, tmp_path):
    import nbformat

    runs = tmp_path / "runs"
    run_dir = runs / "sft" / "nbstop"
    proc = _run_sft(repo, runs)
    out, err = _sigterm_after_steps(proc, run_dir, 2)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received" in err and "training stopped after step" in err, err[-3000:]
    result = json.loads((run_dir / "train_result.json").read_text())
    assert result["status"] == "interrupted" and result["world_size"] == 2, result
    stopped = result["step"]
    assert 2 <= stopped < 40 and [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [stopped]
    nb = nbformat.read(run_dir / "30_sft.ipynb", as_version=4)  # whole, with the sentence in it
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "Interrupted"
    again = _run_sft(repo, runs)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    result = json.loads((run_dir / "train_result.json").read_text())
    assert result["status"] == "completed" and result["resumed_from"] == stopped
    assert [r["step"] for r in read_metrics(run_dir) if "loss" in r] == list(range(1, 41))
    launches = [json.loads(x) for x in (run_dir / "launches.jsonl").read_text().splitlines()]
    assert [x["resumed"] for x in launches] == [False, True]


KERNEL_LIKE = """
import sys
from tunekit.errors import Interrupted
from tunekit.runs import start_run
from tunekit.train.params import SFTParams
from tunekit.train.sft import prepare_sft, run_sft
cfg = SFTParams(max_seq_length=256, max_steps=400, nproc_per_node=1, val_interval=0, save_interval=0,
                run_name="mpi", runs_dir=sys.argv[1])
run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
try:
    run_sft(cfg, run, prepare_sft(cfg))
except Interrupted as exc:
    print("INTERRUPTED", exc, flush=True)
    sys.exit(exc.exit_code)
"""


def test_a_stop_reaches_mpirun_ranks_as_sigusr1(tmp_path):
    """Two PBS hosts: the notebook code launches one mpirun (the fake forwards SIGUSR1/2 to every
    rank like OpenMPI, and kills the job on SIGTERM); SIGTERM to the launching process must reach
    the ranks as SIGUSR1, so they save instead of being killed."""
    fake_pbs = Path(__file__).resolve().parent / "fake_pbs"
    (fake_pbs / "mpirun").chmod(0o755)
    nodefile = tmp_path / "nodes"
    nodefile.write_text("127.0.0.1\n127.0.0.2\n")
    runs = tmp_path / "runs"
    env = dict(os.environ, PBS_NODEFILE=str(nodefile), OMP_NUM_THREADS="1",
               PATH=f"{fake_pbs}{os.pathsep}{os.environ['PATH']}")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PBS_JOBID"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-c", KERNEL_LIKE, str(runs)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_dir = runs / "sft" / "mpi"
    out, _ = _sigterm_after_steps(proc, run_dir, 2)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "INTERRUPTED SIGTERM received: training stopped after step" in out, out[-3000:]
    result = json.loads((run_dir / "train_result.json").read_text())
    assert (result["status"], result["stop_signal"], result["world_size"]) == ("interrupted", "SIGUSR1", 2)
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [result["step"]]
