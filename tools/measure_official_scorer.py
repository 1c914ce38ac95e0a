"""Measure the official math-eval scorer's verdicts on the kit's parity cases (run OUTSIDE the kit).

The cases in `tests/data/scorer_parity.jsonl` are the kit's own, written from a reading of the
official `math-eval/src/math_eval/main.py`; the verdicts stored with them are what the official tool
answered. This script re-measures them. It needs a Python >= 3.12 environment with the official
tool installed at its lock-file versions, e.g.:

    python3.12 -m venv /tmp/me && /tmp/me/bin/pip install "math-verify[antlr4-13-2]==0.8.0" \
        latex2sympy2-extended==1.10.2 sympy==1.14.0 rich typer \
        'git+https://github.com/llm-jp/ft-llm-2026#subdirectory=math-eval'
    /tmp/me/bin/python tools/measure_official_scorer.py tests/data/scorer_parity.jsonl --check
    /tmp/me/bin/python tools/measure_official_scorer.py tests/data/scorer_parity.jsonl --write

A verdict is true/false, or "crash:<ExceptionType>" where `parse_and_verify` raises (the official
CLI then stops for the whole prediction file). `--check` exits 1 if any stored verdict differs.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from importlib import metadata


def verdict(output, solution, method):
    """The official verdict for one case (true/false or "crash:<type>")."""
    from math_eval.main import parse_and_verify

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(parse_and_verify(output, solution, method))
        except Exception as exc:  # the official CLI does not catch these: the whole run stops
            return f"crash:{type(exc).__name__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="compare with the stored verdicts")
    mode.add_argument("--write", action="store_true", help="store the measured verdicts")
    mode.add_argument("--print", action="store_true", help="print id and verdict per case")
    args = ap.parse_args()
    import contextlib
    import io

    lines = [json.loads(x) for x in open(args.cases, encoding="utf-8") if x.strip()]
    versions = {d: metadata.version(d) for d in ("math-verify", "latex2sympy2_extended", "sympy")}
    changed = 0
    for case in lines:
        with contextlib.redirect_stderr(io.StringIO()):  # its rich console logs every caught error
            got = verdict(case["output"], case["solution"], case.get("evaluation_method"))
        if args.print:
            print(case["id"], json.dumps(got))
        if case.get("official") != got:
            changed += 1
            if args.check:
                print(f"{case['id']}: stored {case.get('official')!r}, measured {got!r}")
        case["official"] = got
    if args.write:
        with open(args.cases, "w", encoding="utf-8") as f:
            for case in lines:
                f.write(json.dumps(case, ensure_ascii=False) + "\n")
    print(f"{len(lines)} cases, {changed} verdict(s) differ from the stored ones ({versions})",
          file=sys.stderr)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
