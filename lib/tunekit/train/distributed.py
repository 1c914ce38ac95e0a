"""Distributed start-up from whatever launched us: a plain process, torchrun, or mpirun under PBS.

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT itself. mpirun (the official
kit's multi-node launcher on ABCI) sets only OMPI_COMM_WORLD_{RANK,LOCAL_RANK,SIZE}, so they are
mapped to the torch names, and MASTER_ADDR defaults to the first host of $PBS_NODEFILE. A plain
process (a notebook kernel) is world size 1 and gets an in-memory store, so FSDP2 and DCP run
there unchanged. Backend: NCCL when CUDA is available, gloo otherwise.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

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
    """Initialise (or reuse) the default process group and pick this rank's device."""
    import torch
    import torch.distributed as dist

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
