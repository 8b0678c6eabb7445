"""The lines a parser reads, with the file and line number each one came from.

A chat split into several files (iOS ``-1.txt``, ``-2.txt`` ...) is parsed as one run of lines, so errors map a
position in that run back to the part file and the line number inside it.
"""

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from cellmind.errors import InputFormatError
from cellmind.i18n import _

QUOTE_LIMIT = 120  # characters of an offending line shown in an error message


@dataclass
class SourceLines:
    lines: list[str] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)  # index in `lines` where each part begins
    _origins: list[tuple[Path, int]] = field(default_factory=list)  # (part file, its line number at that index)

    @classmethod
    def of_file(cls, path: Path, lines: list[str]) -> "SourceLines":
        source = cls()
        source.append(path, lines)
        return source

    @property
    def path(self) -> Path:
        return self._origins[0][0]

    def append(self, path: Path, lines: list[str], first_line_number: int = 1) -> None:
        """Add one part's lines; ``first_line_number`` is the number of the first of them in that file."""
        self._starts.append(len(self.lines))
        self._origins.append((path, first_line_number))
        self.lines.extend(lines)

    def locate(self, index: int) -> tuple[Path, int]:
        """Return the file and the 1-based line number of ``lines[index]``."""
        part = bisect_right(self._starts, index) - 1
        path, first_line_number = self._origins[part]
        return path, first_line_number + index - self._starts[part]

    def unparsed_line_error(self, index: int, export_format: str, reason: str = "") -> InputFormatError:
        """Build the error for a line the format cannot read, quoting the line and naming its file and number."""
        path, line_number = self.locate(index)
        message = _("{path}, line {line}: cannot read this line as {layout}: {quoted}.").format(
            path=path, line=line_number, layout=format_label(export_format), quoted=quote(self.lines[index])
        )
        if reason:
            message += " " + reason
        message += " " + _("Fix or remove the line, or export the chat again from KakaoTalk.")
        return InputFormatError(message)


def format_label(export_format: str) -> str:
    """Name a format in messages; a function so that the text is translated when the message is built."""
    labels = {
        "pc_csv": _("a KakaoTalk CSV export"),
        "pc_txt": _("a Windows PC TXT export"),
        "android_txt": _("an Android TXT export"),
        "ios_txt": _("an iOS TXT export"),
        "kakaotalk": _("a KakaoTalk export"),
        "structured": _("a KakaoTalk CSV export (header Date,User,Message) or JSON Lines"),
    }
    return labels[export_format]


def quote(line: str) -> str:
    """Quote a line for an error message: Python's repr, so control characters show, cut after QUOTE_LIMIT."""
    if len(line) > QUOTE_LIMIT:
        return repr(line[:QUOTE_LIMIT]) + "…"
    return repr(line)
