"""From parsed chat exports to the training corpus: sessions, the validation split, the audit and the files.

A record is one conversation session: consecutive messages of one chat, cut where the chat was silent for
longer than the session gap, its messages in order joined with ``\\n``. A message without a timestamp never
cuts a session. With ``unit="message"`` every message is its own record. The validation split is the latest
records (by their last timestamp; records without any timestamp count as the oldest), not a random sample.

Files written under the output folder, all in one go after every input was read and cleaned, each atomically:

- ``for-model-training/train.jsonl`` and ``val.jsonl``: one ``{"text": ...}`` object per line, UTF-8
  (``ensure_ascii=False``), records in chat order (chats sorted by path) and time order within a chat.
- ``for-tokenizer-training/textonly.txt``: the training records only, one line per message line, because
  SentencePiece reads one sentence per line. Validation text stays out of the tokenizer too.

The same inputs give byte-identical files: nothing depends on the order of a set, the clock or randomness.
"""

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cellmind.cleaning import CleaningReport, NameMatcher, clean_table
from cellmind.errors import CellMindError, MissingFileError
from cellmind.i18n import _

logger = logging.getLogger(__name__)

TEXTONLY_PATH = Path("for-tokenizer-training/textonly.txt")
TRAIN_PATH = Path("for-model-training/train.jsonl")
VAL_PATH = Path("for-model-training/val.jsonl")
UNITS = ("session", "message")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.I)
_DURATION_UNITS = {"s": "s", "sec": "s", "m": "min", "min": "min", "h": "h", "hr": "h", "d": "D"}


@dataclass(frozen=True)
class PreparedCorpus:
    """Cleaned records ready to write, and what cleaning did to get them."""

    train: list[str]
    val: list[str]
    report: CleaningReport


def parse_duration(text: str) -> pd.Timedelta:
    """Parse a session gap such as ``30m``, ``90s``, ``1.5h`` or ``2d``; a bare number is minutes."""
    match = _DURATION.match(str(text))
    if match is None:
        raise CellMindError(
            _("invalid duration '{value}'; write a number with s, m, h or d, e.g. 30m").format(value=text)
        )
    unit = _DURATION_UNITS[(match.group(2) or "m").lower()]
    return pd.Timedelta(float(match.group(1)), unit=unit)


def read_names_file(path: str | Path) -> list[str]:
    """Read extra names to anonymize, one per line (UTF-8); blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MissingFileError(
            _("names file not found: {path}; pass a UTF-8 text file with one name per line").format(path=path)
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CellMindError(
            _("cannot read names file {path}: {error}; save it as UTF-8 text with one name per line").format(
                path=path, error=error
            )
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def session_ids(messages: pd.DataFrame, session_gap: pd.Timedelta) -> pd.Series:
    """Number the sessions of ``messages`` (columns ``chat``, ``timestamp``, in order) from 0."""
    chat = messages["chat"]
    timestamps = messages["timestamp"].groupby(chat).ffill()
    silence = timestamps - timestamps.groupby(chat).shift()
    starts = (chat != chat.shift()) | (silence > session_gap)
    return starts.cumsum() - 1


def build_records(messages: pd.DataFrame, session_gap: pd.Timedelta, unit: str = "session") -> pd.DataFrame:
    """Group cleaned messages into records: a DataFrame with ``chat``, ``text`` and ``end`` (last timestamp)."""
    if unit not in UNITS:
        raise CellMindError(_("invalid unit '{unit}'; use session or message").format(unit=unit))
    if unit == "message":
        records = messages[["chat", "text", "timestamp"]].rename(columns={"timestamp": "end"})
        return records.reset_index(drop=True)
    grouped = messages.groupby(session_ids(messages, session_gap), sort=True)
    return pd.DataFrame(
        {
            "chat": grouped["chat"].first(),
            "text": grouped["text"].agg("\n".join),
            "end": grouped["timestamp"].max(),
        }
    ).reset_index(drop=True)


def validation_size(n_records: int, val_fraction: float) -> int:
    """Records for validation: ``floor(n * fraction)``, at least 1 when there are 2 or more and fraction > 0."""
    if val_fraction <= 0 or n_records < 2:
        return 0
    return min(n_records - 1, max(1, math.floor(n_records * val_fraction)))


def split_validation(records: pd.DataFrame, val_fraction: float) -> tuple[list[str], list[str]]:
    """Split records into (train, val): val is the latest records, both lists keep the records' order."""
    n_val = validation_size(len(records), val_fraction)
    by_time = records.assign(position=range(len(records))).sort_values(
        ["end", "chat", "position"], na_position="first", kind="stable"
    )
    is_val = pd.Series(False, index=records.index)
    is_val[by_time.index[len(by_time) - n_val :]] = True
    return records.loc[~is_val, "text"].tolist(), records.loc[is_val, "text"].tolist()


def prepare_corpus(
    exports: Iterable,
    extra_names: Iterable[str] = (),
    session_gap: pd.Timedelta = pd.Timedelta(minutes=30),
    unit: str = "session",
    val_fraction: float = 0.05,
    progress: Callable[[int], None] | None = None,
) -> PreparedCorpus:
    """Clean every chat with the names of all chats, build records, split them and audit the result.

    ``exports`` are ``cellmind.exports.ChatExport`` objects; they are processed in sorted path order. The
    names of every chat are replaced in every chat, because people are mentioned outside their own chats.
    """
    exports = sorted(exports, key=lambda export: str(export.path))
    names = set(extra_names)
    for export in exports:
        names |= set(export.names)
    matcher = NameMatcher(names)

    tables = [export.table.assign(chat=index) for index, export in enumerate(exports)]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {"timestamp": pd.Series(dtype="datetime64[ns]"), "sender": [], "text": [], "kind": [], "chat": []}
    )
    messages, report = clean_table(table, matcher, progress=progress)
    records = build_records(messages, session_gap, unit)
    if records.empty:
        raise CellMindError(
            _(
                "no trainable messages in the inputs: {rows} rows read, all dropped ({reasons}); "
                "check that the inputs are chat exports"
            ).format(rows=len(table), reasons=", ".join(f"{k}: {v}" for k, v in report.dropped.items()) or "-")
        )
    train, val = split_validation(records, val_fraction)

    report.surviving_names = matcher.find(pd.Series(train + val, dtype=object))
    if report.surviving_names:
        logger.warning(f"names found in the cleaned corpus: {report.surviving_names}")
    return PreparedCorpus(train=train, val=val, report=report)


def render_jsonl(records: list[str]) -> str:
    return "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in records)


def render_textonly(records: list[str]) -> str:
    return "".join(line + "\n" for text in records for line in text.split("\n") if line)


def write_corpus(corpus: PreparedCorpus, output_dir: str | Path) -> list[Path]:
    """Write the three corpus files under ``output_dir`` atomically; return their paths."""
    output_dir = Path(output_dir)
    contents = {
        output_dir / TEXTONLY_PATH: render_textonly(corpus.train),
        output_dir / TRAIN_PATH: render_jsonl(corpus.train),
        output_dir / VAL_PATH: render_jsonl(corpus.val),
    }
    for path, text in contents.items():
        write_atomically(path, text.encode("utf-8"))
    return list(contents)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
