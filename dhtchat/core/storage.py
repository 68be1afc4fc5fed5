"""Record storage of a DHT node: several records per key (one per owner), TTL, quotas.

Theory of operation
-------------------
Records arrive already validated (see :func:`dhtchat.core.records.validate_record`). The store
keeps, for each key, at most one record per owner and refuses a sequence-number rollback or a
different value under the same sequence number (BEP 44 sec. "mutable items"). Every record is
charged to the /24 (IPv6 /64) that last stored it; a subnet may hold at most
``quota_records_per_subnet`` records and ``quota_bytes_per_subnet`` bytes, and the whole store
is capped too, so a flood from one network cannot fill a node. Expired records are dropped by
:meth:`expire` and never returned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from dhtchat.core.records import Record
from dhtchat.core.wire import StoreStatus


@dataclass(slots=True)
class StoredRecord:
    """A record with its storage bookkeeping."""

    record: Record
    subnet: str
    size: int
    stored_at: float


class RecordStore:
    """Validated records indexed by key then owner."""

    def __init__(
        self,
        *,
        max_records: int = 50_000,
        max_bytes: int = 64 * 1024 * 1024,
        quota_records_per_subnet: int = 512,
        quota_bytes_per_subnet: int = 512 * 1024,
        max_owners_per_key: int = 256,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.quota_records_per_subnet = quota_records_per_subnet
        self.quota_bytes_per_subnet = quota_bytes_per_subnet
        self.max_owners_per_key = max_owners_per_key
        self._by_key: dict[bytes, dict[bytes, StoredRecord]] = {}
        self._records_by_subnet: Counter[str] = Counter()
        self._bytes_by_subnet: Counter[str] = Counter()
        self.record_count = 0
        self.byte_count = 0

    def held_keys(self) -> list[bytes]:
        """All keys currently held."""
        return list(self._by_key)

    def records(self, key: bytes, now: float, owner: bytes | None = None) -> list[Record]:
        """Unexpired records under ``key`` sorted by owner (optionally one owner's)."""
        held = self._by_key.get(key)
        if not held:
            return []
        if owner is not None:
            one = held.get(owner)
            return [one.record] if one is not None and one.record.expires > now else []
        return [s.record for _, s in sorted(held.items()) if s.record.expires > now]

    def subnet_usage(self, subnet: str) -> tuple[int, int]:
        """(records, bytes) charged to ``subnet``."""
        return self._records_by_subnet[subnet], self._bytes_by_subnet[subnet]

    def put(self, record: Record, size: int, subnet: str, now: float) -> StoreStatus:
        """Store a validated record; returns why not when refused."""
        key = record.key
        held = self._by_key.get(key)
        previous = held.get(record.owner) if held else None
        if previous is not None:
            old = previous.record
            if record.seq < old.seq:
                return StoreStatus.ROLLBACK
            if record.seq == old.seq:
                if record != old:
                    return StoreStatus.ROLLBACK  # same seq, other content: refuse the conflict
                return StoreStatus.OK  # refresh of the identical record
        elif held is not None and len(held) >= self.max_owners_per_key:
            return StoreStatus.QUOTA
        # quota accounting as if the previous version were removed first
        prev_size = previous.size if previous is not None else 0
        prev_same_subnet = previous is not None and previous.subnet == subnet
        subnet_records = self._records_by_subnet[subnet] - (1 if prev_same_subnet else 0)
        subnet_bytes = self._bytes_by_subnet[subnet] - (prev_size if prev_same_subnet else 0)
        total_records = self.record_count - (1 if previous is not None else 0)
        total_bytes = self.byte_count - prev_size
        if (
            subnet_records + 1 > self.quota_records_per_subnet
            or subnet_bytes + size > self.quota_bytes_per_subnet
            or total_records + 1 > self.max_records
            or total_bytes + size > self.max_bytes
        ):
            return StoreStatus.QUOTA
        if previous is not None:
            self._uncharge(previous)
        self._by_key.setdefault(key, {})[record.owner] = StoredRecord(record, subnet, size, now)
        self._records_by_subnet[subnet] += 1
        self._bytes_by_subnet[subnet] += size
        self.record_count += 1
        self.byte_count += size
        return StoreStatus.OK

    def _uncharge(self, stored: StoredRecord) -> None:
        self._records_by_subnet[stored.subnet] -= 1
        self._bytes_by_subnet[stored.subnet] -= stored.size
        if self._records_by_subnet[stored.subnet] <= 0:
            del self._records_by_subnet[stored.subnet]
            self._bytes_by_subnet.pop(stored.subnet, None)
        self.record_count -= 1
        self.byte_count -= stored.size

    def expire(self, now: float) -> int:
        """Drop expired records; returns how many were dropped."""
        dropped = 0
        for key in list(self._by_key):
            held = self._by_key[key]
            for owner in [o for o, s in held.items() if s.record.expires <= now]:
                self._uncharge(held.pop(owner))
                dropped += 1
            if not held:
                del self._by_key[key]
        return dropped
