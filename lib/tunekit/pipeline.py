"""`tunekit demo`: the whole pipeline on the tiny CPU model and the bundled sample data.

Each step executes one notebook headless (papermill) into `runs/<stage>/demo-<stamp>/` with the
notebook's own defaults; later steps receive earlier run directories as parameters, exactly as a
user would chain them (the chain is `tunekit.notebooks.DEMO`, which the test suite runs too).
While a step runs, its progress lines (training steps, validations, tokenising) are shown with an
estimate of the time left, from the previous demo on this machine when there is one. At the end,
one line per stage and the comparison the demo exists for: does DPO beat SFT on the eval set?
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

from .notebooks import DEMO, NOTEBOOKS, run_chain
from .paths import runs_root
from .runs import read_summary

__all__ = ["DEMO", "headline", "machine", "run_demo"]

# Seconds per stage of the README's demo (2 shared CPU cores, 2026-12), the first estimate when
# this machine has no earlier demo run.
REFERENCE_SECONDS = {"inspect_data": 24, "convert_hf_to_nemo": 25, "convert_nemo_to_hf": 24, "sft": 176,
                     "dpo": 56, "evaluate": 34, "compare_runs": 25}
PROGRESS_SECONDS = 10  # how often a running stage reports (the notebooks' bars log every 30 s headless)


def machine() -> str:
    """The machine in a few words: CPU model, cores, OS, torch build."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        torch = f", torch {version('torch')}"
    except Exception:  # noqa: BLE001 - only a description
        torch = ""
    return f"{cpu}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}{torch}"


def _duration(run_dir: Path) -> float | None:
    try:
        started = json.loads((run_dir / "env.json").read_text())["started"]
        finished = json.loads((run_dir / "summary.json").read_text())["finished"]
        return (_dt.datetime.fromisoformat(finished) - _dt.datetime.fromisoformat(started)).total_seconds()
    except (OSError, KeyError, ValueError):
        return None


def expected_seconds(exclude: str = "") -> tuple[dict[str, float], str]:
    """Seconds each stage is expected to take, and where the figures come from."""
    last: dict[str, float] = {}
    root = runs_root()
    for nb in NOTEBOOKS:
        folder = root / nb.stage
        runs = sorted(folder.glob("demo-*"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        for run_dir in reversed(runs):
            seconds = _duration(run_dir)
            if run_dir.name != exclude and seconds:
                last[nb.stage] = seconds
                break
    if len(last) == len(NOTEBOOKS):
        return last, "the last demo on this machine"
    return {**REFERENCE_SECONDS, **last}, "a 2-core reference machine"


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


_BAR = re.compile(r"^(?P<desc>[^:|]+):\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s+"
                  r"\[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+)")


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return float(total)


class StageProgress(io.TextIOBase):
    """Receives a running notebook's printed output; shows its progress lines with the time left."""

    def __init__(self, index: int, total: int, name: str, stage: str, expected: dict[str, float],
                 order: list[str], say: Callable[[str], None]):
        self.prefix = f"[demo] ({index}/{total}) {name}"
        self.stage, self.expected, self.say = stage, expected, say
        self.later = sum(expected.get(s, 0) for s in order[order.index(stage) + 1:])
        self.t0 = time.time()
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.strip())
        return len(text)

    def left_in_stage(self, bar_left: float | None = None) -> float:
        """Seconds this stage still needs: the bar's own estimate, else the expectation minus elapsed."""
        if bar_left is not None:
            return bar_left
        return max(self.expected.get(self.stage, 0) - (time.time() - self.t0), 0)

    def _line(self, line: str) -> None:
        m = _BAR.match(line)
        if m:
            left = self.left_in_stage(_seconds(m["left"]))
            self.say(f"{self.prefix}: {m['desc'].strip()} {m['pct']}% ({m['n']}/{m['total']}), "
                     f"{_clock(time.time() - self.t0)} in; about {_clock(left + self.later)} left in the demo")
        elif line.startswith("step=") and "val_" in line:
            self.say(f"{self.prefix}: {line}")


def run_demo(stamp: str | None = None, say: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Run every built step of the demo chain in order, with progress; returns {stage: run_dir}."""
    say = say or (lambda line: print(line, flush=True))
    name = f"demo-{stamp or _dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    expected, source = expected_seconds(exclude=name)
    order = [nb.stage for nb in NOTEBOOKS if nb.exists()]
    say(f"[demo] {len(order)} notebooks with their default parameters into runs/<stage>/{name}/ on "
        f"{machine()}")
    say(f"[demo] expected: about {_clock(sum(expected.get(s, 0) for s in order))} (from {source})")
    os.environ.setdefault("TUNEKIT_PROGRESS_SECONDS", str(PROGRESS_SECONDS))  # the kernels inherit it
    t_all = time.time()

    def watch(index: int, total: int, nb) -> StageProgress:
        return StageProgress(index, total, nb.name, nb.stage, expected, order, say)

    done = run_chain(name, log=say, watch=watch)
    say(f"\n[demo] finished in {time.time() - t_all:.0f} s on {machine()}. Results:")
    for stage, path in done.items():
        say(f"  {stage:<20} {path}")
        summary = read_summary(path)
        if summary is not None:
            say(f"  {'':<20} {headline(stage, summary)}")
    verdict = dpo_vs_sft(done)
    if verdict:
        say(f"  {'DPO vs SFT':<20} {verdict}")
    return done


def _acc(summary: dict[str, Any], stage: str) -> float | None:
    for row in summary.get("comparison") or []:
        if str(row.get("model", "")).split("/")[0] == stage:
            return row.get("accuracy")
    return None


def dpo_vs_sft(done: dict[str, Path]) -> str | None:
    """`+N of M problems (a -> b) on the eval set` from the demo's evaluation, or None."""
    summary = read_summary(done["evaluate"]) if "evaluate" in done else None
    if not summary:
        return None
    sft, dpo = _acc(summary, "sft"), _acc(summary, "dpo")
    n = summary.get("eval_problems")
    if sft is None or dpo is None:
        return None
    if n:
        diff = round((dpo - sft) * n)
        return (f"{'+' if diff >= 0 else ''}{diff} of {n} problems ({sft:.3f} -> {dpo:.3f}): DPO "
                f"{'improves on' if diff > 0 else 'does not improve on'} SFT")
    return f"{sft:.3f} -> {dpo:.3f}"


def headline(stage: str, s: dict[str, Any]) -> str:
    """One line of the numbers that matter for a stage's summary.json."""
    def f(x):
        return "n/a" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)

    def share(x):  # accuracies and tie shares: fixed decimals read better side by side
        return "n/a" if x is None else f"{x:.3f}" if isinstance(x, (int, float)) else str(x)

    if stage == "inspect_data":
        return (f"{s.get('sft_train_examples')} SFT train / {s.get('sft_dev_examples')} dev examples, "
                f"{s.get('dpo_train_pairs')} / {s.get('dpo_dev_pairs')} DPO pairs, "
                f"{s.get('validation_errors')} errors, packing {f(s.get('packing_utilisation'))}")
    if stage.startswith("convert"):
        return f"{s.get('direction')}: {s.get('parameters')} parameters, verified -> {s.get('output')}"
    if stage == "sft":
        return f"val loss {f(s.get('initial_val_loss'))} -> {f(s.get('best_val_loss'))} in {s.get('steps')} steps"
    if stage == "dpo":
        ties0, ties1 = s.get("initial_dev_reward_ties"), s.get("final_dev_reward_ties")
        return (f"dev reward accuracy {share(s.get('initial_dev_reward_accuracy'))} (ties {share(ties0)}) -> "
                f"{share(s.get('final_dev_reward_accuracy'))} (ties {share(ties1)}) in {s.get('step')} steps; "
                f"chance 0.5")
    if stage == "evaluate":
        rows = s.get("comparison") or []
        n = f" on {s['eval_problems']} problems" if s.get("eval_problems") else ""
        return f"accuracy{n}: " + ", ".join(f"{r.get('model')} {share(r.get('accuracy'))}" for r in rows)
    if stage == "compare_runs":
        board = s.get("leaderboard") or []
        return "leaderboard: " + ", ".join(
            f"{r.get('model')} {share(r.get('accuracy'))} [{share(r.get('low'))}, {share(r.get('high'))}]"
            for r in board)
    return "summary.json written"


def _cmd_demo(args) -> int:
    run_demo(args.stamp)
    return 0


def register(subparsers) -> None:
    """Add `tunekit demo`."""
    p = subparsers.add_parser("demo", help="run the whole pipeline on the tiny CPU default")
    p.add_argument("--stamp", help="suffix of the demo run names (default: current time)")
    p.set_defaults(func=_cmd_demo)

