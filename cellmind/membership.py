"""Swarm membership: which libp2p peers may call the averagers' RPC handlers of a private swarm.

The DHT of a private swarm is closed by :class:`cellmind.swarm_key.SwarmKeyAuthorizer`, but the averagers
serve their RPCs (``rpc_join_group``, ``rpc_aggregate_part``, ``rpc_download_state``) straight through libp2p,
outside the DHT. Their handler names are only as secret as the run namespace, and libp2p's identify exchange
lists them to anyone who connects. So every averager of a private swarm checks its caller:

- Each peer stores a membership record under ``{run_id}_members`` with its libp2p peer id as the subkey and
  ``HMAC-SHA256(membership key, peer id)`` as the value (:func:`declare_membership`). Only key holders can
  compute the value, and only key holders can store DHT records at all.
- Before an averager serves a request, :class:`MemberCheck` looks up the caller's record and compares the
  HMAC with the one it computes for the caller's peer id, which libp2p has authenticated in the connection's
  handshake. A record copied by another peer id does not match.

An open swarm (no ``--swarm-key``) has no records and no check.
"""

import asyncio
import hashlib
import hmac
import logging
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import AsyncIterator  # hivemind's ServicerBase recognizes streams by typing's alias only

import hivemind
from hivemind.optim.grad_averager import GradientAverager
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import ValueWithExpiration, get_dht_time

from cellmind.swarm_key import REJECTION_LOG_PERIOD, REJECTION_MARKER, RejectionLog, SwarmKey, SwarmKeyRejected

logger = logging.getLogger(__name__)

FetchMembers = Callable[[], Awaitable[ValueWithExpiration | None]]

MEMBERSHIP_EXPIRATION = 1800.0
"""Seconds a membership record lives in the DHT; :class:`MembershipDeclaration` stores it again well before."""
MEMBERSHIP_REFRESH_PERIOD = MEMBERSHIP_EXPIRATION / 3
STORE_TIMEOUT = 10.0
"""Seconds :func:`declare_membership` waits for the first store, so that the averagers' first calls find it."""
LOOKUP_ATTEMPTS = 3
LOOKUP_RETRY_DELAY = 1.0
"""Seconds between lookups of a caller with no valid record yet: its first store may still be on its way."""


def members_key(run_id: str) -> str:
    return f"{run_id}_members"


def membership_token(swarm_key: SwarmKey, peer_id: PeerID) -> bytes:
    """Compute the value only a key holder can compute for ``peer_id``: HMAC-SHA256 of its bytes under a derived key."""
    return hmac.new(swarm_key.derive("averager membership"), peer_id.to_bytes(), hashlib.sha256).digest()


# declaring this peer


def _store_membership(dht: hivemind.DHT, run_id: str, swarm_key: SwarmKey) -> hivemind.utils.MPFuture:
    return dht.store(
        members_key(run_id),
        membership_token(swarm_key, dht.peer_id),
        expiration_time=get_dht_time() + MEMBERSHIP_EXPIRATION,
        subkey=dht.peer_id.to_bytes(),
        return_future=True,
    )


class MembershipDeclaration:
    """Stores this peer's membership record now and again every :data:`MEMBERSHIP_REFRESH_PERIOD` seconds.

    The first store is awaited (up to :data:`STORE_TIMEOUT` seconds), so the averagers this peer starts next
    are recognized by the others from their first request. Later stores run in a daemon thread until
    :meth:`stop` or the end of the DHT process.
    """

    def __init__(self, dht: hivemind.DHT, run_id: str, swarm_key: SwarmKey):
        self._dht, self._run_id, self._swarm_key = dht, run_id, swarm_key
        self._stop = threading.Event()
        try:
            stored = _store_membership(dht, run_id, swarm_key).result(timeout=STORE_TIMEOUT)
        except TimeoutError:
            stored = False
        if not stored:
            logger.warning("Could not store this peer's swarm membership record yet; retrying in the background")
        self._thread = threading.Thread(target=self._refresh, name="membership", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        period = MEMBERSHIP_REFRESH_PERIOD
        while not self._stop.wait(period) and self._dht.is_alive():
            try:
                stored = _store_membership(self._dht, self._run_id, self._swarm_key).result(timeout=STORE_TIMEOUT)
            except Exception as error:  # a DHT shutting down raises several types; the next round retries
                logger.debug(f"Storing the membership record failed: {error!r}")
                stored = False
            period = MEMBERSHIP_REFRESH_PERIOD if stored else LOOKUP_RETRY_DELAY * 10

    def stop(self) -> None:
        self._stop.set()


def declare_membership(dht: hivemind.DHT, run_id: str, swarm_key: SwarmKey | None) -> MembershipDeclaration | None:
    """Start storing this peer's membership record of a private swarm; None for an open swarm."""
    return MembershipDeclaration(dht, run_id, swarm_key) if swarm_key is not None else None


# checking callers


class MemberCheck:
    """Check whether the caller of an averager RPC has the swarm key, inside the averager's process.

    Valid members are remembered for the life of the process. A caller without a valid record is looked up
    :data:`LOOKUP_ATTEMPTS` times, :data:`LOOKUP_RETRY_DELAY` seconds apart, and then rejected. Its rejection is
    logged once per :data:`REJECTION_LOG_PERIOD` seconds.
    """

    def __init__(self, run_id: str, swarm_key: SwarmKey):
        self.members_key = members_key(run_id)
        self._swarm_key = swarm_key
        self._members: set[PeerID] = set()
        self._rejections = RejectionLog()

    async def require_member(
        self, fetch_members: FetchMembers, local_id: PeerID, remote_id: PeerID, handler: str
    ) -> None:
        """Return if ``remote_id`` is a member (or this peer itself), else raise :class:`SwarmKeyRejected`.

        ``fetch_members()`` reads the :attr:`members_key` record from the DHT: through ``hivemind.DHT.get`` in
        an averager's process, or ``DHTNode.get`` inside the DHT process.
        """
        if remote_id == local_id or remote_id in self._members:
            return
        for attempt in range(LOOKUP_ATTEMPTS):
            if attempt:
                await asyncio.sleep(LOOKUP_RETRY_DELAY)
            await self._look_up_members(fetch_members)
            if remote_id in self._members:
                return
        self._log_rejection(remote_id, handler)
        raise SwarmKeyRejected(
            f"{REJECTION_MARKER}: peer {remote_id} has no valid membership record of this swarm; "
            "start it with the same --swarm-key file as the other peers"
        )

    async def _look_up_members(self, fetch_members: FetchMembers) -> None:
        found = await fetch_members()
        if found is None or not isinstance(found.value, dict):
            return
        for subkey, entry in found.value.items():
            if not isinstance(subkey, bytes) or not isinstance(entry.value, bytes):
                continue
            try:
                peer_id = PeerID(subkey)
            except Exception:  # a malformed subkey stored by a key holder: skip it, the others still count
                continue
            if hmac.compare_digest(entry.value, membership_token(self._swarm_key, peer_id)):
                self._members.add(peer_id)

    def _log_rejection(self, remote_id: PeerID, handler: str) -> None:
        if not self._rejections.first_in_period(remote_id):
            return
        logger.warning(
            f"Rejected a {handler} request from peer {remote_id}: it has no membership record of this swarm; "
            "it needs this swarm's --swarm-key file"
        )


class MemberCheckedAverager:
    """A mixin for Hivemind averagers that checks the caller of every RPC with a :class:`MemberCheck`.

    ``member_check=None`` (an open swarm) serves everyone, as Hivemind does. The overrides keep Hivemind's
    signatures and type hints, which its ServicerBase reads to register the handlers (hivemind 1.1.12).
    """

    def __init__(self, *args, member_check: MemberCheck | None = None, **kwargs):
        self.member_check = member_check
        super().__init__(*args, **kwargs)

    async def _require_member(self, context: P2PContext, handler: str) -> None:
        if self.member_check is not None:
            fetch = partial(self.dht.get, self.member_check.members_key, latest=True, return_future=True)
            await self.member_check.require_member(fetch, context.local_id, context.remote_id, handler)

    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        await self._require_member(context, "rpc_join_group")
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        await self._require_member(context, "rpc_aggregate_part")
        async for message in super().rpc_aggregate_part(stream, context):
            yield message

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        await self._require_member(context, "rpc_download_state")
        async for message in super().rpc_download_state(request, context):
            yield message


class MemberCheckedGradientAverager(MemberCheckedAverager, GradientAverager):
    """Hivemind's gradient averager with the caller check; names its RPC handlers after this class."""

    # Each class collects its own handlers and stub, so that the names it registers and calls agree.
    _rpc_handlers = None
    _stub_type = None


def member_check_for(run_id: str, swarm_key: SwarmKey | None) -> MemberCheck | None:
    return MemberCheck(run_id, swarm_key) if swarm_key is not None else None

