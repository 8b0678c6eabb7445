"""Entry points of the ``cellmind`` and ``cellmind-peer`` commands: parse arguments, run, report errors, exit.

This package is the only place that exits the process. Each subcommand lives in its own module here and
exposes ``register(subparsers)``, which adds its parser and sets ``run`` to the function that carries it out.
Known errors (:class:`cellmind.errors.CellMindError`) become one line on stderr and the error's exit status;
``--traceback`` re-raises them with the full trace.
"""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum

from cellmind import __version__
from cellmind.errors import CellMindError, DeviceMemoryError
from cellmind.i18n import _, set_language


class ExitStatus(IntEnum):
    SUCCESS = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def _preparse_language(argv: Sequence[str]) -> None:
    """Apply ``--lang`` before any parser is built, because help texts are translated when they are created."""
    language = None
    for index, argument in enumerate(argv):
        if argument == "--lang" and index + 1 < len(argv):
            language = argv[index + 1]
        elif argument.startswith("--lang="):
            language = argument.split("=", 1)[1]
    set_language(language if language in ("ko", "en") else None)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command accepts: language, traceback and verbosity."""
    parser.add_argument("--lang", choices=["ko", "en"], help=_("language of messages (default: from the locale)"))
    parser.add_argument("--traceback", action="store_true", help=_("show the full traceback of an error"))
    parser.add_argument("-v", "--verbose", action="store_true", help=_("log routine events too"))


def build_parser() -> argparse.ArgumentParser:
    from cellmind.cli import checkpoint, generate, monitor, prepare, swarm_key, tokenizer

    parser = argparse.ArgumentParser(
        prog="cellmind", description=_("Train a mini-GPT together on the devices you already own.")
    )
    parser.add_argument(
        "--version", action="version", version=f"cellmind {__version__}",
        help=_("show program's version number and exit"),  # argparse before 3.12 leaves its own help untranslated
    )
    add_common_arguments(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (prepare, tokenizer, checkpoint, generate, monitor, swarm_key):
        module.register(subparsers)
    return parser


def out_of_memory_error(error: Exception, advice: str) -> DeviceMemoryError:
    """Turn ``torch.OutOfMemoryError`` into one line: the start of PyTorch's message and ``advice``.

    PyTorch's first two sentences say which device and how much was requested; the rest (pool statistics,
    allocator settings) would turn the line into a paragraph.
    """
    text = str(error).strip()
    detail = ". ".join(text.splitlines()[0].split(". ")[:2]) if text else type(error).__name__
    return DeviceMemoryError(
        _("the device ran out of memory ({detail}); {advice}").format(detail=detail.rstrip("."), advice=advice)
    )


def configure_logging(verbose: bool) -> None:
    """Route every logger through Hivemind's handler, so CellMind's lines and the swarm's look alike."""
    from hivemind.utils.logging import use_hivemind_log_handler

    use_hivemind_log_handler("in_root_logger")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("cellmind").setLevel(logging.INFO if verbose else logging.WARNING)


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int | None], args) -> int:
    """Run ``run(args)`` and turn known errors and Ctrl-C into one line and an exit status."""
    configure_logging(verbose=getattr(args, "verbose", False))
    try:
        return int(run(args) or ExitStatus.SUCCESS)
    except CellMindError as error:
        if args.traceback:
            raise
        print(_("error: {message}").format(message=error), file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(_("interrupted"), file=sys.stderr)
        return ExitStatus.INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _preparse_language(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser, args.run, args)


def peer_main(argv: Sequence[str] | None = None) -> int:
    from cellmind.cli import peer

    argv = list(sys.argv[1:] if argv is None else argv)
    _preparse_language(argv)
    parser = peer.build_parser()
    args = parser.parse_args(argv)
    return run_command(parser, peer.run, args)
