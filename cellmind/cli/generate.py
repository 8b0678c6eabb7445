"""The ``cellmind generate`` subcommand: continue a prompt with the model of a checkpoint or of a running swarm.

    cellmind generate --prompt "안녕 GPT!"
    cellmind generate --prompt-file prompt.txt --temperature 0 --max-new-tokens 200
    cellmind generate --prompt "안녕" --initial-peers /ip4/192.168.0.7/tcp/31337/p2p/Qm...

Only the continuation is printed to stdout, token by token as it is generated; warnings go to the log.
"""

import argparse
import logging
import sys
from pathlib import Path

import torch

from cellmind.checkpoints import Checkpoint, build_model, latest_path, load_latest_good, missing_checkpoint_error
from cellmind.cli import add_common_arguments, out_of_memory_error
from cellmind.cli.swarm_key import add_swarm_key_argument
from cellmind.config import Config, apply_overrides, load_config
from cellmind.errors import ConfigError, InputFormatError, MissingFileError, TokenizerError
from cellmind.generation import TextStream, crop_prompt, generate_tokens
from cellmind.i18n import _
from cellmind.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help=_("continue a prompt with the trained model"),
        description=_(
            "Continue a prompt with the model of a local checkpoint or of a running swarm. "
            "Prints only the continuation, as it is generated."
        ),
    )
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help=_("text to continue"))
    prompt.add_argument("--prompt-file", type=Path, metavar="FILE", help=_("UTF-8 file whose text to continue"))

    source = parser.add_argument_group(_("model source"))
    source.add_argument(
        "--checkpoint", metavar="PATH", help=_("checkpoint file or directory (default: the config's model.checkpoint)")
    )
    source.add_argument(
        "--initial-peers", nargs="+", metavar="MULTIADDR", help=_("take the model from the swarm at these peers")
    )
    add_swarm_key_argument(source)
    source.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS",
        help=_("seconds to wait for the swarm's model (default: %(default)s)"),
    )
    source.add_argument("--tokenizer", metavar="PATH", help=_("tokenizer model (default: the config's)"))

    sampling = parser.add_argument_group(_("sampling"))
    sampling.add_argument(
        "--max-new-tokens", type=int, default=100, metavar="N", help=_("tokens to generate (default: %(default)s)")
    )
    sampling.add_argument(
        "--temperature", type=float, default=0.8, metavar="T",
        help=_("sampling temperature; 0 is greedy (default: %(default)s)"),
    )
    sampling.add_argument(
        "--top-k", type=int, default=50, metavar="K",
        help=_("sample among the k most likely tokens; 0 turns it off (default: %(default)s)"),
    )
    sampling.add_argument(
        "--top-p", type=float, default=0.95, metavar="P",
        help=_("nucleus sampling mass; 1 turns it off (default: %(default)s)"),
    )
    sampling.add_argument("--seed", type=int, metavar="N", help=_("random seed, for repeatable samples"))
    sampling.add_argument("--no-cache", action="store_true", help=_("recompute the whole context for every token"))

    parser.add_argument("--device", choices=DEVICES, default="auto", help=_("where the model runs (default: auto)"))
    parser.add_argument("--config", metavar="PATH", help=_("config file (default: config.json if present)"))
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _generate(args)
    except torch.OutOfMemoryError as error:
        raise out_of_memory_error(error, _("generate on the CPU with --device cpu")) from error


def _generate(args: argparse.Namespace) -> int:
    _check_arguments(args)
    config = apply_overrides(
        load_config(args.config),
        {"model.checkpoint": args.checkpoint, "tokenizer.model_path": args.tokenizer},
    )
    device = resolve_device(args.device)
    prompt = _read_prompt(args)
    checkpoint = _load_model_state(args, config)
    tokenizer = load_tokenizer(config.tokenizer.model_path)
    check_tokenizer_matches(tokenizer, checkpoint)
    model = build_model(checkpoint).to(device)

    prompt_ids, cropped = crop_prompt([tokenizer.start_id, *tokenizer.encode(prompt)], model.config.block_size)
    if cropped:
        logger.warning(
            _("the prompt is longer than the model's context; only its last {count} tokens are used").format(
                count=model.config.block_size
            )
        )
    _stream(model, tokenizer, prompt_ids, args)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    checks = (
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 0, _("a whole number >= 0")),
        ("--temperature", args.temperature, args.temperature >= 0, _("a number >= 0")),
        ("--top-k", args.top_k, args.top_k >= 0, _("a whole number >= 0")),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, _("a number above 0 and at most 1")),
        ("--timeout", args.timeout, args.timeout > 0, _("a number of seconds above 0")),
    )
    for flag, value, valid, expected in checks:
        if not valid:
            raise ConfigError(
                _("invalid {flag} {value}: expected {expected}").format(flag=flag, value=value, expected=expected)
            )


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    try:
        return args.prompt_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(_("prompt file not found: {path}").format(path=args.prompt_file)) from None
    except UnicodeDecodeError as error:
        raise InputFormatError(
            _("prompt file {path} is not UTF-8 text (byte {position})").format(
                path=args.prompt_file, position=error.start
            )
        ) from None


def _load_model_state(args: argparse.Namespace, config: Config) -> Checkpoint:
    """Return the swarm's current state with ``--initial-peers``, else the newest good local checkpoint."""
    if args.initial_peers:
        from cellmind.pull import pull_checkpoint  # imports Hivemind's swarm machinery only when it is needed
        from cellmind.swarm_key import load_optional_swarm_key, with_swarm_key

        swarm_key = load_optional_swarm_key(args.swarm_key)
        config = with_swarm_key(apply_overrides(config, {"swarm.initial_peers": args.initial_peers}), swarm_key)
        return pull_checkpoint(config, args.initial_peers, timeout=args.timeout, swarm_key=swarm_key)

    requested = latest_path(config.model.checkpoint)
    checkpoint = load_latest_good(requested)
    if checkpoint is None:
        raise missing_checkpoint_error(requested)
    if checkpoint.path is not None and checkpoint.path.resolve() != requested.resolve():
        logger.warning(
            _("{requested} could not be used; generating from the previous good checkpoint {path} "
              "(global epoch {epoch})").format(requested=requested, path=checkpoint.path, epoch=checkpoint.global_epoch)
        )
    return checkpoint


def check_tokenizer_matches(tokenizer: Tokenizer, checkpoint: Checkpoint) -> None:
    """Raise TokenizerError unless ``tokenizer`` is the file the checkpoint's model was trained with."""
    if tokenizer.sha256 != checkpoint.tokenizer_sha256:
        source = checkpoint.path or _("the swarm's model")
        raise TokenizerError(
            _(
                "tokenizer {path} (SHA-256 {found}) is not the one {checkpoint} was trained with "
                "(SHA-256 {expected}); pass --tokenizer with the run's tokenizer file"
            ).format(
                path=tokenizer.path, found=tokenizer.sha256, checkpoint=source, expected=checkpoint.tokenizer_sha256
            )
        )


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``--device``; ``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        if cuda:
            return torch.device("cuda")
        if mps:
            return torch.device("mps")
        return torch.device("cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ConfigError(
            _("--device {device} is not available on this machine; use --device cpu or auto").format(device=name)
        )
    return torch.device(name)


def _stream(model, tokenizer: Tokenizer, prompt_ids: list[int], args: argparse.Namespace) -> None:
    """Print the continuation of ``prompt_ids`` piece by piece, flushing after each one."""
    generator = torch.Generator()
    if args.seed is None:
        generator.seed()  # a fresh, non-repeating seed; torch's default generator starts from a fixed one
    else:
        generator.manual_seed(args.seed)

    stream = TextStream(tokenizer.decode, prompt_ids)
    tokens = generate_tokens(
        model,
        prompt_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        eos_id=tokenizer.eos_id,
        generator=generator,
        use_cache=not args.no_cache,
    )
    for token in tokens:
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.finish() + "\n")
    sys.stdout.flush()
