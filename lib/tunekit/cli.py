"""The `tunekit` command: one entry point whose subcommands live next to the code they drive.

Each area registers its own subcommands through `register(subparsers)` in its `cli` module
(kept import-light: heavy imports such as torch happen inside the handlers). A handler returns an
exit code; a UserError becomes `error: <sentence>` and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# Modules providing `register(subparsers)`; order = order in `tunekit --help`.
COMMAND_MODULES = [
    "tunekit.pipeline",        # demo
    "tunekit.notebooks",       # notebooks run/sync/check/refresh
    "tunekit.model.cli",       # fixtures
    "tunekit.data.cli",        # data validate/render/...
    "tunekit.train.cli",       # train (torchrun entry for the engine)
    "tunekit.convert.cli",     # convert nemo-to-hf / hf-to-nemo
    "tunekit.evaluate.cli",    # eval score/generate, submission
    "tunekit.jobs.cli",        # job submit/status/cancel
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every area's subcommands registered."""
    parser = argparse.ArgumentParser(prog="tunekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
