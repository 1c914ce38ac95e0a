"""`tunekit sweep submit|status`: a grid of notebook parameters as one PBS array job (docs/abci_jobs.md)."""
from __future__ import annotations


def _cmd_submit(args) -> int:
    from ..values import Text
    from .sweep import SweepRequest, parse_grid, submit_sweep

    env = {}
    for item in args.env or []:
        name, eq, value = item.partition("=")
        if not eq:
            from ..errors import UserError

            raise UserError(f"--env {item!r}: write NAME=VALUE")
        env[name] = value
    then_params = {}
    if args.then_param:
        then_params = {n: Text(v) for n, v in args.then_param}
    req = SweepRequest(
        notebook=args.notebook, grid=parse_grid(args.grid or []), name=args.name or "",
        params={name: Text(value) for name, value in (args.param or [])},
        params_file=args.file, then=args.then, then_params=then_params, then_params_file=args.then_file,
        then_walltime=args.then_walltime, then_queue=args.then_queue, group=args.group, queue=args.queue,
        nodes=args.nodes, walltime=args.walltime, max_running=args.max_running,
        nproc_per_node=args.nproc_per_node,
        modules=[] if args.no_modules else args.module, activate=args.activate, env=env,
        pass_secrets=not args.no_secrets)
    sub = submit_sweep(req, dry_run=args.dry_run)
    if args.dry_run:
        for key, script in sub.scripts.items():
            print(f"# ---- {'follow-up ' if key == 'then' else ''}array job script")
            print(script, end="" if script.endswith("\n") else "\n")
        print("# ---- qsub commands")
    print(sub.describe())
    return 0


def _cmd_status(args) -> int:
    from .sweep import format_sweep_status, sweep_status

    print(format_sweep_status(args.name, sweep_status(args.name, args.runs_dir or "")))
    return 0


def register(subparsers) -> None:
    """Add `tunekit sweep ...`."""
    from ..cli import add_param_option
    from .cli import add_pbs_options

    p = subparsers.add_parser("sweep", help="a grid of notebook parameters as one PBS array job; its status")
    sub = p.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)
    s = sub.add_parser("submit", help="validate every point, then qsub one array job (+ a follow-up array)",
                       description="Every grid point is validated like `tunekit job submit` before anything "
                       "is written or queued. Submitting an existing sweep again queues only the points "
                       "that are not done.")
    s.add_argument("notebook", help="name (30_sft), stage (sft) or path of the notebook")
    s.add_argument("-f", "--file", help="YAML params file shared by every point")
    add_param_option(s, "one parameter shared by every point, repeatable, overrides -f")
    s.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                   help="a parameter and its values, repeatable: every combination is one point")
    s.add_argument("--name", help="sweep name: its record is runs/sweeps/NAME (default: stage + time)")
    s.add_argument("--then", help="follow-up notebook per point (50_evaluate gets the run as models, "
                   "40_dpo as init), started when every point succeeded (depend=afterok)")
    s.add_argument("--then-file", help="YAML params file of the follow-up")
    s.add_argument("--then-param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="one follow-up parameter, repeatable")
    s.add_argument("--then-walltime", help="HH:MM:SS of each follow-up (default: --walltime)")
    s.add_argument("--then-queue", help="resource type of the follow-up (default: --queue)")
    s.add_argument("--max-running", type=int, help="at most N points run at once (qsub -J ...%%N)")
    add_pbs_options(s, "point")
    s.set_defaults(func=_cmd_submit)
    st = sub.add_parser("status", help="one row per point: queued/running/done/failed, step, losses, accuracy")
    st.add_argument("name", help="sweep name")
    st.add_argument("--runs-dir", help="runs root (default: $TUNEKIT_RUNS_DIR or <repo>/runs)")
    st.set_defaults(func=_cmd_status)
