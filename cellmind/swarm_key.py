"""A private swarm: the swarm key file, the secrets derived from it, and the DHT authorizer that checks them.

``cellmind swarm-key new`` writes 32 random bytes to ``peers/swarm.key``; every peer of a private swarm is
started with ``--swarm-key`` and that same file. Hivemind has no pre-shared network key (neither its Python
layer nor its ``p2pd`` daemon), so the key protects the swarm in three layers:

- **The DHT.** :class:`SwarmKeyAuthorizer` is passed to ``hivemind.DHT(authorizer=...)``. Every DHT request
  carries an HMAC-SHA256 of its bytes, a time and a nonce; every response an HMAC bound to the request's nonce.
  A node without the key (or with another one) cannot read or store any record, so it cannot learn who trains,
  which global epoch the swarm is at, or which peers offer their state.
- **The run's namespace.** Hivemind names every DHT key of a run and the averagers' RPC handlers
  (``{prefix}::SnapshotStateAverager.rpc_download_state``, ...) after the run id.
  :meth:`SwarmKey.run_namespace` turns the run id into ``{run_id}-{secret tag}``, so that strangers cannot
  even name the run's records.
- **The averagers' callers.** The namespace alone does not keep the averagers closed: checkpoints store the
  namespaced run id, and libp2p's identify exchange lists a peer's handler names to anyone who connects. So
  every averager of a private swarm serves only peers that stored a membership record, an HMAC of their
  libp2p peer id under the key (:mod:`cellmind.membership`).

A peer that is turned away learns why: the authorizer answers a request without a valid HMAC with an error
that carries :data:`REJECTION_MARKER`, and :func:`diagnose_join_failure` asks the initial peer once more to
tell "rejected" from "unreachable". Each rejected DHT node is logged once per :data:`REJECTION_LOG_PERIOD`.
"""

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hivemind.p2p import P2P, P2PDaemonError, PeerID
from hivemind.proto import dht_pb2
from hivemind.utils.auth import AuthorizedRequestBase, AuthorizedResponseBase, AuthorizerBase
from hivemind.utils.multiaddr import Multiaddr
from hivemind.utils.timed_storage import TimedStorage, get_dht_time

from cellmind.errors import ConfigError, MissingFileError, SwarmError
from cellmind.i18n import _

logger = logging.getLogger(__name__)

DEFAULT_SWARM_KEY_PATH = Path("peers/swarm.key")
KEY_HEADER = "cellmind-swarm-key-v1"
KEY_BYTES = 32
REJECTION_MARKER = "cellmind-swarm-key-rejected"
"""Text in the error a keyed peer returns to a request without a valid HMAC; the rejected peer looks for it."""
MAX_CLOCK_DIFFERENCE = 60.0
"""Seconds a request's time may differ from the receiver's clock; older requests count as replays."""
REJECTION_LOG_PERIOD = 600.0
"""Seconds during which further rejected requests from the same DHT node are not logged again."""
PROBE_TIMEOUT = 10.0
"""Seconds :func:`diagnose_join_failure` spends asking an initial peer why it turned this peer away."""


# the key file


@dataclass(frozen=True)
class SwarmKey:
    """The secret of a private swarm, read from a key file; it derives every other secret."""

    path: Path
    secret: bytes

    def derive(self, label: str) -> bytes:
        """A 32-byte subkey for one purpose (HKDF-Expand with one block: HMAC-SHA256 of the label)."""
        return hmac.new(self.secret, f"cellmind {label}\x01".encode(), hashlib.sha256).digest()

    def run_namespace(self, run_id: str) -> str:
        """The run id Hivemind sees: the user's run id followed by a tag that only key holders can compute."""
        tag = hmac.new(self.derive("run namespace"), run_id.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{run_id}-{tag}"

    @property
    def fingerprint(self) -> str:
        """A short public name of the key, for logs: two peers with the same fingerprint hold the same key."""
        return self.derive("fingerprint").hex()[:12]

    def authorizer(self) -> "SwarmKeyAuthorizer":
        return SwarmKeyAuthorizer(self.derive("dht authorization"))


def new_key_file(path: Path, force: bool = False) -> SwarmKey:
    """Write a new random key to ``path`` (mode 0600, atomically); refuse to replace one unless ``force``."""
    if path.exists() and not force:
        raise ConfigError(
            _(
                "{path} already exists; every peer of that swarm needs it, so it is kept. Pass --force to replace "
                "it (then copy the new file to every peer) or choose another --output"
            ).format(path=path)
        )
    secret = secrets.token_bytes(KEY_BYTES)
    text = (
        "# CellMind swarm key. Keep it secret: anyone holding this file can join the swarm and read its model.\n"
        "# Copy it to every device of the swarm and start each peer with --swarm-key pointing at it.\n"
        f"{KEY_HEADER} {secret.hex()}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        os.chmod(handle.name, 0o600)
        with handle:
            handle.write(text)
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    return SwarmKey(path=path, secret=secret)


def load_swarm_key(path: Path) -> SwarmKey:
    """Read and check a key file written by ``cellmind swarm-key new``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(
            _("swarm key file {path} does not exist; create one with 'cellmind swarm-key new' on one device and "
              "copy it to the others").format(path=path)
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(_("cannot read swarm key file {path}: {error}").format(path=path, error=error)) from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    secret = _parse_key_line(lines[0]) if len(lines) == 1 else None
    if secret is None:
        raise ConfigError(
            _(
                "{path} is not a CellMind swarm key file (expected one line '{header} <64 hex digits>'); copy the "
                "file again from the device that created it"
            ).format(path=path, header=KEY_HEADER)
        )
    if path.stat().st_mode & 0o077:
        logger.warning(f"Swarm key file {path} is readable by other users of this machine; chmod 600 it")
    return SwarmKey(path=path, secret=secret)


def _parse_key_line(line: str) -> bytes | None:
    header, _space, value = line.partition(" ")
    if header != KEY_HEADER or len(value) != 2 * KEY_BYTES:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def namespaced_run_id(run_id: str, swarm_key: SwarmKey | None) -> str:
    """The run id that goes to Hivemind: unchanged for an open swarm, namespaced by the key for a private one."""
    return run_id if swarm_key is None else swarm_key.run_namespace(run_id)


def with_swarm_key(config, swarm_key: SwarmKey | None):
    """Return ``config`` (a :class:`cellmind.config.Config`) with its run id namespaced by ``swarm_key``."""
    if swarm_key is None:
        return config
    from cellmind.config import apply_overrides

    return apply_overrides(config, {"swarm.run_id": swarm_key.run_namespace(config.swarm.run_id)})


def load_optional_swarm_key(path: Path | None) -> SwarmKey | None:
    """The key of ``--swarm-key PATH``, or None when the flag was not given."""
    return load_swarm_key(path) if path is not None else None


# the DHT authorizer


class RejectionLog:
    """Decides which rejected callers to log: each one once per :data:`REJECTION_LOG_PERIOD` seconds."""

    MAX_CALLERS = 10_000
    """Callers remembered; an endless stream of new ids clears the memory instead of growing it without bound."""

    def __init__(self):
        self._last_logged: dict[object, float] = {}

    def first_in_period(self, caller: object) -> bool:
        """Return True (and remember the time) if ``caller`` was not logged in the last period."""
        now = time.monotonic()
        if now - self._last_logged.get(caller, -math.inf) < REJECTION_LOG_PERIOD:
            return False
        if len(self._last_logged) > self.MAX_CALLERS:
            self._last_logged.clear()
        self._last_logged[caller] = now
        return True


class SwarmKeyRejected(PermissionError):
    """Raised inside a DHT handler for a request without a valid HMAC; its text reaches the caller."""


class SwarmKeyAuthorizer(AuthorizerBase):
    """Signs and checks every DHT request and response with an HMAC-SHA256 under the swarm's key.

    A request's HMAC covers all of its bytes, including a time and a random nonce, so a recorded request cannot
    be replayed later or twice. A response's HMAC covers its bytes and the request's nonce, so it answers that
    one request. A request that fails the check is answered with :class:`SwarmKeyRejected`.
    """

    def __init__(self, mac_key: bytes):
        self._mac_key = mac_key
        self._recent_nonces = TimedStorage()
        self._rejections = RejectionLog()

    def _mac(self, role: bytes, message) -> bytes:
        return hmac.new(self._mac_key, role + message.SerializeToString(), hashlib.sha256).digest()

    async def sign_request(self, request: AuthorizedRequestBase, service_public_key) -> None:
        auth = request.auth
        auth.time = get_dht_time()
        auth.nonce = secrets.token_bytes(16)
        auth.signature = b""
        auth.signature = self._mac(b"request", request)

    async def validate_request(self, request: AuthorizedRequestBase) -> bool:
        problem = self._request_problem(request)
        if problem is not None:
            self._log_rejection(request, problem)
            raise SwarmKeyRejected(f"{REJECTION_MARKER}: {problem}")
        return True

    def _request_problem(self, request: AuthorizedRequestBase) -> str | None:
        auth = request.auth
        signature, auth.signature = auth.signature, b""
        if not signature:
            return "the request carries no swarm key HMAC (the peer runs without --swarm-key)"
        if not hmac.compare_digest(signature, self._mac(b"request", request)):
            return "the request's HMAC does not match (the peer holds another swarm key)"
        now = get_dht_time()
        with self._recent_nonces.freeze():
            if abs(auth.time - now) > MAX_CLOCK_DIFFERENCE or auth.nonce in self._recent_nonces:
                return "the request is stale or replayed (or the clocks differ by more than a minute)"
        self._recent_nonces.store(auth.nonce, None, now + 3 * MAX_CLOCK_DIFFERENCE)
        return None

    def _log_rejection(self, request: AuthorizedRequestBase, problem: str) -> None:
        node_id = bytes(request.peer.node_id) if request.HasField("peer") else b""
        if not self._rejections.first_in_period(node_id):
            return
        sender = node_id.hex()[:16] if node_id else "unknown"
        logger.warning(f"Rejected a DHT request from node {sender}: {problem}; it needs this swarm's --swarm-key file")

    async def sign_response(self, response: AuthorizedResponseBase, request: AuthorizedRequestBase) -> None:
        auth = response.auth
        auth.nonce = request.auth.nonce
        auth.signature = b""
        auth.signature = self._mac(b"response", response)

    async def validate_response(self, response: AuthorizedResponseBase, request: AuthorizedRequestBase) -> bool:
        auth = response.auth
        signature, auth.signature = auth.signature, b""
        valid = bool(signature) and hmac.compare_digest(signature, self._mac(b"response", response))
        if not valid or auth.nonce != request.auth.nonce:
            logger.debug("Dropped a DHT response without this swarm's key HMAC")
            return False
        return True


# telling a rejected peer why


def diagnose_join_failure(initial_peers: Sequence[str], swarm_key: SwarmKey | None) -> SwarmError | None:
    """Ask the initial peers whether they turned this peer away for its swarm key; None if they did not say so.

    Called after the DHT node failed to join, it starts a bare libp2p node for at most :data:`PROBE_TIMEOUT`
    seconds and sends one DHT ping, signed when this peer has a key.
    """
    try:
        verdict = asyncio.run(asyncio.wait_for(_probe(initial_peers, swarm_key), PROBE_TIMEOUT))
    except (asyncio.TimeoutError, OSError, RuntimeError, P2PDaemonError) as error:  # unreachable: not a key problem
        logger.debug(f"Could not ask the initial peers why the join failed: {error!r}")
        return None
    if verdict == "rejected":
        return SwarmError(
            _(
                "the swarm rejected this peer: it needs the same --swarm-key file as the other peers ({state}); "
                "copy peers/swarm.key from the device that created it"
            ).format(state=_("this peer has none") if swarm_key is None else _("this peer's key is another one"))
        )
    if verdict == "open" and swarm_key is not None:
        return SwarmError(
            _(
                "the swarm at {address} runs without a swarm key, but this peer was given --swarm-key {path}; "
                "start this peer without --swarm-key, or restart every peer of the swarm with that key"
            ).format(address=initial_peers[0], path=swarm_key.path)
        )
    return None


async def _probe(initial_peers: Sequence[str], swarm_key: SwarmKey | None) -> str | None:
    """``rejected``, ``open`` (answered without a key HMAC), ``accepted`` or None (no answer)."""
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=list(initial_peers))
    try:
        for address in initial_peers:
            verdict = await _probe_one(p2p, Multiaddr(address), swarm_key)
            if verdict is not None:
                return verdict
        return None
    finally:
        await p2p.shutdown()


async def _probe_one(p2p: P2P, address: Multiaddr, swarm_key: SwarmKey | None) -> str | None:
    authorizer = swarm_key.authorizer() if swarm_key is not None else None
    request = dht_pb2.PingRequest(validate=False)
    if authorizer is not None:
        await authorizer.sign_request(request, None)
    peer_id = PeerID.from_base58(address["p2p"])
    try:
        response = await p2p.call_protobuf_handler(peer_id, "DHTProtocol.rpc_ping", request, dht_pb2.PingResponse)
    except Exception as error:  # the daemon and the remote handler raise several types; only the text matters
        return "rejected" if REJECTION_MARKER in str(error) else None
    if authorizer is not None and not await authorizer.validate_response(response, request):
        return "open"
    return "accepted"
