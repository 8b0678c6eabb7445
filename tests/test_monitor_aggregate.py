"""Aggregation of fabricated DHT records, with the real validators and no network."""

import dataclasses
import math

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import PeerID
from hivemind.utils import MSGPackSerializer, ValueWithExpiration
from hivemind.utils.crypto import RSAPrivateKey

import cellmind
from cellmind.metrics import dht_validators, metrics_key, progress_key
from cellmind.monitor.aggregate import Rejected, build_snapshot, short_peer_id
from cellmind.monitor.validation import CountingValidator

RUN_ID = "unit"
NOW = 1_000_000.0
EXPIRATION = NOW + 30


@pytest.fixture(scope="module")
def keys() -> list[RSAPrivateKey]:
    return [RSAPrivateKey() for _ in range(3)]


def fake_peer_id(index: int) -> bytes:
    """A valid libp2p peer id (identity multihash) that differs per index."""
    return PeerID(bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + bytes([index]) * 32).to_bytes()


def metrics_value(index: int, **changes) -> dict:
    value = dict(
        peer_id=fake_peer_id(index),
        name=f"peer{index}",
        device="cpu",
        version=cellmind.__version__,
        local_epoch=5,
        samples_per_second=2.0,
        loss=3.0,
        tokens_processed=1000,
        client_mode=False,
        time=NOW - 1,
        target_batch_size=40,
        validation_loss=None,
        validation_epoch=None,
    )
    value.update(changes)
    return value


def progress_value(index: int, **changes) -> dict:
    value = dict(
        peer_id=fake_peer_id(index), epoch=5, samples_accumulated=10, samples_per_second=2.0, time=NOW,
        client_mode=False,
    )
    value.update(changes)
    return value


def signed_record(key: RSAPrivateKey, dht_key: str, value, *, owner: RSAPrivateKey = None) -> DHTRecord:
    """A record under ``dht_key`` whose subkey names ``owner`` (default: ``key``), signed with ``key``."""
    owner_public_key = RSASignatureValidator(owner or key).local_public_key
    record = DHTRecord(
        key=DHTID.generate(source=dht_key).to_bytes(),
        subkey=MSGPackSerializer.dumps(owner_public_key),
        value=MSGPackSerializer.dumps(value),
        expiration_time=EXPIRATION,
    )
    return dataclasses.replace(record, value=RSASignatureValidator(key).sign_value(record))


def accepted_entries(validator: CountingValidator, records: list[DHTRecord]) -> dict:
    """What ``DHT.get`` returns for these records: only the valid ones, signatures stripped, values decoded."""
    entries = {}
    for record in records:
        if validator.validate(record):
            value = MSGPackSerializer.loads(validator.strip_value(record))
            entries[MSGPackSerializer.loads(record.subkey)] = ValueWithExpiration(value, record.expiration_time)
    return entries


def entries(*values, expiration_time: float = EXPIRATION) -> dict:
    return {f"subkey{index}".encode(): ValueWithExpiration(value, expiration_time) for index, value in enumerate(values)}


def test_samples_and_throughput_sum_over_peers():
    progress = entries(
        progress_value(0, samples_accumulated=10, samples_per_second=2.0),
        progress_value(1, samples_accumulated=6, samples_per_second=3.0),
        progress_value(2, epoch=4, samples_accumulated=7, samples_per_second=1.0),  # behind: speed counts only
    )
    snapshot = build_snapshot(RUN_ID, entries(metrics_value(0), metrics_value(1)), progress, now=NOW)
    assert snapshot.global_epoch == 5
    assert snapshot.samples_accumulated == 16
    assert snapshot.samples_per_second == pytest.approx(6.0)
    assert snapshot.target_batch_size == 40
    assert snapshot.eta_seconds == pytest.approx((40 - 16) / 6.0)


def test_eta_extrapolates_from_report_time():
    progress = entries(progress_value(0, samples_accumulated=10, samples_per_second=2.0, time=NOW - 3))
    snapshot = build_snapshot(RUN_ID, None, progress, now=NOW, target_batch_size=40)
    assert snapshot.samples_accumulated == 10
    assert snapshot.eta_seconds == pytest.approx((40 - 10 - 3 * 2.0) / 2.0)


def test_eta_unknown_without_throughput_or_target():
    idle = entries(progress_value(0, samples_per_second=0.0))
    assert build_snapshot(RUN_ID, None, idle, now=NOW, target_batch_size=40).eta_seconds is None
    assert build_snapshot(RUN_ID, None, entries(progress_value(0)), now=NOW).eta_seconds is None


def test_eta_zero_once_target_reached():
    progress = entries(progress_value(0, samples_accumulated=50))
    assert build_snapshot(RUN_ID, None, progress, now=NOW, target_batch_size=40).eta_seconds == 0.0


def test_published_target_beats_fallback():
    metrics = entries(metrics_value(0, target_batch_size=64), metrics_value(1, target_batch_size=64))
    assert build_snapshot(RUN_ID, metrics, None, now=NOW, target_batch_size=8).target_batch_size == 64
    unpublished = entries(metrics_value(0, target_batch_size=None))
    assert build_snapshot(RUN_ID, unpublished, None, now=NOW, target_batch_size=8).target_batch_size == 8


def test_client_mode_peer_does_not_set_global_epoch():
    metrics = entries(metrics_value(0, local_epoch=3), metrics_value(1, local_epoch=9, client_mode=True))
    snapshot = build_snapshot(RUN_ID, metrics, None, now=NOW)
    assert snapshot.global_epoch == 3
    assert snapshot.num_clients == 1
    assert snapshot.num_peers == 2


def test_global_epoch_takes_progress_records_too():
    metrics = entries(metrics_value(0, local_epoch=3))
    progress = entries(progress_value(0, epoch=4))
    assert build_snapshot(RUN_ID, metrics, progress, now=NOW).global_epoch == 4


def test_peer_rows_show_each_metrics_record():
    metrics = entries(metrics_value(1, name="beta", loss=2.0), metrics_value(0, name="alpha", loss=4.0))
    snapshot = build_snapshot(RUN_ID, metrics, None, now=NOW)
    assert [row.name for row in snapshot.peers] == ["alpha", "beta"]
    alpha = snapshot.peers[0]
    assert alpha.peer_id == PeerID(fake_peer_id(0)).to_base58()
    assert alpha.short_id == short_peer_id(alpha.peer_id)
    assert alpha.age == pytest.approx(1.0)
    assert snapshot.training_loss == pytest.approx(3.0)


def test_expired_and_cleared_records_dropped():
    live = entries(metrics_value(0))
    expired = entries(metrics_value(1), expiration_time=NOW - 0.1)
    cleared = {b"gone": ValueWithExpiration(None, EXPIRATION)}  # what a peer stores when it leaves
    snapshot = build_snapshot(RUN_ID, {**live, b"old": expired[b"subkey0"], **cleared}, None, now=NOW)
    assert [row.name for row in snapshot.peers] == ["peer0"]
    assert snapshot.rejected == Rejected()


def test_viewer_never_counts_itself():
    viewer = PeerID(fake_peer_id(7)).to_base58()
    metrics = entries(metrics_value(0), metrics_value(7))
    progress = entries(progress_value(0), progress_value(7, epoch=99))
    snapshot = build_snapshot(RUN_ID, metrics, progress, now=NOW, viewer_peer_id=viewer)
    assert [row.name for row in snapshot.peers] == ["peer0"]
    assert snapshot.global_epoch == 5


def test_latest_validation_loss_averaged():
    metrics = entries(
        metrics_value(0, validation_loss=2.0, validation_epoch=4),
        metrics_value(1, validation_loss=3.0, validation_epoch=4),
        metrics_value(2, validation_loss=9.0, validation_epoch=2),
    )
    snapshot = build_snapshot(RUN_ID, metrics, None, now=NOW)
    assert snapshot.validation_epoch == 4
    assert snapshot.validation_loss == pytest.approx(2.5)


@pytest.mark.parametrize(
    "bad_value",
    [
        "not a dict",
        {"name": "only a name"},
        metrics_value(5, local_epoch="3"),
        metrics_value(5, local_epoch=-1),
        metrics_value(5, loss=math.nan),
        metrics_value(5, surprise="extra field"),
    ],
)
def test_malformed_metrics_counted_not_shown(bad_value):
    snapshot = build_snapshot(RUN_ID, entries(metrics_value(0), bad_value), None, now=NOW)
    assert [row.name for row in snapshot.peers] == ["peer0"]
    assert snapshot.rejected.malformed == 1


def test_malformed_progress_counted():
    progress = entries(progress_value(0), progress_value(1, samples_accumulated=-5))
    snapshot = build_snapshot(RUN_ID, None, progress, now=NOW, rejected=Rejected(malformed=2, forged=1))
    assert snapshot.samples_accumulated == 10
    assert snapshot.rejected == Rejected(malformed=3, forged=1)


def test_validators_accept_signed_records(keys):
    validator = CountingValidator(dht_validators(RUN_ID))
    records = [
        signed_record(keys[0], metrics_key(RUN_ID), metrics_value(0)),
        signed_record(keys[0], progress_key(RUN_ID), progress_value(0)),
        signed_record(keys[1], metrics_key(RUN_ID), metrics_value(1)),
    ]
    metrics = accepted_entries(validator, [records[0], records[2]])
    progress = accepted_entries(validator, [records[1]])
    snapshot = build_snapshot(RUN_ID, metrics, progress, now=NOW, rejected=validator.rejected())
    assert [row.name for row in snapshot.peers] == ["peer0", "peer1"]
    assert snapshot.samples_accumulated == 10
    assert snapshot.rejected == Rejected()


def test_forged_record_rejected_and_counted(keys):
    validator = CountingValidator(dht_validators(RUN_ID))
    honest = signed_record(keys[0], metrics_key(RUN_ID), metrics_value(0))
    # keys[2] writes a record that claims to be keys[0]'s
    forged = signed_record(keys[2], metrics_key(RUN_ID), metrics_value(0, name="impostor"), owner=keys[0])
    tampered = dataclasses.replace(honest, value=honest.value.replace(b"peer0", b"peerX"))
    metrics = accepted_entries(validator, [forged, tampered, honest])
    snapshot = build_snapshot(RUN_ID, metrics, None, now=NOW, rejected=validator.rejected())
    assert [row.name for row in snapshot.peers] == ["peer0"]
    assert snapshot.rejected == Rejected(malformed=0, forged=2)


def test_schema_rejects_malformed_signed_record(keys):
    validator = CountingValidator(dht_validators(RUN_ID))
    records = [
        signed_record(keys[0], metrics_key(RUN_ID), metrics_value(0, local_epoch=2.0)),  # float for an int
        signed_record(keys[1], metrics_key(RUN_ID), {key: value for key, value in metrics_value(1).items()
                                                     if key != "loss"}),  # a field left out
        signed_record(keys[2], progress_key(RUN_ID), progress_value(2, client_mode="no")),
    ]
    assert accepted_entries(validator, records) == {}
    assert validator.rejected() == Rejected(malformed=3, forged=0)


def test_unsigned_metrics_record_rejected(keys):
    validator = CountingValidator(dht_validators(RUN_ID))
    record = DHTRecord(
        key=DHTID.generate(source=metrics_key(RUN_ID)).to_bytes(),
        subkey=MSGPackSerializer.dumps(b"no owner here"),
        value=MSGPackSerializer.dumps(metrics_value(0)),
        expiration_time=EXPIRATION,
    )
    assert not validator.validate(record)
    assert validator.rejected().malformed == 1  # the schema requires the subkey to carry a public key
