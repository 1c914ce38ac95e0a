"""Submit, watch and cancel notebook jobs: the Python API behind `tunekit job ...`.

A submission writes into the run directory before anything is queued:

    runs/<stage>/<run_name>/job/<submission>/
        job.sh            the rendered PBS script (what qsub received)
        params.yaml       the merged, validated parameters (papermill -f)
        submission.json   resources, the exact qsub commands and the job ids
        link-<k>.json     how each job of the chain started and ended (written by the job)
    runs/<stage>/<run_name>/job/latest   the newest submission's folder name

From a notebook cell:

    from tunekit.jobs import submit_job, job_status, wait_for_job
    sub = submit_job("30_sft", params_file="job_templates/params/llm-jp-4-8b/sft/full.yaml",
                     group="gaXXXXX", nodes=2, walltime="12:00:00", chain=3)
    job_status(sub.run_dir)        # one row per job of the chain
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import atomic
from ..errors import UserError
from ..paths import resolve, runs_root
from ..runs import check_run_name
from . import chain as chainmod
from .. import paramfile
from . import pbs
from .render import render_script
from .spec import JobPlan, JobRequest, plan_job

_PBS_PATH_SAFE = re.compile(r"^[A-Za-z0-9_./+-]+$")
ACTIVE_STATES = frozenset("QHRETBSWM")  # every PBS state except F (finished)


@dataclass
class Submission:
    """The outcome of `submit_job`: where the run lives and what was (or would be) queued."""

    run_dir: Path
    submission: str
    script: str
    commands: list[str]
    job_ids: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def job_dir(self) -> Path:
        return self.run_dir / "job" / self.submission

    def describe(self) -> str:
        """A few lines for the terminal or a notebook cell."""
        if self.dry_run:
            return "\n".join(["# dry run: nothing written, nothing submitted", *self.commands])
        lines = [f"run dir:   {self.run_dir}", f"job files: {self.job_dir}"]
        lines += [f"job {i}:     {jid}" for i, jid in enumerate(self.job_ids, 1)]
        lines.append(f"watch:     tunekit job status {self.run_dir}")
        return "\n".join(lines)


def _link_argv(plan: JobPlan, link: int, depend_on: str | None) -> list[str]:
    variables = [f"TUNEKIT_CHAIN_LINK={link}", f"TUNEKIT_CHAIN_LENGTH={plan.chain}", *plan.secrets]
    out = plan.logs_dir / f"{plan.job_name}-link{link}.pbs.log"
    # PBS parses -o as [host:]path: only pass plain paths (else PBS's default file is used).
    output = out if _PBS_PATH_SAFE.match(str(out)) else None
    return pbs.qsub_argv(plan.script_path, depend_on=depend_on, variables=variables, output=output)


def _dry_commands(plan: JobPlan) -> list[str]:
    """The exact shell lines that submit the chain (`$JOB1` stands for link 1's id)."""
    lines = [f"cd {pbs.format_command([str(plan.repo)])}"]
    for link in range(1, plan.chain + 1):
        argv = _link_argv(plan, link, f"JOB{link - 1}" if link > 1 else None)
        line = pbs.format_command(argv)
        if link > 1:  # the placeholder must expand, so it sits outside the quotes
            line = line.replace(f"depend=afterany:JOB{link - 1}", f"depend=afterany:\"$JOB{link - 1}\"")
        lines.append(f"JOB{link}=$({line})" if plan.chain > 1 else line)
    return lines


def _record(plan: JobPlan, commands: list[str], job_ids: list[str]) -> dict[str, Any]:
    return {
        "notebook": plan.notebook.name, "stage": plan.stage, "run_name": plan.run_name,
        "run_dir": str(plan.run_dir), "submission": plan.submission,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "group": plan.group, "queue": plan.queue, "nodes": plan.nodes, "walltime": plan.walltime,
        "nproc_per_node": plan.nproc_per_node, "world_size": plan.world_size,
        "launcher": plan.launcher, "chain": plan.chain, "modules": list(plan.modules),
        "activate": plan.activation.describe(), "env": [name for name, _ in plan.env],
        "secrets_passed": list(plan.secrets),  # names only, never values
        "repo": str(plan.repo), "job_name": plan.job_name,
        "logs": str(plan.logs_dir / f"{plan.job_name}-<job number>.out"),
        "commands": commands, "job_ids": job_ids,
    }


def _refuse_if_active(run_dir: Path) -> None:
    latest = latest_submission(run_dir)
    if latest is None:
        return
    ids = latest.get("job_ids", [])
    try:
        states = pbs.query(ids)
    except UserError:
        return  # no qstat here: qsub will fail anyway with its own message
    active = [jid for jid, job in states.items() if job.state in ACTIVE_STATES]
    if active:
        raise UserError(f"{run_dir}: jobs {', '.join(active)} of this run are still queued or "
                        f"running (wait for them, or `tunekit job cancel {run_dir}` first)")


def submit_job(notebook: str, *, params: dict[str, Any] | None = None, params_file: str | None = None,
               group: str | None = None, queue: str = "rt_HF", nodes: int = 1,
               walltime: str = "01:00:00", run_name: str = "", chain: int = 1,
               nproc_per_node: int | None = None,
               modules: Sequence[str] | None = None, activate: str | None = None,
               env: dict[str, str] | None = None, pass_secrets: bool = True,
               dry_run: bool = False) -> Submission:
    """Validate, render and qsub a notebook job (a chain of `chain` jobs); see the module docstring."""
    req = JobRequest(notebook=notebook, params=dict(params or {}), params_file=params_file,
                     group=group, queue=queue, nodes=nodes, walltime=walltime, run_name=run_name,
                     chain=chain, nproc_per_node=nproc_per_node,
                     modules=modules, activate=activate, env=dict(env or {}),
                     pass_secrets=pass_secrets)
    return submit_plan(plan_job(req), dry_run=dry_run)


def submit_plan(plan: JobPlan, dry_run: bool = False) -> Submission:
    """Render a validated plan, write the run's job files and queue the chain (or only show it)."""
    script = render_script(plan)
    if dry_run:
        return Submission(plan.run_dir, plan.submission, script, _dry_commands(plan), dry_run=True)
    _refuse_if_active(plan.run_dir)
    plan.job_dir.mkdir(parents=True, exist_ok=False)
    plan.logs_dir.mkdir(parents=True, exist_ok=True)
    header = (f"Parameters of {plan.notebook.name} for run {plan.run_name!r}, written by "
              f"`tunekit job submit`;\nthe job passes this file to papermill with -f.")
    atomic.write_text(plan.params_path, paramfile.dumps(plan.params, header=header))
    atomic.write_text(plan.script_path, script)
    os.chmod(plan.script_path, 0o755)
    commands: list[str] = []
    job_ids: list[str] = []
    record_path = plan.job_dir / "submission.json"
    atomic.write_json(record_path, _record(plan, commands, job_ids))
    atomic.write_text(plan.run_dir / "job" / "latest", plan.submission + "\n")
    for link in range(1, plan.chain + 1):
        argv = _link_argv(plan, link, job_ids[-1] if job_ids else None)
        commands.append(pbs.format_command(argv, plan.repo))
        try:
            job_ids.append(pbs.submit(argv, plan.repo))
        except UserError as exc:
            atomic.write_json(record_path, _record(plan, commands, job_ids))
            if job_ids:
                raise UserError(f"{exc} - jobs {', '.join(job_ids)} were queued before this failure "
                                f"(cancel them with `tunekit job cancel {plan.run_dir}`)") from None
            raise
        atomic.write_json(record_path, _record(plan, commands, job_ids))
    return Submission(plan.run_dir, plan.submission, script, commands, job_ids)


# ------------------------------------------------------------------------------------ status
_SUBMISSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def latest_submission(run_dir: Path) -> dict[str, Any] | None:
    """The newest submission record of a run, or None if it was never submitted as a job.

    The `job/latest` marker must name a submission folder of this run (one plain folder name),
    and every job id in the record must look like one qsub prints: records are files anyone can
    edit, and their ids end up in qstat and qdel.
    """
    marker = run_dir / "job" / "latest"
    if not marker.exists():
        return None
    name = marker.read_text(encoding="utf-8").strip()
    folder = run_dir / "job" / name
    if not _SUBMISSION.match(name) or folder.resolve().parent != (run_dir / "job").resolve():
        raise UserError(f"{marker}: names {name!r}, not a submission folder of this run (it must be a folder "
                        f"name under {run_dir / 'job'}; fix or delete the marker)")
    path = folder / "submission.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    ids = record.get("job_ids", [])
    if not isinstance(ids, list):
        raise UserError(f"{path}: job_ids is not a list (fix the record, or cancel the jobs with qdel yourself)")
    for jid in ids:
        pbs.check_job_id(jid, f"{path}: job_ids")
    return record


def find_run(run: str | os.PathLike) -> Path:
    """A run directory from a path, or from an exact run name looked up under every stage of the runs root."""
    path = resolve(run, Path.cwd())
    if (path / "job" / "latest").exists():
        return path
    name = str(run)
    if "/" in name or os.sep in name:
        raise UserError(f"{run}: not a submitted run directory (no job/latest in it)")
    check_run_name(name, what="run")  # a name, matched exactly: never a pattern
    root = runs_root()
    stages = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    matches = [d / name for d in stages if (d / name / "job" / "latest").is_file()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"{run}: several runs have this name ({', '.join(map(str, matches))}); "
                        "give the run directory")
    raise UserError(f"{run}: no submitted run with this name or path (runs root: {runs_root()})")


def recent_runs(limit: int = 10) -> list[Path]:
    """Runs with job records, newest submission first."""
    root = runs_root()
    found = [run / "job" / "latest" for stage in (root.iterdir() if root.is_dir() else []) if stage.is_dir()
             for run in stage.iterdir() if (run / "job" / "latest").is_file()]
    markers = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    return [m.parent.parent for m in markers[:limit]]


def job_status(run: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per job of the latest submission of `run` (all recent runs when None)."""
    runs = [find_run(run)] if run is not None else recent_runs()
    rows: list[dict[str, Any]] = []
    for run_dir in runs:
        sub = latest_submission(run_dir)
        if sub is None:
            continue
        try:
            states = pbs.query(sub["job_ids"])
            qstat_note = ""
        except UserError:
            states, qstat_note = {}, "qstat not available"
        job_dir = run_dir / "job" / sub["submission"]
        records = [chainmod.read_link(job_dir, k) or {} for k in range(1, len(sub["job_ids"]) + 1)]
        if sub["stage"] in chainmod.TRAINING_STAGES:
            done = chainmod.run_done(run_dir, sub["stage"])
        else:
            done = any(r.get("state") == chainmod.DONE for r in records)
        for link, (jid, record) in enumerate(zip(sub["job_ids"], records), 1):
            pbs_job = states.get(jid)
            state = record.get("state", "not started")
            if state == chainmod.RUNNING and pbs_job is not None and pbs_job.finished:
                state = "killed"  # ended without its end record: walltime, qdel or node failure
            rows.append({
                "run": run_dir.name, "stage": sub["stage"], "submission": sub["submission"],
                "link": f"{link}/{sub['chain']}", "job_id": jid,
                "pbs_state": pbs_job.state if pbs_job else (qstat_note or "unknown"),
                "exit_status": pbs_job.exit_status if pbs_job else record.get("rc"),
                "job_state": state, "note": record.get("note", ""),
                "run_done": done, "run_dir": str(run_dir),
            })
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `job_status` rows."""
    if not rows:
        return "no submitted jobs found"
    cols = ["run", "stage", "link", "job_id", "pbs_state", "exit_status", "job_state", "note"]
    table = [[str(r.get(c, "") if r.get(c) is not None else "") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    for run_dir in dict.fromkeys(r["run_dir"] for r in rows):
        done = next(r["run_done"] for r in rows if r["run_dir"] == run_dir)
        lines.append(f"{run_dir}: {'done' if done else 'not done'}")
    return "\n".join(lines)


def wait_for_job(run: str | os.PathLike, poll_s: float = 60.0, timeout_s: float | None = None,
                 echo: bool = True) -> list[dict[str, Any]]:
    """Poll `job_status(run)` until no job of the latest submission is queued or running."""
    start = time.time()
    last = None
    while True:
        rows = job_status(run)
        view = [(r["link"], r["pbs_state"], r["job_state"]) for r in rows]
        if echo and view != last:
            print(format_status(rows), flush=True)
            last = view
        if not any(r["pbs_state"] in ACTIVE_STATES for r in rows):
            return rows
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"jobs of {run} still active after {timeout_s:.0f} s")
        time.sleep(poll_s)


def cancel_job(run: str | os.PathLike) -> dict[str, str]:
    """qdel every job of the run's latest submission that has not finished; returns {id: result}."""
    run_dir = find_run(run)
    sub = latest_submission(run_dir)
    ids = list(sub["job_ids"]) if sub else []
    states = pbs.query(ids)
    # Ids qstat no longer knows are long finished; everything else that is not F gets deleted.
    targets = [jid for jid in ids if jid in states and not states[jid].finished]
    skipped = {jid: "already finished" for jid in ids if jid not in targets}
    return {**skipped, **pbs.delete(targets)}
