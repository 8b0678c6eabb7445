"""Keep the Korean catalog in step with the code: extract messages, merge them into the .po, compile the .mo.

    python -m cellmind.i18n_catalog            # list messages without a Korean translation; exit 1 if any
    python -m cellmind.i18n_catalog update     # add new messages to cellmind.po, drop unused ones, compile
    python -m cellmind.i18n_catalog compile    # only compile cellmind.po -> cellmind.mo

``make catalog`` runs ``update``. The messages are every ``_()`` and ``ngettext()`` call under ``cellmind/``
plus argparse's own strings (see :mod:`cellmind.i18n`). A translation must keep the message's placeholders
(``{name}``, ``{seconds:.0f}``, ``%(prog)s``, ``%s``) exactly. This is a developer tool: it needs Babel, a build
and test requirement of CellMind, not a run-time one.
"""

import argparse
import re
import string
import sys
from collections import Counter
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir, extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

import cellmind
from cellmind.i18n import DOMAIN, LOCALE_DIR

PACKAGE_DIR = Path(cellmind.__file__).parent
KEYWORDS = {"_": None, "ngettext": (1, 2)}
LANGUAGES = ("ko",)
PO_WIDTH = 120

# argparse strings of Python versions other than the one running the extraction, so that the catalog covers
# every version CellMind supports (3.10 and later).
OTHER_ARGPARSE_MESSAGES = (
    "show program's version number and exit",
    "argument '%(argument_name)s' is deprecated",
    "option '%(option)s' is deprecated",
    "command '%(parser_name)s' is deprecated",
    "invalid choice: %(value)r, maybe you meant %(closest)r? (choose from %(choices)s)",
    "ambiguous option: %(option)s could match %(matches)s",
    "expected one argument",
)

_PERCENT_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdirfgex%]")


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(language: str) -> Path:
    return po_path(language).with_suffix(".mo")


def extract_template() -> Catalog:
    """Return a catalog of every message CellMind shows: its own ``_()`` calls and argparse's strings."""
    template = Catalog(project="cellmind", version=cellmind.__version__)
    source = extract_from_dir(PACKAGE_DIR, method_map=[("**.py", "python")], keywords=KEYWORDS)
    for filename, lineno, message, comments, context in source:
        template.add(message, locations=[(f"cellmind/{filename}", lineno)], auto_comments=comments, context=context)
    argparse_file = Path(argparse.__file__)
    for lineno, message, _comments, _context in extract_from_file("python", argparse_file, keywords=KEYWORDS):
        if message not in template:
            template.add(message, locations=[("argparse.py", lineno)])
    for message in OTHER_ARGPARSE_MESSAGES:
        if message not in template:
            template.add(message, locations=[("argparse.py", 0)])
    return template


def read_catalog(path: Path, language: str) -> Catalog:
    if not path.exists():
        return Catalog(locale=language, project="cellmind", version=cellmind.__version__)
    with path.open("rb") as po_file:
        return read_po(po_file, locale=language)


def update_catalog(language: str) -> Catalog:
    """Merge the extracted messages into the language's .po (keeping translations), write it, and return it."""
    catalog = read_catalog(po_path(language), language)
    before = ({message.id for message in catalog}, catalog.creation_date)
    catalog.update(extract_template(), no_fuzzy_matching=True, update_header_comment=False)
    if {message.id for message in catalog} == before[0]:
        catalog.creation_date = before[1]  # no new or removed message: keep the file free of a date-only change
    catalog.msgid_bugs_address = ""
    catalog.last_translator = catalog.language_team = "CellMind developers"
    catalog.obsolete.clear()  # removed messages go; git history keeps their old translations
    write_catalog(catalog, po_path(language))
    return catalog


def write_catalog(catalog: Catalog, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as po_file:
        write_po(po_file, catalog, width=PO_WIDTH, include_lineno=False)


def compile_catalog(language: str) -> Path:
    """Compile the language's .po into the .mo that :mod:`cellmind.i18n` loads; return the .mo's path."""
    catalog = read_catalog(po_path(language), language)
    with mo_path(language).open("wb") as mo_file:
        write_mo(mo_file, catalog)
    return mo_path(language)


def placeholders(text: str) -> Counter:
    """Count the ``str.format`` fields (with their format spec) and the ``%``-style placeholders of ``text``."""
    found = Counter()
    try:
        for _literal, field, spec, conversion in string.Formatter().parse(text):
            if field is None:
                continue
            conversion = f"!{conversion}" if conversion else ""
            spec = f":{spec}" if spec else ""
            found["{" + field + conversion + spec + "}"] += 1
    except ValueError:
        found["<unbalanced braces>"] += 1
    for match in _PERCENT_PLACEHOLDER.findall(text):
        if match != "%%":
            found[match] += 1
    return found


def problems(catalog: Catalog, template: Catalog) -> list[str]:
    """Describe each extracted message that lacks a translation or whose translation changes its placeholders."""
    found = []
    for message in template:
        if not message.id:
            continue
        singular = message.id[0] if isinstance(message.id, tuple) else message.id
        translated = catalog.get(message.id)
        strings = translated.string if translated is not None else None
        strings = list(strings) if isinstance(strings, (tuple, list)) else [strings]
        where = ", ".join(f"{file}:{line}" for file, line in message.locations)
        if translated is None or not all(strings) or translated.fuzzy:
            found.append(f"missing: {singular!r} ({where})")
            continue
        for text in strings:
            if placeholders(text) != placeholders(singular):
                found.append(f"placeholders differ: {singular!r} -> {text!r} ({where})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellmind.i18n_catalog", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["check", "update", "compile"], default="check")
    args = parser.parse_args(argv)
    status = 0
    for language in LANGUAGES:
        if args.action == "update":
            update_catalog(language)
        if args.action in ("update", "compile"):
            print(f"compiled {compile_catalog(language)}")
        if args.action == "compile":
            continue
        listed = problems(read_catalog(po_path(language), language), extract_template())
        for line in listed:
            print(f"{language}: {line}")
        print(f"{language}: {len(listed)} problem(s) in {po_path(language)}")
        status = status or int(bool(listed))
    return status


if __name__ == "__main__":
    sys.exit(main())
