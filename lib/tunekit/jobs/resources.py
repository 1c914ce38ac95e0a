"""ABCI 3.0 resource types, walltime arithmetic and the checks a job request must pass before qsub.

The facts (FACTS.md section 1): `rt_HF` is a whole node with 8 H200 GPUs and the only type allowed
for multi-node jobs (1-128 nodes); `rt_HG` is 1 GPU and 16 cores; `rt_HC` is CPU only, 32 cores.
`ncpus` is fixed per type, so the kit never passes one. Batch walltime is at most 168 h.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class ResourceType:
    """One ABCI resource type (`qsub -q`)."""

    name: str
    gpus_per_node: int
    cpus_per_node: int
    max_nodes: int
    description: str


RESOURCE_TYPES: dict[str, ResourceType] = {
    r.name: r for r in [
        ResourceType("rt_HF", 8, 192, 128, "whole node, 8x H200"),
        ResourceType("rt_HG", 1, 16, 1, "1x H200, 16 cores"),
        ResourceType("rt_HC", 0, 32, 1, "CPU only, 32 cores"),
    ]
}

MAX_WALLTIME_S = 168 * 3600
# A job shorter than this cannot even load the environment and a model; almost surely a typo.
MIN_WALLTIME_S = 60
# ABCI group names are short ASCII identifiers (e.g. gaa12345); anything else is a mistake or an
# attempt to inject PBS options, since the value also appears in a `#PBS -P` directive.
_GROUP_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_WALLTIME_RE = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d)$")


def resource_type(queue: str) -> ResourceType:
    """The resource type named `queue`, or a UserError listing the valid ones."""
    try:
        return RESOURCE_TYPES[queue]
    except KeyError:
        known = ", ".join(f"{r.name} ({r.description})" for r in RESOURCE_TYPES.values())
        raise UserError(f"--queue: unknown resource type {queue!r} (use one of: {known})") from None


def parse_walltime(text: str | int) -> int:
    """`HH:MM:SS` (or `H:MM:SS`, hours may exceed 24) -> seconds; rejects anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _WALLTIME_RE.match(str(text).strip())
    if not m:
        raise UserError(f"--walltime: {text!r} is not HH:MM:SS (e.g. 12:00:00 for twelve hours)")
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


def format_walltime(seconds: int) -> str:
    """Seconds -> `HH:MM:SS` as PBS expects it."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def check_group(group: str | None) -> str:
    """The ABCI group (`qsub -P`), which every ABCI job must name."""
    if not group:
        raise UserError("--group: no ABCI group given (pass --group gaXXXXX, or set "
                        "TUNEKIT_ABCI_GROUP in your shell profile)")
    if not _GROUP_RE.match(group):
        raise UserError(f"--group: {group!r} is not an ABCI group name (letters, digits, - and _, "
                        "starting with a letter)")
    return group


def check_resources(queue: str, nodes: int, walltime: str | int) -> tuple[ResourceType, int]:
    """Validate queue, node count and walltime together; returns (type, walltime seconds)."""
    rt = resource_type(queue)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise UserError(f"--nodes: {nodes!r} is not a positive whole number of nodes")
    if nodes > 1 and rt.max_nodes == 1:
        raise UserError(f"--nodes {nodes}: multi-node jobs are only allowed on rt_HF on ABCI "
                        f"({queue} is {rt.description}; use --queue rt_HF or --nodes 1)")
    if nodes > rt.max_nodes:
        raise UserError(f"--nodes {nodes}: {queue} allows at most {rt.max_nodes} nodes per job")
    seconds = parse_walltime(walltime)
    if seconds < MIN_WALLTIME_S:
        raise UserError(f"--walltime {format_walltime(seconds)}: shorter than "
                        f"{format_walltime(MIN_WALLTIME_S)}, too short to load the environment")
    if seconds > MAX_WALLTIME_S:
        raise UserError(f"--walltime {format_walltime(seconds)}: ABCI batch jobs may run at most "
                        f"{MAX_WALLTIME_S // 3600} h (use a shorter walltime with --chain N to "
                        "continue the run in follow-up jobs)")
    return rt, seconds
