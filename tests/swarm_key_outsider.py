"""Check, in a fresh process, that a peer without the swarm key reads, writes and downloads nothing of a keyed run.

Run as ``python tests/swarm_key_outsider.py ADDRESS KEY_FILE RUN_ID``; exits 0 when every check holds. It runs
apart from pytest because a hivemind.DHT forks its node process, and forking the test process, whose threads
read the peers' output, can deadlock the child.
"""

import asyncio
import sys
from pathlib import Path

import hivemind
from hivemind.p2p import P2P, P2PHandlerError, PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils.multiaddr import Multiaddr

from cellmind.membership import declare_membership
from cellmind.peer import ClippedGradientAverager, SnapshotStateAverager
from cellmind.run_files import handler_name
from cellmind.swarm import manifest_key
from cellmind.swarm_key import REJECTION_MARKER, load_swarm_key


def main(address: str, key_path: str, run_id: str) -> int:
    key = load_swarm_key(Path(key_path))
    outsider = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                            ensure_bootstrap_success=False, client_mode=True)
    insider = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                           client_mode=True, authorizer=key.authorizer())
    try:
        namespaced = manifest_key(key.run_namespace(run_id))
        assert insider.get(namespaced, latest=True) is not None, "the insider cannot read the manifest"
        for dht_key in (namespaced, manifest_key(run_id), f"{key.run_namespace(run_id)}_progress"):
            assert outsider.get(dht_key, latest=True) is None, f"the outsider read {dht_key}"
        outsider.store(namespaced, "poison", hivemind.utils.get_dht_time() + 60)  # lands in its own node only
        assert insider.get(namespaced, latest=True).value != "poison", "the outsider's record reached the swarm"

        # Someone who learned the namespace (from a checkpoint given away, or libp2p identify) calls the averagers.
        target = PeerID.from_base58(Multiaddr(address)["p2p"])
        namespace = key.run_namespace(run_id)
        asyncio.run(_assert_averagers_reject_outsider(address, target, namespace))
        declaration = declare_membership(insider, namespace, key)
        try:
            parts = asyncio.run(_download_parts(insider, target, namespace))
            assert parts > 0, "a member with a membership record downloaded no state"
        finally:
            declaration.stop()
    finally:
        outsider.shutdown()
        insider.shutdown()
    return 0


async def _assert_averagers_reject_outsider(address: str, target: PeerID, namespace: str) -> None:
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=[address])
    try:
        state_stub = SnapshotStateAverager.get_stub(p2p, target, namespace=f"{namespace}_state_averager")
        grad_stub = ClippedGradientAverager.get_stub(p2p, target, namespace=f"{namespace}_grad_averager")
        for attempt in range(2):  # the second attempt must be rejected too, and logged no second time
            try:
                async for _part in await state_stub.rpc_download_state(averaging_pb2.DownloadRequest()):
                    raise AssertionError("the outsider received part of the model state")
                raise AssertionError("the state download ended without an error")
            except P2PHandlerError as error:
                assert REJECTION_MARKER in str(error), f"unexpected error: {error}"
        try:
            await p2p.call_protobuf_handler(target, handler_name(namespace), runtime_pb2.ExpertUID(uid="tokenizer"),
                                            runtime_pb2.ExpertInfo)
            raise AssertionError("the outsider downloaded the run's tokenizer")
        except P2PHandlerError as error:
            assert REJECTION_MARKER in str(error), f"unexpected error: {error}"
        join_request = averaging_pb2.JoinRequest(schema_hash=b"x", expiration=hivemind.utils.get_dht_time() + 5)
        try:
            async for _message in await grad_stub.rpc_join_group(join_request):
                raise AssertionError("the outsider received a matchmaking answer")
        except P2PHandlerError as error:
            assert REJECTION_MARKER in str(error), f"unexpected error: {error}"
    finally:
        await p2p.shutdown()


async def _download_parts(insider: hivemind.DHT, target: PeerID, namespace: str) -> int:
    p2p = await insider.replicate_p2p()
    stub = SnapshotStateAverager.get_stub(p2p, target, namespace=f"{namespace}_state_averager")
    parts = 0
    async for _part in await stub.rpc_download_state(averaging_pb2.DownloadRequest()):
        parts += 1
    return parts


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
