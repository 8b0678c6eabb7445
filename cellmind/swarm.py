"""Joining the swarm: the DHT node, this peer's identity, its addresses, the join line and the run manifest.

A bootstrap peer listens on all interfaces at a fixed port and keeps its private key in ``peers/identity.key``,
so its multiaddr ``/ip4/<address>/tcp/<port>/p2p/<peer id>`` stays the same across restarts. It prints the
join line other devices run and writes the same line to ``peers/join.txt``.

Every DHT node of a run passes :func:`cellmind.metrics.dht_validators` to ``hivemind.DHT``, and client mode is
set on the DHT itself, because ``hivemind.Optimizer`` takes its client mode from the DHT (hivemind 1.1.12).

The run manifest is a small DHT record (well under 1 KiB) that describes the model the run trains: shape,
vocabulary size, tokenizer SHA-256, target batch size and CellMind version. A peer compares it with its own
before it downloads any state, because a peer whose model differs would retry the download forever.
"""

import ipaddress
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import hivemind
import psutil
from hivemind.p2p import P2PDaemonError, PeerID
from hivemind.utils import get_dht_time
from hivemind.utils.multiaddr import Multiaddr

import cellmind
from cellmind.errors import SwarmError
from cellmind.i18n import _
from cellmind.metrics import dht_validators
from cellmind.swarm_key import SwarmKey, diagnose_join_failure

logger = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_PORT = 31337
DEFAULT_IDENTITY_PATH = Path("peers/identity.key")
JOIN_FILE_NAME = "join.txt"
JOIN_TIMEOUT = 30.0
"""Seconds a peer waits for its DHT node to start and reach an initial peer before it gives up."""
BOOTSTRAP_RETRY_PERIOD = 2.0
"""Seconds between attempts to reach initial peers that did not respond."""
MANIFEST_FIELD = "manifest"
MANIFEST_EXPIRATION = 600.0
"""Seconds a stored manifest lives; training peers store it again well before that."""
MANIFEST_RETRY_PERIOD = 2.0
"""Seconds between reads of the manifest while no training peer has stored one."""


@dataclass(frozen=True)
class SwarmSettings:
    """Settings for joining the DHT, built by the CLI from flags and the config's ``swarm`` section."""

    run_id: str
    initial_peers: tuple[str, ...] = ()
    host_maddrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    announce_maddrs: tuple[str, ...] = ()
    identity_path: Path | None = None
    client_mode: bool = False
    join_timeout: float = JOIN_TIMEOUT
    show_qr: bool = False
    """Print the join line once more as a QR code (``--qr``), for phones."""
    swarm_key: SwarmKey | None = None
    """The private swarm's key (``--swarm-key``): signs every DHT request; None leaves the swarm open."""


# addresses


def validate_initial_peers(initial_peers: Sequence[str]) -> list[str]:
    """Return ``initial_peers`` after checking that each is a full multiaddr with transport and ``/p2p/`` peer id."""
    for address in initial_peers:
        try:
            maddr = Multiaddr(address)
        except Exception as error:  # the multiaddr package raises several unrelated types for bad input
            raise SwarmError(
                _(
                    "invalid --initial-peers address {address}: {error}; copy the whole join line that the "
                    "bootstrap peer printed (it looks like /ip4/192.168.0.10/tcp/31337/p2p/Qm...)"
                ).format(address=address, error=error)
            ) from None
        protocols = {protocol.name for protocol in maddr.protocols()}
        if "p2p" not in protocols or not protocols & {"tcp", "udp"}:
            raise SwarmError(
                _(
                    "invalid --initial-peers address {address}: it needs a transport and a peer id "
                    "(/ip4/ADDRESS/tcp/PORT/p2p/PEER_ID); copy the whole join line that the bootstrap peer printed"
                ).format(address=address)
            )
    return list(initial_peers)


def bootstrap_host_maddrs(host_maddrs: Sequence[str]) -> list[str]:
    """Replace a random port (``tcp/0``) with the default bootstrap port, so that the join line survives restarts."""
    fixed = []
    for address in host_maddrs:
        maddr = Multiaddr(address)
        if "tcp" in maddr and maddr["tcp"] == "0":
            address = address.replace("/tcp/0", f"/tcp/{DEFAULT_BOOTSTRAP_PORT}")
        fixed.append(address)
    return fixed


def is_loopback(maddr: Multiaddr) -> bool:
    for protocol in ("ip4", "ip6"):
        if protocol in maddr:
            return ipaddress.ip_address(maddr[protocol]).is_loopback
    return False


def interface_addresses() -> list[str]:
    """IPv4 addresses of this machine's network interfaces, loopback and link-local ones left out."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name != "AF_INET":
                continue
            ip = ipaddress.ip_address(address.address)
            if not ip.is_loopback and not ip.is_link_local and address.address not in found:
                found.append(address.address)
    return found


def join_addresses(dht: hivemind.DHT, settings: SwarmSettings) -> tuple[list[str], list[str]]:
    """Return ``(reachable, loopback)``: multiaddrs other machines can use, and those that work on this one only.

    Announced addresses come first. A listener on ``0.0.0.0`` is reachable at every interface address, and the
    daemon reports the port it actually bound.
    """
    peer_id = dht.peer_id.to_base58()
    visible = [Multiaddr(str(maddr)) for maddr in dht.get_visible_maddrs(latest=True)]
    candidates = [f"{address}/p2p/{peer_id}" for address in settings.announce_maddrs]
    for listen in settings.host_maddrs:
        listen = Multiaddr(listen)
        if "ip4" in listen and listen["ip4"] == "0.0.0.0":
            for maddr in visible:
                if "ip4" in maddr and "tcp" in maddr:
                    port = maddr["tcp"]
                    candidates += [f"/ip4/{ip}/tcp/{port}/p2p/{peer_id}" for ip in interface_addresses()]
                    break
    candidates += [str(maddr) for maddr in visible]

    reachable, loopback = [], []
    for address in dict.fromkeys(candidates):
        target = loopback if is_loopback(Multiaddr(address)) else reachable
        target.append(address)
    return reachable, loopback


def join_line(addresses: Sequence[str]) -> str:
    return "cellmind-peer --initial-peers " + " ".join(addresses)


def write_join_file(path: Path, line: str) -> None:
    """Write ``line`` to ``path`` atomically, so that a script reading the file never reads a partial line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(line + "\n")
        os.replace(handle.name, path)
    finally:
        Path(handle.name).unlink(missing_ok=True)


def announce_join_line(dht: hivemind.DHT, settings: SwarmSettings) -> str:
    """Print the join line, write it next to the identity file, and return it."""
    reachable, loopback = join_addresses(dht, settings)
    line = join_line(reachable or loopback)
    print(_("To join this swarm from another device, run:"), flush=True)
    print(f"  {line}", flush=True)
    if reachable and loopback:
        print(_("On this machine only: {line}").format(line=join_line(loopback)), flush=True)
    elif not reachable:
        print(
            _(
                "These addresses work on this machine only; listen on all interfaces "
                "(--host-maddrs /ip4/0.0.0.0/tcp/{port}) or set --announce-maddrs to accept other devices."
            ).format(port=DEFAULT_BOOTSTRAP_PORT),
            flush=True,
        )
    if settings.show_qr:
        from cellmind.qr import print_qr

        print_qr(line)
    identity_dir = (settings.identity_path or DEFAULT_IDENTITY_PATH).parent
    write_join_file(identity_dir / JOIN_FILE_NAME, line)
    return line


# the DHT node


def start_dht(settings: SwarmSettings, while_starting: Callable[[], None] | None = None) -> hivemind.DHT:
    """Start this peer's DHT node and join the swarm, or raise SwarmError within ``settings.join_timeout`` seconds.

    An initial peer that does not answer the first ping in time (a busy machine) is pinged again by a new
    attempt, as long as the time allows. ``while_starting`` runs once in this process while the node's own
    process starts, after that process has been forked.
    """
    initial_peers = validate_initial_peers(settings.initial_peers)
    if settings.identity_path is not None:
        settings.identity_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + settings.join_timeout
    while True:
        try:
            return _start_dht_once(settings, initial_peers, deadline, while_starting)
        except _NoAnswer as no_answer:
            key_error = _key_error(settings, initial_peers)
            if key_error is not None:  # turned away for its swarm key: asking again will not help
                raise key_error from None
            if time.monotonic() + BOOTSTRAP_RETRY_PERIOD >= deadline:
                raise _unreachable_error(initial_peers, no_answer.reason) from None
            logger.info(f"No initial peer answered ({no_answer.reason}); trying again")
            while_starting = None  # it ran during the first attempt
            time.sleep(BOOTSTRAP_RETRY_PERIOD)


class _NoAnswer(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _start_dht_once(
    settings: SwarmSettings, initial_peers: list[str], deadline: float, while_starting: Callable[[], None] | None
) -> hivemind.DHT:
    timeout = max(1.0, deadline - time.monotonic())
    dht = hivemind.DHT(
        initial_peers=initial_peers or None,
        start=False,
        client_mode=settings.client_mode,
        host_maddrs=list(settings.host_maddrs),
        announce_maddrs=list(settings.announce_maddrs) or None,
        identity_path=str(settings.identity_path) if settings.identity_path is not None else None,
        record_validators=dht_validators(settings.run_id),
        startup_timeout=timeout,
        authorizer=settings.swarm_key.authorizer() if settings.swarm_key is not None else None,
    )
    try:
        dht.run_in_background(await_ready=False)
        if while_starting is not None:
            while_starting()
        dht.wait_until_ready(max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        _stop_unready_dht(dht)
        raise _NoAnswer(_("no answer within {seconds:.0f} s").format(seconds=timeout)) from None
    except (P2PDaemonError, RuntimeError, ValueError) as error:
        _stop_unready_dht(dht)
        if initial_peers and "none of the initial_peers responded" in str(error):
            raise _NoAnswer(_("no initial peer answered a ping")) from None
        raise _start_error(settings, initial_peers, error) from None
    logger.info(f"DHT node {dht.peer_id} started (client mode: {settings.client_mode})")
    _log_swarm_privacy(settings, initial_peers)
    return dht


def _key_error(settings: SwarmSettings, initial_peers: list[str]) -> SwarmError | None:
    """Why the initial peers turned this peer away, if it was for its swarm key (see cellmind.swarm_key)."""
    return diagnose_join_failure(initial_peers, settings.swarm_key) if initial_peers else None


def _log_swarm_privacy(settings: SwarmSettings, initial_peers: list[str]) -> None:
    if settings.swarm_key is not None:
        logger.info(f"Private swarm: DHT requests are signed with swarm key {settings.swarm_key.fingerprint}")
    elif not initial_peers:
        logger.warning(
            "This swarm is open: anyone who knows its address can join, read the model and send updates; "
            "create a key with 'cellmind swarm-key new' and start every peer with --swarm-key to keep it private"
        )


def _stop_unready_dht(dht: hivemind.DHT) -> None:
    """Stop a DHT process that never became ready; its p2pd child ends with it."""
    if dht.is_alive():
        dht.terminate()
        dht.join(5)


def _start_error(settings: SwarmSettings, initial_peers: list[str], error: Exception) -> SwarmError:
    message = str(error).splitlines()[-1] if str(error) else type(error).__name__
    message = re.sub(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ", "", message)  # p2pd's own timestamp
    if "already taken" in message:
        return SwarmError(
            _(
                "identity {path} is already used by another running peer; stop that peer "
                "or give this one its own --identity file"
            ).format(path=settings.identity_path)
        )
    if "address already in use" in message.lower():
        return SwarmError(
            _("cannot listen on {addresses}: the port is in use; stop the other program or choose another "
              "port with --host-maddrs").format(addresses=" ".join(settings.host_maddrs))
        )
    if not initial_peers:
        return SwarmError(_("could not start the DHT node: {error}").format(error=message))
    return _unreachable_error(initial_peers, message)


def _unreachable_error(initial_peers: list[str], reason: str) -> SwarmError:
    return SwarmError(
        _(
            "could not join the swarm through {addresses} ({reason}); likely causes: a wrong or outdated address "
            "(copy it again from the bootstrap's peers/join.txt), the bootstrap peer is not running, a firewall or "
            "NAT blocks the port, or this device cannot accept connections and needs --client-mode"
        ).format(addresses=" ".join(initial_peers), reason=reason)
    )


def shutdown_dht(dht: hivemind.DHT) -> None:
    """Stop the DHT process and its p2pd daemon."""
    dht.shutdown()
    if dht.is_alive():
        dht.terminate()
        dht.join(5)


async def _ping_initial_peers(_dht: hivemind.DHT, node, initial_peers: tuple[str, ...]) -> int:
    """Runs inside the DHT process: ping each initial peer, which adds those that answer to the routing table."""
    answered = 0
    for address in initial_peers:
        peer_id = PeerID.from_base58(Multiaddr(address)["p2p"])
        if await node.protocol.call_ping(peer_id) is not None:
            answered += 1
    return answered


def reconnect_initial_peers(dht: hivemind.DHT, initial_peers: Sequence[str]) -> None:
    """Ping the initial peers again in the background.

    A DHT node drops peers that stop answering and never looks for them again, so a peer that outlived a
    restart of the bootstrap would stay alone even though the bootstrap is back at the same address.
    """
    if initial_peers:
        dht.run_coroutine(partial(_ping_initial_peers, initial_peers=tuple(initial_peers)), return_future=True)


# the run manifest


@dataclass(frozen=True)
class RunManifest:
    """What every peer of a run must agree on; stored in the DHT under ``{run_id}_manifest``."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    tokenizer_sha256: str
    target_batch_size: int
    version: str = cellmind.__version__

    def mismatches(self, other: "RunManifest") -> list[str]:
        """Names of the fields (other than the version) whose values differ, as ``field: ours != theirs``."""
        ours, theirs = asdict(self), asdict(other)
        return [
            f"{name}: {ours[name]} != {theirs[name]}"
            for name in ours
            if name != "version" and ours[name] != theirs[name]
        ]


def manifest_key(run_id: str) -> str:
    return f"{run_id}_{MANIFEST_FIELD}"


def store_manifest(dht: hivemind.DHT, run_id: str, manifest: RunManifest) -> None:
    """Store the manifest in the background; a failed store is retried on the next refresh."""
    dht.store(
        manifest_key(run_id),
        asdict(manifest),
        expiration_time=get_dht_time() + MANIFEST_EXPIRATION,
        return_future=True,
    )


def fetch_manifest(dht: hivemind.DHT, run_id: str, timeout: float) -> RunManifest | None:
    """Return the run's manifest from the DHT, or None if no training peer has stored one."""
    try:
        found = dht.get(manifest_key(run_id), latest=True, return_future=True).result(timeout=timeout)
    except TimeoutError:
        return None
    if found is None or not isinstance(found.value, dict):
        return None
    try:
        return RunManifest(**found.value)
    except TypeError:
        logger.warning(f"Ignoring a malformed manifest under {manifest_key(run_id)}: {found.value!r}")
        return None


def check_manifest(dht: hivemind.DHT, run_id: str, ours: RunManifest, timeout: float) -> RunManifest | None:
    """Raise SwarmError if the swarm trains another model than ``ours``; return the swarm's manifest (or None)."""
    theirs = fetch_manifest(dht, run_id, timeout)
    if theirs is None:
        return None
    differences = ours.mismatches(theirs)
    if differences:
        raise SwarmError(
            _(
                "this peer's model does not match the swarm's run '{run_id}' ({differences}); use the same config "
                "and tokenizer file as the other peers, or start a new run with another --run-id"
            ).format(run_id=run_id, differences="; ".join(differences))
        )
    if theirs.version != ours.version:
        logger.warning(f"The swarm's manifest was written by CellMind {theirs.version}, this is {ours.version}")
    return theirs


def wait_for_manifest(dht: hivemind.DHT, run_id: str, deadline: float) -> RunManifest:
    """Return the run's manifest, asking again until ``deadline`` (a ``time.monotonic()`` value)."""
    while True:
        manifest = fetch_manifest(dht, run_id, timeout=max(1.0, deadline - time.monotonic()))
        if manifest is not None:
            return manifest
        if time.monotonic() + MANIFEST_RETRY_PERIOD > deadline:
            raise SwarmError(
                _(
                    "no training peer of run '{run_id}' was found in the swarm; check --run-id and that at least "
                    "one peer is training (a --no-train bootstrap holds no model)"
                ).format(run_id=run_id)
            )
        time.sleep(MANIFEST_RETRY_PERIOD)
