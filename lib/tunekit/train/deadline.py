"""When training must stop: an own time limit and/or the PBS walltime, minus a safety margin.

PBS kills a job at its walltime without warning that reaches Python in time for an 8B checkpoint,
so the loop checks before every step whether one more step plus a checkpoint still fits before the
deadline, and otherwise saves and exits cleanly (the next job of a chain resumes from there).

The job end is taken from, in order: $TUNEKIT_DEADLINE (epoch seconds; the kit's job template
sets it at job start), $PBS_WALLTIME (seconds, exported by some PBS versions), or
`qstat -f $PBS_JOBID` (Resource_List.walltime + stime). Outside PBS there is no job end.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
import time
from dataclasses import dataclass


def parse_hms(text: str) -> int:
    """Seconds in a PBS duration `[[HH:]MM:]SS`."""
    parts = [int(p) for p in text.strip().split(":")]
    secs = 0
    for p in parts:
        secs = secs * 60 + p
    return secs


def _from_qstat(jobid: str) -> float | None:
    try:
        out = subprocess.run(["qstat", "-f", jobid], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    wall = re.search(r"Resource_List\.walltime\s*=\s*([\d:]+)", out)
    start = re.search(r"\bstime\s*=\s*(.+)", out)
    if not (wall and start):
        return None
    try:
        started = _dt.datetime.strptime(" ".join(start.group(1).split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return started.timestamp() + parse_hms(wall.group(1))


def job_end_time(environ: dict[str, str] | None = None) -> tuple[float | None, str]:
    """(epoch seconds when the scheduler kills this job, where that came from) or (None, reason)."""
    env = os.environ if environ is None else environ
    if env.get("TUNEKIT_DEADLINE"):
        return float(env["TUNEKIT_DEADLINE"]), "TUNEKIT_DEADLINE"
    jobid = env.get("PBS_JOBID", "")
    if not jobid:
        return None, "not a PBS job"
    if env.get("PBS_WALLTIME", "").isdigit():
        # Exported relative to the job start; the process started shortly after the job did.
        return _process_start() + float(env["PBS_WALLTIME"]), "PBS_WALLTIME"
    end = _from_qstat(jobid)
    return (end, "qstat") if end else (None, "walltime not readable from qstat")


def _process_start() -> float:
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{os.getpid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / ticks
    except (OSError, ValueError, IndexError):
        return time.time()


@dataclass(frozen=True)
class Deadline:
    """The moment by which training must have checkpointed and stopped (None = no limit)."""

    at: float | None
    source: str

    def remaining(self, now: float | None = None) -> float:
        """Seconds left (inf without a deadline)."""
        return float("inf") if self.at is None else self.at - (now or time.time())

    def describe(self) -> str:
        """One line for the log."""
        if self.at is None:
            return f"no deadline ({self.source})"
        when = _dt.datetime.fromtimestamp(self.at).strftime("%Y-%m-%d %H:%M:%S")
        return f"stop by {when} ({self.source}, {self.remaining() / 60:.1f} min left)"


def make_deadline(max_train_minutes: float, walltime_margin_minutes: float,
                  start: float | None = None, environ: dict[str, str] | None = None) -> Deadline:
    """Combine the own limit (from `start`) and the job end minus the margin; the earlier wins."""
    start = start or time.time()
    options: list[tuple[float, str]] = []
    if max_train_minutes > 0:
        options.append((start + 60 * max_train_minutes, f"max_train_minutes={max_train_minutes:g}"))
    end, source = job_end_time(environ)
    if end is not None:
        options.append((end - 60 * walltime_margin_minutes,
                        f"job end from {source} - {walltime_margin_minutes:g} min margin"))
    if not options:
        return Deadline(None, source)
    at, why = min(options)
    return Deadline(at, why)
