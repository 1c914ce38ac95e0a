"""Multi-process training from a notebook: the kernel launches the workers and waits for them.

A Jupyter kernel (interactive, papermill, or papermill inside a PBS job) is one process. When the
params ask for more (`nproc_per_node` > 1, or a PBS job spanning several nodes), the training cell
does not train itself: it starts

    one node:   python -m torch.distributed.run --standalone --nproc-per-node N -m <worker> --run-dir D
    many nodes: mpirun -np N*nodes --npernode N --host h1:N,h2:N ... -x MASTER_ADDR -x MASTER_PORT ...
                python -m <worker> --run-dir D   (ranks mapped from OMPI_* by distributed.py)

where D is the run directory the notebook already created (its params.json is the resolved
config), streams rank 0's output into the cell, and afterwards reads the run's records like any
other run. The notebook code is the same for 1 and for 64 processes. A kernel that was itself
started by a launcher (WORLD_SIZE set) trains in-process instead.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

from ..errors import UserError
from .distributed import free_port, launched_world_size, pbs_hosts

# Environment variables forwarded to remote ranks by name (mpirun -x NAME exports the current
# value without writing it into the command line, so secrets stay out of logs).
_FORWARD = ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "HF_HOME",
            "TMPDIR", "TUNEKIT_RUNS_DIR", "TUNEKIT_CACHE_DIR", "TUNEKIT_ROOT", "TUNEKIT_HEADLESS",
            "TUNEKIT_DEADLINE", "WANDB_API_KEY", "WANDB_MODE", "HF_HUB_OFFLINE", "NCCL_DEBUG",
            "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"]


def world_plan(nproc_per_node: int) -> tuple[int, list[str]]:
    """(total processes, hosts) this launch would use: PBS hosts x nproc_per_node, else one node."""
    hosts = pbs_hosts()
    return nproc_per_node * max(1, len(hosts)), hosts


def should_spawn(nproc_per_node: int) -> bool:
    """True when this process is a single kernel but the params ask for more processes."""
    return launched_world_size() == 1 and world_plan(nproc_per_node)[0] > 1


def build_command(worker: str, run_dir: Path, nproc_per_node: int, hosts: list[str],
                  python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The launcher command line and extra environment for `python -m worker --run-dir run_dir`."""
    py = python or sys.executable
    tail = ["-m", worker, "--run-dir", str(run_dir)]
    if len(hosts) <= 1:
        cmd = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
               *tail]
        return cmd, {}
    if shutil.which("mpirun") is None:
        raise UserError(f"{len(hosts)} PBS nodes but no mpirun on PATH (load the hpcx/openmpi module "
                        "in the job, or run on one node)")
    n = nproc_per_node * len(hosts)
    extra = {"MASTER_ADDR": hosts[0], "MASTER_PORT": str(free_port())}
    cmd = ["mpirun", "-np", str(n), "--npernode", str(nproc_per_node),
           "--host", ",".join(f"{h}:{nproc_per_node}" for h in hosts),
           "-bind-to", "none", "-map-by", "slot", "-x", "MASTER_ADDR", "-x", "MASTER_PORT"]
    for name in _FORWARD:
        if name in os.environ:
            cmd += ["-x", name]
    cmd += [py, *tail]
    return cmd, extra


def spawn_workers(worker: str, run_dir: Path, nproc_per_node: int) -> None:
    """Run the workers to completion, streaming their output; UserError with their last lines on failure."""
    total, hosts = world_plan(nproc_per_node)
    cmd, extra = build_command(worker, run_dir, nproc_per_node, hosts)
    env = dict(os.environ, **extra)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc_per_node))))
    env["TUNEKIT_HEADLESS"] = "1"  # workers have no TTY: periodic log lines, not \r bars
    print(f"launching {total} training processes: {' '.join(cmd[:6])} ...", flush=True)
    tail: deque[str] = deque(maxlen=400)
    # Own session: interrupting the cell stops the whole launcher tree, and only it.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip())
            if _worth_showing(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if rc != 0:
        raise UserError(f"training processes failed (exit {rc}): {failure_summary(list(tail))}")


def failure_summary(lines: list[str]) -> str:
    """The most telling line of the workers' output: our one-sentence error, else the first exception."""
    ours = [t for t in lines if t.startswith("error: ") or "]: error: " in t]
    if ours:
        return ours[-1].split("error: ", 1)[1].strip()
    exc = re.compile(r"^(\[rank\d+\]: )?([\w.]+(Error|Exception|Interrupt)): (.*)$")
    for t in lines:
        m = exc.match(t.strip())
        if m and "ChildFailedError" not in m.group(2):
            return f"{m.group(2)}: {m.group(4)}" + (f" ({m.group(1).strip('[]: ')})" if m.group(1) else "")
    return " | ".join(t.strip() for t in lines[-3:]) + " (see the output above)"


def _worth_showing(line: str) -> bool:
    # torchrun's banner about OMP_NUM_THREADS repeats per launch; everything else is ours.
    return "Setting OMP_NUM_THREADS" not in line and not line.startswith("*****")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
