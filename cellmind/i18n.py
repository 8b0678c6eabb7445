"""Localized user-facing text: Korean under a Korean locale, English otherwise.

Messages are written in English in the code, wrapped in ``_()``, and translated through the gettext catalog
``cellmind/locale/ko/LC_MESSAGES/cellmind.mo``, which the package build compiles from ``cellmind.po`` (see
``setup.py``). Logs meant for developers are not translated.

argparse's own strings (``usage:``, ``options``, ``show this help message and exit``, ``error: ... required``)
are in the same catalog. argparse translates them through its module globals ``argparse._`` and
``argparse.ngettext``, which it looks up each time it builds a message (CPython 3.10 to 3.13), so this module
points those two names at CellMind's translation once, at import (:func:`_bind_argparse`). That is the one
place where CellMind reaches into another module. It changes nothing while the language is English, because the
English "translation" returns every message unchanged.

``python -m cellmind.i18n_catalog`` lists the messages that still lack a Korean translation.
"""

import argparse
import gettext
import os
from pathlib import Path

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "cellmind"
SUPPORTED_LANGUAGES = ("ko", "en")

_translation: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def detect_language(environ: dict | None = None) -> str:
    """Return ``"ko"`` when the locale variables name Korean, else ``"en"``, in gettext's order of precedence."""
    environ = os.environ if environ is None else environ
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(variable)
        if value:
            return "ko" if value.split(":")[0].lower().startswith("ko") else "en"
    return "en"


def set_language(language: str | None = None) -> str:
    """Switch every later ``_()`` call to ``language`` (``ko``/``en``), or to the locale's language if None."""
    global _translation, _language
    language = language or detect_language()
    if language not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; expected one of {SUPPORTED_LANGUAGES}")
    _language = language
    _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)
    return _language


def current_language() -> str:
    return _language


def _(message: str) -> str:
    """Translate a user-facing message into the current language."""
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """Translate a message whose form depends on ``count`` (Korean has one form for every count)."""
    return _translation.ngettext(singular, plural, count)


def _bind_argparse() -> None:
    """Make argparse translate its usage, help and error strings through CellMind's catalog."""
    argparse._ = _
    argparse.ngettext = ngettext


_bind_argparse()
set_language()
