"""Choosing a file's format from its content, once per file.

Rules, in order, looking at the decoded lines:

1. The first line with text is a JSON object, or starts with ``{`` in a ``.jsonl``/``.json`` file: JSON Lines
   (``jsonl``). A broken line after it is then an error naming it.
2. The first line with text is a ``Date,User,Message`` header: a KakaoTalk CSV export (``pc_csv``).
3. Among the first ``SCAN_LINES`` lines, the first one that is a record of a TXT layout (Windows PC, Android,
   iOS) decides the layout. With no record there, the first date line or saved-date line that only one layout
   writes decides. The parser then reads the whole file in that layout and raises an error quoting the first
   line that it cannot read, so a KakaoTalk file with a broken line is an error, never plain text.
4. A KakaoTalk title or saved-date line in those lines, with nothing that names a layout, is an error quoting the
   first line after the header.
5. A ``.csv``, ``.json`` or ``.jsonl`` file that reached this point is an error: its name promises a structure
   that its content does not have.
6. Anything else is plain text (``plain_txt``), one message per line.

The rules never look at more than ``SCAN_LINES`` lines, because every KakaoTalk export has a record or a date line
within its first few lines.
"""

import json
from pathlib import Path

from cellmind.exports import android_txt, csv_export, ios_txt, pc_txt
from cellmind.exports.source import SourceLines
from cellmind.exports.text_layout import SAVED_DATE, TITLE, TextLayout, header_length

SCAN_LINES = 200
TEXT_LAYOUTS = (pc_txt.LAYOUT, android_txt.LAYOUT, ios_txt.LAYOUT)
STRUCTURED_SUFFIXES = frozenset({".csv", ".json", ".jsonl"})


def detect_format(path: Path, lines: list[str]) -> str:
    """Return the format name of a file's lines, or raise InputFormatError when no reader fits them."""
    first = next((index for index, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return "plain_txt"
    if _starts_json_lines(path, lines[first]):
        return "jsonl"
    if csv_export.is_header(lines[first]):
        return "pc_csv"

    scanned = lines[:SCAN_LINES]
    layout = find_text_layout(scanned)
    if layout is not None:
        return layout.format

    source = SourceLines.of_file(path, lines)
    if any(TITLE.fullmatch(line) or SAVED_DATE.match(line) for line in scanned):
        index = min(header_length(lines), len(lines) - 1)
        raise source.unparsed_line_error(index, "kakaotalk")
    if path.suffix.lower() in STRUCTURED_SUFFIXES:
        raise source.unparsed_line_error(first, "structured")
    return "plain_txt"


def _starts_json_lines(path: Path, line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    if path.suffix.lower() in STRUCTURED_SUFFIXES:
        return True
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def find_text_layout(lines: list[str]) -> TextLayout | None:
    """Return the layout of the first record line, else of the first date or saved-date line, else None."""
    fallback: TextLayout | None = None
    for line in lines:
        for layout in TEXT_LAYOUTS:
            if any(signature.fullmatch(line) for signature in layout.record_signatures):
                return layout
            if fallback is None and any(signature.fullmatch(line) for signature in layout.other_signatures):
                fallback = layout
    return fallback
