"""Turning the run's DHT records into one snapshot of the swarm: pure functions, no network.

The inputs are what ``hivemind.DHT.get(key, latest=True)`` returns for ``{run_id}_metrics`` and
``{run_id}_progress``: a dictionary from subkey (the peer's RSA public key) to ``ValueWithExpiration``. Both kinds
of record of one peer share that subkey, because both are signed with the peer's process-wide key.

The global epoch, samples accumulated and the time to the next global step follow Hivemind's
``ProgressTracker._parse_swarm_progress_data``: the global epoch is the highest epoch of a non-client peer,
samples count only from peers at that epoch, and each peer's count is extrapolated from its report time at its
samples per second.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.p2p import PeerID
from pydantic.v1 import ValidationError

from cellmind.metrics import PeerMetrics

SHORT_PEER_ID_LENGTH = 8


@dataclass
class PeerRow:
    """One line of the peer table."""

    peer_id: str
    short_id: str
    name: str
    device: str
    version: str
    local_epoch: int
    samples_per_second: float
    loss: Optional[float]
    tokens_processed: int
    client_mode: bool
    age: float
    """Seconds since the peer published this record."""
    validation_loss: Optional[float] = None
    validation_epoch: Optional[int] = None


@dataclass
class Rejected:
    """Records the viewer refused: malformed ones (schema) and forged ones (signature)."""

    malformed: int = 0
    forged: int = 0


@dataclass
class Snapshot:
    """The swarm as one viewer sees it at ``time`` (Hivemind DHT time, seconds)."""

    run_id: str
    time: float
    global_epoch: int
    samples_accumulated: int
    target_batch_size: Optional[int]
    eta_seconds: Optional[float]
    """Estimated seconds to the next global step; None while no peer reports throughput or the target is unknown."""
    samples_per_second: float
    num_peers: int
    num_clients: int
    training_loss: Optional[float]
    """Mean of the peers' recent training losses."""
    validation_loss: Optional[float]
    validation_epoch: Optional[int]
    peers: list[PeerRow] = field(default_factory=list)
    rejected: Rejected = field(default_factory=Rejected)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def short_peer_id(peer_id: str) -> str:
    """Return the tail of a base58 peer id, the part that differs between peers (the head is always ``Qm``/``12D3``)."""
    return peer_id[-SHORT_PEER_ID_LENGTH:]


def live_entries(entries: Optional[Mapping], now: float) -> dict:
    """Return ``{subkey: value}`` of the entries that have not expired and were not cleared (value None)."""
    if not isinstance(entries, Mapping):
        return {}
    live = {}
    for subkey, entry in entries.items():
        value, expiration_time = getattr(entry, "value", None), getattr(entry, "expiration_time", -math.inf)
        if value is not None and expiration_time >= now:
            live[subkey] = value
    return live


def parse_records(values: Mapping, model, rejected: Rejected) -> dict:
    """Parse each value with ``model``; a value that does not fit is dropped and counted as malformed."""
    parsed = {}
    for subkey, value in values.items():
        try:
            record = model.parse_obj(value)
        except (ValidationError, TypeError):
            rejected.malformed += 1
            continue
        if any(isinstance(item, float) and not math.isfinite(item) for item in record.dict().values()):
            rejected.malformed += 1  # Hivemind's schema check rejects NaN too, because NaN != NaN
            continue
        parsed[subkey] = record
    return parsed


def decode_peer_id(raw: bytes) -> Optional[str]:
    try:
        return PeerID(raw).to_base58()
    except Exception:  # libp2p raises several types for bad bytes; the row then shows the id in hex
        return None


def build_snapshot(
    run_id: str,
    metrics_entries: Optional[Mapping],
    progress_entries: Optional[Mapping],
    *,
    now: float,
    target_batch_size: Optional[int] = None,
    viewer_peer_id: Optional[str] = None,
    rejected: Optional[Rejected] = None,
) -> Snapshot:
    """Aggregate the run's metrics and progress records into one :class:`Snapshot`.

    :param metrics_entries: the ``.value`` of ``dht.get(f"{run_id}_metrics", latest=True)``, or None
    :param progress_entries: the ``.value`` of ``dht.get(f"{run_id}_progress", latest=True)``, or None
    :param now: current Hivemind DHT time; entries that expired before it are dropped
    :param target_batch_size: used when no peer publishes one
    :param viewer_peer_id: the viewer's own peer id, never counted as a peer
    :param rejected: counts of records the DHT already refused; malformed records found here are added
    """
    rejected = dataclasses.replace(rejected) if rejected is not None else Rejected()
    metrics = parse_records(live_entries(metrics_entries, now), PeerMetrics, rejected)
    progress = parse_records(live_entries(progress_entries, now), LocalTrainingProgress, rejected)
    metrics = [record for record in metrics.values() if decode_peer_id(record.peer_id) != viewer_peer_id]
    progress = [record for record in progress.values() if decode_peer_id(record.peer_id) != viewer_peer_id]

    rows = sorted((_peer_row(record, now) for record in metrics), key=lambda row: (row.name, row.peer_id))
    global_epoch = _global_epoch(metrics, progress)
    target_batch_size = _published_target(metrics) or target_batch_size
    samples_accumulated, estimated_samples = _samples_toward_next_step(progress, global_epoch, now)
    samples_per_second = _swarm_samples_per_second(metrics, progress)
    validation_loss, validation_epoch = _latest_validation(rows)
    return Snapshot(
        run_id=run_id,
        time=now,
        global_epoch=global_epoch,
        samples_accumulated=samples_accumulated,
        target_batch_size=target_batch_size,
        eta_seconds=_eta(target_batch_size, estimated_samples, samples_per_second),
        samples_per_second=samples_per_second,
        num_peers=len(rows),
        num_clients=sum(row.client_mode for row in rows),
        training_loss=_mean([row.loss for row in rows]),
        validation_loss=validation_loss,
        validation_epoch=validation_epoch,
        peers=rows,
        rejected=rejected,
    )


def _peer_row(record: PeerMetrics, now: float) -> PeerRow:
    peer_id = decode_peer_id(record.peer_id) or record.peer_id.hex()
    return PeerRow(
        peer_id=peer_id,
        short_id=short_peer_id(peer_id),
        name=record.name,
        device=record.device,
        version=record.version,
        local_epoch=record.local_epoch,
        samples_per_second=record.samples_per_second,
        loss=record.loss,
        tokens_processed=record.tokens_processed,
        client_mode=record.client_mode,
        age=max(0.0, now - record.time),
        validation_loss=record.validation_loss,
        validation_epoch=record.validation_epoch,
    )


def _global_epoch(metrics: list[PeerMetrics], progress: list[LocalTrainingProgress]) -> int:
    """Return the highest epoch of a peer not in client mode, as Hivemind counts it (of any peer if all are clients)."""
    epochs = [(record.local_epoch, record.client_mode) for record in metrics]
    epochs += [(record.epoch, record.client_mode) for record in progress]
    servers = [epoch for epoch, client_mode in epochs if not client_mode]
    return max(servers or [epoch for epoch, _client_mode in epochs] or [0])


def _published_target(metrics: list[PeerMetrics]) -> Optional[int]:
    """Return the target batch size most peers publish, or None if none does."""
    targets = [record.target_batch_size for record in metrics if record.target_batch_size is not None]
    return max(sorted(set(targets)), key=targets.count) if targets else None


def _samples_toward_next_step(progress: list[LocalTrainingProgress], global_epoch: int, now: float):
    """Return samples reported at the global epoch, and the same count extrapolated to ``now``."""
    reported, estimated = 0, 0.0
    for record in progress:
        if record.epoch == global_epoch:
            reported += record.samples_accumulated
            estimated += record.samples_accumulated + max(0.0, now - record.time) * record.samples_per_second
    return reported, estimated


def _swarm_samples_per_second(metrics: list[PeerMetrics], progress: list[LocalTrainingProgress]) -> float:
    """Sum Hivemind's per-peer throughput, as its ETA does; without progress records, the metrics' throughput."""
    records = progress or metrics
    return float(sum(record.samples_per_second for record in records))


def _eta(target_batch_size: Optional[int], estimated_samples: float, samples_per_second: float) -> Optional[float]:
    if target_batch_size is None or samples_per_second <= 0:
        return None
    return max(0.0, target_batch_size - estimated_samples) / samples_per_second


def _latest_validation(rows: list[PeerRow]) -> tuple[Optional[float], Optional[int]]:
    """Return the mean validation loss of the latest global epoch any peer evaluated, and that epoch."""
    epochs = [row.validation_epoch for row in rows if row.validation_loss is not None]
    if not epochs:
        return None, None
    latest = max(epochs)
    return _mean([row.validation_loss for row in rows if row.validation_epoch == latest]), latest


def _mean(values) -> Optional[float]:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None
