"""The ``cellmind-peer`` command: start or join a swarm and train the shared model.

    cellmind-peer --bootstrap                                 # first device; prints the join line
    cellmind-peer --initial-peers /ip4/192.168.0.10/tcp/31337/p2p/Qm...
"""

import argparse
import re
from pathlib import Path

from cellmind.cli import add_common_arguments, out_of_memory_error
from cellmind.cli.swarm_key import add_swarm_key_argument
from cellmind.config import apply_overrides, load_config
from cellmind.errors import ConfigError
from cellmind.i18n import _

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``1.5h`` or ``2d``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            _("invalid duration {value!r}; write a number with an optional unit s, m, h or d (e.g. 90s, 10m, 1h)")
            .format(value=text)
        )
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(_("expected a positive whole number, got {value!r}").format(value=text))
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellmind-peer",
        description=_("Start a CellMind swarm or join one, and train the shared mini-GPT on this device's data."),
    )
    add_common_arguments(parser)
    _add_swarm_arguments(parser)
    _add_training_arguments(parser)
    _add_output_arguments(parser)
    return parser


def _add_swarm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(_("swarm"))
    group.add_argument("--bootstrap", action="store_true",
                       help=_("start a new swarm: listen on all interfaces at a fixed port and print the join line"))
    group.add_argument("--initial-peers", nargs="+", metavar="MULTIADDR",
                       help=_("addresses of peers already in the swarm, as printed in the bootstrap's join line"))
    group.add_argument("--host-maddrs", nargs="+", metavar="MULTIADDR",
                       help=_("addresses to listen on (default: /ip4/0.0.0.0/tcp/31337 for --bootstrap, "
                              "a random port otherwise)"))
    group.add_argument("--announce-maddrs", nargs="+", metavar="MULTIADDR",
                       help=_("public addresses to announce when behind NAT or port forwarding"))
    group.add_argument("--qr", action="store_true",
                       help=_("with --bootstrap: also print the join line as a QR code, to scan on a phone"))
    group.add_argument("--identity", type=Path, metavar="PATH",
                       help=_("private key file that fixes this peer's id (default: peers/identity.key for "
                              "--bootstrap, a new id on every start otherwise)"))
    group.add_argument("--client-mode", action="store_true", default=None,
                       help=_("only connect outwards, for devices that cannot accept incoming connections"))
    group.add_argument("--no-train", dest="train", action="store_false",
                       help=_("only help peers find each other; keep no model (for an always-on bootstrap)"))
    group.add_argument("--run-id", help=_("name of the collaborative run; peers of one run share it"))
    group.add_argument("--target-batch-size", type=positive_int, metavar="N",
                       help=_("samples the whole swarm accumulates per global step"))
    group.add_argument("--matchmaking-time", type=float, metavar="SECONDS",
                       help=_("seconds to wait for peers to form an averaging group"))
    group.add_argument("--averaging-timeout", type=float, metavar="SECONDS",
                       help=_("seconds before an averaging round is given up"))
    group.add_argument("--compression", choices=["none", "fp16", "uint8"],
                       help=_("compression of the tensors peers exchange"))
    group.add_argument("--name", help=_("name other people see for this peer"))
    add_swarm_key_argument(group)


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(_("training"))
    group.add_argument("--config", type=Path, metavar="PATH", help=_("config file (default: config.json if present)"))
    group.add_argument("--data", type=Path, metavar="PATH", help=_("training JSONL file of this device"))
    group.add_argument("--tokenizer", type=Path, metavar="PATH", help=_("SentencePiece model file"))
    group.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                       help=_("where to train (default: auto, the fastest available)"))
    group.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help=_("auto uses bf16 autocast on CUDA devices that support it and on CPUs with native bf16 "
                              "matrix multiplies (AVX512-BF16, AMX), and fp32 elsewhere"))
    group.add_argument("--threads", type=positive_int, metavar="N", help=_("CPU threads PyTorch may use"))
    group.add_argument("--batch-size-per-step", type=positive_int, metavar="N",
                       help=_("samples per micro-step on this device"))
    group.add_argument("--seed", type=int,
                       help=_("seed of this peer's data sampling (default: derived from the peer id)"))
    group.add_argument("--max-steps", type=positive_int, metavar="N",
                       help=_("stop after taking part in this many global steps"))
    group.add_argument("--max-time", type=parse_duration, metavar="DURATION",
                       help=_("stop after this long, e.g. 90s, 10m or 1h"))


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(_("output"))
    group.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                       help=_("where latest.pt and numbered checkpoints go (default: checkpoints)"))
    group.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                       help=_("global steps between checkpoints"))
    group.add_argument("--tensorboard", type=Path, metavar="DIR", help=_("write TensorBoard scalars to DIR"))


def resolve_config(args: argparse.Namespace):
    """The config file with this command's flags applied on top."""
    config = load_config(args.config)
    overrides = {
        "swarm.run_id": args.run_id,
        "swarm.initial_peers": args.initial_peers,
        "swarm.target_batch_size": args.target_batch_size,
        "swarm.matchmaking_time": args.matchmaking_time,
        "swarm.averaging_timeout": args.averaging_timeout,
        "swarm.compression": args.compression,
        "swarm.client_mode": args.client_mode,
        "swarm.host_maddrs": args.host_maddrs,
        "swarm.announce_maddrs": args.announce_maddrs,
        "training.batch_size": args.batch_size_per_step,
        "training.checkpoint_every": args.checkpoint_every,
        "training.dataset_path": str(args.data) if args.data else None,
        "tokenizer.model_path": str(args.tokenizer) if args.tokenizer else None,
        "model.checkpoint": str(args.checkpoint_dir / "latest.pt") if args.checkpoint_dir else None,
    }
    return apply_overrides(config, overrides)


def swarm_settings(args: argparse.Namespace, config):
    from cellmind.swarm import DEFAULT_IDENTITY_PATH, SwarmSettings, bootstrap_host_maddrs, validate_initial_peers

    swarm = config.swarm
    if args.bootstrap and swarm.initial_peers and args.initial_peers:
        raise ConfigError(_("--bootstrap starts a new swarm and cannot be combined with --initial-peers"))
    initial_peers = () if args.bootstrap else tuple(validate_initial_peers(swarm.initial_peers))
    host_maddrs = swarm.host_maddrs
    if args.bootstrap and not args.host_maddrs:
        host_maddrs = bootstrap_host_maddrs(host_maddrs)
    identity = args.identity or (DEFAULT_IDENTITY_PATH if args.bootstrap else None)
    return SwarmSettings(
        run_id=swarm.run_id,
        initial_peers=initial_peers,
        host_maddrs=tuple(host_maddrs),
        announce_maddrs=tuple(swarm.announce_maddrs),
        identity_path=identity,
        client_mode=swarm.client_mode,
        show_qr=args.qr,
    )


def download_missing_files(args: argparse.Namespace, config, settings) -> bool:
    """Download the swarm's tokenizer and config where this device has none; True if a file was written.

    The config counts as missing only when ``--config`` is not given and ``config.json`` does not exist.
    """
    from cellmind.config import DEFAULT_CONFIG_PATH
    from cellmind.run_files import download_missing_run_files

    config_path = DEFAULT_CONFIG_PATH if args.config is None and not DEFAULT_CONFIG_PATH.exists() else None
    written = download_missing_run_files(settings, config, config_path)
    if written:
        print(_("Downloaded {paths} from the swarm; they match the run's manifest").format(
            paths=", ".join(map(str, written))), flush=True)
    return bool(written)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cellmind.peer import PeerOptions, run_peer
    from cellmind.swarm_key import load_optional_swarm_key, with_swarm_key

    swarm_key = load_optional_swarm_key(args.swarm_key)
    config = with_swarm_key(resolve_config(args), swarm_key)
    settings = replace(swarm_settings(args, config), swarm_key=swarm_key)
    if not args.bootstrap and not settings.initial_peers:
        raise ConfigError(
            _("give --initial-peers (the join line printed by the bootstrap peer), or --bootstrap to start a swarm")
        )
    if not args.bootstrap and args.train and download_missing_files(args, config, settings):
        config = with_swarm_key(resolve_config(args), swarm_key)
    if config.training.seq_len > config.model.block_size:
        raise ConfigError(
            _("training.seq_len ({seq_len}) exceeds model.block_size ({block_size}); lower seq_len").format(
                seq_len=config.training.seq_len, block_size=config.model.block_size
            )
        )
    options = PeerOptions(
        config=config,
        swarm=settings,
        bootstrap=args.bootstrap,
        train=args.train,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        name=args.name,
        max_steps=args.max_steps,
        max_time=args.max_time,
        seed=args.seed,
        tensorboard_dir=args.tensorboard,
    )
    import torch

    try:
        run_peer(options)
    except torch.OutOfMemoryError as error:
        raise out_of_memory_error(
            error,
            _("lower --batch-size-per-step (now {batch_size}) or train on the CPU with --device cpu").format(
                batch_size=config.training.batch_size
            ),
        ) from error
    return 0
