"""Plain text: one message per line, with no KakaoTalk structure (no sender, no time). Blank lines are skipped."""

from cellmind.exports.source import SourceLines
from cellmind.exports.table import MESSAGE, RecordTable


def parse(source: SourceLines) -> RecordTable:
    table = RecordTable()
    for line in source.lines:
        if line.strip():
            table.add(None, "", line, MESSAGE)
    return table
