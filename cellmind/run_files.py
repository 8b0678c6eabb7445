"""The run's tokenizer and config, served by every training peer so that a new device can start without them.

A training peer registers one RPC handler, ``{run_id}::CellMindRunFiles.rpc_get``, on its DHT node's libp2p
host. The request names a file (``tokenizer`` or ``config``) and the response carries its bytes. The config is
sent without the fields that only make sense on the sending device (:data:`LOCAL_FIELDS`: paths, addresses,
the micro-batch size, the run id). The handler runs inside the DHT process, and in a private swarm it serves
only callers with a membership record (:mod:`cellmind.membership`).

A peer started without a tokenizer file or without a config file (:func:`download_missing_run_files`) requests
them from the peers that offer their training state. It checks the tokenizer's SHA-256 and the config's model
shape and target batch size against the run manifest, and writes both files atomically. Hivemind's protobufs
carry the bytes (``runtime_pb2.ExpertUID`` for the request, ``runtime_pb2.ExpertInfo`` for the response), so no
new message types are compiled.
"""

import asyncio
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hivemind
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import runtime_pb2

from cellmind.config import Config
from cellmind.errors import ConfigError, SwarmError
from cellmind.i18n import _
from cellmind.membership import MemberCheck, declare_membership
from cellmind.swarm import RunManifest, SwarmSettings, shutdown_dht, start_dht, wait_for_manifest

logger = logging.getLogger(__name__)

HANDLER_NAME = "CellMindRunFiles.rpc_get"
FILE_NAMES = ("tokenizer", "config")
LOCAL_FIELDS = {
    "model": ("checkpoint",),
    "tokenizer": ("model_path",),
    "training": ("dataset_path", "val_path", "batch_size", "epochs"),
    "swarm": ("run_id", "initial_peers", "client_mode", "host_maddrs", "announce_maddrs"),
}
"""Config fields that describe the sending device, not the run; a downloaded config keeps the receiver's own."""
REQUEST_TIMEOUT = 20.0
"""Seconds one peer may take to send one file."""


def handler_name(run_id: str) -> str:
    return f"{run_id}::{HANDLER_NAME}"


def portable_config(config: Config) -> dict:
    """``config`` as a dict without :data:`LOCAL_FIELDS`."""
    data = config.to_dict()
    for section, names in LOCAL_FIELDS.items():
        for name in names:
            data[section].pop(name, None)
    return data


# serving


def serve_run_files(
    dht: hivemind.DHT, run_id: str, config: Config, tokenizer_path: Path, member_check: MemberCheck | None
) -> None:
    """Register the handler that sends this peer's tokenizer and portable config; it lives as long as the DHT."""
    config_bytes = json.dumps(portable_config(config), ensure_ascii=False, indent=2).encode()
    # The DHT process reads the tokenizer file itself: a tokenizer of 8000 pieces (about 140 KB) sent through
    # run_coroutine's pipe failed with EAGAIN in hivemind 1.1.12, while the config is a few KB.
    add_handler = partial(_add_handler, name=handler_name(run_id), tokenizer_path=str(Path(tokenizer_path).resolve()),
                          config_bytes=config_bytes, member_check=member_check)
    dht.run_coroutine(add_handler)


async def _add_handler(dht: hivemind.DHT, node: DHTNode, *, name: str, tokenizer_path: str, config_bytes: bytes,
                       member_check: MemberCheck | None) -> None:
    """Runs inside the DHT process: read the tokenizer and register the handler on the node's libp2p host."""
    files = {"tokenizer": Path(tokenizer_path).read_bytes(), "config": config_bytes}

    async def get_file(request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertInfo:
        if member_check is not None:
            fetch = partial(node.get, member_check.members_key, latest=True)
            await member_check.require_member(fetch, context.local_id, context.remote_id, HANDLER_NAME)
        if request.uid not in files:
            raise ValueError(f"unknown run file {request.uid!r}; expected one of {', '.join(files)}")
        return runtime_pb2.ExpertInfo(serialized_info=files[request.uid])

    await node.p2p.add_protobuf_handler(name, get_file, runtime_pb2.ExpertUID)


# downloading


@dataclass
class RunFiles:
    tokenizer: bytes
    config: dict
    sender: str
    """Base58 peer id of the peer that sent both files."""


def check_run_files(files: RunFiles, manifest: RunManifest) -> str | None:
    """Why ``files`` do not belong to the run of ``manifest``, or None when they do."""
    try:
        Config.from_dict(files.config, source="the downloaded config")
    except ConfigError as error:  # e.g. a key that a newer CellMind added
        return str(error)
    digest = hashlib.sha256(files.tokenizer).hexdigest()
    if digest != manifest.tokenizer_sha256:
        return f"tokenizer SHA-256 {digest[:12]} differs from the manifest's {manifest.tokenizer_sha256[:12]}"
    model, swarm = files.config.get("model", {}), files.config.get("swarm", {})
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        if model.get(name) != getattr(manifest, name):
            return f"config model.{name} = {model.get(name)!r}, the manifest has {getattr(manifest, name)!r}"
    if swarm.get("target_batch_size") != manifest.target_batch_size:
        return (f"config swarm.target_batch_size = {swarm.get('target_batch_size')!r}, "
                f"the manifest has {manifest.target_batch_size!r}")
    return None


def fetch_run_files(dht: hivemind.DHT, run_id: str, manifest: RunManifest, timeout: float) -> RunFiles:
    """Download the tokenizer and config from a training peer whose files match ``manifest``.

    Peers that offer their training state are asked in random order; a peer whose files do not match the
    manifest is skipped with a warning. Raises SwarmError when no peer sent matching files within ``timeout``.
    """
    candidates = _state_sharers(dht, run_id)
    random.shuffle(candidates)
    problems = []
    for peer_id in candidates:
        try:
            files = dht.run_coroutine(partial(_download, peer_id=peer_id, name=handler_name(run_id)),
                                      return_future=True).result(timeout=timeout)
        except Exception as error:  # the daemon, the remote handler and the timeout raise several types
            problems.append(f"{peer_id}: {error}")
            logger.warning(f"Could not download the run files from peer {peer_id}: {error}")
            continue
        problem = check_run_files(files, manifest)
        if problem is None:
            return files
        problems.append(f"{peer_id}: {problem}")
        logger.warning(f"Peer {peer_id} sent run files that do not match the run manifest: {problem}")
    raise SwarmError(
        _(
            "could not download the tokenizer and config from the swarm ({reason}); copy tokenizer/tokenizer.model "
            "and config.json from a device of the swarm, or try again when a training peer is running"
        ).format(reason="; ".join(problems) if problems else _("no training peer offers them"))
    )


def _state_sharers(dht: hivemind.DHT, run_id: str) -> list[str]:
    """Base58 ids of the peers that declared their training state for download (Hivemind's own record)."""
    found = dht.get(f"{run_id}_state_averager.all_averagers", latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    peers = []
    for subkey, entry in found.value.items():
        if isinstance(subkey, bytes) and entry.value is not None:
            try:
                peers.append(PeerID(subkey).to_base58())
            except Exception:  # not a peer id: a malformed record, skip it
                continue
    return peers


async def _download(dht: hivemind.DHT, node: DHTNode, *, peer_id: str, name: str) -> RunFiles:
    """Runs inside the DHT process: ask one peer for both files."""
    peer = PeerID.from_base58(peer_id)
    contents = {}
    for file_name in FILE_NAMES:
        response = await asyncio.wait_for(
            node.p2p.call_protobuf_handler(peer, name, runtime_pb2.ExpertUID(uid=file_name), runtime_pb2.ExpertInfo),
            timeout=REQUEST_TIMEOUT,
        )
        contents[file_name] = response.serialized_info
    return RunFiles(tokenizer=contents["tokenizer"], config=json.loads(contents["config"]), sender=peer_id)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(data)
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def download_missing_run_files(settings: SwarmSettings, config: Config, config_path: Path | None) -> list[Path]:
    """Download the tokenizer and/or config that this device lacks; return the paths written.

    ``config_path`` is where a downloaded config goes, or None when this device has a config of its own. The
    tokenizer goes to ``config.tokenizer.model_path`` unless a file is there already.
    """
    tokenizer_path = Path(config.tokenizer.model_path)
    need_tokenizer = not tokenizer_path.exists()
    if not need_tokenizer and config_path is None:
        return []

    deadline = time.monotonic() + settings.join_timeout + REQUEST_TIMEOUT
    dht = start_dht(settings)
    membership = None
    try:
        manifest = wait_for_manifest(dht, settings.run_id, deadline)
        membership = declare_membership(dht, settings.run_id, settings.swarm_key)
        files = fetch_run_files(dht, settings.run_id, manifest, timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if membership is not None:
            membership.stop()
        shutdown_dht(dht)

    written = []
    if need_tokenizer:
        write_atomically(tokenizer_path, files.tokenizer)
        written.append(tokenizer_path)
    if config_path is not None:
        write_atomically(config_path, (json.dumps(files.config, ensure_ascii=False, indent=2) + "\n").encode())
        written.append(config_path)
    logger.info(f"Downloaded {', '.join(map(str, written))} from peer {files.sender}")
    return written
