"""CLI subcommands of tunekit.evaluate (none yet)."""


def register(subparsers) -> None:
    """Add this area's subcommands to the `tunekit` parser."""
