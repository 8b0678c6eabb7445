"""The viewer's refresh loop: read a snapshot, record it, show it in the terminal and on the web page.

Usage (through the CLI)::

    cellmind monitor --initial-peers /ip4/192.168.0.7/tcp/31337/p2p/12D3KooW... --web 127.0.0.1:8080
"""

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.live import Live

from cellmind.i18n import _
from cellmind.monitor.aggregate import Snapshot
from cellmind.monitor.history import History
from cellmind.monitor.reader import SwarmReader
from cellmind.monitor.terminal import render
from cellmind.monitor.web import MonitorState, WebServer
from cellmind.swarm_key import SwarmKey

logger = logging.getLogger(__name__)


@dataclass
class MonitorOptions:
    run_id: str
    initial_peers: list[str]
    refresh: float = 2.0
    """Seconds between two snapshots."""
    target_batch_size: Optional[int] = None
    """Shown when no peer publishes the run's target batch size."""
    web: Optional[tuple[str, int]] = None
    history_path: Optional[Path] = None
    tensorboard_dir: Optional[Path] = None
    request_timeout: float = 10.0
    """Seconds one DHT read may take."""
    swarm_key: Optional[SwarmKey] = None
    """The key of a private swarm (``--swarm-key``)."""


def print_once(options: MonitorOptions, as_json: bool, console: Console) -> None:
    """Print one snapshot (as JSON with English keys, or as the terminal view) and return."""
    reader = SwarmReader(
        options.run_id,
        options.initial_peers,
        target_batch_size=options.target_batch_size,
        request_timeout=options.request_timeout,
        swarm_key=options.swarm_key,
    )
    try:
        snapshot = reader.snapshot()
    finally:
        reader.shutdown()
    if as_json:
        print(json.dumps(snapshot.to_dict(), ensure_ascii=False, indent=2))
    else:
        console.print(render(snapshot))


def watch(options: MonitorOptions, console: Console) -> None:
    """Refresh every ``options.refresh`` seconds until interrupted."""
    history = History(options.run_id, options.history_path)
    tensorboard = _open_tensorboard(options.tensorboard_dir)
    state = MonitorState()
    state.update(None, history.series())  # a restarted viewer shows the curve before its first read
    server = WebServer(state, *options.web).start() if options.web is not None else None
    reader = None
    try:
        if server is not None:
            console.print(_("Monitor page: {url}").format(url=server.url))
            sys.stdout.flush()  # scripts and tests read the address from a pipe
        reader = SwarmReader(
            options.run_id,
            options.initial_peers,
            target_batch_size=options.target_batch_size,
            request_timeout=options.request_timeout,
            swarm_key=options.swarm_key,
        )
        with Live(console=console, auto_refresh=False, redirect_stderr=False) as live:
            while True:
                snapshot = reader.snapshot()
                _record(snapshot, history, tensorboard, state)
                live.update(render(snapshot), refresh=True)
                time.sleep(options.refresh)
    finally:
        if server is not None:
            server.shutdown()
        if tensorboard is not None:
            tensorboard.close()
        if reader is not None:
            reader.shutdown()


def _record(snapshot: Snapshot, history: History, tensorboard, state: MonitorState) -> None:
    history.append(snapshot)
    if tensorboard is not None:
        tensorboard.write(snapshot)
    state.update(snapshot.to_dict(), history.series())


def _open_tensorboard(log_dir: Optional[Path]):
    if log_dir is None:
        return None
    from cellmind.monitor.tensorboard import TensorBoardSeries

    return TensorBoardSeries(log_dir)
