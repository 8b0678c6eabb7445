"""Record validation that also counts what it rejects, so the viewer can say how many records it ignored.

Hivemind drops an invalid record inside the DHT process, where the viewer cannot see it. The viewer's DHT
therefore runs CellMind's validators through :class:`CountingValidator`, which applies them in Hivemind's order and
counts each rejection in shared memory that the viewer's own process reads.
"""

import dataclasses
import multiprocessing as mp
from collections.abc import Iterable

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import DHTRecord, RecordValidatorBase

from cellmind.monitor.aggregate import Rejected


class CountingValidator(RecordValidatorBase):
    """Apply ``validators`` like Hivemind's ``CompositeValidator`` and count forged and malformed records.

    A record is *forged* when a signature validator rejects it and *malformed* when any other validator (the
    schemas) does. One record may be counted more than once, because the DHT validates every copy it receives.
    """

    def __init__(self, validators: Iterable[RecordValidatorBase]):
        self._validators: list[RecordValidatorBase] = []
        for validator in validators:
            if not any(existing.merge_with(validator) for existing in self._validators):
                self._validators.append(validator)
        self._validators.sort(key=lambda validator: validator.priority)
        # Shared memory: the DHT process validates, the viewer's process reads.
        self._forged = mp.Value("q", 0)
        self._malformed = mp.Value("q", 0)

    def rejected(self) -> Rejected:
        return Rejected(malformed=self._malformed.value, forged=self._forged.value)

    def validate(self, record: DHTRecord) -> bool:
        for validator in reversed(self._validators):
            if not validator.validate(record):
                self._count(validator)
                return False
            record = dataclasses.replace(record, value=validator.strip_value(record))
        return True

    def sign_value(self, record: DHTRecord) -> bytes:
        for validator in self._validators:
            record = dataclasses.replace(record, value=validator.sign_value(record))
        return record.value

    def strip_value(self, record: DHTRecord) -> bytes:
        for validator in reversed(self._validators):
            record = dataclasses.replace(record, value=validator.strip_value(record))
        return record.value

    @property
    def priority(self) -> int:
        return max((validator.priority for validator in self._validators), default=0)

    def _count(self, validator: RecordValidatorBase) -> None:
        counter = self._forged if isinstance(validator, RSASignatureValidator) else self._malformed
        with counter.get_lock():
            counter.value += 1
