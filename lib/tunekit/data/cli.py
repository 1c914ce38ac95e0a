"""CLI subcommands of tunekit.data (none yet)."""


def register(subparsers) -> None:
    """Add this area's subcommands to the `tunekit` parser."""
