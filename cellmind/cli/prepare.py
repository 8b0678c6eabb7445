"""The `cellmind prepare` subcommand (placeholder until its module lands)."""


def register(subparsers) -> None:
    subparsers.add_parser("prepare")
