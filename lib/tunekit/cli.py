"""The `tunekit` command: one entry point whose subcommands live next to the code they drive.

Each area registers its own subcommands through `register(subparsers)` in its `cli` module
(kept import-light: heavy imports such as torch happen inside the handlers). A handler returns an
exit code; a UserError becomes `error: <sentence>` and exit code 2 (an
Interrupted stop: 128 + the signal number), never a traceback.
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
    "tunekit.jobs.sweep_cli",  # sweep submit/status
    "tunekit.runview.cli",     # runs list/watch/compare
]


def version_text() -> str:
    """`tunekit X.Y.Z (git <commit>[, uncommitted changes])` for --version and bug reports."""
    from . import __version__
    from .runs import git_state

    git = git_state()
    where = ""
    if git.get("sha"):
        where = f" (git {git['sha'][:10]}{', uncommitted changes' if git.get('dirty') else ''})"
    return f"tunekit {__version__}{where}"


class _Version(argparse.Action):
    """--version, computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every area's subcommands registered."""
    parser = argparse.ArgumentParser(prog="tunekit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, help="print the kit's version and git commit, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


PARAM_FLAGS = ("-p", "--param")
_VERBATIM = "--param-verbatim="


def add_param_option(parser: argparse.ArgumentParser, help: str) -> None:
    """`-p NAME VALUE`, repeatable, into `args.param` as [name, value] pairs in command-line order."""
    parser.add_argument(*PARAM_FLAGS, nargs=2, action="append", metavar=("NAME", "VALUE"), help=help)
    # What `verbatim_params` turns each `-p NAME VALUE` into (not for people to type).
    parser.add_argument(_VERBATIM.rstrip("="), dest="param", action="append", type=_pair,
                        help=argparse.SUPPRESS)


def _pair(text: str) -> list[str]:
    name, _, value = text.partition("=")
    return [name, value]


def verbatim_params(argv: list[str]) -> list[str]:
    """Keep every `-p NAME VALUE` value exactly as typed: argparse alone refuses values that
    start with '-' (`-p note -x`, `-p note --`), so each triple becomes one `--param-verbatim=`
    argument whose value argparse never interprets."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in PARAM_FLAGS and i + 2 < len(argv) and "=" not in argv[i + 1]:
            out.append(f"{_VERBATIM}{argv[i + 1]}={argv[i + 2]}")
            i += 3
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (`-p` values verbatim, see `verbatim_params`)."""
    return build_parser().parse_args(verbatim_params(sys.argv[1:] if argv is None else list(argv)))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(verbatim_params(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
