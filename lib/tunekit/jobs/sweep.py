"""Sweeps: one PBS array job over a grid of notebook parameters, each point in its own run directory.

    tunekit sweep submit 30_sft -f base.yaml --grid lr=1e-5,2e-5 --grid epochs=1,2 \\
        --then 50_evaluate -f eval.yaml --group gaXXXXX --walltime 04:00:00 --max-running 2 --name lr-grid

Every point (one combination of the grid values) is planned exactly like `tunekit job submit`
(`plan_job`: parameters typed and validated, resources, layout, an existing run's parameters)
BEFORE anything is written or queued; the first bad point stops everything with one sentence.
Then ONE array job (`qsub -J 0-(n-1)[%max]`) runs the points: its script picks the point's run
directory and parameters from $PBS_ARRAY_INDEX. `--then` adds a second array job, one follow-up
per point (evaluation gets the point's run as `models`, DPO as `init`), started with
`depend=afterok` on the first array: it runs when every point trained successfully (PBS deletes
it otherwise; re-submitting then runs what is missing).

    runs/sweeps/<name>/sweep.json            the points (grid values, run dirs) and every submission
    runs/sweeps/<name>/job/<submission>/     the array scripts as qsub received them
    runs/<stage>/<point run>/job/<submission>/  each point's params.yaml, submission.json, link-1.json

Re-submitting a sweep (same name) submits only the points that are not done: a training point is
done when its engine reports completed (train_result.json), any other stage when summary.json
exists; a point with `--then` is done when its follow-up is done too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import atomic, paramfile
from ..errors import UserError
from ..paths import resolve, runs_root
from ..runs import MAX_NAME, check_run_name
from ..values import Text
from . import chain as chainmod
from . import pbs
from .render import render_script, template_context
from .spec import JobPlan, JobRequest, job_name_for, new_submission_id, plan_job

SWEEPS = "sweeps"
# The parameter of a follow-up stage that receives the point's run directory.
FOLLOW_UP_INPUT = {"evaluate": "models", "dpo": "init"}
# Template values that differ per point; everything else must be the same for one array script.
_PER_POINT = {"run_dir", "job_dir", "notebook_out", "params_file", "job_name", "submission", "points"}
_PBS_PATH_SAFE = re.compile(r"^[A-Za-z0-9_./+-]+$")
_SAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass
class SweepRequest:
    """What `tunekit sweep submit` was asked (see `submit_sweep`)."""

    notebook: str
    grid: Sequence[tuple[str, Sequence[Any]]]
    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    params_file: str | None = None
    then: str | None = None
    then_params: dict[str, Any] = field(default_factory=dict)
    then_params_file: str | None = None
    then_walltime: str | None = None
    group: str | None = None
    queue: str = "rt_HF"
    then_queue: str | None = None
    nodes: int = 1
    walltime: str = "01:00:00"
    max_running: int | None = None
    nproc_per_node: int | None = None
    modules: Sequence[str] | None = None
    activate: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pass_secrets: bool = True


@dataclass
class Point:
    """One grid point: its values, run name and the validated plans of its stage(s)."""

    index: int
    values: dict[str, Any]
    run_name: str
    plan: JobPlan
    then_plan: JobPlan | None = None

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass
class SweepSubmission:
    """The outcome of `submit_sweep`."""

    name: str
    record_path: Path
    points: list[Point]
    submitted: list[int]
    scripts: dict[str, str]
    commands: list[str]
    job_ids: list[str] = field(default_factory=list)
    dry_run: bool = False

    def describe(self) -> str:
        """A few lines for the terminal or a notebook cell."""
        head = [f"sweep {self.name}: {len(self.points)} point(s)"]
        for p in self.points:
            mark = "submit" if p.index in self.submitted else "done  "
            head.append(f"  [{p.index}] {mark} {p.label()}  -> {p.plan.run_dir}")
        if self.dry_run:
            return "\n".join(["# dry run: nothing written, nothing submitted", *head, *self.commands])
        if not self.submitted:
            return "\n".join([*head, "every point is done: nothing submitted"])
        head += [f"job:   {jid}" for jid in self.job_ids]
        head += [f"record: {self.record_path}", f"watch:  tunekit sweep status {self.name}   "
                 f"tunekit runs watch sweep:{self.name}"]
        return "\n".join(head)


# ---------------------------------------------------------------------------- the grid
def split_values(text: str) -> list[str]:
    """`1e-5,2e-5` -> ['1e-5', '2e-5']; commas inside [...], {...} or quotes do not split."""
    out, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Text]]]:
    """`--grid NAME=V1,V2,...` options -> [(name, values as typed)], refusing empty or repeated ones."""
    grid: list[tuple[str, list[Text]]] = []
    for item in items:
        name, eq, values = item.partition("=")
        name = name.strip()
        if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise UserError(f"--grid {item!r}: write NAME=V1,V2,... (e.g. --grid lr=1e-5,2e-5)")
        vals = split_values(values)
        if any(v == "" for v in vals):
            raise UserError(f"--grid {item!r}: an empty value (remove the extra comma)")
        if len(set(vals)) != len(vals):
            raise UserError(f"--grid {item!r}: a value is repeated")
        if any(name == n for n, _ in grid):
            raise UserError(f"--grid {name}: given twice (list all its values in one --grid)")
        grid.append((name, [Text(v) for v in vals]))
    if not grid:
        raise UserError("a sweep needs at least one --grid NAME=V1,V2,...")
    return grid


def grid_points(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """Every combination, the last parameter varying fastest (index = position in this list)."""
    names = [n for n, _ in grid]
    return [dict(zip(names, combo)) for combo in itertools.product(*(vals for _, vals in grid))]


def point_run_name(sweep: str, values: dict[str, Any]) -> str:
    """`<sweep>-<name><value>-...-<hash>`: readable, one folder name, and unique.

    The 6-hex hash of the sweep name and the values makes names of different points and sweeps
    differ even where cleaning (`/` -> `_`) or shortening made the readable part equal.
    """
    readable = "-".join(f"{k}{_SAFE.sub('_', str(v)).strip('_.-') or 'x'}" for k, v in values.items())
    digest = hashlib.sha256(json.dumps([sweep, {k: str(v) for k, v in values.items()}],
                                       sort_keys=True).encode()).hexdigest()[:6]
    head = f"{sweep}-{readable}"[: MAX_NAME - 7].rstrip("-._")
    return check_run_name(f"{head}-{digest}", what="sweep point run name")


# ---------------------------------------------------------------------------- planning
def _job_request(req: SweepRequest, notebook: str, params: dict[str, Any], params_file: str | None,
                 run_name: str, walltime: str, queue: str, nodes: int, nproc: int | None) -> JobRequest:
    return JobRequest(notebook=notebook, params=params, params_file=params_file, group=req.group,
                      queue=queue, nodes=nodes, walltime=walltime, run_name=run_name, chain=1,
                      nproc_per_node=nproc, modules=req.modules, activate=req.activate,
                      env=dict(req.env), pass_secrets=req.pass_secrets)


def plan_sweep(req: SweepRequest) -> tuple[str, list[Point]]:
    """Validate every point (and its follow-up) like `plan_job`; nothing is written. (name, points)."""
    import datetime as _dt

    from ..notebooks import spec

    nb = spec(req.notebook)
    name = req.name or f"{nb.stage}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_run_name(name, what="sweep name (--name)")
    if req.max_running is not None and (not isinstance(req.max_running, int) or req.max_running < 1):
        raise UserError(f"--max-running {req.max_running!r}: give a whole number of at least 1")
    then_nb = spec(req.then) if req.then else None
    if then_nb is not None and then_nb.stage not in FOLLOW_UP_INPUT:
        raise UserError(f"--then {req.then}: a follow-up must take the point's run directory as its input "
                        f"(stages: {', '.join(sorted(FOLLOW_UP_INPUT))})")
    points = []
    for index, values in enumerate(grid_points(req.grid)):
        run_name = point_run_name(name, values)
        try:
            plan = plan_job(_job_request(req, req.notebook, {**req.params, **values}, req.params_file,
                                         run_name, req.walltime, req.queue, req.nodes, req.nproc_per_node))
            then_plan = None
            if then_nb is not None:
                key = FOLLOW_UP_INPUT[then_nb.stage]
                link = [str(plan.run_dir)] if key == "models" else str(plan.run_dir)
                then_plan = plan_job(_job_request(
                    req, then_nb.name, {**req.then_params, key: link}, req.then_params_file, run_name,
                    req.then_walltime or req.walltime, req.then_queue or req.queue,
                    req.nodes if then_nb.stage in chainmod.TRAINING_STAGES else 1,
                    req.nproc_per_node if then_nb.stage in chainmod.TRAINING_STAGES else None))
        except UserError as exc:
            label = ", ".join(f"{k}={v}" for k, v in values.items())
            raise UserError(f"sweep point {index} ({label}): {exc} - nothing was submitted") from None
        points.append(Point(index, values, run_name, plan, then_plan))
    return name, points


def _shared(plans: list[JobPlan]) -> None:
    """One array script serves every point: all values but the per-point ones must agree."""
    first = {k: v for k, v in template_context(plans[0]).items() if k not in _PER_POINT}
    for plan in plans[1:]:
        other = {k: v for k, v in template_context(plan).items() if k not in _PER_POINT}
        diff = sorted(k for k in first if first[k] != other.get(k))
        if diff:
            raise UserError(f"sweep points differ in {', '.join(diff)} (e.g. {plan.run_name}); one array job "
                            "needs the same resources and launch for every point (sweep those separately)")


# ---------------------------------------------------------------------------- done / record
def stage_done(run_dir: Path, stage: str) -> bool:
    """A training run reports completed (the chain's rule, train_result.json); any other run wrote summary.json."""
    if stage in chainmod.TRAINING_STAGES:
        return chainmod.training_done(run_dir)
    return (run_dir / "summary.json").is_file()


def point_done(point: dict[str, Any]) -> bool:
    """A sweep.json point is done when its run (and its follow-up, if any) is done."""
    if not stage_done(Path(point["run_dir"]), point["stage"]):
        return False
    return not point.get("then_run_dir") or stage_done(Path(point["then_run_dir"]), point["then_stage"])


def sweep_dir(name: str, runs_dir: str = "") -> Path:
    """`<runs root>/sweeps/<name>`."""
    return (resolve(runs_dir) if runs_dir else runs_root()) / SWEEPS / check_run_name(name, what="sweep name")


def _record_points(points: list[Point]) -> list[dict[str, Any]]:
    return [{"index": p.index, "values": {k: str(v) for k, v in p.values.items()}, "run_name": p.run_name,
             "stage": p.plan.stage, "run_dir": str(p.plan.run_dir),
             "then_stage": p.then_plan.stage if p.then_plan else None,
             "then_run_dir": str(p.then_plan.run_dir) if p.then_plan else None} for p in points]


def read_sweep(name: str, runs_dir: str = "") -> dict[str, Any] | None:
    """The sweep record, or None if no sweep has this name."""
    path = sweep_dir(name, runs_dir) / "sweep.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: unreadable ({exc}) (restore it, or use another --name)") from None


def _active_arrays(record: dict[str, Any]) -> list[str]:
    ids = [jid for sub in record.get("submissions", []) for jid in (sub.get("array_job_id"), sub.get("then_job_id"))
           if jid]
    for jid in ids:
        pbs.check_job_id(jid, "sweep.json job id")
    try:
        states = pbs.query(ids)
    except UserError:
        return []  # no qstat here: qsub fails anyway with its own message
    return [jid for jid, job in states.items() if not job.finished]


# ---------------------------------------------------------------------------- submit
def _point_files(plan: JobPlan, sweep: str, array_index: int) -> dict[str, Any]:
    """Write a point's params.yaml, submission.json and job/latest; its template values."""
    plan.job_dir.mkdir(parents=True, exist_ok=False)
    header = (f"Parameters of {plan.notebook.name} for run {plan.run_name!r} (sweep {sweep}), written by "
              "`tunekit sweep submit`;\nthe job passes this file to papermill with -f.")
    atomic.write_text(plan.params_path, paramfile.dumps(plan.params, header=header))
    atomic.write_text(plan.run_dir / "job" / "latest", plan.submission + "\n")
    ctx = template_context(plan)
    return {"index": array_index, "run_dir": ctx["run_dir"], "job_dir": ctx["job_dir"],
            "notebook_out": ctx["notebook_out"], "params_file": ctx["params_file"], "job_name": ctx["job_name"]}


def _point_record(plan: JobPlan, sweep: str, job_id: str, commands: list[str]) -> None:
    from .submit import _record

    record = _record(plan, commands, [job_id] if job_id else [])
    record["sweep"] = sweep
    atomic.write_json(plan.job_dir / "submission.json", record)


def _array_argv(shared: JobPlan, script: Path, n: int, max_running: int | None,
                depend_on: str | None) -> list[str]:
    variables = ["TUNEKIT_CHAIN_LINK=1", "TUNEKIT_CHAIN_LENGTH=1", *shared.secrets]
    logs = shared.logs_dir / (f"{shared.job_name}-^array_index^.pbs.log" if n > 1 else f"{shared.job_name}.pbs.log")
    # PBS parses -o as [host:]path: only plain paths (`^array_index^` is PBS's own placeholder).
    output = logs if _PBS_PATH_SAFE.match(str(shared.logs_dir)) else None
    return pbs.qsub_argv(script, depend_on=depend_on, variables=variables, output=output,
                         array=pbs.array_range(n, max_running) if n > 1 else None, depend_type="afterok")


def submit_sweep(req: SweepRequest, dry_run: bool = False) -> SweepSubmission:
    """Validate every point, then queue the sweep's not-done points as one array job (+ its follow-up)."""
    name, points = plan_sweep(req)
    runs_dir = str(points[0].plan.runs_root)  # the runs root the points' run directories are in
    folder = sweep_dir(name, runs_dir)
    old = read_sweep(name, runs_dir)
    fresh = _record_points(points)
    if old is not None:
        before = [(p["run_name"], p.get("then_stage")) for p in old.get("points", [])]
        if before != [(p["run_name"], p["then_stage"]) for p in fresh]:
            raise UserError(f"sweep {name!r} exists with other points or another --then ({folder / 'sweep.json'}); "
                            "re-submit it with the same grid and options, or choose a new --name")
        active = _active_arrays(old)
        if active and not dry_run:
            raise UserError(f"sweep {name!r}: jobs {', '.join(active)} are still queued or running (wait for "
                            f"them, or qdel them first)")
    todo = [p for p, rec in zip(points, fresh) if not point_done(rec)]
    for stage_plans in ([p.plan for p in todo], [p.then_plan for p in todo if p.then_plan]):
        if stage_plans:
            _shared(stage_plans)
    submission = new_submission_id(folder)
    job_dir = folder / "job" / submission
    stages = [("main", [p.plan for p in todo])]
    if todo and todo[0].then_plan is not None:
        stages.append(("then", [p.then_plan for p in todo]))
    scripts: dict[str, str] = {}
    shared: dict[str, JobPlan] = {}
    for key, plans in stages:
        if not plans:
            continue
        base = dataclasses.replace(plans[0], job_name=job_name_for(plans[0].stage, name))
        shared[key] = base
        points_ctx = [{"index": i, **{k: v for k, v in template_context(plan).items()
                                      if k in ("run_dir", "job_dir", "notebook_out", "params_file", "job_name")}}
                      for i, plan in enumerate(plans)]
        scripts[key] = render_script(base, points=points_ctx)
    script_paths = {key: job_dir / f"{shared[key].stage}.sh" for key in shared}
    if dry_run:
        commands = [f"cd {pbs.format_command([str(shared['main'].repo)])}"] if shared else []
        for key, plans in stages:
            if key in shared:
                argv = _array_argv(shared[key], script_paths[key], len(plans), req.max_running,
                                   "ARRAY" if key == "then" else None)
                line = pbs.format_command(argv)
                if key == "then":
                    line = line.replace("depend=afterok:ARRAY", 'depend=afterok:"$ARRAY"')
                commands.append(f"ARRAY=$({line})" if key == "main" and "then" in shared else line)
        return SweepSubmission(name, folder / "sweep.json", points, [p.index for p in todo], scripts, commands,
                               dry_run=True)
    record = old or {"name": name, "notebook": points[0].plan.notebook.name, "stage": points[0].plan.stage,
                     "then": req.then and {"notebook": points[0].then_plan.notebook.name,
                                           "stage": points[0].then_plan.stage},
                     "grid": {k: [str(v) for v in vals] for k, vals in req.grid},
                     "params_file": req.params_file, "then_params_file": req.then_params_file,
                     "created": _now(), "submissions": []}
    record["points"] = fresh
    if not todo:
        return SweepSubmission(name, folder / "sweep.json", points, [], scripts, [])
    job_dir.mkdir(parents=True, exist_ok=False)
    shared["main"].logs_dir.mkdir(parents=True, exist_ok=True)
    entry = {"submission": submission, "created": _now(), "points": [p.index for p in todo],
             "max_running": req.max_running, "array_job_id": None, "then_job_id": None, "commands": []}
    record["submissions"].append(entry)
    contexts = {"main": [], "then": []}
    for i, p in enumerate(todo):
        contexts["main"].append(_point_files(p.plan, name, i))
        if p.then_plan is not None:
            contexts["then"].append(_point_files(p.then_plan, name, i))
    for key in shared:
        atomic.write_text(script_paths[key], scripts[key])
        os.chmod(script_paths[key], 0o755)
    atomic.write_json(folder / "sweep.json", record)
    job_ids: list[str] = []
    for key, plans in stages:
        argv = _array_argv(shared[key], script_paths[key], len(plans), req.max_running,
                           entry["array_job_id"] if key == "then" else None)
        entry["commands"].append(pbs.format_command(argv, shared[key].repo))
        try:
            jid = pbs.submit(argv, shared[key].repo)
        except UserError as exc:
            atomic.write_json(folder / "sweep.json", record)
            if job_ids:
                raise UserError(f"{exc} - array {job_ids[0]} was queued before this failure (qdel it, "
                                "then submit the sweep again)") from None
            raise
        job_ids.append(jid)
        entry["array_job_id" if key == "main" else "then_job_id"] = jid
        for i, plan in enumerate(plans):
            sub_id = pbs.subjob_id(jid, i) if len(plans) > 1 else jid
            _point_record(plan, name, sub_id, [entry["commands"][-1]])
        atomic.write_json(folder / "sweep.json", record)
    return SweepSubmission(name, folder / "sweep.json", points, [p.index for p in todo], scripts,
                           entry["commands"], job_ids)


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- status
def _pbs_states(record: dict[str, Any]) -> dict[str, pbs.PBSJob]:
    """qstat -x -t of every array of the sweep, keyed by job and subjob id ({} without qstat)."""
    states: dict[str, pbs.PBSJob] = {}
    for sub in record.get("submissions", []):
        for jid in (sub.get("array_job_id"), sub.get("then_job_id")):
            if not jid:
                continue
            try:
                found = pbs.query_array(jid) if "[]" in jid else pbs.query([jid])
            except UserError:
                return {}
            for key, job in found.items():
                states[key] = job
                states.setdefault(key.split(".")[0], job)
    return states


def _stage_state(run_dir: Path, stage: str, job: pbs.PBSJob | None, parent: pbs.PBSJob | None) -> str:
    from ..runview.records import latest_link

    if stage_done(run_dir, stage):
        return "done"
    link = (latest_link(run_dir) or {}).get("state")
    if parent is not None and parent.finished and parent.exit_status not in (None, 0) and link is None:
        return "not run"  # the follow-up array was deleted: its afterok could not be met
    if job is not None and not job.finished:
        return "running" if job.state == "R" or link == "running" else "queued"
    if parent is not None and job is None and not parent.finished:
        return "queued"
    if link in ("failed", "stopped") or (job is not None and job.exit_status not in (None, 0)):
        return "failed"
    if link in ("incomplete", "killed"):
        return "incomplete"
    return "not submitted" if job is None and link is None else "not done"


def sweep_status(name: str, runs_dir: str = "") -> list[dict[str, Any]]:
    """One row per point: state (queued/running/done/failed/...), step, last loss, best val loss, accuracy."""
    from ..runview.records import run_info, sweep_record

    record = sweep_record(name, runs_dir or None)
    states = _pbs_states(record)
    latest: dict[int, tuple[dict[str, Any], int]] = {}
    for sub in record.get("submissions", []):
        for pos, index in enumerate(sub.get("points", [])):
            latest[index] = (sub, pos)
    rows = []
    for point in record["points"]:
        sub, pos = latest.get(point["index"], ({}, 0))
        n = len(sub.get("points", []))
        ids = {}
        for key in ("array_job_id", "then_job_id"):
            jid = sub.get(key)
            ids[key] = (pbs.subjob_id(jid, pos) if n > 1 else jid) if jid else None
        main = Path(point["run_dir"])
        s_main = _stage_state(main, point["stage"], states.get(ids["array_job_id"] or ""), None)
        info = run_info(main)
        row = {"index": point["index"], **point["values"], "run": point["run_name"], "state": s_main,
               "step": info.step, "last_loss": info.last_loss, "best_val_loss": info.best_val_loss,
               "accuracy": None, "job_id": ids["array_job_id"] or ""}
        if point.get("then_run_dir"):
            then_dir = Path(point["then_run_dir"])
            parent = states.get(sub.get("then_job_id") or "")
            s_then = _stage_state(then_dir, point["then_stage"], states.get(ids["then_job_id"] or ""), parent)
            acc = run_info(then_dir).accuracy
            row["accuracy"] = next(iter(acc.values()), None)
            row[point["then_stage"]] = s_then
            row["state"] = _combine(s_main, s_then)
        rows.append(row)
    return rows


def _combine(main: str, then: str) -> str:
    if main == "done" and then == "done":
        return "done"
    if "failed" in (main, then):
        return "failed"
    if "running" in (main, then):
        return "running"
    if main == "done":
        return then if then in ("queued", "not done", "not submitted") else then
    return main


def format_sweep_status(name: str, rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `sweep_status` rows and a count per state."""
    def fmt(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    if not rows:
        return f"sweep {name}: no points"
    cols = list(dict.fromkeys(k for r in rows for k in r if k != "run"))
    table = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)) for t in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"sweep {name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)
