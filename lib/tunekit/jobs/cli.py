"""`tunekit job submit|status|cancel`: run notebooks as PBS jobs on ABCI (see docs/abci_jobs.md)."""
from __future__ import annotations


def _parse_env(pairs: list[str] | None) -> dict[str, str]:
    from ..errors import UserError

    out = {}
    for item in pairs or []:
        name, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--env {item!r}: write NAME=VALUE")
        out[name] = value
    return out


def request_from_args(args):
    """The JobRequest that `tunekit job submit` arguments describe."""
    from ..values import Text
    from .spec import JobRequest

    # Unconverted text: plan_job converts every value by the notebook's declared parameter type.
    params = {name: Text(value) for name, value in (args.param or [])}
    return JobRequest(notebook=args.notebook, params=params, params_file=args.file,
                      group=args.group, queue=args.queue, nodes=args.nodes, walltime=args.walltime,
                      run_name=args.run_name or "", chain=args.chain,
                      nproc_per_node=args.nproc_per_node,
                      modules=[] if args.no_modules else args.module, activate=args.activate,
                      env=_parse_env(args.env), pass_secrets=not args.no_secrets)


def _cmd_submit(args) -> int:
    from .spec import plan_job
    from .submit import submit_plan

    sub = submit_plan(plan_job(request_from_args(args)), dry_run=args.dry_run)
    if args.dry_run:
        print(f"# ---- job script (would be written to {sub.job_dir / 'job.sh'})")
        print(sub.script, end="" if sub.script.endswith("\n") else "\n")
        print("# ---- qsub command(s)")
    print(sub.describe())
    return 0


def _cmd_status(args) -> int:
    from .submit import format_status, job_status, wait_for_job

    if args.wait:
        if not args.run:
            from ..errors import UserError

            raise UserError("--wait: name the run to wait for")
        wait_for_job(args.run, poll_s=args.poll)
        return 0
    print(format_status(job_status(args.run)))
    return 0


def _cmd_cancel(args) -> int:
    from .submit import cancel_job

    results = cancel_job(args.run)
    for jid, outcome in results.items():
        print(f"{jid}: {outcome}")
    return 0 if all(v in ("deleted", "already finished") for v in results.values()) else 1


def add_pbs_options(parser, unit: str) -> None:
    """The qsub and job-environment options that `tunekit job submit` and `tunekit sweep submit`
    share (`unit`: "job" or "point", what one qsub'd script runs)."""
    parser.add_argument("--group", help="ABCI group for qsub -P (default: $TUNEKIT_ABCI_GROUP)")
    parser.add_argument("--queue", default="rt_HF",
                        help="resource type: rt_HF (8 GPUs, default), rt_HG (1 GPU), rt_HC (CPU)")
    parser.add_argument("--nodes", type=int, default=1, help=f"nodes per {unit} (several only on rt_HF)")
    parser.add_argument("--walltime", default="01:00:00", help=f"HH:MM:SS per {unit} (at most 168:00:00)")
    parser.add_argument("--nproc-per-node", type=int,
                        help="training processes per node (default: one per GPU, 1 on rt_HC)")
    parser.add_argument("--module", action="append",
                        help="environment module to load, repeatable (replaces the list in "
                        "job_templates/site.yaml)")
    parser.add_argument("--no-modules", action="store_true", help="load no environment modules")
    parser.add_argument("--activate", help="venv:PATH, conda:NAME_OR_PATH or none "
                        "(default: the environment running this command)")
    parser.add_argument("--env", action="append", metavar="NAME=VALUE",
                        help=f"extra (non-secret) environment variable for the {unit}, repeatable")
    parser.add_argument("--no-secrets", action="store_true",
                        help="do not pass WANDB_API_KEY/HF_TOKEN from this shell to the job (qsub -v)")
    parser.add_argument("--dry-run", action="store_true", help="print the script(s) and qsub command(s) only")


def register(subparsers) -> None:
    """Add `tunekit job ...`."""
    from ..cli import add_param_option

    p = subparsers.add_parser("job", help="run a notebook as a PBS job on ABCI; watch or cancel it")
    sub = p.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    s = sub.add_parser("submit", help="validate, render and qsub a notebook job (or a chain of jobs)",
                       description="Validate everything, write the job script and params into the "
                       "run directory, and qsub it. --dry-run prints the script and the exact qsub "
                       "command(s) without writing or submitting anything.")
    s.add_argument("notebook", help="name (30_sft), stage (sft) or path of the notebook")
    s.add_argument("-f", "--file",
                   help="YAML params file, e.g. job_templates/params/llm-jp-4-8b/sft/full.yaml")
    add_param_option(s, "one notebook parameter, repeatable, overrides -f; VALUE is read by "
                     "the parameter's type: text exactly as typed, numbers like 2e-5, "
                     "true/false, lists like [a, b]")
    add_pbs_options(s, "job")
    s.add_argument("--chain", type=int, default=1,
                   help="queue N jobs that continue the same training run one after another")
    s.add_argument("--run-name", help="run directory name (default: time stamp + params hash)")
    s.set_defaults(func=_cmd_submit)

    st = sub.add_parser("status", help="the jobs of a run (or of the most recent runs)")
    st.add_argument("run", nargs="?", help="run directory or run name")
    st.add_argument("--wait", action="store_true", help="poll until no job is queued or running")
    st.add_argument("--poll", type=float, default=60.0, help="seconds between polls with --wait")
    st.set_defaults(func=_cmd_status)

    c = sub.add_parser("cancel", help="qdel the queued and running jobs of a run's latest submission")
    c.add_argument("run", help="run directory or run name")
    c.set_defaults(func=_cmd_cancel)
