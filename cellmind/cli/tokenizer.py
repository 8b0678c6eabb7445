"""The ``cellmind tokenizer train`` subcommand: train the SentencePiece tokenizer every peer shares.

    cellmind tokenizer train --input data/for-tokenizer-training/textonly.txt --vocab-size 8000

Defaults come from the config file's ``tokenizer`` section; flags override them.
"""

import argparse
import logging
from pathlib import Path

from cellmind.cli import add_common_arguments
from cellmind.config import load_config
from cellmind.corpus import TEXTONLY_PATH
from cellmind.i18n import _
from cellmind.progress import spinner
from cellmind.tokenizer import MODEL_TYPES, load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_TRAINING_TEXT = Path("data") / TEXTONLY_PATH  # `cellmind prepare` writes under data/ by default


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenizer", help=_("train the tokenizer every peer shares"))
    actions = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help=_("train a SentencePiece tokenizer on the prepared text"),
        description=_("Train a SentencePiece tokenizer on the prepared text. Defaults come from the config file."),
    )
    add_common_arguments(train)
    train.add_argument("--config", type=Path, metavar="PATH", help=_("config file (default: config.json if present)"))
    train.add_argument(
        "--input", type=Path, metavar="PATH", default=DEFAULT_TRAINING_TEXT,
        help=_("text file, one message per line (default: {path})").format(path=DEFAULT_TRAINING_TEXT),
    )
    train.add_argument(
        "--output-dir", type=Path, metavar="DIR", help=_("folder of the model (default: from tokenizer.model_path)")
    )
    train.add_argument(
        "--model-prefix", metavar="NAME", help=_("file name of the model without .model (default: tokenizer)")
    )
    train.add_argument(
        "--vocab-size", type=_vocab_size, metavar="N|auto",
        help=_("pieces in the vocabulary, or 'auto' for the largest the text supports up to 8000 (default: 8000)"),
    )
    train.add_argument(
        "--character-coverage", type=float, metavar="FRACTION",
        help=_("fraction of characters that get their own piece; the rest fall back to bytes (default: 0.9995)"),
    )
    train.add_argument("--model-type", choices=MODEL_TYPES, help=_("SentencePiece algorithm (default: bpe)"))
    train.set_defaults(run=run_train)


def _vocab_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(_("expected a whole number or 'auto', got {value!r}").format(value=value))


def run_train(args: argparse.Namespace) -> int:
    config = load_config(args.config).tokenizer
    configured_path = Path(config.model_path)
    output_dir = args.output_dir or configured_path.parent
    model_prefix = args.model_prefix or configured_path.stem

    with spinner(_("training the tokenizer on {path}").format(path=args.input), enabled=not args.verbose):
        model_path = train_tokenizer(
            args.input,
            output_dir=output_dir,
            model_prefix=model_prefix,
            vocab_size=args.vocab_size or config.vocab_size,
            character_coverage=args.character_coverage or config.character_coverage,
            model_type=args.model_type or config.model_type,
            verbose=args.verbose,
        )
    tokenizer = load_tokenizer(model_path)

    print(_("tokenizer: {path}").format(path=model_path))
    print(_("vocabulary size: {size}").format(size=tokenizer.vocab_size))
    print(_("SHA-256: {digest}").format(digest=tokenizer.sha256))
    if model_path.resolve() != configured_path.resolve():
        logger.warning(
            f"peers load the tokenizer from {configured_path}, so set tokenizer.model_path to {model_path} "
            "in the config file to use this one"
        )
    return 0

