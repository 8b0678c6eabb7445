"""The ``cellmind prepare`` subcommand: turn chat exports into the cleaned, anonymized training corpus.

    cellmind prepare                                   # everything under data/raw/
    cellmind prepare chats/ extra.txt --names-file names.txt --strict

Reads every input first, cleans all messages, then writes ``textonly.txt``, ``train.jsonl`` and ``val.jsonl``
under ``--output-dir`` and prints what cleaning did.
"""

import argparse
from pathlib import Path

from cellmind import cleaning
from cellmind.cli import add_common_arguments
from cellmind.config import load_config
from cellmind.corpus import UNITS, PreparedCorpus, parse_duration, prepare_corpus, read_names_file, write_corpus
from cellmind.errors import CellMindError, MissingFileError
from cellmind.i18n import _
from cellmind.progress import progress_bar

DEFAULT_INPUT = Path("data/raw")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help=_("clean and anonymize chat exports into the training corpus"),
        description=_(
            "Read KakaoTalk exports (files or folders), clean and anonymize every message, and write the "
            "tokenizer text and the train/validation JSONL files."
        ),
    )
    parser.add_argument(
        "inputs", nargs="*", type=Path, metavar="INPUT",
        help=_("export files or folders (default: {path})").format(path=DEFAULT_INPUT),
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("data"), metavar="DIR",
        help=_("folder that receives for-tokenizer-training/ and for-model-training/ (default: data)"),
    )
    parser.add_argument(
        "--names-file", type=Path, metavar="FILE", help=_("UTF-8 file of more names to anonymize, one per line")
    )
    parser.add_argument(
        "--session-gap", default="30m", metavar="DURATION",
        help=_("silence that ends a conversation session, e.g. 30m, 2h, 90s (default: 30m)"),
    )
    parser.add_argument(
        "--unit", choices=UNITS, default="session",
        help=_("one training record per conversation session or per message (default: session)"),
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.05, metavar="FRACTION",
        help=_("fraction of records, the latest ones, kept for validation (default: 0.05)"),
    )
    parser.add_argument("--strict", action="store_true", help=_("fail, writing nothing, if a known name survives"))
    parser.add_argument("--config", type=Path, metavar="PATH", help=_("config file (default: config.json if present)"))
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cellmind.exports import read_exports

    load_config(args.config)  # only validated: prepare has no config keys yet
    if not 0 <= args.val_fraction < 1:
        raise CellMindError(
            _("--val-fraction must be at least 0 and below 1, got {value}").format(value=args.val_fraction)
        )
    session_gap = parse_duration(args.session_gap)
    inputs = _existing_inputs(args.inputs)
    extra_names = read_names_file(args.names_file) if args.names_file else []

    with progress_bar(description=_("reading"), unit=_("msg")) as bar:
        exports = read_exports(inputs)
        bar.reset(total=sum(len(export.table) for export in exports))
        bar.set_description(_("cleaning"))
        corpus = prepare_corpus(
            exports, extra_names, session_gap=session_gap, unit=args.unit,
            val_fraction=args.val_fraction, progress=bar.update,
        )

    print_report(corpus, len(exports))
    if corpus.report.surviving_names and args.strict:
        raise CellMindError(
            _("known names survived cleaning: {names}; nothing was written. Report this case, or add "
              "the names' spellings to --names-file").format(names=_format_counts(corpus.report.surviving_names))
        )
    for path in write_corpus(corpus, args.output_dir):
        print(_("wrote {path}").format(path=path))
    return 0


def _existing_inputs(inputs: list[Path]) -> list[Path]:
    if not inputs:
        if not DEFAULT_INPUT.is_dir() or not any(DEFAULT_INPUT.iterdir()):
            raise MissingFileError(
                _("no inputs given and {path} is empty or missing; put your KakaoTalk exports there "
                  "or pass files or folders").format(path=DEFAULT_INPUT)
            )
        return [DEFAULT_INPUT]
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        raise MissingFileError(
            _("input not found: {paths}; check the path or pass an existing file or folder").format(
                paths=", ".join(missing)
            )
        )
    return inputs


def _drop_reason_label(reason: str) -> str:
    labels = {
        cleaning.SYSTEM: _("system notice"),
        cleaning.DELETED: _("deleted message"),
        cleaning.HIDDEN: _("hidden by admin"),
        cleaning.CALL: _("call notice"),
        cleaning.FILE: _("file notice"),
        cleaning.SHARE: _("shared item"),
        cleaning.LOCATION: _("location"),
        cleaning.CONTACT: _("contact"),
        cleaning.VOICE_MESSAGE: _("voice message"),
        cleaning.EMPTY: _("empty after cleaning"),
    }
    return labels.get(reason, reason)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items())


def print_report(corpus: PreparedCorpus, n_chats: int) -> None:
    """Print what cleaning did: names, replacements, drops, records and the audit's result."""
    report = corpus.report
    print(_("chats read: {count}").format(count=n_chats))
    print(_("names known: {count}").format(count=report.names_known))
    print(_("name mentions replaced: {count}").format(count=report.name_mentions))
    print(_("placeholders: {counts}").format(counts=_format_counts(report.placeholders) or "-"))
    dropped = {
        _drop_reason_label(reason): report.dropped[reason] for reason in cleaning.DROP_REASONS if report.dropped.get(reason)
    }
    print(_("records dropped: {total} ({counts})").format(total=sum(report.dropped.values()), counts=_format_counts(dropped) or "-"))
    print(_("messages kept: {count}").format(count=report.messages_kept))
    print(_("training records: {train}, validation records: {val}").format(train=len(corpus.train), val=len(corpus.val)))
    if report.names_skipped:
        print(_("names not replaced because they are one character long: {names}").format(names=", ".join(report.names_skipped)))
    if report.surviving_names:
        print(_("audit: known names found in the output: {names}").format(names=_format_counts(report.surviving_names)))
    else:
        print(_("audit: no known name found in the output"))
