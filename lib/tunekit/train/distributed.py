"""Processes: start-up from whatever launched us (a plain process, torchrun, mpirun under PBS), the
few collectives the engine needs, and launching workers from a notebook kernel.

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT itself. mpirun (the official
kit's multi-node launcher on ABCI) sets only OMPI_COMM_WORLD_{RANK,LOCAL_RANK,SIZE}, so they are
mapped to the torch names, and MASTER_ADDR defaults to the first host of $PBS_NODEFILE. A plain
process (a notebook kernel) is world size 1 and gets an in-memory store, so FSDP2 and DCP run
there unchanged. Backend: NCCL when CUDA is available, gloo otherwise.

A Jupyter kernel (interactive, papermill, or papermill inside a PBS job) is one process. When the
params ask for more (`nproc_per_node` > 1, or a PBS job spanning several nodes), the training cell
does not train itself: `spawn_workers` starts

    one node:   python -m torch.distributed.run --standalone --nproc-per-node N -m tunekit.cli train <stage> --run-dir D
    many nodes: mpirun -np N*nodes --npernode N --host h1:N,h2:N ... -x MASTER_ADDR -x MASTER_PORT ...
                python -m tunekit.cli train <stage> --run-dir D   (ranks mapped from OMPI_* here)

where D is the run directory the notebook already created (its params.json is the resolved
config), streams rank 0's output into the cell, and afterwards reads the run's records like any
other run. The notebook code is the same for 1 and for 64 processes. A kernel that was itself
started by a launcher (WORLD_SIZE set) trains in-process instead.

Stopping: a SIGTERM/SIGINT the kernel receives while its workers train is passed on as a stop
request, to torchrun as SIGTERM (torchrun forwards it to every rank and waits up to
STOP_GRACE_S before SIGKILL) or to mpirun as SIGUSR1 (mpirun forwards SIGUSR1/2 to every rank;
on SIGTERM it would kill the job within seconds). The ranks finish the step, save and exit;
a second signal kills the workers at once.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..signals import StopRequest, exit_now, note, signal_name

_OMPI_MAP = {"OMPI_COMM_WORLD_RANK": "RANK", "OMPI_COMM_WORLD_LOCAL_RANK": "LOCAL_RANK",
             "OMPI_COMM_WORLD_SIZE": "WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE": "LOCAL_WORLD_SIZE"}


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world size, local rank, device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def pbs_hosts(nodefile: str | None = None) -> list[str]:
    """Unique hosts of $PBS_NODEFILE in order (PBS lists a host once per chunk/cpu), else []."""
    path = nodefile or os.environ.get("PBS_NODEFILE", "")
    if not path or not Path(path).is_file():
        return []
    hosts: list[str] = []
    for line in Path(path).read_text().split():
        if line and line not in hosts:
            hosts.append(line)
    return hosts


def map_launcher_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Fill RANK/LOCAL_RANK/WORLD_SIZE from mpirun's OMPI_* and MASTER_ADDR from PBS; returns what was set."""
    env = os.environ if environ is None else environ
    added: dict[str, str] = {}
    for src, dst in _OMPI_MAP.items():
        if src in env and dst not in env:
            env[dst] = added[dst] = env[src]
    if int(env.get("WORLD_SIZE", "1")) > 1:
        if "MASTER_ADDR" not in env:
            hosts = pbs_hosts(env.get("PBS_NODEFILE"))
            env["MASTER_ADDR"] = added["MASTER_ADDR"] = hosts[0] if hosts else "127.0.0.1"
        if "MASTER_PORT" not in env:
            # Every rank must agree without talking first: derive the port from the job id.
            job = env.get("PBS_JOBID", "").split(".")[0]
            port = 29500 + (int(job) % 2000 if job.isdigit() else 0)
            env["MASTER_PORT"] = added["MASTER_PORT"] = str(port)
    return added


def launched_world_size(environ: dict[str, str] | None = None) -> int:
    """The world size a launcher gave this process (1 for a plain process)."""
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE", "1")))


def free_port() -> int:
    """An unused TCP port on this host (for a local torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Initialise (or reuse) the default process group and pick this rank's device.

    `device` auto (or $TUNEKIT_DEVICE) = CUDA when usable. When GPUs are visible but torch cannot
    use them (a CUDA build newer than the driver, a CPU-only torch), this stops with one sentence
    instead of training on the CPU until the walltime (tunekit.gpu.check_cuda_usable).
    """
    import torch
    import torch.distributed as dist

    from ..gpu import check_cuda_usable

    device = os.environ.get("TUNEKIT_DEVICE", device) if device == "auto" else device
    if device == "auto":
        check_cuda_usable()
    map_launcher_env()
    world = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {rank}: local rank {local_rank} has no GPU (this node has "
                            f"{torch.cuda.device_count()}; start at most that many processes per node)")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise UserError(f"a process group of size {dist.get_world_size()} is already running in "
                            f"this process but the launcher says {world} (restart the kernel)")
        return DistEnv(dist.get_rank(), world, local_rank, dev, dist.get_backend())
    timeout = _dt.timedelta(minutes=timeout_minutes)
    if world == 1 and "MASTER_ADDR" not in os.environ:
        # A notebook kernel: no launcher, no rendezvous needed.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        kwargs = {"device_id": dev} if use_cuda else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few floats over all ranks (float64 for exact token counts)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    if env.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float, env: DistEnv) -> float:
    """The largest value any rank holds (used to agree on stopping)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=env.device if env.is_cuda else None)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    import torch.distributed as dist

    if env.world_size > 1:
        if env.is_cuda:
            dist.barrier(device_ids=[env.local_rank])
        else:
            dist.barrier()


def shutdown(clean: bool = True) -> None:
    """Destroy the process group if a launcher started us (a notebook kernel keeps its group).

    clean=True (training finished on this rank) first waits for every rank: a gloo rank that
    destroys its group while a peer is still busy (e.g. rank 0 writing files) can make the peer's
    transport thread abort the process. After a failure no barrier is entered (the peers may be
    stuck elsewhere): exiting lets the launcher stop them.
    """
    import torch.distributed as dist

    if dist.is_initialized() and launched_world_size() > 1:
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a launched worker process after a clean `shutdown`: flush, then leave without interpreter teardown.

    gloo's transport threads can still be unwinding when CPython finalises the process; a
    std::thread destroyed while joinable then aborts it ("terminate called without an active
    exception"), turning a finished run into a failed exit code. Nothing is left to clean up at
    this point (results are written, the group is destroyed), so skip finalisation. A plain
    process (world size 1, e.g. `tunekit train sft` alone) returns normally.
    """
    if launched_world_size() <= 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ------------------------------------------------------------------ launching workers from a kernel
# The one worker entry: `python -m tunekit.cli train <stage> ...` (tunekit/train/cli.py).
WORKER_MODULE = "tunekit.cli"
# Environment forwarded to remote ranks (mpirun -x NAME exports the current value without writing
# it into the command line, so secrets stay out of logs): these names, plus every variable whose
# name starts with one of the prefixes, so a new NCCL/UCX/PyTorch knob set in the job reaches
# every node without a code change. Launcher identities (OMPI_COMM_WORLD_*, RANK, ...) are set
# per rank by mpirun itself and never forwarded.
_FORWARD_NAMES = ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX",
                  "CONDA_DEFAULT_ENV", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_FORWARD_PREFIXES = ("TUNEKIT_", "NCCL_", "TORCH_", "PYTORCH_", "CUDA_", "CUDNN_", "NVIDIA_", "TRITON_",
                     "HF_", "TRANSFORMERS_", "TOKENIZERS_", "WANDB_", "UCX_", "OMPI_MCA_", "HCOLL_",
                     "PMIX_MCA_")
_NEVER_FORWARD = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                  "GROUP_RANK", "ROLE_RANK")


def forwarded_env(environ: dict[str, str] | None = None) -> list[str]:
    """Names of the variables `mpirun -x` forwards to every rank (sorted), from `environ` (default: os.environ)."""
    env = os.environ if environ is None else environ
    names = {k for k in env if k in _FORWARD_NAMES or k.startswith(_FORWARD_PREFIXES)}
    return sorted(k for k in names if k not in _NEVER_FORWARD and not k.startswith("OMPI_COMM_WORLD_"))


# How long torchrun waits for its ranks to save and exit after forwarding a stop before SIGKILL
# (torchrun's own default is 30 s, too short for an 8B checkpoint). The scheduler's SIGKILL wins
# when its grace period is shorter.
STOP_GRACE_S = 900


def world_plan(nproc_per_node: int) -> tuple[int, list[str]]:
    """(total processes, hosts) this launch would use: PBS hosts x nproc_per_node, else one node."""
    hosts = pbs_hosts()
    return nproc_per_node * max(1, len(hosts)), hosts


def should_spawn(nproc_per_node: int) -> bool:
    """True when this process is a single kernel but the params ask for more processes."""
    return launched_world_size() == 1 and world_plan(nproc_per_node)[0] > 1


def build_command(stage: str, run_dir: Path, nproc_per_node: int, hosts: list[str],
                  python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The launcher command line and extra environment for `tunekit train <stage> --run-dir run_dir`."""
    py = python or sys.executable
    tail = ["-m", WORKER_MODULE, "train", stage, "--run-dir", str(run_dir)]
    if len(hosts) <= 1:
        cmd = [py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
               f"--shutdown-timeout={STOP_GRACE_S}", *tail]
        return cmd, {}
    if shutil.which("mpirun") is None:
        raise UserError(f"{len(hosts)} PBS nodes but no mpirun on PATH (load the hpcx/openmpi module "
                        "in the job, or run on one node)")
    n = nproc_per_node * len(hosts)
    extra = {"MASTER_ADDR": hosts[0], "MASTER_PORT": str(free_port())}
    cmd = ["mpirun", "-np", str(n), "--npernode", str(nproc_per_node),
           "--host", ",".join(f"{h}:{nproc_per_node}" for h in hosts),
           "-bind-to", "none", "-map-by", "slot", "-x", "MASTER_ADDR", "-x", "MASTER_PORT"]
    for name in forwarded_env():
        cmd += ["-x", name]
    cmd += [py, *tail]
    return cmd, extra


def spawn_workers(stage: str, run_dir: Path, nproc_per_node: int,
                  finished: Callable[[float], bool]) -> str | None:
    """Run the workers to completion, streaming their output; UserError with their last lines on failure.

    `finished(t0)` says whether the run's result record was written by this launch (after t0): a
    nonzero exit that comes only after the record is complete (a process aborting in teardown) is
    reported as such, and the run counts as done. Returns the name of a stop signal this process
    received and passed on to the workers (None without one); the caller reports it.
    """
    total, hosts = world_plan(nproc_per_node)
    cmd, extra = build_command(stage, run_dir, nproc_per_node, hosts)
    t0 = time.time()
    env = dict(os.environ, **extra)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc_per_node))))
    env["TUNEKIT_HEADLESS"] = "1"  # workers have no TTY: periodic log lines, not \r bars
    print(f"launching {total} training processes: {' '.join(cmd[:6])} ...", flush=True)
    tail: deque[str] = deque(maxlen=400)
    # Own session: interrupting the cell stops the whole launcher tree, and only it.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    mpi = cmd[0] == "mpirun"

    def forward(signum: int) -> None:
        note(f"{signal_name(signum)} received: asking the training processes to save and stop "
             "(send it again to kill them at once)")
        _signal_quietly(proc.pid, signal.SIGUSR1 if mpi else signal.SIGTERM)

    def kill_now(signum: int) -> None:
        _signal_group(proc.pid, signal.SIGKILL)
        exit_now(signum)

    stop = StopRequest(on_first=forward, on_second=kill_now)
    try:
        with stop:
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
    if stop.requested:
        return stop.name
    if rc != 0 and finished(t0):
        print(f"note: the training processes wrote their result and then exited with code {rc} while "
              f"shutting down ({failure_summary(list(tail))}); the run is complete", flush=True)
    elif rc != 0:
        raise UserError(f"training processes failed (exit {rc}): {failure_summary(list(tail))}")
    return None


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


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
