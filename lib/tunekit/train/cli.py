"""CLI subcommands of tunekit.train (none yet)."""


def register(subparsers) -> None:
    """Add this area's subcommands to the `tunekit` parser."""
