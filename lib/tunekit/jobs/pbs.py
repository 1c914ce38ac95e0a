"""Thin wrappers over PBS Professional's qsub, qstat and qdel (always argv lists, never a shell).

Because no shell is involved, a value with spaces or `$()` reaches qsub as one literal argument;
`format_command` shows the exact equivalent shell line (for --dry-run and the run record). Job ids
are checked with the same rule as qsub's answer at submission (`check_job_id`), also when they are
read back from a run's records, and reach qstat/qdel after `--`, so no id is ever taken for an
option.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError

_JOBID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")


def check_job_id(job_id: object, source: str = "job id") -> str:
    """A PBS job id as qsub prints it (`1234.pbs1`, `1234[].pbs1`), or UserError naming `source`."""
    if not isinstance(job_id, str) or not _JOBID.match(job_id):
        raise UserError(f"{source}: {job_id!r} is not a PBS job id like 1234.pbs1 (the record was edited "
                        "or damaged; fix it, or cancel the job with qdel yourself)")
    return job_id


def format_command(argv: Sequence[str], cwd: Path | None = None) -> str:
    """The shell line that runs `argv` (in `cwd`), every word quoted."""
    line = shlex.join([str(a) for a in argv])
    return f"cd {shlex.quote(str(cwd))} && {line}" if cwd else line


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise UserError(f"{name}: command not found (run this on an ABCI login node or inside a "
                        "job, where PBS is installed; --dry-run shows the job without submitting)")
    return path


def array_range(count: int, max_running: int | None = None) -> str:
    """PBS Pro's `-J` value for indices 0..count-1, `%N` capping how many subjobs run at once."""
    if count < 2:
        raise ValueError("a PBS array needs at least two indices (submit one point as a plain job)")
    cap = f"%{max_running}" if max_running and max_running < count else ""
    return f"0-{count - 1}{cap}"


def qsub_argv(script: Path, *, depend_on: str | None = None, variables: Sequence[str] = (),
              output: Path | str | None = None, array: str | None = None,
              depend_type: str = "afterany") -> list[str]:
    """The qsub command for `script`; resources come from the script's #PBS lines.

    `array` (from `array_range`) makes it one PBS array job; `depend_type` is afterany (chain
    links: run whatever the previous link did) or afterok (a sweep's follow-up stage).
    """
    argv = ["qsub"]
    if array:
        argv += ["-J", array]
    if depend_on:
        if depend_type not in ("afterany", "afterok"):
            raise ValueError(f"unsupported dependency type {depend_type!r}")
        argv += ["-W", f"depend={depend_type}:{depend_on}"]
    if variables:
        argv += ["-v", ",".join(variables)]
    if output is not None:
        argv += ["-o", str(output)]
    argv.append(str(script))
    return argv


def submit(argv: Sequence[str], cwd: Path) -> str:
    """Run a qsub command line (from `qsub_argv`) in `cwd`; returns the job id it printed."""
    exe = _tool("qsub")
    proc = subprocess.run([exe, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"qsub refused the job: {msg[-1] if msg else f'exit code {proc.returncode}'} "
                        f"(command: {format_command(argv, cwd)})")
    jobid = proc.stdout.strip().splitlines()[-1].strip() if proc.stdout.strip() else ""
    if not _JOBID.match(jobid):
        raise UserError(f"qsub printed {proc.stdout.strip()!r}, not a job id (command: "
                        f"{format_command(argv, cwd)})")
    return jobid


@dataclass(frozen=True)
class PBSJob:
    """What qstat says about one job."""

    job_id: str
    state: str  # PBS letters: Q queued, H held, R running, E exiting, F finished, ...
    exit_status: int | None = None
    comment: str = ""
    start_time: str = ""

    @property
    def finished(self) -> bool:
        # F: a finished job or array; X: a finished subjob of an array (PBS Pro "expired").
        return self.state in ("F", "X")


def _parse_json(text: str) -> dict[str, PBSJob]:
    data = json.loads(text) if text.strip() else {}
    out = {}
    for jid, info in (data.get("Jobs") or {}).items():
        status = info.get("Exit_status")
        out[jid] = PBSJob(jid, str(info.get("job_state", "?")),
                          int(status) if status is not None else None,
                          str(info.get("comment", "")), str(info.get("stime", "")))
    return out


def query_array(array_id: str) -> dict[str, PBSJob]:
    """qstat -x -t for an array job: the array itself and every subjob, keyed by the ids PBS prints."""
    check_job_id(array_id)
    exe = _tool("qstat")
    proc = subprocess.run([exe, "-x", "-t", "-f", "-F", "json", "--", array_id], capture_output=True,
                          text=True, timeout=120)
    try:
        return _parse_json(proc.stdout)
    except json.JSONDecodeError:
        return {}


def subjob_id(array_id: str, index: int) -> str:
    """The id of subjob `index` of array `1234[].server`: `1234[index].server`."""
    return array_id.replace("[]", f"[{index}]", 1)


def query(job_ids: Sequence[str]) -> dict[str, PBSJob]:
    """qstat -x -f -F json for these ids (finished jobs included); ids PBS forgot are absent."""
    if not job_ids:
        return {}
    job_ids = [check_job_id(j) for j in job_ids]
    exe = _tool("qstat")
    proc = subprocess.run([exe, "-x", "-f", "-F", "json", "--", *job_ids], capture_output=True,
                          text=True, timeout=120)
    try:
        found = _parse_json(proc.stdout)
    except json.JSONDecodeError:
        found = {}
    if proc.returncode != 0 and not found and len(job_ids) > 1:
        # One unknown id can make qstat print nothing useful: ask one by one.
        for jid in job_ids:
            found.update(query([jid]))
    return _match_ids(found, job_ids)


def _match_ids(found: dict[str, PBSJob], job_ids: Sequence[str]) -> dict[str, PBSJob]:
    """Key results by the ids we asked for (PBS may answer with the full server suffix)."""
    out = {}
    for jid in job_ids:
        num = jid.split(".")[0]
        hit = found.get(jid) or next((j for k, j in found.items() if k.split(".")[0] == num), None)
        if hit is not None:
            out[jid] = hit
    return out


def delete(job_ids: Sequence[str]) -> dict[str, str]:
    """qdel each id; returns {id: "deleted" | qdel's complaint}."""
    job_ids = [check_job_id(j) for j in job_ids]
    exe = _tool("qdel")
    out: dict[str, Any] = {}
    for jid in job_ids:
        proc = subprocess.run([exe, "--", jid], capture_output=True, text=True, timeout=120)
        out[jid] = "deleted" if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()
    return out
