"""`tunekit runs list|watch|compare`: read-only views of the run directories (tunekit.runview)."""
from __future__ import annotations


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cmd_list(args) -> int:
    from .records import list_runs

    infos = list_runs(args.runs_dir, stage=args.stage, name=args.name)
    if not infos:
        print("no runs found")
        return 0
    cols = ["stage", "run", "status", "step", "best_val_loss", "accuracy", "started", "commit"]
    table = [[_fmt(i.row()[c]) for c in cols] for i in infos]
    widths = [max(len(c), *(len(t[k]) for t in table)) for k, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    print(f"{len(infos)} run(s)")
    return 0


def _cmd_watch(args) -> int:
    from .watch import watch_terminal

    watch_terminal(args.target, every=args.every, timeout=args.timeout, runs_dir=args.runs_dir)
    return 0


def _cmd_compare(args) -> int:
    from .compare import format_leaderboard, leaderboard, load_runs

    comparison = load_runs(args.runs, args.runs_dir)
    print(format_leaderboard(leaderboard(comparison.models, n_boot=args.n_boot, seed=args.seed)))
    return 0


def register(subparsers) -> None:
    """Add `tunekit runs ...`."""
    p = subparsers.add_parser("runs", help="list, watch and compare run directories (read-only)")
    sub = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="every run: stage, status, steps, best val loss, accuracy, start, commit")
    ls.add_argument("--stage", help="only this stage (sft, dpo, evaluate, ...)")
    ls.add_argument("--name", help="only run names matching this glob or containing this text")
    ls.add_argument("--runs-dir", help="runs root (default: $TUNEKIT_RUNS_DIR or <repo>/runs)")
    ls.set_defaults(func=_cmd_list)
    w = sub.add_parser("watch", help="a refreshing table with loss sparklines until the run(s) end")
    w.add_argument("target", help="run directory, run name, sweep name or sweep:NAME")
    w.add_argument("--every", type=float, default=30.0, help="seconds between refreshes")
    w.add_argument("--timeout", type=float, help="stop after this many seconds")
    w.add_argument("--runs-dir", help="runs root")
    w.set_defaults(func=_cmd_watch)
    c = sub.add_parser("compare", help="leaderboard of evaluated models with 95%% bootstrap intervals")
    c.add_argument("runs", nargs="+", help="run dirs, globs (evaluate/*), run names or sweep:NAME")
    c.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.add_argument("--runs-dir", help="runs root")
    c.set_defaults(func=_cmd_compare)
