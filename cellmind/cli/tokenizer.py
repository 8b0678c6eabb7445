"""The `cellmind tokenizer` subcommand (placeholder until its module lands)."""


def register(subparsers) -> None:
    subparsers.add_parser("tokenizer")
