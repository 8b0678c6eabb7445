"""The ``cellmind checkpoint`` subcommand: ``pull`` downloads the swarm's current state as a local checkpoint.

    cellmind checkpoint pull --initial-peers /ip4/192.168.0.10/tcp/31337/p2p/Qm... [--output checkpoints/latest.pt]
"""

import argparse
from pathlib import Path

from cellmind.cli import add_common_arguments
from cellmind.cli.swarm_key import add_swarm_key_argument
from cellmind.i18n import _


def register(subparsers) -> None:
    parser = subparsers.add_parser("checkpoint", help=_("manage checkpoints"))
    add_common_arguments(parser)
    actions = parser.add_subparsers(dest="checkpoint_action", metavar="ACTION", required=True)

    pull = actions.add_parser(
        "pull", help=_("download the swarm's current model and optimizer state without training")
    )
    add_common_arguments(pull)
    pull.add_argument("--initial-peers", nargs="+", required=True, metavar="MULTIADDR",
                      help=_("addresses of peers in the swarm, as printed in the bootstrap's join line"))
    pull.add_argument("--output", type=Path, default=Path("checkpoints/latest.pt"), metavar="PATH",
                      help=_("checkpoint file to write (default: checkpoints/latest.pt)"))
    pull.add_argument("--run-id", help=_("name of the collaborative run (default: from the config)"))
    pull.add_argument("--config", type=Path, metavar="PATH", help=_("config file (default: config.json if present)"))
    pull.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                      help=_("give up after this many seconds (default: 120)"))
    add_swarm_key_argument(pull)
    pull.set_defaults(run=run_pull)


def run_pull(args: argparse.Namespace) -> int:
    from cellmind.config import apply_overrides, load_config
    from cellmind.pull import pull_and_save
    from cellmind.swarm_key import load_optional_swarm_key, with_swarm_key

    swarm_key = load_optional_swarm_key(args.swarm_key)
    config = with_swarm_key(apply_overrides(load_config(args.config), {"swarm.run_id": args.run_id}), swarm_key)
    checkpoint = pull_and_save(config, args.initial_peers, args.output, args.timeout, swarm_key)
    print(
        _("Saved the swarm's model at global epoch {epoch} to {path}").format(
            epoch=checkpoint.global_epoch, path=checkpoint.path
        ),
        flush=True,
    )
    return 0
