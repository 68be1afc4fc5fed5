"""Events a :class:`~dhtchat.core.node.DhtNode` reports through ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from dhtchat.core.addresses import Address
from dhtchat.core.records import Record


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of node events."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapCompleted(Event):
    """The node reached its bootstrap addresses and ran its self-lookup."""

    query_id: int
    contacts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressObserved(Event):
    """A node at ``peer`` answered our ping: it saw the ping come from ``observed``."""

    peer: Address
    observed: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupCompleted(Event):
    """A ``find_node`` finished with the closest contacts that answered.

    ``hops`` is the number of sequential requests it took to reach the closest of them.
    """

    query_id: int
    target: bytes
    contacts: tuple[tuple[bytes, Address], ...]
    queries: int
    hops: int
    requests_sent: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GetCompleted(Event):
    """A ``get`` finished; ``records`` holds the newest valid record per owner."""

    query_id: int
    key: bytes
    records: tuple[Record, ...]
    queries: int
    hops: int
    requests_sent: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PutCompleted(Event):
    """A ``put`` finished: ``stored`` of ``attempted`` storers acknowledged the record."""

    query_id: int
    key: bytes
    stored: int
    attempted: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenStarted(Event):
    """A ``listen`` subscription was accepted by ``storers`` nodes (renewed periodically)."""

    query_id: int
    key: bytes
    storers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueFound(Event):
    """A new or updated record arrived for a ``listen`` subscription."""

    query_id: int
    key: bytes
    record: Record
    source: Address | None = None  # the storer that pushed it (None: a get or our own store)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactAdded(Event):
    """A verified contact entered the routing table."""

    node_id: bytes
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactEvicted(Event):
    """A contact left the routing table after repeated failures."""

    node_id: bytes
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordStored(Event):
    """This node accepted a record from a peer."""

    key: bytes
    owner: bytes
    seq: int
    source: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerMisbehaved(Event):
    """A datagram or record from ``address`` was invalid and dropped."""

    address: Address
    reason: str
