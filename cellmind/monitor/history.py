"""The viewer's history on disk: one JSON line per refresh, reloaded at start, turned into the plotted series.

Each line contains the swarm-wide numbers of one snapshot (not the peer table), so a day of refreshes every two
seconds stays a few megabytes. Lines are appended; a line cut short by a crash is skipped when the file is read.
"""

import json
import logging
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from cellmind.monitor.aggregate import Snapshot

logger = logging.getLogger(__name__)

MAX_PLOTTED_POINTS = 600
"""Points per time series sent to the page; longer series are thinned evenly, so the payload stays small."""


def default_history_path(run_id: str) -> Path:
    return Path("runs") / f"monitor-{run_id}.jsonl"


def history_entry(snapshot: Snapshot) -> dict[str, Any]:
    """Return the line stored for ``snapshot``."""
    return {
        "run_id": snapshot.run_id,
        "time": snapshot.time,
        "global_epoch": snapshot.global_epoch,
        "samples_per_second": snapshot.samples_per_second,
        "num_peers": snapshot.num_peers,
        "training_loss": snapshot.training_loss,
        "validation_loss": snapshot.validation_loss,
        "validation_epoch": snapshot.validation_epoch,
    }


class History:
    """Entries of one run, in memory and appended to ``path`` (None keeps them in memory only)."""

    def __init__(self, run_id: str, path: Optional[Path]):
        self.run_id, self.path = run_id, path
        self._lock = threading.Lock()
        self.entries: list[dict[str, Any]] = self._read() if path is not None else []

    def append(self, snapshot: Snapshot) -> dict[str, Any]:
        entry = history_entry(snapshot)
        with self._lock:
            self.entries.append(entry)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return entry

    def series(self, max_points: int = MAX_PLOTTED_POINTS) -> dict[str, list[list[float]]]:
        """Return the plotted series as ``[x, y]`` pairs: losses over global epochs, throughput and peers over time."""
        with self._lock:
            entries = list(self.entries)
        return {
            "training_loss": _mean_by_epoch(entries, "global_epoch", "training_loss"),
            "validation_loss": _mean_by_epoch(entries, "validation_epoch", "validation_loss"),
            "samples_per_second": _thin([[e["time"], e["samples_per_second"]] for e in entries], max_points),
            "num_peers": _thin([[e["time"], e["num_peers"]] for e in entries], max_points),
        }

    def _read(self) -> list[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return []
        entries, skipped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            entry = _parse_line(line)
            if entry is None:
                skipped += 1
            elif entry["run_id"] == self.run_id:
                entries.append(entry)
        if skipped:
            logger.warning(f"Skipped {skipped} unreadable lines of the monitor history {self.path}")
        return entries


def _parse_line(line: str) -> Optional[dict[str, Any]]:
    """Return the entry on ``line``, or None if it is not a complete entry (for example cut short by a crash)."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    required = ("run_id", "time", "global_epoch", "samples_per_second", "num_peers")
    if not isinstance(entry, dict) or any(key not in entry for key in required):
        return None
    return entry


def _mean_by_epoch(entries: list[dict], epoch_key: str, value_key: str) -> list[list[float]]:
    """Return ``[epoch, mean value]`` for every epoch that has a value, in epoch order."""
    values = defaultdict(list)
    for entry in entries:
        if entry.get(epoch_key) is not None and entry.get(value_key) is not None:
            values[entry[epoch_key]].append(entry[value_key])
    return [[epoch, sum(losses) / len(losses)] for epoch, losses in sorted(values.items())]


def _thin(points: list[list[float]], max_points: int) -> list[list[float]]:
    """Keep at most ``max_points`` evenly spaced points, always including the last one."""
    if len(points) <= max_points:
        return points
    stride = len(points) / max_points
    kept = [points[int(index * stride)] for index in range(max_points - 1)]
    return kept + [points[-1]]
