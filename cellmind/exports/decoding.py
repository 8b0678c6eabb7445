"""Turning an export file's bytes into lines of text.

Encodings, in order: UTF-16 when the file starts with its byte-order mark (Excel's "Unicode Text"); UTF-8, with
or without a BOM (every KakaoTalk export); CP949, which is what Excel on Korean Windows writes when a user re-saves
an export. A file with a NUL byte, or one that is neither UTF-8 nor CP949, is binary.

Lines are split on ``"\\n"`` after ``"\\r\\n"`` and then a lone ``"\\r"`` (old Mac line ends) become ``"\\n"``,
never with ``str.splitlines()``: that method also breaks at U+2028, U+0085 and other characters that occur inside
real messages.
"""

from pathlib import Path

from cellmind.errors import InputFormatError
from cellmind.i18n import _

UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def decode_bytes(path: Path, data: bytes) -> str:
    """Decode a whole export file, raising InputFormatError for an empty or binary one."""
    if data.startswith(UTF16_BOMS):
        text = _decode_utf16(path, data)
    elif b"\x00" in data:
        raise binary_file_error(path)
    else:
        text = _decode_utf8_or_cp949(path, data)
    if not text.strip():
        raise InputFormatError(
            _("{path} is empty (no text in it). Export the chat again from KakaoTalk, or remove the file from the inputs.").format(
                path=path
            )
        )
    return text


def split_lines(text: str) -> list[str]:
    """Split on line feeds after turning CRLF and lone CR into LF; a final line break adds no empty last line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_lines(path: Path) -> list[str]:
    """Read, decode and split one file."""
    return split_lines(decode_bytes(path, path.read_bytes()))


def binary_file_error(path: Path) -> InputFormatError:
    return InputFormatError(
        _(
            "{path} is a binary file, not text (it contains NUL bytes or is neither UTF-8 nor CP949). "
            "Pass KakaoTalk TXT or CSV exports, plain .txt files or .jsonl files, and move other files out of the inputs."
        ).format(path=path)
    )


def _decode_utf16(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-16")
    except UnicodeDecodeError as error:
        raise binary_file_error(path) from error


def _decode_utf8_or_cp949(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp949")
    except UnicodeDecodeError as error:
        raise binary_file_error(path) from error
