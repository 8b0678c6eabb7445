"""KakaoTalk CSV exports (the macOS app, and Windows "CSV 보내기"), also after Excel re-saved them.

    Date,User,Message
    2022-10-29 21:03:11,"김도담","김도담 invited 박한결 and."     notice in the Message column
    2022-10-29 21:06:12,"김도담","그럼 일요일 아침 8시            quoted multi-line message
    늦으면 커피 사기"
    ,"","메시지가 삭제되었습니다."                                notice: empty Date and User

A row is a system row when its Date or User is empty, or when its Message states a whole known notice. An
invite counts only when the inviter it names is the row's User, so a message such as "I invited Tom." stays a
message. Dates may also be in the shapes Excel writes when it re-saves the file (``2022-10-29 21:03``,
``2022-10-29 오후 9:03:11``, ``2022/10/29 21:03``).
"""

import csv
import io
import re
from datetime import datetime

from cellmind.exports.source import SourceLines
from cellmind.exports.system import match_notice
from cellmind.exports.table import MESSAGE, SYSTEM, RecordTable
from cellmind.exports.timestamps import make_timestamp
from cellmind.i18n import _

HEADER = ["date", "user", "message"]
FORMAT = "pc_csv"
DATE = re.compile(
    r"(\d{4})[-./] ?(\d{1,2})[-./] ?(\d{1,2})\.? (?:(오전|오후) )?(\d{1,2}):(\d{2})(?::(\d{2}))?(?: ?([AaPp][Mm]))?"
)


def is_header(line: str) -> bool:
    """Return whether a line is the ``Date,User,Message`` header, quoted or not, in any case."""
    try:
        fields = next(csv.reader([line]), [])
    except csv.Error:
        return False
    return [field.strip().lower() for field in _without_trailing_empty(fields)] == HEADER


def parse(source: SourceLines) -> RecordTable:
    """Read every row after the header; raise InputFormatError quoting the first line of a broken row."""
    table = RecordTable()
    reader = csv.reader(io.StringIO("\n".join(source.lines)), strict=True)
    row_start = 0
    try:
        for row in reader:
            if row_start > 0 and any(field.strip() for field in row):
                _add_row(source, table, row_start, row)
            row_start = reader.line_num
    except csv.Error as error:
        raise source.unparsed_line_error(row_start, FORMAT, _("CSV error: {error}.").format(error=error)) from None
    return table


def _add_row(source: SourceLines, table: RecordTable, index: int, row: list[str]) -> None:
    row = _without_trailing_empty(row)
    if len(row) != 3:
        reason = _("It has {count} fields, not the 3 of Date, User and Message.").format(count=len(row))
        raise source.unparsed_line_error(index, FORMAT, reason)
    date_text, user, text = row
    if not date_text.strip():
        table.add(None, "", text, SYSTEM)
        return
    timestamp = _parse_date(source, index, date_text)
    if not user or _states_notice(user, text):
        table.add(timestamp, "", text, SYSTEM)
    else:
        table.add(timestamp, user, text, MESSAGE)


def _parse_date(source: SourceLines, index: int, date_text: str) -> datetime:
    try:
        timestamp = datetime.fromisoformat(date_text)  # the exporter's own shape, parsed in C
        if timestamp.tzinfo is None:
            return timestamp
    except ValueError:
        pass
    match = DATE.fullmatch(date_text.strip())
    try:
        if match is None:
            raise ValueError(date_text)
        year, month, day, korean_meridiem, hour, minute, second, english_meridiem = match.groups()
        return make_timestamp(year, month, day, hour, minute, korean_meridiem or english_meridiem, second or "0")
    except ValueError:
        reason = _("The Date field {value!r} is not a date and time that exists.").format(value=date_text)
        raise source.unparsed_line_error(index, FORMAT, reason) from None


def _states_notice(user: str, text: str) -> bool:
    notice = match_notice(text)
    return notice is not None and (notice.actor is None or notice.actor == user)


def _without_trailing_empty(fields: list[str]) -> list[str]:
    """Drop empty fields past the third, which Excel adds when a user touched cells to the right."""
    fields = list(fields)
    while len(fields) > 3 and not fields[-1].strip():
        fields.pop()
    return fields
