"""JSON Lines: one JSON object per line, its ``text`` string being one message. Blank lines are skipped."""

import json

from cellmind.errors import InputFormatError
from cellmind.exports.source import SourceLines, quote
from cellmind.exports.table import MESSAGE, RecordTable
from cellmind.i18n import _


def parse(source: SourceLines) -> RecordTable:
    """Read each line's ``text``; raise InputFormatError naming the first line that is not such an object."""
    table = RecordTable()
    for index, line in enumerate(source.lines):
        if line.strip():
            table.add(None, "", _read_text(source, index, line), MESSAGE)
    return table


def _read_text(source: SourceLines, index: int, line: str) -> str:
    path, line_number = source.locate(index)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputFormatError(
            _('{path}, line {line}: invalid JSON ({error}). Each line must be a JSON object with a "text" string.').format(
                path=path, line=line_number, error=error.msg
            )
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InputFormatError(
            _('{path}, line {line}: no "text" string in {quoted}. Each line must be a JSON object with a "text" string.').format(
                path=path, line=line_number, quoted=quote(line)
            )
        )
    return record["text"]
