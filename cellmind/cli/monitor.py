"""The ``cellmind monitor`` subcommand: watch a swarm's training in the terminal and on a web page.

    cellmind monitor --initial-peers /ip4/192.168.0.7/tcp/31337/p2p/12D3KooW...
    cellmind monitor --initial-peers ADDR --web 127.0.0.1:8080 --tensorboard runs/tb
    cellmind monitor --initial-peers ADDR --once --json

The viewer is a client-mode DHT node that trains nothing; it only reads what the peers publish.
"""

import argparse
import re
import signal
from pathlib import Path

from rich.console import Console

from cellmind.cli import add_common_arguments
from cellmind.cli.swarm_key import add_swarm_key_argument
from cellmind.config import load_config
from cellmind.errors import ConfigError
from cellmind.i18n import _
from cellmind.monitor.history import default_history_path
from cellmind.monitor.viewer import MonitorOptions, print_once, watch
from cellmind.monitor.web import parse_address
from cellmind.swarm_key import load_optional_swarm_key

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help=_("watch the swarm's training in the terminal or on a web page"),
        description=_(
            "Show the run's global epoch, progress toward the next global step, throughput and a table of "
            "peers, refreshed in place. The viewer joins the swarm in client mode and trains nothing."
        ),
    )

    # the swarm to watch
    parser.add_argument(
        "--initial-peers", nargs="+", metavar="MULTIADDR", help=_("any peers of the swarm (default: the config's)")
    )
    parser.add_argument("--run-id", help=_("run to watch (default: the config's swarm.run_id)"))
    add_swarm_key_argument(parser)
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help=_("seconds one read from the swarm may take (default: %(default)s)"),
    )

    # how to show it
    parser.add_argument(
        "--refresh", type=parse_duration, default=2.0, metavar="DURATION",
        help=_("time between refreshes, e.g. 2s or 500ms (default: 2s)"),
    )
    parser.add_argument("--once", action="store_true", help=_("print one snapshot and exit"))
    parser.add_argument("--json", action="store_true", help=_("with --once: print the snapshot as JSON"))
    parser.add_argument(
        "--web", type=web_address, metavar="HOST:PORT", help=_("also serve a live web page, e.g. 127.0.0.1:8080")
    )
    parser.add_argument(
        "--target-batch-size", type=int, metavar="N",
        help=_("shown when no peer publishes the run's target batch size (default: the config's)"),
    )

    # where to keep it
    parser.add_argument(
        "--history", type=Path, metavar="PATH",
        help=_("JSONL file the plotted history is kept in (default: runs/monitor-RUN_ID.jsonl)"),
    )
    parser.add_argument("--tensorboard", type=Path, metavar="DIR", help=_("also write the series to TensorBoard"))

    parser.add_argument("--config", metavar="PATH", help=_("config file (default: config.json if present)"))
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def parse_duration(text: str) -> float:
    """Parse ``2``, ``2s``, ``500ms``, ``1m`` or ``1h`` into seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            _("invalid duration {text!r}: expected a positive number with s, ms, m or h, e.g. 2s").format(text=text)
        )
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def web_address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    options = build_options(args)
    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the viewer as cleanly as Ctrl-C
    if args.once:
        print_once(options, as_json=args.json, console=console)
    else:
        watch(options, console)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def build_options(args: argparse.Namespace) -> MonitorOptions:
    """Combine the flags with the config's ``swarm`` section; flags win."""
    if args.json and not args.once:
        raise ConfigError(_("--json needs --once: the live view is not JSON"))
    if args.once and args.web is not None:
        raise ConfigError(_("--once prints one snapshot and exits, so it cannot serve --web"))
    swarm = load_config(args.config).swarm
    run_id = args.run_id or swarm.run_id
    initial_peers = args.initial_peers or swarm.initial_peers
    if not initial_peers:
        raise ConfigError(
            _("no peers to ask: give --initial-peers (the address a running peer printed) or set swarm.initial_peers")
        )
    history_path = args.history
    if history_path is None and not args.once:
        history_path = default_history_path(run_id)
    return MonitorOptions(
        run_id=run_id,
        initial_peers=list(initial_peers),
        refresh=args.refresh,
        target_batch_size=args.target_batch_size or swarm.target_batch_size,
        web=args.web,
        history_path=history_path,
        tensorboard_dir=args.tensorboard,
        request_timeout=args.timeout,
        swarm_key=load_optional_swarm_key(args.swarm_key),
    )
