"""Walltime chains: the same run continued by follow-up jobs until training reports done.

`tunekit job submit --chain N` submits N jobs at once, each after the previous one
(`qsub -W depend=afterany:<previous id>`, so a link killed at its walltime still releases the
next). Every link runs the same script; at its start it calls `gate` and at its end `record_end`
(`python -m tunekit.jobs.chain begin|end ...`), which keep one JSON record per link in
`<run_dir>/job/<submission>/link-<k>.json` and decide:

- a follow-up link whose run already reports done -> skip (exit 0 at once, no GPU time used)
- the previous link failed (an error, not a stop)  -> stop the chain here (exit 1), so a broken
                                                      run does not burn N walltimes
- otherwise (first link, previous link stopped at its deadline or by a stop signal with a
  checkpoint, or was killed before it could write
  its end record)                                   -> run the notebook, which resumes from the
                                                      last checkpoint

"Done" is the training engine's word: `train_result.json` with status "completed" (a deadline
stop writes status "deadline" and exits normally, see tunekit.train.engine).

Nothing here needs qsub on the compute node; all links are queued up front.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .. import atomic

GATE_RUN = 0
GATE_SKIP = 3  # the script exits 0 without running the notebook
GATE_STOP = 4  # the script exits 1: an earlier link failed

# States of a link record.
RUNNING, DONE, INCOMPLETE, FAILED, SKIPPED, STOPPED, KILLED = (
    "running", "done", "incomplete", "failed", "skipped", "stopped", "killed")
# Exit statuses of a notebook stopped by a signal (tunekit.errors.Interrupted: 128 + signal number).
_SIGNAL_EXITS = {130: "SIGINT", 143: "SIGTERM"}


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def link_path(job_dir: Path, link: int) -> Path:
    """The record of link `link` (1-based) of a submission."""
    return job_dir / f"link-{link}.json"


def read_link(job_dir: Path, link: int) -> dict[str, Any] | None:
    """A link's record, or None if that link never started."""
    path = link_path(job_dir, link)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


TRAINING_STAGES = frozenset({"sft", "dpo"})
TRAIN_RESULT = "train_result.json"  # written by tunekit.train.engine after every attempt


def run_done(run_dir: Path, stage: str) -> bool:
    """True when a training run reports it finished all its steps (other stages: never skipped)."""
    return stage in TRAINING_STAGES and training_done(run_dir)


def training_done(run_dir: Path) -> bool:
    """True when a training run finished all its steps (not merely stopped at a deadline).

    The training engine writes `<run_dir>/train_result.json` at the end of every attempt with
    `status` "completed" or "deadline" (tunekit.train.engine); only "completed" is done.
    """
    result = _train_result(run_dir)
    return bool(result) and result.get("status") == "completed"


def _train_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / TRAIN_RESULT
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _stopped_at_deadline_since(run_dir: Path, since: float) -> bool:
    """True if this attempt (after `since`) ended with the engine's deadline stop."""
    path = run_dir / TRAIN_RESULT
    result = _train_result(run_dir)
    return bool(result) and result.get("status") == "deadline" and path.stat().st_mtime >= since


def _interrupted_since(run_dir: Path, since: float) -> bool:
    """True if this attempt (after `since`) was stopped by a signal after saving (status "interrupted")."""
    path = run_dir / TRAIN_RESULT
    result = _train_result(run_dir)
    return bool(result) and result.get("status") == "interrupted" and path.stat().st_mtime >= since


def _write(job_dir: Path, link: int, record: dict[str, Any]) -> None:
    atomic.write_json(link_path(job_dir, link), record)


def gate(run_dir: Path, job_dir: Path, stage: str, link: int, chain: int,
         notebook_out: Path | None = None, environ: dict[str, str] | None = None) -> int:
    """Decide at the start of link `link` whether to run; records the decision. Returns GATE_*."""
    env = os.environ if environ is None else environ
    record = {"link": link, "chain": chain, "job_id": env.get("PBS_JOBID", ""),
              "host": socket.gethostname(), "started": _now(), "started_epoch": time.time(),
              "ended": None, "rc": None,
              "state": RUNNING, "note": ""}
    if link > 1 and run_done(run_dir, stage):
        # Only follow-up links skip: a fresh submission of a finished run still runs its
        # notebook (training resumes at its last step, so only the report is redone).
        record.update(state=SKIPPED, ended=_now(), rc=0, note="the run already reports done")
        _write(job_dir, link, record)
        print(f"[chain] link {link}/{chain}: {run_dir} already reports done; nothing to do")
        return GATE_SKIP
    prev = read_link(job_dir, link - 1) if link > 1 else None
    if prev is not None and prev.get("state") in (FAILED, STOPPED):
        record.update(state=STOPPED, ended=_now(), rc=1,
                      note=f"link {link - 1} ended {prev.get('state')} (rc {prev.get('rc')})")
        _write(job_dir, link, record)
        print(f"[chain] link {link}/{chain}: stopping the chain because link {link - 1} "
              f"{prev.get('state')} (exit code {prev.get('rc')}); see its log, fix the cause and "
              "submit again with the same run name to resume", file=sys.stderr)
        return GATE_STOP
    if prev is not None and prev.get("state") == RUNNING:
        record["note"] = f"link {link - 1} was killed before it finished (walltime?); resuming"
    elif prev is not None and prev.get("state") == KILLED:
        record["note"] = f"link {link - 1} was {prev.get('note') or 'stopped by a signal'}; resuming"
    elif link > 1:
        record["note"] = "resuming from the last checkpoint"
    if link > 1 and notebook_out is not None and notebook_out.exists():
        # Keep the previous link's executed notebook: this link overwrites the run's copy.
        shutil.copy2(notebook_out, job_dir / f"{notebook_out.stem}.link{link - 1}{notebook_out.suffix}")
    _write(job_dir, link, record)
    print(f"[chain] link {link}/{chain}: running{' - ' + record['note'] if record['note'] else ''}")
    return GATE_RUN


def record_end(run_dir: Path, job_dir: Path, stage: str, link: int, chain: int, rc: int) -> str:
    """Record how link `link` ended (done / incomplete / failed); returns the state."""
    record = read_link(job_dir, link) or {"link": link, "chain": chain, "started": None}
    started = record.get("started_epoch") or 0.0
    if rc == 0:
        # A training notebook that stopped at its deadline ends normally: not done yet.
        state = INCOMPLETE if stage in TRAINING_STAGES and not run_done(run_dir, stage) else DONE
    elif stage in TRAINING_STAGES and _stopped_at_deadline_since(run_dir, started):
        state = INCOMPLETE  # the notebook failed after a clean deadline stop: resumable anyway
    elif stage in TRAINING_STAGES and _interrupted_since(run_dir, started):
        # Stopped by a signal (qdel, walltime, node drain) with a checkpoint: a next link resumes.
        state = INCOMPLETE
        record["note"] = f"stopped by {(_train_result(run_dir) or {}).get('stop_signal')} with a checkpoint"
    elif rc in _SIGNAL_EXITS:
        # Stopped by a signal before anything could be saved: like a kill, not a failure.
        state = KILLED
        record["note"] = f"stopped by {_SIGNAL_EXITS[rc]}"
    else:
        state = FAILED
    record.update(state=state, rc=rc, ended=_now())
    _write(job_dir, link, record)
    if state == INCOMPLETE and link >= chain:
        print(f"[chain] link {link}/{chain}: the run is not done yet and this was the last job of "
              "the chain; submit again with the same run name (and --chain N) to continue")
    else:
        print(f"[chain] link {link}/{chain}: {state} (exit code {rc})")
    return state


def main(argv: list[str] | None = None) -> int:
    """`python -m tunekit.jobs.chain begin|end RUN_DIR JOB_DIR STAGE [--rc RC] [--notebook-out P]`."""
    p = argparse.ArgumentParser(prog="python -m tunekit.jobs.chain")
    p.add_argument("action", choices=["begin", "end"])
    p.add_argument("run_dir", type=Path)
    p.add_argument("job_dir", type=Path)
    p.add_argument("stage")
    p.add_argument("--rc", type=int, default=0)
    p.add_argument("--notebook-out", type=Path)
    args = p.parse_args(argv)
    link = int(os.environ.get("TUNEKIT_CHAIN_LINK", "1") or 1)
    chain = int(os.environ.get("TUNEKIT_CHAIN_LENGTH", "1") or 1)
    if args.action == "begin":
        return gate(args.run_dir, args.job_dir, args.stage, link, chain, args.notebook_out)
    record_end(args.run_dir, args.job_dir, args.stage, link, chain, args.rc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
