"""The join line as a QR code in the terminal, so that a phone can scan it instead of typing a long multiaddr.

``cellmind-peer --bootstrap --qr`` prints it under the join line. Each character cell holds two modules, one
above the other (``█``, ``▀``, ``▄`` or a space), so the code is about half as tall as it is wide. Light modules
are drawn and dark ones left blank, as segno's compact terminal output does, which suits the usual dark terminal
background; a light terminal shows the code inverted, which most phone scanners still read.
"""

import io
import sys
from typing import TextIO

import segno

QUIET_ZONE = 2
"""Light modules around the code. The QR standard asks for 4; 2 is enough for phone scanners on a screen."""


def make_qr(text: str) -> segno.QRCode:
    """Encode ``text`` as a regular QR code (never a Micro QR, which many phone scanners cannot read)."""
    return segno.make(text, micro=False)


def render_qr(text: str) -> str:
    """Return the QR code of ``text`` as terminal lines of half-block characters, ending with a newline."""
    block = io.StringIO()
    make_qr(text).terminal(out=block, compact=True, border=QUIET_ZONE)
    return block.getvalue()


def print_qr(text: str, file: TextIO | None = None) -> None:
    """Print the QR code of ``text`` to ``file`` (default: stdout)."""
    file = sys.stdout if file is None else file
    file.write(render_qr(text))
    file.flush()
