"""The table every reader returns, and the export object that carries it.

One row per record, in file order: ``timestamp`` (``datetime64[ns]``, NaT where the layout records no time),
``sender`` (``""`` for system rows), ``text`` (a multi-line message whole, its lines joined with ``"\\n"``) and
``kind`` (``"message"`` or ``"system"``).
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

COLUMNS = ("timestamp", "sender", "text", "kind")
MESSAGE = "message"
SYSTEM = "system"


@dataclass(frozen=True)
class ChatExport:
    """One chat as read from its file, or from all parts of an iOS export split into ``-1.txt``, ``-2.txt`` ..."""

    path: Path
    parts: tuple[Path, ...]
    format: str
    table: pd.DataFrame
    names: frozenset[str]
    """Real person names to anonymize: sender labels (except the exporter's own label) and names in system rows."""
    self_labels: frozenset[str]
    """The exporter's own sender labels seen in the file (``회원님``, ``you``), which are not names."""


class RecordTable:
    """Column lists that a parser appends records to, turned into the DataFrame once at the end.

    Continuation lines of the open record wait in ``pending`` and join its text when the next record starts, so a
    long multi-line message costs one ``str.join`` instead of repeated concatenation.
    """

    def __init__(self) -> None:
        self.timestamps: list[datetime | None] = []
        self.senders: list[str] = []
        self.texts: list[str] = []
        self.kinds: list[str] = []
        self.pending: list[str] = []

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, timestamp: datetime | None, sender: str, text: str, kind: str) -> None:
        if self.pending:
            self.close()
        self.timestamps.append(timestamp)
        self.senders.append(sender)
        self.texts.append(text)
        self.kinds.append(kind)

    def continue_text(self, line: str) -> None:
        """Append one more line to the open record's text; blank lines at its end are dropped on close."""
        self.pending.append(line)

    def close(self) -> None:
        """Join the pending continuation lines onto the last record, without its trailing blank lines."""
        pending = self.pending
        while pending and not pending[-1].strip():
            pending.pop()
        if pending:
            self.texts[-1] = "\n".join([self.texts[-1], *pending])
        self.pending = []

    def to_frame(self) -> pd.DataFrame:
        self.close()
        timestamps = pd.to_datetime(pd.Series(self.timestamps, dtype="object")).astype("datetime64[ns]")
        return pd.DataFrame(
            {
                "timestamp": timestamps,
                "sender": pd.Series(self.senders, dtype="str"),
                "text": pd.Series(self.texts, dtype="str"),
                "kind": pd.Series(self.kinds, dtype="str"),
            }
        )
