"""SentencePiece tokenizer: training it deterministically, loading it, and hashing the model file peers compare.

Every peer of a swarm must tokenize alike, so peers compare the SHA-256 of ``tokenizer.model`` before joining.
Training is deterministic: the same text file gives a byte-identical model on any machine, because

- sentences come from a Python iterator, so no input path or output prefix is recorded in the model's
  trainer spec, and the ``.model`` bytes come back through ``model_writer``;
- ``num_threads`` is a constant (:data:`TRAINING_THREADS`), because the unigram trainer's result depends on how
  many threads split the corpus (measured with SentencePiece 0.2.3);
- SentencePiece never samples sentences (``input_sentence_size=0``), because its sampling stayed random in
  SentencePiece 0.2.3 even after ``set_random_generator_seed``. A corpus above :data:`MAX_TRAINING_SENTENCES`
  lines is thinned by a fixed stride instead.

Pieces and ids:

- ``0`` pad ``<|pad|>``, ``1`` ``<unk>``, ``2`` ``<|start|>``, ``3`` ``<|endoftext|>``. Pad, start and
  end-of-text are SentencePiece control symbols: ``encode()`` never produces them from text, so a user who typed
  ``<|endoftext|>`` gets ordinary pieces. ``<unk>`` never appears either, because byte fallback is on and any
  character outside the vocabulary becomes its UTF-8 bytes (``<0xE2>`` ...).
- ``4``-``10`` the placeholders of :mod:`cellmind.tokens` (``<NAME>``, ``<URL>`` ...), then ``11`` the newline,
  all user-defined symbols: each is always exactly one piece.

Round trip: ``decode(encode(s)) == s`` for any text, because

- ``normalization_rule_name="identity"`` keeps the text as written. NFKC would fold full-width forms (``ＡＢＣ``)
  and compatibility jamo, and the model would then never reproduce them.
- ``remove_extra_whitespaces=False`` keeps runs of spaces and leading or trailing spaces.
- ``add_dummy_prefix=False`` adds no space before the text, so a record's encoding does not depend on where
  it starts and a prompt's pieces continue the same way in the middle of a record.
- The newline is a user-defined piece. Records are conversation sessions whose messages are separated by
  ``"\\n"``, while SentencePiece reads its training file one sentence per line, so without that piece every
  newline would cost a byte piece.
- ``allow_whitespace_only_pieces=True`` lets runs of spaces become single pieces.
- SentencePiece writes a space as ``▁`` (U+2581) and turns every ``▁`` back into a space when decoding, so a
  literal ``▁`` in the text would come back as a space. :meth:`Tokenizer.encode` writes a literal ``▁`` as its
  three byte pieces instead, which decode to ``▁``.
"""

import hashlib
import io
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece

from cellmind.errors import MissingFileError, TokenizerError
from cellmind.i18n import _
from cellmind.tokens import END_OF_TEXT, PAD, PLACEHOLDERS, START

logger = logging.getLogger(__name__)

PAD_ID = 0
UNK_ID = 1
START_ID = 2
EOS_ID = 3
NEWLINE = "\n"
USER_DEFINED_SYMBOLS = (*PLACEHOLDERS, NEWLINE)

DEFAULT_VOCAB_SIZE = 8000
AUTO_MAX_VOCAB_SIZE = 8000
"""Largest vocabulary ``vocab_size="auto"`` tries before settling for what the corpus supports."""
MAX_VOCAB_SIZE = 2**16
"""Ids must fit the uint16 packed token file."""
TRAINING_THREADS = 4
"""Fixed on every machine, because the unigram trainer's pieces depend on the thread count."""
MAX_TRAINING_SENTENCES = 5_000_000
"""Maximum lines SentencePiece loads. A longer file is thinned by a fixed stride instead of random sampling."""
MODEL_TYPES = ("bpe", "unigram")

SPACE_SYMBOL = "\u2581"  # SentencePiece's "▁", which stands for a space inside pieces

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class Tokenizer:
    """A trained CellMind tokenizer: SentencePiece plus the ids of the special tokens and the model's SHA-256."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, path: Path, sha256: str):
        self.processor = processor
        self.path = path
        self.sha256 = sha256
        self.pad_id = processor.pad_id()
        self.start_id = processor.bos_id()
        self.eos_id = processor.eos_id()
        self._space_symbol_ids = [processor.piece_to_id(f"<0x{byte:02X}>") for byte in SPACE_SYMBOL.encode()]

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Return the ids of ``text``, which never include a control id (pad, start, end-of-text) or ``<unk>``."""
        if SPACE_SYMBOL not in text:
            return self.processor.encode(text)
        ids: list[int] = []
        for index, part in enumerate(text.split(SPACE_SYMBOL)):
            if index:
                ids.extend(self._space_symbol_ids)
            ids.extend(self.processor.encode(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Return :meth:`encode` of each text, encoding the whole batch in one SentencePiece call."""
        batch = self.processor.encode(texts)
        for index, text in enumerate(texts):
            if SPACE_SYMBOL in text:
                batch[index] = self.encode(text)
        return batch

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of ``ids``. Control ids decode to nothing."""
        return self.processor.decode([int(token_id) for token_id in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer trained by :func:`train_tokenizer` and check its special pieces."""
    path = Path(path)
    try:
        model_bytes = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(
            _("tokenizer not found: {path}; run `cellmind tokenizer train` first").format(path=path)
        ) from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.load_from_serialized_proto(model_bytes)
    except (RuntimeError, OSError):
        raise TokenizerError(
            _("{path} is not a SentencePiece model; run `cellmind tokenizer train` again").format(path=path)
        ) from None
    _check_special_pieces(processor, path)
    return Tokenizer(processor, path, hashlib.sha256(model_bytes).hexdigest())


def _check_special_pieces(processor: sentencepiece.SentencePieceProcessor, path: Path) -> None:
    """Raise TokenizerError unless the model has CellMind's control ids, placeholders and byte fallback."""
    expected = {PAD_ID: PAD, START_ID: START, EOS_ID: END_OF_TEXT}
    problems = [f"id {i} is not {piece}" for i, piece in expected.items() if processor.id_to_piece(i) != piece]
    for symbol in USER_DEFINED_SYMBOLS:
        if not _is_one_piece(processor, symbol):
            problems.append(f"{symbol!r} is not one piece")
    if processor.piece_to_id("<0xFF>") == processor.unk_id():
        problems.append("byte fallback is off")
    if problems:
        raise TokenizerError(
            _("{path} was not trained by `cellmind tokenizer train` ({problems}); train it again with that command")
            .format(path=path, problems="; ".join(problems))
        )


def _is_one_piece(processor: sentencepiece.SentencePieceProcessor, symbol: str) -> bool:
    piece_id = processor.piece_to_id(symbol)
    return piece_id != processor.unk_id() and processor.encode(symbol) == [piece_id]


def train_tokenizer(
    input_path: str | Path,
    output_dir: str | Path = "tokenizer",
    model_prefix: str = "tokenizer",
    vocab_size: int | str = DEFAULT_VOCAB_SIZE,
    character_coverage: float = 0.9995,
    model_type: str = "bpe",
    verbose: bool = False,
) -> Path:
    """Train a tokenizer on ``input_path`` (one text per line) and write ``{model_prefix}.model`` and ``.vocab``.

    ``vocab_size="auto"`` trains the largest vocabulary up to :data:`AUTO_MAX_VOCAB_SIZE` that the corpus
    supports. A fixed size that the corpus cannot fill raises :class:`TokenizerError` naming the largest size
    that works. ``verbose`` lets SentencePiece log to stderr. Returns the path of the ``.model`` file.
    """
    input_path = Path(input_path)
    _check_training_options(vocab_size, character_coverage, model_type)
    line_count = _count_training_lines(input_path)
    stride = math.ceil(line_count / MAX_TRAINING_SENTENCES)
    if stride > 1:
        logger.info(f"{input_path} has {line_count} lines, so training uses every {stride}th line")

    sentencepiece.set_min_log_level(0 if verbose else 2)
    if vocab_size == "auto":
        model_bytes = _train_largest(input_path, stride, AUTO_MAX_VOCAB_SIZE, character_coverage, model_type)
    else:
        model_bytes = _train_or_explain(input_path, stride, int(vocab_size), character_coverage, model_type)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / f"{model_prefix}.model"
    _write_atomically(output_dir / f"{model_prefix}.vocab", _vocab_listing(model_bytes))
    _write_atomically(model_path, model_bytes)
    logger.info(f"wrote {model_path} (sha256 {hashlib.sha256(model_bytes).hexdigest()})")
    return model_path


def _check_training_options(vocab_size: int | str, character_coverage: float, model_type: str) -> None:
    if vocab_size != "auto" and not (isinstance(vocab_size, int) and 0 < vocab_size <= MAX_VOCAB_SIZE):
        raise TokenizerError(
            _("invalid vocabulary size {value!r}: expected 'auto' or a whole number from 1 to {limit}").format(
                value=vocab_size, limit=MAX_VOCAB_SIZE
            )
        )
    if not 0.0 < character_coverage <= 1.0:
        raise TokenizerError(
            _("invalid character coverage {value}: expected a number above 0 and at most 1").format(
                value=character_coverage
            )
        )
    if model_type not in MODEL_TYPES:
        raise TokenizerError(
            _("invalid model type {value!r}: expected one of {choices}").format(
                value=model_type, choices=", ".join(MODEL_TYPES)
            )
        )


def _count_training_lines(input_path: Path) -> int:
    """Return the number of non-blank lines, or raise a user error if the file is missing, not UTF-8 or empty."""
    try:
        with open(input_path, encoding="utf-8") as file:
            count = sum(1 for line in file if line.strip())
    except FileNotFoundError:
        raise MissingFileError(
            _("tokenizer training text not found: {path}; run `cellmind prepare` first").format(path=input_path)
        ) from None
    except UnicodeDecodeError as error:
        raise TokenizerError(
            _("{path} is not UTF-8 text (byte {position}); train on the file `cellmind prepare` writes").format(
                path=input_path, position=error.start
            )
        ) from None
    if count == 0:
        raise TokenizerError(
            _("tokenizer training text {path} is empty; run `cellmind prepare` first").format(path=input_path)
        )
    return count


def _iter_training_lines(input_path: Path, stride: int) -> Iterator[str]:
    with open(input_path, encoding="utf-8") as file:
        lines = (line.rstrip("\n") for line in file if line.strip())
        for index, line in enumerate(lines):
            if index % stride == 0:
                yield line


def _train_once(input_path: Path, stride: int, vocab_size: int, character_coverage: float, model_type: str) -> bytes:
    """Run SentencePiece once and return the serialized model. SentencePiece's errors pass through."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_iter_training_lines(input_path, stride),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(USER_DEFINED_SYMBOLS),
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=START_ID, eos_id=EOS_ID,
        pad_piece=PAD, bos_piece=START, eos_piece=END_OF_TEXT,
        num_threads=TRAINING_THREADS,
        input_sentence_size=0,
        shuffle_input_sentence=False,
    )
    return model.getvalue()


def _train_or_explain(
    input_path: Path, stride: int, vocab_size: int, character_coverage: float, model_type: str
) -> bytes:
    """Train with exactly ``vocab_size`` pieces, or raise TokenizerError with the range the corpus supports."""
    try:
        return _train_once(input_path, stride, vocab_size, character_coverage, model_type)
    except RuntimeError as error:
        raise _explain_training_error(error, input_path, vocab_size) from None


def _train_largest(
    input_path: Path, stride: int, max_vocab_size: int, character_coverage: float, model_type: str
) -> bytes:
    """Train the largest vocabulary up to ``max_vocab_size`` that the corpus can fill."""
    vocab_size = max_vocab_size
    for _attempt in range(3):
        try:
            return _train_once(input_path, stride, vocab_size, character_coverage, model_type)
        except RuntimeError as error:
            too_high = _TOO_HIGH.search(str(error))
            if too_high is None:
                raise _explain_training_error(error, input_path, vocab_size) from None
            vocab_size = int(too_high.group(2))
            logger.info(f"{input_path} supports at most {vocab_size} pieces, so training is retried with that size")
    # NOTE: SentencePiece 0.2.3 names a size that works, so the first retry succeeds. This bound only stops a loop.
    return _train_or_explain(input_path, stride, vocab_size, character_coverage, model_type)


def _explain_training_error(error: RuntimeError, input_path: Path, vocab_size: int) -> TokenizerError:
    """Translate SentencePiece's internal message into one a user can act on."""
    message = str(error)
    too_high = _TOO_HIGH.search(message)
    if too_high:
        return TokenizerError(
            _(
                "{path} is too small for a vocabulary of {requested} pieces: the largest size that works is "
                "{largest}. Pass --vocab-size {largest} or --vocab-size auto, or add more text"
            ).format(path=input_path, requested=vocab_size, largest=too_high.group(2))
        )
    too_low = _TOO_LOW.search(message)
    if too_low:
        return TokenizerError(
            _(
                "a vocabulary of {requested} pieces cannot hold the bytes, special tokens and characters of "
                "{path}: use at least --vocab-size {smallest}, or lower --character-coverage"
            ).format(path=input_path, requested=vocab_size, smallest=too_low.group(2))
        )
    return TokenizerError(
        _("tokenizer training on {path} failed (SentencePiece: {detail})").format(path=input_path, detail=message)
    )


def _vocab_listing(model_bytes: bytes) -> bytes:
    """Return the pieces in SentencePiece's ``.vocab`` layout (piece, tab, score), with newline and tab escaped."""
    processor = sentencepiece.SentencePieceProcessor()
    processor.load_from_serialized_proto(model_bytes)
    lines = []
    for token_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(token_id).replace("\n", "\\n").replace("\t", "\\t")
        lines.append(f"{piece}\t{processor.get_score(token_id):g}\n")
    return "".join(lines).encode("utf-8")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600, but these files are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
