"""`tunekit demo`: the whole pipeline on the tiny CPU model and the bundled sample data.

Each step executes one notebook headless (papermill) into `runs/<stage>/demo-<stamp>/`; later
steps receive earlier run directories as parameters, exactly as a user would chain them. A step
whose notebook does not exist yet is skipped with a line saying so.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .notebooks import spec, run_notebook

Params = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One demo step: a notebook and a function from earlier run dirs to its parameters."""

    notebook: str
    params: Callable[[dict[str, Path], str], Params]


def _stage_dir(done: dict[str, Path], stage: str) -> str:
    return str(done[stage]) if stage in done else ""


# The demo plan. Params not given here take the notebook's defaults (the tiny CPU configuration).
DEMO: list[Step] = [
    Step("10_inspect_data", lambda done, name: {}),
    Step("21_convert_hf_to_nemo", lambda done, name: {}),
    Step("20_convert_nemo_to_hf", lambda done, name: {"src": _stage_dir(done, "convert_hf_to_nemo")}),
    Step("30_sft", lambda done, name: {}),
    Step("40_dpo", lambda done, name: {"init": _stage_dir(done, "sft")}),
    Step("50_evaluate", lambda done, name: {
        "models": ["tiny"] + [str(done[s]) for s in ("sft", "dpo") if s in done]}),
]


def run_demo(stamp: str | None = None) -> dict[str, Path]:
    """Run every built step of the demo in order; returns {stage: run_dir}."""
    name = f"demo-{stamp or _dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    done: dict[str, Path] = {}
    t_all = time.time()
    for step in DEMO:
        nb = spec(step.notebook)
        if not nb.exists():
            print(f"[demo] {nb.name}: skipped (this stage is not built yet)", flush=True)
            continue
        params = {k: v for k, v in step.params(done, name).items() if v not in ("", None)}
        params["run_name"] = name
        print(f"[demo] {nb.name}: running ...", flush=True)
        t0 = time.time()
        done[nb.stage] = run_notebook(nb.name, params, source=f"demo step {nb.name}")
        print(f"[demo] {nb.name}: done in {time.time() - t0:.0f} s -> {done[nb.stage]}", flush=True)
    print(f"\n[demo] finished in {time.time() - t_all:.0f} s. Results:")
    for stage, path in done.items():
        print(f"  {stage:<20} {path}")
        summary = path / "summary.json"
        if summary.exists():
            print(f"  {'':<20} summary: {summary}")
    return done


def _cmd_demo(args) -> int:
    run_demo(args.stamp)
    return 0


def register(subparsers) -> None:
    """Add `tunekit demo`."""
    p = subparsers.add_parser("demo", help="run the whole pipeline on the tiny CPU default")
    p.add_argument("--stamp", help="suffix of the demo run names (default: current time)")
    p.set_defaults(func=_cmd_demo)
