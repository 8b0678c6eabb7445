"""The viewer's DHT node: joins the swarm in client mode, trains nothing, reads the run's records."""

import logging
from collections.abc import Sequence
from typing import Optional

import hivemind
from hivemind.utils import get_dht_time

from cellmind.errors import SwarmError
from cellmind.swarm import JOIN_TIMEOUT, RunManifest, fetch_manifest, shutdown_dht, validate_initial_peers
from cellmind.i18n import _
from cellmind.metrics import dht_validators, metrics_key, progress_key
from cellmind.monitor.aggregate import Snapshot, build_snapshot
from cellmind.monitor.validation import CountingValidator
from cellmind.swarm_key import SwarmKey, diagnose_join_failure, namespaced_run_id

logger = logging.getLogger(__name__)


class SwarmReader:
    """A client-mode DHT node that turns the run's records into snapshots.

    :param run_id: the run to watch
    :param initial_peers: multiaddrs of any peers of the swarm
    :param target_batch_size: shown when no peer publishes the run's target batch size
    :param request_timeout: seconds one DHT read may take before the snapshot is built from what arrived
    :param join_timeout: seconds to wait for the DHT node to start and reach an initial peer
    :param swarm_key: the key of a private swarm (``--swarm-key``); it signs the DHT requests and names the run
    """

    def __init__(
        self,
        run_id: str,
        initial_peers: Sequence[str],
        *,
        target_batch_size: Optional[int] = None,
        request_timeout: float = 10.0,
        join_timeout: float = JOIN_TIMEOUT,
        swarm_key: Optional[SwarmKey] = None,
    ):
        run_id = namespaced_run_id(run_id, swarm_key)
        self.run_id, self.target_batch_size, self.request_timeout = run_id, target_batch_size, request_timeout
        self.validator = CountingValidator(dht_validators(run_id))
        self.dht = _start_client_dht(validate_initial_peers(initial_peers), self.validator, join_timeout, swarm_key)
        self.peer_id = self.dht.peer_id.to_base58()
        self._manifest: Optional[RunManifest] = None

    def snapshot(self) -> Snapshot:
        """Read the run's metrics and progress records and aggregate them."""
        metrics = self._get(metrics_key(self.run_id))
        progress = self._get(progress_key(self.run_id))
        return build_snapshot(
            self.run_id,
            metrics,
            progress,
            now=get_dht_time(),
            target_batch_size=self._manifest_target() or self.target_batch_size,
            viewer_peer_id=self.peer_id,
            rejected=self.validator.rejected(),
        )

    def shutdown(self) -> None:
        shutdown_dht(self.dht)

    def _manifest_target(self) -> Optional[int]:
        """Return the run manifest's target batch size, read once it exists."""
        if self._manifest is None:
            self._manifest = fetch_manifest(self.dht, self.run_id, self.request_timeout)
        return self._manifest.target_batch_size if self._manifest is not None else None

    def _get(self, key: str):
        try:
            found = self.dht.get(key, latest=True, return_future=True).result(timeout=self.request_timeout)
        except TimeoutError:
            logger.warning(f"Reading {key} from the DHT timed out after {self.request_timeout}s; showing no records")
            return None
        return found.value if found is not None else None


def _start_client_dht(
    initial_peers: list[str], validator: CountingValidator, join_timeout: float, swarm_key: Optional[SwarmKey] = None
) -> hivemind.DHT:
    """Start a client-mode DHT node that has joined through ``initial_peers``, or raise SwarmError."""
    dht = hivemind.DHT(
        initial_peers=initial_peers,
        client_mode=True,
        record_validators=[validator],
        startup_timeout=join_timeout,
        start=False,
        authorizer=swarm_key.authorizer() if swarm_key is not None else None,
    )
    try:
        dht.run_in_background(await_ready=True, timeout=join_timeout)
    except Exception as error:  # Hivemind raises several types here: timeout, p2pd failure, unreachable peers
        if dht.is_alive():
            dht.terminate()
            dht.join(5)
        rejected = diagnose_join_failure(initial_peers, swarm_key)
        if rejected is not None:
            raise rejected from None
        raise SwarmError(
            _(
                "could not join the swarm through {addresses} ({reason}); check that the address is the one a "
                "running peer printed (peers/join.txt) and that this peer is still running"
            ).format(addresses=" ".join(initial_peers), reason=str(error).splitlines()[-1] if str(error) else
                     type(error).__name__)
        ) from None
    return dht
