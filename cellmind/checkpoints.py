"""Checkpoint files: atomic save, digest-checked load, retention of numbered copies, and building the model.

A checkpoint file is a short header followed by a ``torch.save`` payload::

    CELLMIND-CHECKPOINT\\n
    {"format": 1, "payload_sha256": "<hex>", "payload_size": <bytes>, "global_epoch": <int>}\\n
    <payload bytes>

The header line is padded with spaces to a fixed length, because it is written after the payload (whose digest it
holds) has streamed to the file.

The payload is a dict of tensors and plain values (model state dict, optimizer state, global epoch, resolved
config, tokenizer SHA-256, CellMind version) that ``torch.load(weights_only=True)`` accepts, so a checkpoint
pulled from another peer cannot run code when it is loaded. The SHA-256 in the header covers the payload, which
makes a truncated or corrupted file fail loudly instead of loading garbage weights.

A checkpoint directory contains ``latest.pt`` and numbered copies ``step-{global_epoch:08d}.pt`` (hard links to the
same file where the file system allows it), of which the newest ``keep`` are kept.
"""

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellmind import __version__
from cellmind.config import Config
from cellmind.errors import CheckpointError, ConfigError, MissingFileError
from cellmind.i18n import _
from cellmind.model import GPT, GPTConfig

logger = logging.getLogger(__name__)

MAGIC = b"CELLMIND-CHECKPOINT\n"
FORMAT_VERSION = 1
LATEST_NAME = "latest.pt"
NUMBERED_PATTERN = re.compile(r"^step-(\d{8,})\.pt$")
MAX_HEADER_BYTES = 4096
HEADER_LINE_BYTES = 256
"""Length of the header line as written, newline included; readers accept any length up to MAX_HEADER_BYTES."""
GPT_CONFIG_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "dropout")
OPTIONAL_GPT_CONFIG_FIELDS = ("attention_dropout",)
"""Model fields that checkpoints of earlier versions lack; those build with the field's default."""
PAYLOAD_KEYS = ("model", "optimizer", "global_epoch", "config", "tokenizer_sha256", "version")


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    global_epoch: int
    config: dict[str, Any]
    """The resolved run config (``Config.to_dict()``) of the peer that wrote the checkpoint."""
    tokenizer_sha256: str
    version: str
    """CellMind version that wrote the checkpoint."""
    path: Path | None = None
    """File the checkpoint was loaded from; None for one received from the swarm and not yet saved."""


def numbered_name(global_epoch: int) -> str:
    return f"step-{global_epoch:08d}.pt"


def latest_path(directory_or_path: str | Path) -> Path:
    """Return the ``latest.pt`` path for a checkpoint directory, or ``directory_or_path`` itself if it names a file."""
    path = Path(directory_or_path)
    return path if path.suffix == ".pt" else path / LATEST_NAME


def numbered_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Return ``(global_epoch, path)`` of every numbered checkpoint in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = NUMBERED_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


# saving


def save_checkpoint(
    directory_or_path: str | Path,
    *,
    model: torch.nn.Module | dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    global_epoch: int,
    config: Config | dict[str, Any],
    tokenizer_sha256: str,
    keep: int = 3,
) -> Path:
    """Write ``latest.pt`` atomically plus a numbered copy, drop numbered copies beyond ``keep``; return latest's path.

    ``directory_or_path`` is a directory (the file is ``latest.pt`` in it) or the path of the latest file itself;
    numbered copies go next to it. ``model`` is the network or its state dict (e.g. ``Checkpoint.model_state``).
    ``keep=0`` writes no numbered copy. A reader never sees a half-written file, because each name is switched to
    a complete, fsynced file with ``os.replace``.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    path = latest_path(directory_or_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_dict() if isinstance(config, Config) else dict(config)
    payload = {
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else dict(model),
        "optimizer": optimizer_state,
        "global_epoch": int(global_epoch),
        "config": config_dict,
        "tokenizer_sha256": tokenizer_sha256,
        "version": __version__,
    }

    temporary = _write_temporary(path, payload, global_epoch)
    try:
        if keep > 0:
            _link_or_copy(temporary, path.parent / numbered_name(global_epoch))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)

    _prune_numbered(path.parent, keep)
    logger.info(f"Saved checkpoint {path} at global epoch {global_epoch}")
    return path


class _HashingWriter:
    """A write-only file object that passes bytes on to ``file`` and keeps their SHA-256 and count."""

    def __init__(self, file):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _header_line(payload_sha256: str, payload_size: int, global_epoch: int) -> bytes:
    """Return the JSON header line, padded with spaces to :data:`HEADER_LINE_BYTES` so that it can be written last."""
    header = {
        "format": FORMAT_VERSION,
        "payload_sha256": payload_sha256,
        "payload_size": payload_size,
        "global_epoch": int(global_epoch),
    }
    line = json.dumps(header).encode("ascii")
    return line.ljust(HEADER_LINE_BYTES - 1) + b"\n"


def _write_temporary(path: Path, payload: dict[str, Any], global_epoch: int) -> Path:
    """Serialize ``payload`` into a fsynced temporary file next to ``path`` and return that file's path.

    The payload streams to the file tensor by tensor, so saving costs no second copy of the model and the
    optimizer state in memory (about 280 MB for the 23M model). The header, which contains the payload's digest and
    size, is written last into the room kept for it at the start; JSON allows the spaces that pad it.
    """
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(MAGIC + _header_line("0" * 64, 0, global_epoch))
            writer = _HashingWriter(handle)
            torch.save(payload, writer)
            handle.seek(len(MAGIC))
            handle.write(_header_line(writer.sha256.hexdigest(), writer.size, global_epoch))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return Path(handle.name)


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` name the same complete file as ``source``: a hard link, or a copy where links fail."""
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    try:
        try:
            os.link(source, staging)
        except OSError:
            shutil.copyfile(source, staging)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Persist the renames in ``directory`` (no-op where directories cannot be opened, as on Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename itself already happened
    finally:
        os.close(descriptor)


def _prune_numbered(directory: Path, keep: int) -> None:
    numbered = numbered_checkpoints(directory)
    for _epoch, path in numbered[: max(len(numbered) - keep, 0)]:
        path.unlink(missing_ok=True)
        logger.info(f"Removed old checkpoint {path}")


# loading


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify one checkpoint file.

    Raises MissingFileError if ``path`` does not exist and CheckpointError, naming the file, if it is truncated,
    corrupted (digest mismatch) or not a CellMind checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_checkpoint_error(path)
    body = _read_verified_payload(path)
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several unrelated types for unreadable data
        raise CheckpointError(
            _("checkpoint {path} cannot be read: {error}").format(path=path, error=error)
        ) from error
    return _checkpoint_from_payload(payload, path)


def missing_checkpoint_error(path: str | Path) -> MissingFileError:
    return MissingFileError(
        _(
            "checkpoint not found: {path}; train a model with `cellmind-peer` "
            "or download the swarm's with `cellmind checkpoint pull --initial-peers ADDR`"
        ).format(path=path)
    )


def _read_verified_payload(path: Path) -> bytes:
    """Return the payload bytes of ``path`` after checking the magic line, the size and the SHA-256 digest."""
    with open(path, "rb") as file:
        magic = file.read(len(MAGIC))
        header_line = file.readline(MAX_HEADER_BYTES)
        body = file.read()
    if magic != MAGIC:
        raise CheckpointError(
            _("{path} is not a CellMind checkpoint (unknown header); delete it or pull a fresh one").format(path=path)
        )
    try:
        header = json.loads(header_line)
        expected_size = int(header["payload_size"])
        expected_digest = str(header["payload_sha256"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            _("checkpoint {path} has a damaged header; delete it or pull a fresh one").format(path=path)
        ) from None
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            _("checkpoint {path} has format {found}, this CellMind reads format {expected}").format(
                path=path, found=header.get("format"), expected=FORMAT_VERSION
            )
        )

    if len(body) != expected_size:
        raise CheckpointError(
            _("checkpoint {path} is truncated or padded: {found} payload bytes instead of {expected}").format(
                path=path, found=len(body), expected=expected_size
            )
        )
    digest = hashlib.sha256(body).hexdigest()
    if digest != expected_digest:
        raise CheckpointError(
            _("checkpoint {path} is corrupted: its SHA-256 is {found}, the header records {expected}").format(
                path=path, found=digest, expected=expected_digest
            )
        )
    return body


def _checkpoint_from_payload(payload: Any, path: Path) -> Checkpoint:
    missing = [key for key in PAYLOAD_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise CheckpointError(
            _("checkpoint {path} lacks the entries {keys}").format(path=path, keys=", ".join(missing))
        )
    if not isinstance(payload["model"], dict) or not isinstance(payload["config"], dict):
        raise CheckpointError(_("checkpoint {path} has no model state or config").format(path=path))
    return Checkpoint(
        model_state=payload["model"],
        optimizer_state=payload["optimizer"],
        global_epoch=int(payload["global_epoch"]),
        config=payload["config"],
        tokenizer_sha256=str(payload["tokenizer_sha256"]),
        version=str(payload["version"]),
        path=path,
    )


def load_latest_good(directory_or_path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """Return the newest checkpoint that loads, trying ``latest.pt`` and then the numbered copies, newest first.

    ``directory_or_path`` is a checkpoint directory or a checkpoint file. When it names a numbered copy, only
    older copies are tried after it. Each rejected file is logged as a warning. Returns None if no checkpoint
    file exists at all, and raises CheckpointError naming every file if all of them were rejected.
    """
    rejected: list[CheckpointError] = []
    for candidate in _candidates(directory_or_path):
        try:
            return load_checkpoint(candidate, map_location=map_location)
        except MissingFileError:
            logger.info(f"Checkpoint {candidate} was removed while the directory was read; skipping it")
        except CheckpointError as error:
            logger.warning(f"Rejected checkpoint {candidate}: {error}")
            rejected.append(error)
    if rejected:
        raise CheckpointError(
            _("no usable checkpoint: every file was rejected ({errors})").format(
                errors="; ".join(str(error) for error in rejected)
            )
        )
    return None


def _candidates(directory_or_path: str | Path) -> list[Path]:
    """Return the existing checkpoint files to try, in order of preference."""
    first = latest_path(directory_or_path)
    match = NUMBERED_PATTERN.match(first.name)
    newest_allowed = int(match.group(1)) if match else None
    numbered = [
        path
        for epoch, path in reversed(numbered_checkpoints(first.parent))
        if path != first and (newest_allowed is None or epoch < newest_allowed)
    ]
    return [path for path in [first, *numbered] if path.is_file()]


# building the model


def gpt_config_from(config: Config | dict[str, Any], vocab_size: int) -> GPTConfig:
    """Return the GPTConfig described by a run config's ``model`` section, with the tokenizer's vocabulary size.

    ``config`` is a Config or its dict form, as stored in checkpoints. Other sections are not read, so a checkpoint
    written by another CellMind version still builds as long as its model section is complete.
    """
    section = dataclasses.asdict(config.model) if isinstance(config, Config) else config.get("model")
    missing = [name for name in GPT_CONFIG_FIELDS if not isinstance(section, dict) or name not in section]
    if missing:
        raise ConfigError(_("the model config lacks {keys}").format(keys=", ".join(missing)))
    optional = {name: section[name] for name in OPTIONAL_GPT_CONFIG_FIELDS if name in section}
    return GPTConfig(vocab_size=vocab_size, **{name: section[name] for name in GPT_CONFIG_FIELDS}, **optional)


def build_model(checkpoint: Checkpoint) -> GPT:
    """Return the GPT stored in ``checkpoint``, with its token embedding and output projection tied.

    The model is built on the meta device and takes the checkpoint's tensors as its parameters
    (``load_state_dict(assign=True)``), so no memory or time goes into a random initialization.
    """
    state = checkpoint.model_state
    source = checkpoint.path or _("the swarm's checkpoint")
    embedding = state.get("transformer.wte.weight")
    if embedding is None:
        raise CheckpointError(_("checkpoint {path} has no token embedding").format(path=source))
    try:
        gpt_config = gpt_config_from(checkpoint.config, vocab_size=embedding.size(0))
    except (ValueError, ConfigError) as error:
        raise CheckpointError(
            _("checkpoint {path} holds an invalid model config: {error}").format(path=source, error=error)
        ) from error
    output = state.get("lm_head.weight")
    if output is not None and not torch.equal(output, embedding):
        raise CheckpointError(
            _("checkpoint {path} has different token embedding and output matrices; they must be tied").format(
                path=source
            )
        )

    with torch.device("meta"):
        model = GPT(gpt_config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(
            _("checkpoint {path} does not match its own model config: {error}").format(path=source, error=error)
        ) from error
    model.tie_weights()
    assert model.is_tied()
    return model


def checkpoint_from_model(
    model: GPT, *, global_epoch: int, config: Config | dict[str, Any], tokenizer_sha256: str
) -> Checkpoint:
    """Return an unsaved Checkpoint of ``model`` (without optimizer state), e.g. for state received from peers."""
    return Checkpoint(
        model_state=model.state_dict(),
        optimizer_state=None,
        global_epoch=global_epoch,
        config=config.to_dict() if isinstance(config, Config) else dict(config),
        tokenizer_sha256=tokenizer_sha256,
        version=__version__,
    )
