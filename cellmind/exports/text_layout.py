"""The line loop shared by the TXT layouts (Windows PC, Android, iOS).

Each layout module supplies ``classify(line, day)``, which reads one line as a record start (``Record``), a date
line (its ``date``) or neither (``None``). This loop does the rest, the same way for every layout:

- Header: before the first record or date line, only blank lines, the title (the first line of text, when a title
  pattern matches it or a saved-date line follows it) and saved-date lines may appear. Any other line is an error.
- A line that is neither a record nor a date line continues the open record, so multi-line messages stay whole.
  Blank lines at the end of a record are dropped.
- A date line closes the open record. On Android it looks exactly like the next record's timestamp. When text
  follows a date line instead of a record, the "date line" was a line of the message before it, and is put back.
- Windows PC TXT writes system notices as bare lines with no timestamp (``bare_notices``). A bare line that states
  a whole known notice becomes a system row instead of gluing onto the message above it. After a system record,
  every layout does the same, because open chats print the policy line under the join notice.
- A bare line that starts with a full timestamp but has a broken separator after it (``near_miss``) is an error,
  and so is a date or time that does not exist. Both mean a broken line that a user should see, not text to glue
  onto a message.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from cellmind.exports.source import SourceLines
from cellmind.exports.system import is_notice
from cellmind.exports.table import MESSAGE, SYSTEM, RecordTable
from cellmind.i18n import _

SAVED_DATE = re.compile(r"(?:저장한 날짜|Date Saved) ?: ")
TITLE = re.compile(r".*님과 카카오톡 대화|KakaoTalk Chats with .*|.* with KakaoTalk Chats|Talk_.*\.txt")
HEADER_SCAN_LINES = 20  # a title is followed by its saved-date line within this many lines


# A record start as ``classify`` returns it: (timestamp, sender, text, kind). It is a plain tuple, not a
# NamedTuple, because building one per line is a measurable share of the parse time.
Record = tuple[datetime | None, str, str, str]

# ``classify(line, day)`` returns a Record, the ``date`` of a date line, or None for any other line. ``day`` is the
# date of the last date line, for layouts whose records carry only a time. It raises ValueError for a date or time
# that does not exist.
Classify = Callable[[str, "date | None"], "Record | date | None"]


@dataclass(frozen=True)
class TextLayout:
    format: str
    classify: Classify
    record_signatures: tuple[re.Pattern, ...]  # a line matching one of these is a record of this layout
    other_signatures: tuple[re.Pattern, ...]  # date lines and saved-date lines only this layout writes
    near_miss: re.Pattern
    bare_notices: bool = False


def split_sender(timestamp: datetime | None, rest: str) -> Record:
    """Split ``NAME : text`` at the first `` : `` (message bodies may contain more); no sender means a notice."""
    cut = rest.find(" : ")
    if cut >= 0:
        return (timestamp, rest[:cut], rest[cut + 3 :], MESSAGE)
    if rest.endswith(" :"):
        return (timestamp, rest[:-2], "", MESSAGE)
    return (timestamp, "", rest, SYSTEM)


def header_length(lines: list[str]) -> int:
    """Return how many leading lines are blank lines, the title and saved-date lines."""
    title_allowed = True
    for index, line in enumerate(lines):
        if not line.strip() or SAVED_DATE.match(line):
            continue
        if title_allowed and (TITLE.fullmatch(line) or _saved_date_follows(lines, index)):
            title_allowed = False
            continue
        return index
    return len(lines)


def parse_text(source: SourceLines, layout: TextLayout) -> RecordTable:
    """Read every line after the header into records; raise InputFormatError on the first broken line."""
    return _LineReader(source, layout).read()


class _LineReader:
    """The state of one pass over a file's lines: the table so far and the record that continuation lines extend."""

    def __init__(self, source: SourceLines, layout: TextLayout) -> None:
        self.source = source
        self.layout = layout
        self.table = RecordTable()
        self.open_kind: str | None = None  # kind of the open record; None before the first one and after a date line
        self.started = False  # whether a record or a date line has been read
        self.day_line: int | None = None  # index of the last date line, while no record has followed it

    def read(self) -> RecordTable:
        lines = self.source.lines
        classify = self.layout.classify
        table = self.table
        day: date | None = None
        for index in range(header_length(lines), len(lines)):
            try:
                parsed = classify(lines[index], day)
            except ValueError:
                raise self.source.unparsed_line_error(
                    index, self.layout.format, _("The date or time in it does not exist.")
                ) from None
            if parsed is None:
                self.read_bare_line(index)
            elif parsed.__class__ is tuple:
                table.add(*parsed)
                self.open_kind = parsed[3]
                self.day_line = None
            else:
                table.close()
                day = parsed
                self.open_kind = None
                self.day_line = index
            self.started = True
        return table

    def read_bare_line(self, index: int) -> None:
        """Place a line that is not a record start: continuation, notice, or an error."""
        line = self.source.lines[index]
        if not line.strip():
            if self.open_kind is not None:
                self.table.continue_text(line)
            return
        if not self.started or self.layout.near_miss.match(line):
            raise self.source.unparsed_line_error(index, self.layout.format)
        if (self.layout.bare_notices or self.open_kind == SYSTEM) and is_notice(line):
            timestamp = self.table.timestamps[-1] if self.open_kind == SYSTEM else None
            self.table.add(timestamp, "", line, SYSTEM)
            self.open_kind = SYSTEM
        elif self.open_kind is not None:
            self.table.continue_text(line)
        elif self.layout.bare_notices:
            # Right after a date line nothing can continue, so on Windows PC TXT this is a notice of a kind the
            # patterns do not know.
            self.table.add(None, "", line, SYSTEM)
            self.open_kind = SYSTEM
        elif self.day_line is not None and len(self.table):
            self.reopen_after_day_line(line)
        else:
            raise self.source.unparsed_line_error(index, self.layout.format)

    def reopen_after_day_line(self, line: str) -> None:
        """Treat the last "date line" as text of the record before it, because text follows it instead of a record.

        A message can contain a line such as ``2022년 10월 29일 토요일`` (a schedule); on Android and iOS a real
        date line is always followed by a record.
        """
        self.table.continue_text(self.source.lines[self.day_line])
        self.table.continue_text(line)
        self.open_kind = self.table.kinds[-1]
        self.day_line = None


def _saved_date_follows(lines: list[str], index: int) -> bool:
    for line in lines[index + 1 : index + 1 + HEADER_SCAN_LINES]:
        if line.strip():
            return SAVED_DATE.match(line) is not None
    return False
