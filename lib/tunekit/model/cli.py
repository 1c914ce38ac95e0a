"""CLI subcommands of tunekit.model (none yet)."""


def register(subparsers) -> None:
    """Add this area's subcommands to the `tunekit` parser."""
