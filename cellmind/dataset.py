"""Training data from the prepared JSONL: padded record batches, and a packed token file sampled in windows.

Each line of ``train.jsonl`` / ``val.jsonl`` is ``{"text": ...}``, one conversation session. A record becomes
``<|start|> ids <|endoftext|>``.

- :class:`TextDataset` keeps whole records (cut to ``block_size + 1`` tokens) for small corpora and tests.
  Its :func:`collate_fn` pads a batch and masks only the pad positions in the targets.
- For real corpora, :func:`ensure_token_file` tokenizes the JSONL once into ``train.tokens.bin``: every record's
  ids back to back as uint16, read through ``np.memmap`` so memory stays flat whatever the corpus size.
  ``train.tokens.idx`` contains the record offsets (int64, one more than the record count) and
  ``train.tokens.json`` the header: tokenizer SHA-256, vocabulary size, token count and the JSONL's SHA-256.
  A file built from another tokenizer or another JSONL is rebuilt. :class:`TokenWindows` samples fixed-length
  windows from it, with a random generator seeded per peer::

      tokenizer = load_tokenizer(config.tokenizer.model_path)
      windows = TokenWindows(ensure_token_file(config.training.dataset_path, tokenizer), seq_len=256, seed=7)
      x, y = windows.get_batch(batch_size=8)  # (B, T) int64 each, y is x shifted by one token
      val_file = ensure_token_file(config.training.val_path, tokenizer)
      for x, y in iter_eval_batches(val_file, seq_len=256, batch_size=8, max_batches=20):
          ...  # the same windows on every call, for comparable validation losses
"""

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from cellmind.errors import InputFormatError, MissingFileError, TokenizerError
from cellmind.i18n import _
from cellmind.progress import progress_bar
from cellmind.tokenizer import MAX_VOCAB_SIZE, Tokenizer, file_sha256

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Target value that ``torch.nn.functional.cross_entropy`` skips."""
TOKEN_DTYPE = np.uint16
OFFSET_DTYPE = np.int64
TOKEN_FILE_FORMAT = "cellmind-tokens"
TOKEN_FILE_VERSION = 1

ENCODE_BATCH_BYTES = 1 << 16
"""JSONL bytes encoded per SentencePiece call while building a token file."""
WRITE_CHUNK_TOKENS = 1 << 16
"""Tokens buffered before they are appended to the token file."""


def read_jsonl_texts(path: str | Path) -> Iterator[str]:
    """Yield the ``text`` of each record of a JSONL file, skipping blank lines."""
    for _line_number, text, _raw in _iter_jsonl(Path(path)):
        if text is not None:
            yield text


def _iter_jsonl(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    """Yield (line number, text, raw line bytes), with text None for a blank line.

    A bad record raises InputFormatError naming its line.
    """
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise MissingFileError(
            _("training data not found: {path}; run `cellmind prepare` first").format(path=path)
        ) from None
    with file:
        for line_number, raw in enumerate(file, start=1):
            if raw.strip():
                yield line_number, _parse_record(raw, path, line_number), raw
            else:
                yield line_number, None, raw


def _parse_record(raw: bytes, path: Path, line_number: int) -> str:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputFormatError(
            _("{path}, line {line}: not a JSON record ({error}); run `cellmind prepare` again").format(
                path=path, line=line_number, error=error
            )
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InputFormatError(
            _('{path}, line {line}: expected an object with a "text" string; run `cellmind prepare` again').format(
                path=path, line=line_number
            )
        )
    return record["text"]


def encode_record(tokenizer: Tokenizer, text: str) -> list[int]:
    """Return ``<|start|> ids <|endoftext|>`` for one record."""
    return [tokenizer.start_id, *tokenizer.encode(text), tokenizer.eos_id]


class TextDataset(torch.utils.data.Dataset):
    """Whole records of a JSONL file, each cut to ``block_size + 1`` tokens. Items are (input ids, targets).

    The corpus is tokenized into memory when the dataset is built, so use :class:`TokenWindows` for large corpora.
    """

    def __init__(self, jsonl_path: str | Path, tokenizer: Tokenizer, block_size: int):
        self.path = Path(jsonl_path)
        self.pad_id = tokenizer.pad_id
        self.block_size = block_size
        self.records = [
            torch.tensor(encode_record(tokenizer, text)[: block_size + 1], dtype=torch.long)
            for text in read_jsonl_texts(self.path)
        ]
        if not self.records:
            raise InputFormatError(
                _("{path} contains no records; run `cellmind prepare` first").format(path=self.path)
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.records[index]
        return ids[:-1], ids[1:]

    @property
    def collate_fn(self) -> functools.partial:
        """:func:`collate_fn` bound to this tokenizer's pad id, for ``DataLoader(collate_fn=...)``."""
        return functools.partial(collate_fn, pad_id=self.pad_id)


def collate_fn(batch: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (input ids, targets) pairs of different lengths into (B, T) tensors, padded on the right.

    Inputs are padded with ``pad_id``. Targets are padded with :data:`IGNORE_INDEX`, so the loss skips exactly
    the pad positions and a real ``<|endoftext|>`` stays a target.
    """
    length = max(len(x) for x, _y in batch)
    inputs = torch.full((len(batch), length), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        inputs[row, : len(x)] = x
        targets[row, : len(y)] = y
    return inputs, targets


@dataclass(frozen=True)
class TokenFile:
    """A packed token file opened read-only, with ``tokens`` and ``offsets`` memory-mapped rather than loaded."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray
    header: dict[str, Any]

    @property
    def token_count(self) -> int:
        return len(self.tokens)

    @property
    def record_count(self) -> int:
        return len(self.offsets) - 1

    @property
    def vocab_size(self) -> int:
        return self.header["vocab_size"]

    @property
    def tokenizer_sha256(self) -> str:
        return self.header["tokenizer_sha256"]

    def record(self, index: int) -> np.ndarray:
        """Return the ids of one record, ``<|start|>`` and ``<|endoftext|>`` included."""
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

    @classmethod
    def open(cls, path: str | Path) -> "TokenFile":
        """Open a token file written by :func:`build_token_file`, or raise InputFormatError if it is incomplete."""
        path = Path(path)
        header = _read_header(path)
        problem = _layout_problem(path, header)
        if problem:
            raise InputFormatError(
                _("{path} is incomplete ({problem}); delete it, and the next run rebuilds it").format(
                    path=path, problem=problem
                )
            )
        tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
        offsets = np.memmap(_index_path(path), dtype=OFFSET_DTYPE, mode="r")
        return cls(path, tokens, offsets, header)


def _index_path(token_path: Path) -> Path:
    return token_path.with_suffix(".idx")


def _header_path(token_path: Path) -> Path:
    return token_path.with_suffix(".json")


def token_file_path(jsonl_path: str | Path) -> Path:
    """Return where the token file of a JSONL file lives: ``train.jsonl`` -> ``train.tokens.bin``."""
    return Path(jsonl_path).with_suffix(".tokens.bin")


def _read_header(token_path: Path) -> dict[str, Any] | None:
    try:
        header = json.loads(_header_path(token_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _layout_problem(token_path: Path, header: dict[str, Any] | None) -> str | None:
    """Return why the three files do not form a complete token file, or None if they do."""
    if header is None:
        return "no readable header " + _header_path(token_path).name
    if header.get("format") != TOKEN_FILE_FORMAT or header.get("version") != TOKEN_FILE_VERSION:
        return f"format {header.get('format')} version {header.get('version')}"
    expected_sizes = {
        token_path: header.get("token_count", -1) * np.dtype(TOKEN_DTYPE).itemsize,
        _index_path(token_path): (header.get("record_count", -1) + 1) * np.dtype(OFFSET_DTYPE).itemsize,
    }
    for path, expected in expected_sizes.items():
        size = path.stat().st_size if path.exists() else None
        if size != expected:
            return f"{path.name} has {size} bytes instead of {expected}"
    return None


def build_token_file(
    jsonl_path: str | Path, tokenizer: Tokenizer, output_path: str | Path, show_progress: bool = True
) -> TokenFile:
    """Tokenize a JSONL file once into a packed uint16 token file, its record index and its header.

    The JSONL is read in batches of about :data:`ENCODE_BATCH_BYTES` and the tokens appended in chunks, so memory
    does not grow with the corpus. All three files are written to temporary names and renamed when complete.
    The old header is removed first, so an interrupted build is never mistaken for a finished one.
    A progress bar (JSONL bytes read) is drawn on stderr when it is a terminal and ``show_progress`` is set.
    """
    jsonl_path, output_path = Path(jsonl_path), Path(output_path)
    if tokenizer.vocab_size > MAX_VOCAB_SIZE:
        raise TokenizerError(
            _("{path} has {size} pieces, but the token file stores ids as uint16 (at most {limit} pieces); "
              "train a smaller tokenizer with --vocab-size").format(
                path=tokenizer.path, size=tokenizer.vocab_size, limit=MAX_VOCAB_SIZE
            )
        )
    if not jsonl_path.exists():
        raise MissingFileError(
            _("training data not found: {path}; run `cellmind prepare` first").format(path=jsonl_path)
        )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    _header_path(output_path).unlink(missing_ok=True)

    with _AtomicFile(output_path) as tokens_file, _AtomicFile(_index_path(output_path)) as index_file:
        summary = _write_tokens(jsonl_path, tokenizer, tokens_file, index_file, show_progress)
    if summary["record_count"] == 0:
        raise InputFormatError(_("{path} contains no records; run `cellmind prepare` first").format(path=jsonl_path))

    header = {
        "format": TOKEN_FILE_FORMAT,
        "version": TOKEN_FILE_VERSION,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": tokenizer.sha256,
        **summary,
    }
    with _AtomicFile(_header_path(output_path)) as header_file:
        header_file.write(json.dumps(header, indent=2).encode("utf-8") + b"\n")
    logger.info(f"wrote {output_path}: {summary['token_count']} tokens in {summary['record_count']} records")
    return TokenFile.open(output_path)


def _write_tokens(
    jsonl_path: Path, tokenizer: Tokenizer, tokens_file: BinaryIO, index_file: BinaryIO, show_progress: bool
) -> dict[str, Any]:
    """Stream the records' tokens and offsets into the open files. Return the counts and the JSONL's digest."""
    source_digest = hashlib.sha256()
    token_count = record_count = 0
    pending_tokens: list[np.ndarray] = []
    pending_offsets: list[int] = [0]
    progress = progress_bar(
        total=jsonl_path.stat().st_size, unit="B",
        description=_("tokenizing {name}").format(name=jsonl_path.name), enabled=show_progress,
    )
    with progress:
        for raw_lines, texts in _iter_text_batches(jsonl_path):
            for ids in tokenizer.encode_batch(texts):
                record = np.array([tokenizer.start_id, *ids, tokenizer.eos_id], dtype=TOKEN_DTYPE)
                pending_tokens.append(record)
                token_count += len(record)
                pending_offsets.append(token_count)
            record_count += len(texts)
            if token_count - pending_offsets[0] >= WRITE_CHUNK_TOKENS:
                _flush(tokens_file, index_file, pending_tokens, pending_offsets)
            for raw in raw_lines:
                source_digest.update(raw)
            progress.update(sum(len(raw) for raw in raw_lines))
        _flush(tokens_file, index_file, pending_tokens, pending_offsets)
        index_file.write(np.array(pending_offsets, dtype=OFFSET_DTYPE).tobytes())
    return {
        "token_count": token_count,
        "record_count": record_count,
        "source": jsonl_path.name,
        "source_size": jsonl_path.stat().st_size,
        "source_sha256": source_digest.hexdigest(),
    }


def _iter_text_batches(jsonl_path: Path) -> Iterator[tuple[list[bytes], list[str]]]:
    """Yield (raw lines, texts) in batches of about ENCODE_BATCH_BYTES. Blank lines appear in the raw lines only."""
    raw_lines: list[bytes] = []
    texts: list[str] = []
    size = 0
    for _line_number, text, raw in _iter_jsonl(jsonl_path):
        raw_lines.append(raw)
        if text is not None:
            texts.append(text)
        size += len(raw)
        if size >= ENCODE_BATCH_BYTES:
            yield raw_lines, texts
            raw_lines, texts, size = [], [], 0
    if raw_lines:
        yield raw_lines, texts


def _flush(tokens_file: BinaryIO, index_file: BinaryIO, tokens: list[np.ndarray], offsets: list[int]) -> None:
    """Append the pending tokens and all offsets but the last, which starts the next chunk, then drop them."""
    if tokens:
        tokens_file.write(np.concatenate(tokens).tobytes())
    index_file.write(np.array(offsets[:-1], dtype=OFFSET_DTYPE).tobytes())
    tokens.clear()
    del offsets[:-1]


class _AtomicFile:
    """A binary file written under a temporary name and renamed over ``path`` only if the block succeeds."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> BinaryIO:
        descriptor, self.temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        self.file = os.fdopen(descriptor, "wb")
        return self.file

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if error_type is None:
                os.chmod(self.temporary, 0o644)  # mkstemp creates 0600, but peers may share these files
                os.replace(self.temporary, self.path)
        finally:
            Path(self.temporary).unlink(missing_ok=True)


def ensure_token_file(jsonl_path: str | Path, tokenizer: Tokenizer, show_progress: bool = True) -> TokenFile:
    """Open the token file next to ``jsonl_path`` if it matches the JSONL and the tokenizer, or rebuild it."""
    jsonl_path = Path(jsonl_path)
    token_path = token_file_path(jsonl_path)
    stale_reason = _stale_reason(jsonl_path, token_path, tokenizer)
    if stale_reason is None:
        return TokenFile.open(token_path)
    logger.info(f"building {token_path} because {stale_reason}")
    return build_token_file(jsonl_path, tokenizer, token_path, show_progress=show_progress)


def _stale_reason(jsonl_path: Path, token_path: Path, tokenizer: Tokenizer) -> str | None:
    """Return why the token file cannot be reused, or None if it matches the JSONL and the tokenizer."""
    header = _read_header(token_path)
    problem = _layout_problem(token_path, header)
    if problem:
        return problem
    if header["tokenizer_sha256"] != tokenizer.sha256:
        return f"it was built with another tokenizer (sha256 {header['tokenizer_sha256'][:12]})"
    if not jsonl_path.exists():
        raise MissingFileError(
            _("training data not found: {path}; run `cellmind prepare` first").format(path=jsonl_path)
        )
    if header.get("source_size") != jsonl_path.stat().st_size or header.get("source_sha256") != file_sha256(jsonl_path):
        return f"{jsonl_path.name} changed since it was built"
    return None




class TokenWindows:
    """Fixed-length windows of a token file: random ones for training, consecutive ones for evaluation.

    A window of ``seq_len`` inputs reads ``seq_len + 1`` tokens, the targets being the inputs shifted by one.
    Windows cross record boundaries, where ``<|endoftext|> <|start|>`` separates the records.
    ``seed`` seeds this object's own random generator. Give each peer its own seed, so that peers draw different
    windows while the model's initialization stays the same everywhere.
    """

    def __init__(self, token_file: TokenFile, seq_len: int, seed: int):
        if token_file.token_count < seq_len + 1:
            raise InputFormatError(
                _("{path} has {count} tokens, fewer than one window of {needed} (seq_len + 1); "
                  "lower training.seq_len or add data").format(
                    path=token_file.path, count=token_file.token_count, needed=seq_len + 1
                )
            )
        self.token_file = token_file
        self.seq_len = seq_len
        self.rng = np.random.default_rng(seed)

    @property
    def epoch_size(self) -> int:
        """Windows in one pass over the data (tokens // seq_len), to count passes of random sampling."""
        return self.token_file.token_count // self.seq_len

    def get_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, y), each (batch_size, seq_len) int64, from windows starting at uniformly random tokens."""
        starts = self.rng.integers(0, self.token_file.token_count - self.seq_len, size=batch_size)
        return self._windows(starts)

    def iter_eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Return :func:`iter_eval_batches` over this token file, which leaves the random generator untouched."""
        return iter_eval_batches(self.token_file, self.seq_len, batch_size, max_batches)

    def _windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _read_windows(self.token_file.tokens, starts, self.seq_len)


def iter_eval_batches(
    token_file: TokenFile, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches of consecutive, non-overlapping windows from the first token on.

    Every call yields the same batches, at most ``max_batches`` of them. A file shorter than one window gives a
    single window of all its tokens (``T = token_count - 1``), so that a small validation set still has a loss.
    """
    seq_len = min(seq_len, token_file.token_count - 1)
    window_count = (token_file.token_count - 1) // seq_len
    starts = np.arange(window_count, dtype=np.int64) * seq_len
    for batch_index, first in enumerate(range(0, window_count, batch_size)):
        if max_batches is not None and batch_index >= max_batches:
            return
        yield _read_windows(token_file.tokens, starts[first : first + batch_size], seq_len)


def _read_windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x, y), each (len(starts), seq_len) int64: the tokens from each start and the ones after them."""
    positions = starts[:, None] + np.arange(seq_len + 1)  # (B, T + 1)
    window = torch.from_numpy(tokens[positions].astype(np.int64))
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()
