"""Progress bars and spinners for the waits a user sits through, drawn on stderr only when it is a terminal.

    with progress_bar(total=size, description=_("tokenizing {name}").format(name=name), unit="B") as bar:
        for chunk in chunks:
            bar.update(len(chunk))

    with spinner(_("downloading the swarm's model")):
        optimizer.load_state_from_peers()

A bar (tqdm) is for work whose total is known; a spinner (rich) for a wait whose end is not. Both are off when
stderr is not a terminal (pipes, log files, CI, tests) or when ``CELLMIND_NO_PROGRESS`` is set, so that output
which is read later holds no carriage returns or escape codes. Descriptions are user-facing: pass them through
``_()``.
"""

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

DISABLE_VARIABLE = "CELLMIND_NO_PROGRESS"
FALLBACK_SIZE = (80, 24)
"""Columns and rows assumed on a terminal that reports no size (some serial consoles and ``script`` sessions)."""


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Return whether progress may be drawn on ``stream`` (default: stderr): a terminal, and not turned off."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get(DISABLE_VARIABLE):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def progress_bar(
    total: float | None = None, description: str = "", unit: str = "it", enabled: bool = True, **options
) -> tqdm:
    """Return a tqdm bar on stderr, disabled unless ``enabled`` and stderr is a terminal.

    ``unit="B"`` scales the numbers to kB/MB. A disabled bar still accepts ``update()``, ``reset()`` and
    ``set_description()``, so callers never branch on it. Use it as a context manager so it is closed.
    """
    known_size = _terminal_reports_size()
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=unit == "B",
        file=sys.stderr,
        disable=not (enabled and progress_enabled()),
        dynamic_ncols=known_size,
        ncols=None if known_size else FALLBACK_SIZE[0],
        nrows=None if known_size else FALLBACK_SIZE[1],
        leave=False,
        **options,
    )


def _terminal_reports_size() -> bool:
    """Whether stderr's terminal reports its size; tqdm draws nothing on one that reports 0 columns or rows."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


@contextlib.contextmanager
def spinner(description: str, enabled: bool = True) -> Iterator[None]:
    """Show ``description`` with a spinner on stderr while the block runs, unless disabled or not a terminal."""
    if not (enabled and progress_enabled()):
        yield
        return
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner

    # Unlike Console.status, leave stdout alone: it carries the program's real output (generated text, tables).
    live = Live(
        Spinner("dots", text=description),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=False,
        refresh_per_second=12.5,
    )
    with live:
        yield
