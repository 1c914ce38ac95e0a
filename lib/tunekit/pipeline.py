"""`tunekit demo`: the whole pipeline on the tiny CPU model and the bundled sample data.

Each step executes one notebook headless (papermill) into `runs/<stage>/demo-<stamp>/`; later
steps receive earlier run directories as parameters, exactly as a user would chain them (the
chain is `tunekit.notebooks.DEMO`, which the test suite runs too). A step whose notebook does
not exist yet is skipped with a line saying so.
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

from .notebooks import DEMO, run_chain
from .runs import read_summary

__all__ = ["DEMO", "headline", "run_demo"]


def run_demo(stamp: str | None = None) -> dict[str, Path]:
    """Run every built step of the demo chain in order; returns {stage: run_dir}."""
    name = f"demo-{stamp or _dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    t_all = time.time()
    done = run_chain(name, log=lambda line: print(line, flush=True))
    print(f"\n[demo] finished in {time.time() - t_all:.0f} s. Results:")
    for stage, path in done.items():
        print(f"  {stage:<20} {path}")
        summary = read_summary(path)
        if summary is not None:
            print(f"  {'':<20} {headline(stage, summary)}")
    return done


def headline(stage: str, s: dict[str, Any]) -> str:
    """One line of the numbers that matter for a stage's summary.json."""
    def f(x):
        return "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)

    if stage == "inspect_data":
        return (f"{s.get('sft_train_examples')} SFT train / {s.get('sft_dev_examples')} dev examples, "
                f"{s.get('validation_errors')} errors, packing {f(s.get('packing_utilisation'))}")
    if stage.startswith("convert"):
        return f"{s.get('direction')}: {s.get('parameters')} parameters, verified -> {s.get('output')}"
    if stage == "sft":
        return f"val loss {f(s.get('initial_val_loss'))} -> {f(s.get('best_val_loss'))} in {s.get('steps')} steps"
    if stage == "dpo":
        return (f"dev reward accuracy {f(s.get('initial_dev_reward_accuracy'))} -> "
                f"{f(s.get('final_dev_reward_accuracy'))} in {s.get('step')} steps")
    if stage == "evaluate":
        rows = s.get("comparison") or []
        return "accuracy: " + ", ".join(f"{r.get('model')} {f(r.get('accuracy'))}" for r in rows)
    if stage == "compare_runs":
        board = s.get("leaderboard") or []
        return "leaderboard: " + ", ".join(
            f"{r.get('model')} {f(r.get('accuracy'))} [{f(r.get('low'))}, {f(r.get('high'))}]" for r in board)
    return "summary.json written"


def _cmd_demo(args) -> int:
    run_demo(args.stamp)
    return 0


def register(subparsers) -> None:
    """Add `tunekit demo`."""
    p = subparsers.add_parser("demo", help="run the whole pipeline on the tiny CPU default")
    p.add_argument("--stamp", help="suffix of the demo run names (default: current time)")
    p.set_defaults(func=_cmd_demo)
