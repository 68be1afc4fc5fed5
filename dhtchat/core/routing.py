"""Kademlia routing table (Maymounkov & Mazieres 2002, sec. 2.2 and 2.4) with IP diversity.

Theory of operation
-------------------
Contacts are grouped by the length of the prefix their id shares with ours: bucket ``i``
holds ids whose first differing bit with ours is bit ``i``. Each bucket holds at most ``k``
contacts in least-recently-seen order and keeps a small replacement cache. Only *verified*
contacts enter (they answered a signed challenge); a contact is evicted after
``max_failures`` consecutive failed requests, not after one, and the freshest replacement
takes its place. IP diversity (discv5; S/Kademlia sec. 4.2): at most ``max_per_subnet_bucket``
contacts of one /24 (IPv6 /64) per bucket and ``max_per_subnet_table`` per table.

``closest(target, n)`` is exact: bucket ``c = cpl(own, target)`` holds every contact sharing
``c + 1`` bits with the target, then come the buckets ``> c`` (distance bit ``c`` set), then
buckets ``c-1 .. 0`` in that order (each strictly farther than everything before). Among the
buckets ``j > c`` each is wholly closer or wholly farther than all deeper ones, depending on
bit ``j`` of ``own XOR target``, so every bucket is sorted on its own.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from dhtchat.core.addresses import Address, subnet_of
from dhtchat.core.ids import ID_BITS

if TYPE_CHECKING:
    from dhtchat.core.wire import NodeInfo


@dataclass(slots=True)
class Contact:
    """A verified peer in the routing table."""

    node_id: bytes
    address: Address
    last_seen: float
    failures: int = 0
    subnet: str = field(default="", compare=False)
    key: int = field(default=0, compare=False)  # node_id as an integer, for XOR sorting
    # the contact as sent in replies, built on first use by the node (reset on a move)
    info: NodeInfo | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.subnet:
            self.subnet = subnet_of(self.address[0])
        if not self.key:
            self.key = int.from_bytes(self.node_id, "big")


class AddResult(Enum):
    """Outcome of :meth:`RoutingTable.add`."""

    ADDED = "added"
    UPDATED = "updated"
    CACHED = "cached"  # bucket full: kept as a replacement candidate
    REJECTED_DIVERSITY = "rejected-diversity"
    REJECTED_SELF = "rejected-self"


class _Bucket:
    __slots__ = ("contacts", "last_changed", "replacements", "subnets")

    def __init__(self) -> None:
        # LRU first; a plain dict (a contact is moved to the end by re-inserting it): cheaper
        # to iterate than an OrderedDict, and closest() iterates buckets for every request
        self.contacts: dict[bytes, Contact] = {}
        self.replacements: OrderedDict[bytes, Contact] | None = None  # made when first needed
        self.last_changed = 0.0
        self.subnets: dict[str, int] = {}  # contacts per subnet in this bucket


class RoutingTable:
    """k-buckets around ``own_id`` holding verified contacts."""

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = 8,
        max_failures: int = 3,
        max_per_subnet_bucket: int = 2,
        max_per_subnet_table: int = 10,
        replacement_cache_size: int | None = None,
        now: float = 0.0,
    ) -> None:
        self.own_id = own_id
        self._own_key = int.from_bytes(own_id, "big")
        self.k = k
        self.max_failures = max_failures
        self.max_per_subnet_bucket = max_per_subnet_bucket
        self.max_per_subnet_table = max_per_subnet_table
        self.replacement_cache_size = k if replacement_cache_size is None else \
            replacement_cache_size
        # Buckets are created on first use: a node fills ~log2(N) of the 256 (memory matters
        # when the simulator runs 100k nodes).
        self._buckets: list[_Bucket | None] = [None] * ID_BITS
        self._subnet_counts: Counter[str] = Counter()
        self._size = 0
        self._deepest = -1  # highest index of a non-empty bucket
        self._created = now  # an empty bucket counts as refreshed when the table was made

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: bytes) -> bool:
        return self.get(node_id) is not None

    def bucket_index(self, node_id: bytes) -> int:
        """Index of the bucket ``node_id`` belongs in (the common prefix length)."""
        return ID_BITS - (int.from_bytes(node_id, "big") ^ self._own_key).bit_length()

    def get(self, node_id: bytes) -> Contact | None:
        """The contact with this id, if present."""
        index = ID_BITS - (int.from_bytes(node_id, "big") ^ self._own_key).bit_length()
        if index >= ID_BITS:
            return None  # our own id
        bucket = self._buckets[index]
        return bucket.contacts.get(node_id) if bucket is not None else None

    def contacts(self) -> list[Contact]:
        """Every contact, bucket by bucket."""
        return [c for b in self._buckets if b is not None for c in b.contacts.values()]

    def add(self, node_id: bytes, address: Address, now: float) -> tuple[AddResult, Contact | None]:
        """Insert or refresh a verified contact.

        Returns the result and, when the bucket is full, its least-recently-seen contact so
        the caller can ping it (Kademlia's eviction check).
        """
        key = int.from_bytes(node_id, "big")
        index = ID_BITS - (key ^ self._own_key).bit_length()
        if index >= ID_BITS:
            return AddResult.REJECTED_SELF, None
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._bucket(index)
        existing = bucket.contacts.get(node_id)
        if existing is not None:
            if existing.address != address:
                # A verified id moved: accept the new address only within diversity limits.
                new_subnet = subnet_of(address[0])
                if new_subnet != existing.subnet and not self._subnet_allows(bucket, new_subnet):
                    return AddResult.REJECTED_DIVERSITY, None
                self._count_subnet(bucket, existing.subnet, -1)
                existing.address, existing.subnet = address, new_subnet
                existing.info = None
                self._count_subnet(bucket, new_subnet, 1)
            existing.last_seen = now
            existing.failures = 0
            contacts = bucket.contacts
            contacts[node_id] = contacts.pop(node_id)  # most recently seen last
            return AddResult.UPDATED, None
        contact = Contact(node_id, address, now, 0, subnet_of(address[0]), key)
        if not self._subnet_allows(bucket, contact.subnet):
            return AddResult.REJECTED_DIVERSITY, None
        if len(bucket.contacts) < self.k:
            self._insert(bucket, contact, now)
            return AddResult.ADDED, None
        replacements = bucket.replacements
        if replacements is None:
            replacements = bucket.replacements = OrderedDict()
        replacements.pop(node_id, None)
        replacements[node_id] = contact
        while len(replacements) > self.replacement_cache_size:
            replacements.popitem(last=False)
        return AddResult.CACHED, next(iter(bucket.contacts.values()))

    def has_room_for(self, node_id: bytes, address: Address) -> bool:
        """Whether an unknown contact would enter its bucket now (not full, diverse enough)."""
        index = ID_BITS - (int.from_bytes(node_id, "big") ^ self._own_key).bit_length()
        if index >= ID_BITS:
            return False
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._bucket(index)
        return len(bucket.contacts) < self.k and self._subnet_allows(
            bucket, subnet_of(address[0])
        )

    def _bucket(self, index: int) -> _Bucket:
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
            bucket.last_changed = self._created
        return bucket

    def _subnet_allows(self, bucket: _Bucket, subnet: str) -> bool:
        if self._subnet_counts[subnet] >= self.max_per_subnet_table:
            return False
        return bucket.subnets.get(subnet, 0) < self.max_per_subnet_bucket

    def _count_subnet(self, bucket: _Bucket, subnet: str, delta: int) -> None:
        """Move the per-table and per-bucket counts of ``subnet`` by ``delta``."""
        left = self._subnet_counts[subnet] + delta
        if left > 0:
            self._subnet_counts[subnet] = left
        else:
            del self._subnet_counts[subnet]
        left = bucket.subnets.get(subnet, 0) + delta
        if left > 0:
            bucket.subnets[subnet] = left
        else:
            del bucket.subnets[subnet]

    def _insert(self, bucket: _Bucket, contact: Contact, now: float) -> None:
        bucket.contacts[contact.node_id] = contact
        bucket.last_changed = now
        self._count_subnet(bucket, contact.subnet, 1)
        self._size += 1
        index = ID_BITS - (contact.key ^ self._own_key).bit_length()
        self._deepest = max(self._deepest, index)

    def remove(self, node_id: bytes, now: float) -> Contact | None:
        """Remove a contact and promote the freshest replacement. Returns the promoted one."""
        bucket = self._buckets[self.bucket_index(node_id)]
        if bucket is None:
            return None
        contact = bucket.contacts.pop(node_id, None)
        replacements = bucket.replacements
        if replacements is not None:
            replacements.pop(node_id, None)
        if contact is None:
            return None
        self._count_subnet(bucket, contact.subnet, -1)
        self._size -= 1
        while replacements:
            _, candidate = replacements.popitem(last=True)
            if self._subnet_allows(bucket, candidate.subnet):
                self._insert(bucket, candidate, now)
                return candidate
        while self._deepest >= 0 and not self._contacts_in(self._deepest):
            self._deepest -= 1
        return None

    def record_failure(self, node_id: bytes, now: float) -> bool:
        """Count a failed request; returns True if the contact was evicted."""
        contact = self.get(node_id)
        if contact is None:
            return False
        contact.failures += 1
        if contact.failures >= self.max_failures:
            self.remove(node_id, now)
            return True
        return False

    def closest(self, target: bytes, count: int) -> list[Contact]:
        """The ``count`` known contacts closest to ``target`` by XOR distance (exact).

        Buckets are visited in order of distance (see the module docstring), so only the
        contacts of the buckets needed are sorted.
        """
        if count <= 0:
            return []
        t = int.from_bytes(target, "big")
        x = t ^ self._own_key
        c = ID_BITS - x.bit_length()
        buckets = self._buckets
        deepest = self._deepest

        def by_distance(contact: Contact) -> int:
            return contact.key ^ t

        result: list[Contact] = []
        if c < ID_BITS:
            bucket = buckets[c]
            if bucket is not None and bucket.contacts:
                result = sorted(bucket.contacts.values(), key=by_distance)
                if len(result) >= count:
                    return result[:count]
        if c < deepest:
            # Buckets j > c: their contacts all differ from the target at bit c; bit j of
            # (own ^ target) decides whether bucket j is closer than every deeper bucket (set)
            # or farther (clear). Hence: set bits ascending, then clear bits descending.
            later: list[_Bucket] = []
            for j in range(c + 1, deepest + 1):
                bucket = buckets[j]
                if bucket is None or not bucket.contacts:
                    continue
                if x >> (ID_BITS - 1 - j) & 1:
                    result += sorted(bucket.contacts.values(), key=by_distance)
                    if len(result) >= count:
                        return result[:count]
                else:
                    later.append(bucket)
            for bucket in reversed(later):
                result += sorted(bucket.contacts.values(), key=by_distance)
                if len(result) >= count:
                    return result[:count]
        for i in range(min(c - 1, deepest), -1, -1):
            bucket = buckets[i]
            if bucket is not None and bucket.contacts:
                result += sorted(bucket.contacts.values(), key=by_distance)
                if len(result) >= count:
                    return result[:count]
        return result

    def stale_buckets(self, now: float, max_age: float) -> list[int]:
        """Indices of buckets not refreshed within ``max_age`` seconds, up to the deepest one
        in use (buckets past it hold no one to find)."""
        buckets = self._buckets
        created = self._created
        stale = []
        for i in range(self._deepest + 1):
            bucket = buckets[i]
            if now - (bucket.last_changed if bucket is not None else created) >= max_age:
                stale.append(i)
        return stale

    def touch_bucket(self, index: int, now: float) -> None:
        """Mark a bucket as refreshed (a lookup into its range was done)."""
        self._bucket(index).last_changed = now

    def bucket_size(self, index: int) -> int:
        """Number of contacts in bucket ``index``."""
        bucket = self._buckets[index]
        return len(bucket.contacts) if bucket is not None else 0

    def _contacts_in(self, index: int) -> list[Contact]:
        bucket = self._buckets[index]
        return list(bucket.contacts.values()) if bucket is not None else []

    def _last_changed(self, index: int) -> float:
        bucket = self._buckets[index]
        return bucket.last_changed if bucket is not None else self._created
