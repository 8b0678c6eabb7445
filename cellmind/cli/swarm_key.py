"""The ``cellmind swarm-key`` subcommand: create the secret key file of a private swarm, or show its fingerprint.

    cellmind swarm-key new [--output peers/swarm.key] [--force]
    cellmind swarm-key show [--key peers/swarm.key]
"""

import argparse
from pathlib import Path

from cellmind.cli import add_common_arguments
from cellmind.i18n import _
from cellmind.swarm_key import DEFAULT_SWARM_KEY_PATH


def register(subparsers) -> None:
    parser = subparsers.add_parser("swarm-key", help=_("create or inspect the secret key of a private swarm"))
    add_common_arguments(parser)
    actions = parser.add_subparsers(dest="swarm_key_action", metavar="ACTION", required=True)

    new = actions.add_parser("new", help=_("write a new random swarm key file"))
    add_common_arguments(new)
    new.add_argument("--output", type=Path, default=DEFAULT_SWARM_KEY_PATH, metavar="PATH",
                     help=_("key file to write (default: peers/swarm.key)"))
    new.add_argument("--force", action="store_true", help=_("replace an existing key file"))
    new.set_defaults(run=run_new)

    show = actions.add_parser("show", help=_("print the fingerprint of a key file, to compare it between devices"))
    add_common_arguments(show)
    show.add_argument("--key", type=Path, default=DEFAULT_SWARM_KEY_PATH, metavar="PATH",
                      help=_("key file to read (default: peers/swarm.key)"))
    show.set_defaults(run=run_show)


def add_swarm_key_argument(parser) -> None:
    """The ``--swarm-key FILE`` flag that every command talking to a swarm accepts."""
    parser.add_argument("--swarm-key", type=Path, metavar="FILE",
                        help=_("secret key file of a private swarm (from 'cellmind swarm-key new'); every peer "
                               "of the swarm needs the same file"))


def run_new(args: argparse.Namespace) -> int:
    from cellmind.swarm_key import new_key_file

    key = new_key_file(args.output, force=args.force)
    print(_("Wrote swarm key {path} (fingerprint {fingerprint}).").format(path=key.path, fingerprint=key.fingerprint))
    print(_("Copy this file to every device of the swarm over a channel you trust, and start every peer with "
            "--swarm-key {path}.").format(path=key.path))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cellmind.swarm_key import load_swarm_key

    key = load_swarm_key(args.key)
    print(_("{path}: fingerprint {fingerprint}").format(path=key.path, fingerprint=key.fingerprint))
    return 0
