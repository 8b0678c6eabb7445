"""Per-peer metrics records: their schema, the validators every CellMind DHT node runs, and the publisher.

Each training peer publishes one small record every few seconds under ``{run_id}_metrics``, with its RSA public
key as the subkey. Hivemind's ``RSASignatureValidator`` signs it, so only the owner of that key can write it, and
``SchemaValidator`` rejects a value that does not match :class:`PeerMetrics` exactly. The records expire after
a short time, so a peer that stops publishing disappears from every viewer.

Hivemind's ``SchemaValidator`` works on ``pydantic.v1`` models and refuses any value that pydantic would have to
convert, so every number field here is strict and the publisher always sends every field (``None`` included).

Every DHT node of a run passes :func:`dht_validators` to ``hivemind.DHT(record_validators=...)``::

    dht = hivemind.DHT(initial_peers=..., record_validators=dht_validators(run_id), start=True)
    publisher = MetricsPublisher(dht, run_id, name="laptop", device="cpu", client_mode=False)
    publisher.report(local_epoch=3, samples_per_second=12.5, loss=4.2, tokens_processed=81920)
    publisher.shutdown()
"""

import logging
import math
import threading
from typing import Dict, Optional

from hivemind.dht import DHT
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.optim.progress_tracker import TrainingProgressSchema
from hivemind.utils import get_dht_time
from pydantic.v1 import BaseModel, Extra, StrictBool, StrictFloat, confloat, conint, constr

import cellmind

logger = logging.getLogger(__name__)

METRICS_FIELD = "metrics"
PROGRESS_FIELD = "progress"  # Hivemind's ProgressTracker stores LocalTrainingProgress under {run_id}_progress


class PeerMetrics(BaseModel):
    """Metrics one training peer publishes about itself. Times are Hivemind DHT times in seconds."""

    peer_id: bytes
    name: constr(strict=True, max_length=64)
    device: constr(strict=True, max_length=32)
    version: constr(strict=True, max_length=32)
    local_epoch: conint(ge=0, strict=True)
    samples_per_second: confloat(ge=0.0, strict=True)
    loss: Optional[StrictFloat]
    """Recent training loss; None before the first micro-step or when it was not finite."""
    tokens_processed: conint(ge=0, strict=True)
    client_mode: StrictBool
    time: StrictFloat
    target_batch_size: Optional[conint(ge=1, strict=True)]
    validation_loss: Optional[StrictFloat]
    validation_epoch: Optional[conint(ge=0, strict=True)]
    """Global epoch whose parameters gave ``validation_loss``."""

    class Config:
        extra = Extra.forbid  # the DHT's schema check rejects unknown fields too, so the viewer matches it


class MetricsSchema(BaseModel):
    metrics: Dict[BytesWithPublicKey, Optional[PeerMetrics]]


def metrics_key(run_id: str) -> str:
    return f"{run_id}_{METRICS_FIELD}"


def progress_key(run_id: str) -> str:
    return f"{run_id}_{PROGRESS_FIELD}"


def dht_validators(run_id: str) -> list[RecordValidatorBase]:
    """Validators for ``hivemind.DHT(record_validators=...)``: schemas of the run's records and RSA signatures.

    The signature validator signs with the process-wide RSA key, the same one ``hivemind.Optimizer`` uses for its
    progress records, so a peer's metrics and progress records share one subkey.
    """
    return [
        SchemaValidator(MetricsSchema, prefix=run_id),
        SchemaValidator(TrainingProgressSchema, prefix=run_id),
        RSASignatureValidator(),
    ]


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """``float(value)`` if it is finite, else None (NaN would fail the schema's no-conversion check)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsPublisher:
    """Publishes this peer's :class:`PeerMetrics` every ``period`` seconds from a daemon thread.

    :param dht: the peer's DHT, created with :func:`dht_validators`
    :param run_id: the run whose ``{run_id}_metrics`` key receives the record
    :param name: the name other people see for this peer
    :param device: where the peer trains (``cpu``, ``cuda``, ``mps``)
    :param client_mode: whether the peer only connects outwards
    :param period: seconds between two publications; a few seconds keeps the viewer fresh at little traffic
    :param expiration: seconds a record lives in the DHT; a peer that stops publishing vanishes after this.
      Keep it several times ``period`` so that one slow store does not make a live peer blink out.
    :param target_batch_size: the run's target batch size, published so that viewers can show progress toward it
    """

    def __init__(
        self,
        dht: DHT,
        run_id: str,
        *,
        name: str,
        device: str,
        client_mode: bool,
        period: float = 5.0,
        expiration: float = 30.0,
        target_batch_size: Optional[int] = None,
    ):
        if period <= 0 or expiration <= period:
            raise ValueError(f"need 0 < period < expiration, got period={period}, expiration={expiration}")
        self.dht, self.key = dht, metrics_key(run_id)
        self.period, self.expiration = period, expiration
        self._subkey = RSASignatureValidator().local_public_key
        self._lock = threading.Lock()
        self._fields = dict(
            peer_id=dht.peer_id.to_bytes(),
            name=name[:64],
            device=device[:32],
            version=cellmind.__version__,
            local_epoch=0,
            samples_per_second=0.0,
            loss=None,
            tokens_processed=0,
            client_mode=bool(client_mode),
            target_batch_size=target_batch_size,
            validation_loss=None,
            validation_epoch=None,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"MetricsPublisher({self.key})", daemon=True)
        self._thread.start()

    def report(self, *, local_epoch: int, samples_per_second: float, loss: float, tokens_processed: int) -> None:
        """Remember the latest training numbers; the background thread publishes them on its next round."""
        with self._lock:
            self._fields.update(
                local_epoch=max(0, int(local_epoch)),
                samples_per_second=max(0.0, finite_or_none(samples_per_second) or 0.0),
                loss=finite_or_none(loss),
                tokens_processed=max(0, int(tokens_processed)),
            )

    def report_validation(self, *, global_epoch: int, loss: float) -> None:
        """Remember the validation loss measured on the parameters of ``global_epoch``."""
        with self._lock:
            self._fields.update(validation_loss=finite_or_none(loss), validation_epoch=max(0, int(global_epoch)))

    def record(self) -> PeerMetrics:
        """The record the next publication will store, stamped with the current DHT time."""
        with self._lock:
            return PeerMetrics(**self._fields, time=get_dht_time())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop publishing and replace this peer's record with None, so viewers drop it before it expires."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout)
        self._store(None)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._store(self.record().dict())
            self._stop.wait(self.period)

    def _store(self, value: Optional[dict]) -> None:
        try:
            stored = self.dht.store(
                self.key,
                value,
                expiration_time=get_dht_time() + self.expiration,
                subkey=self._subkey,
                return_future=True,
            ).result(timeout=self.expiration)
        except Exception as error:  # a failed store must never stop training; the next round retries
            logger.warning(f"Could not publish metrics under {self.key}: {type(error).__name__}: {error}")
            return
        if not stored:
            logger.info(f"No DHT node accepted the metrics record under {self.key}; retrying in {self.period}s")
