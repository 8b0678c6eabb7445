"""Localized user-facing text: Korean under a Korean locale, English otherwise.

Messages are written in English in the code, wrapped in ``_()``, and translated through the gettext catalog
``cellmind/locale/ko/LC_MESSAGES/cellmind.mo``. Logs meant for developers are not translated.
"""

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
    _language = language or detect_language()
    if _language not in SUPPORTED_LANGUAGES:
        raise ValueError(f"unsupported language {_language!r}; expected one of {SUPPORTED_LANGUAGES}")
    _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=[_language], fallback=True)
    return _language


def current_language() -> str:
    return _language


def _(message: str) -> str:
    """Translate a user-facing message into the current language."""
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    return _translation.ngettext(singular, plural, count)


set_language()
