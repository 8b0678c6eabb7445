"""The `cellmind swarm-key` subcommand (placeholder until its module lands)."""


def register(subparsers) -> None:
    subparsers.add_parser("swarm-key")
