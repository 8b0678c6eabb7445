"""Reading export files and folders into ``ChatExport`` objects.

Folders are read recursively in sorted order, skipping hidden files and folders (``.DS_Store``, ``__MACOSX/._*``
copies) and files whose extension no export has (photos and videos saved with an export, notes such as
``README.md``); a file named on the command line is always read, whatever its extension. The parts of an iOS export split into ``NAME-1.txt``, ``NAME-2.txt`` ... in one folder become one chat:
their lines are joined in part order, without the header of the later parts, so a message cut at a part boundary
stays whole. Parts merge only when they are numbered 1 to N without gaps and part 1 is an iOS export.
"""

import logging
import re
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from cellmind.errors import MissingFileError
from cellmind.exports import android_txt, csv_export, ios_txt, jsonl, pc_txt, plain
from cellmind.exports.decoding import read_lines
from cellmind.exports.detect import detect_format
from cellmind.exports.source import SourceLines
from cellmind.exports.system import SELF_LABELS, names_in_system_text
from cellmind.exports.table import MESSAGE, SYSTEM, ChatExport, RecordTable
from cellmind.exports.text_layout import header_length, parse_text
from cellmind.i18n import _

logger = logging.getLogger(__name__)

PARSERS: dict[str, Callable[[SourceLines], RecordTable]] = {
    "pc_csv": csv_export.parse,
    "pc_txt": partial(parse_text, layout=pc_txt.LAYOUT),
    "android_txt": partial(parse_text, layout=android_txt.LAYOUT),
    "ios_txt": partial(parse_text, layout=ios_txt.LAYOUT),
    "plain_txt": plain.parse,
    "jsonl": jsonl.parse,
}
EXPORT_EXTENSIONS = frozenset({".txt", ".csv", ".jsonl"})
"""Extensions read from folders; a format is still detected from each file's content."""
SPLIT_PART = re.compile(r"(?P<stem>.+)-(?P<number>\d+)\.txt", re.IGNORECASE)


def read_export(path: str | Path) -> ChatExport:
    """Read one file; raise InputFormatError if it is empty, binary or in no layout that a reader supports."""
    path = Path(path)
    lines = read_lines(path)
    return _read_source(SourceLines.of_file(path, lines), detect_format(path, lines), (path,))


def read_exports(paths: Iterable[str | Path]) -> list[ChatExport]:
    """Read files and folders, joining split iOS parts; raise on the first file that cannot be read."""
    files = expand_inputs(paths)
    exports: list[ChatExport] = []
    consumed: set[Path] = set()
    groups = split_groups(files)
    for path in files:
        if path in consumed:
            continue
        group = groups.get(path)
        if group is None:
            exports.append(read_export(path))
            continue
        consumed.update(group)
        exports.extend(_read_split_group(group))
    return exports


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """List the files named or found under the folders named, in argument order then sorted, each once."""
    files: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = [child for child in sorted(path.rglob("*")) if child.is_file() and not _is_hidden(child, path)]
            skipped = [child for child in found if child.suffix.lower() not in EXPORT_EXTENSIONS]
            if skipped:
                logger.info(f"skipped {len(skipped)} file(s) under {path} with no export extension: {skipped[:5]}")
            files.update(dict.fromkeys(child for child in found if child.suffix.lower() in EXPORT_EXTENSIONS))
        elif path.is_file():
            files[path] = None
        else:
            raise MissingFileError(
                _("{path} does not exist. Pass KakaoTalk export files or folders that contain them.").format(path=path)
            )
    return list(files)


def split_groups(files: list[Path]) -> dict[Path, tuple[Path, ...]]:
    """Map each file of a complete ``-1.txt`` ... ``-N.txt`` set (N >= 2) to the set's files in part order."""
    candidates: dict[tuple[Path, str], dict[int, Path]] = {}
    for path in files:
        match = SPLIT_PART.fullmatch(path.name)
        if match:
            candidates.setdefault((path.parent, match["stem"]), {})[int(match["number"])] = path
    groups: dict[Path, tuple[Path, ...]] = {}
    for (_folder, stem), parts in candidates.items():
        numbers = sorted(parts)
        if len(numbers) < 2:
            continue
        if numbers != list(range(1, len(numbers) + 1)):
            logger.warning("Not joining %s-*.txt: parts %s are not numbered 1 to %d", stem, numbers, len(numbers))
            continue
        group = tuple(parts[number] for number in numbers)
        groups.update(dict.fromkeys(group, group))
    return groups


def _read_split_group(group: tuple[Path, ...]) -> list[ChatExport]:
    first_lines = read_lines(group[0])
    export_format = detect_format(group[0], first_lines)
    if export_format != "ios_txt":
        return [read_export(path) for path in group]
    source = SourceLines.of_file(group[0], first_lines)
    for path in group[1:]:
        lines = read_lines(path)
        skipped = header_length(lines) if lines else 0
        source.append(path, lines[skipped:], first_line_number=skipped + 1)
    logger.info("Joining %d parts of the split iOS export %s", len(group), group[0])
    return [_read_source(source, export_format, group)]


def _read_source(source: SourceLines, export_format: str, parts: tuple[Path, ...]) -> ChatExport:
    table = PARSERS[export_format](source).to_frame()
    senders = set(table.loc[table["kind"] == MESSAGE, "sender"].unique())
    system_names = {name for text in table.loc[table["kind"] == SYSTEM, "text"] for name in names_in_system_text(text)}
    labels = senders | system_names
    self_labels = frozenset(label for label in labels if _is_self_label(label))
    names = frozenset(label for label in labels if label and not _is_self_label(label))
    return ChatExport(
        path=parts[0], parts=parts, format=export_format, table=table, names=names, self_labels=self_labels
    )


def _is_self_label(label: str) -> bool:
    """``회원님`` is also seen cut to ``회원`` where a notice strips the honorific (``회원님이 들어왔습니다.``)."""
    return label in SELF_LABELS or label + "님" in SELF_LABELS


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
