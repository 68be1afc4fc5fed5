"""What every part of the DHT node shares: its configuration, state, and how it sends.

Theory of operation
-------------------
:class:`~dhtchat.core.node.DhtNode` is one sans-IO state machine (see :mod:`dhtchat.core.node`)
written in three layers, each a class that inherits the one below, so the state has one owner
(the node object) and no layer reaches into another object's private members:

* :class:`NodeState` (this module): the configuration, every table the node keeps, and the
  primitives all layers use -- queueing datagrams and events, sending a request as a
  transaction, signing a reply, and storing a record and pushing it to listeners.
* :class:`~dhtchat.core.node_queries.NodeQueries`: the commands, lookups in flight, timers,
  failures, contact admission and periodic upkeep.
* :class:`~dhtchat.core.node.DhtNode`: datagrams in -- request handling and the checks on
  replies.

The records with a leading underscore (``_Transaction``, ``_Query``, ``_Peer``, ...) are
private to these three modules.

Requests are transactions keyed by a random 8-byte tid, retransmitted and timed out with a
per-address retransmission timeout after RFC 6298 sec. 2 (SRTT, RTTVAR, the RTO bounded by
``min_rto`` / ``max_rto``, doubled on each timeout as sec. 5.5 backs it off); an address never
measured starts from the RTT seen over all peers instead of the generic 1 s. Per address the
node keeps one record (:class:`_Peer`): its RTT estimate and the write token it gave us.

Write tokens are recomputed rather than stored, ``BLAKE2b(secret, epoch || ip || port)``: the
token of BEP 5 ("get_peers" / "announce_peer") bound to the requester's address, valid for the
epoch it was made in and the next. Replies are signed over the requester's node id and the
envelope (signed messages as in S/Kademlia, Baumgart & Mies 2007), so a reply proves key
ownership and presence at the address. A record to store (a Kademlia STORE, paper sec. 2.3;
records are signed like BEP 44 mutable items, see :mod:`dhtchat.core.records`) is validated
first, then charged to its source's /24 and pushed to every subscribed listener.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from dhtchat.core.addresses import Address, subnet_of
from dhtchat.core.errors import InvalidRecord, LocalProtocolError
from dhtchat.core.events import (
    Event,
    PeerMisbehaved,
    RecordStored,
    ValueFound,
)
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.ids import blake2b_256, node_id_from_public_key
from dhtchat.core.lookup import DisjointLookup, Lookup
from dhtchat.core.ratelimit import TokenBuckets
from dhtchat.core.records import Record, encoded_size, validate_record
from dhtchat.core.routing import RoutingTable
from dhtchat.core.storage import RecordStore
from dhtchat.core.stun import StunResponder
from dhtchat.core.wire import (
    FLAG_READ_ONLY,
    MAX_DATAGRAM_BYTES,
    MAX_NODES_PER_REPLY,
    Envelope,
    Ping,
    Push,
    RequestBody,
    ResponseBody,
    StoreStatus,
    encode_envelope,
    encode_request,
    pack,
    response_signed_bytes,
)

_ZERO_SIGNATURE: Final = bytes(64)


_MAX_TRACKED_ADDRESSES: Final = 8192
_MAX_SUSPECTS: Final = 64  # suspect addresses remembered at most (the oldest forgotten)










@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    """Tunables of a node. Defaults are documented in docs/protocol.md."""

    k: int = 8
    alpha: int = 3
    max_failures: int = 3
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 4.0
    max_lookup_queries: int = 128
    # A GET stops waiting for slow candidates once this fraction of the k closest that have
    # not failed answered (1.0: wait for every one, as FIND_NODE/PUT do); see core.lookup.
    get_quorum: float = 0.5
    # Whether a lookup query's soft timeout (when its slot goes to the next candidate) grows
    # with the address's RFC 6298 backoff; the hard timeout always does.
    soft_timeout_backoff: bool = False
    # An address that left a request unanswered past its RTO stays *suspect* this long (until
    # it answers anything): a new lookup still asks it, but counts it as slow from the start,
    # so a node that just went away costs one soft timeout per node, not one per lookup.
    # 0 disables it.
    suspect_memory: float = 30.0
    disjoint_paths: int = 1
    refresh_on_join: bool = True
    # How a node id follows from a node public key. Only the simulator changes it, to model
    # an attacker who can grind keys for chosen ids (Sybils next to a target).
    node_id_function: Callable[[bytes], bytes] = node_id_from_public_key
    max_per_subnet_bucket: int = 2
    max_per_subnet_table: int = 10
    token_epoch: float = 300.0
    rate_per_ip: float = 100.0
    burst_per_ip: float = 200.0
    rate_per_subnet: float = 400.0
    burst_per_subnet: float = 800.0
    max_records: int = 50_000
    max_bytes: int = 64 * 1024 * 1024
    quota_records_per_subnet: int = 512
    quota_bytes_per_subnet: int = 512 * 1024
    max_owners_per_key: int = 256
    listen_duration: float = 120.0
    max_listeners_per_key: int = 32
    max_listeners: int = 4096
    republish_interval: float = 1200.0
    bucket_refresh_interval: float = 900.0
    maintenance_interval: float = 5.0
    max_pending_verifications: int = 64
    handover_limit: int = 64
    store_retries: int = 1
    verify_signatures: bool = True
    read_only: bool = False
    report_observed_addresses: bool = False  # AddressObserved per Pong (reachability)
    max_queued_events: int = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_NODES_PER_REPLY:
            raise LocalProtocolError(
                f"k must be 1..{MAX_NODES_PER_REPLY} (a Nodes reply must fit in a datagram)"
            )
        if not 1 <= self.alpha <= 32:
            raise LocalProtocolError("alpha must be 1..32")
        if not 1 <= self.disjoint_paths <= 16:
            raise LocalProtocolError("disjoint_paths must be 1..16")
        if not 0.0 <= self.get_quorum <= 1.0:
            raise LocalProtocolError("get_quorum must be 0..1")
        if self.max_failures < 1 or self.min_rto <= 0 or self.max_rto < self.min_rto:
            raise LocalProtocolError("max_failures >= 1 and 0 < min_rto <= max_rto required")

    @property
    def request_pad(self) -> int:
        """Size to pad requests to when we hold no fresh token: a full Nodes reply fits."""
        return min(MAX_DATAGRAM_BYTES, 152 + 56 * min(self.k, MAX_NODES_PER_REPLY))


class _Purpose(Enum):
    BOOTSTRAP_PING = "bootstrap-ping"
    VERIFY = "verify"
    LIVENESS = "liveness"
    LOOKUP = "lookup"
    PAGE = "page"
    STORE = "store"
    LISTEN = "listen"
    HANDOVER = "handover"


_PING_PAD: Final = 176  # a Pong (IPv6: 159 bytes) fits in a Ping padded to this






_BACKGROUND: Final = frozenset({_Purpose.VERIFY, _Purpose.LIVENESS})


_SENT_STAT: Final = {purpose: f"sent_{purpose.value}" for purpose in _Purpose}


@dataclass(slots=True)
class _Transaction:
    tid: bytes
    address: Address
    expected_id: bytes | None
    purpose: _Purpose
    query_id: int | None
    body: RequestBody
    sent_at: float
    deadline: float
    attempts: int = 1
    token_retry_done: bool = False
    slow: bool = False  # a lookup query past its RTO, still waiting until max_rto
    rto: float = 0.0  # the backed-off RTO when sent (a lookup's soft deadline may be sooner)


class _Kind(Enum):
    BOOTSTRAP = "bootstrap"
    FIND_NODE = "find_node"
    GET = "get"
    PUT = "put"
    LISTEN = "listen"


@dataclass(slots=True)
class _Query:
    query_id: int
    kind: _Kind
    target: bytes
    lookup: Lookup | DisjointLookup | None = None
    owner: bytes | None = None
    record: Record | None = None
    records: dict[bytes, Record] = field(default_factory=dict)
    pending: int = 0  # outstanding non-lookup requests (pages, stores, listens, pings)
    pages: int = 0
    requests_sent: int = 0
    bytes_sent: int = 0
    stored: int = 0
    attempted: int = 0
    renew_at: float = 0.0
    announced: bool = False
    internal: bool = False
    seen: set[tuple[bytes, int]] = field(default_factory=set)


@dataclass(slots=True)
class _Rtt:
    srtt: float | None = None
    rttvar: float = 0.0
    backoff: float = 1.0

    def update(self, sample: float) -> None:
        """RFC 6298 sec. 2 smoothing of one RTT sample."""
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample


@dataclass(slots=True)
class _Peer(_Rtt):
    """All this node keeps about one address it sends requests to, in one record: its RTT
    estimate and the token it gave us. (Nothing is kept per requester: our tokens are
    recomputed, see :meth:`NodeState._make_token`.)

    One record per address instead of one table per concern: a datagram costs one dict
    lookup and touches one object, and nothing is re-ordered on use (eviction ranks the
    records by ``used`` only when the table overflows). With thousands of simulated nodes
    the per-peer state is most of the heap, so this is what the memory traffic is made of.
    """

    used: float = 0.0  # last time this record was written, for least-recently-used eviction
    token: bytes = b""  # the peer's write token for us
    token_at: float = -math.inf  # when we received it


@dataclass(slots=True)
class _Listener:
    tid: bytes
    node_id: bytes
    expires: float


@dataclass(slots=True)
class _Owned:
    record: Record
    next_publish: float


class NodeState:
    """The state of a :class:`~dhtchat.core.node.DhtNode` and the primitives every layer of it
    uses (see the module docstring). Not used on its own."""

    def __init__(
        self,
        node_key: SigningIdentity,
        *,
        rng: random.Random,
        now: float,
        config: DhtConfig | None = None,
    ) -> None:
        self.config = config if config is not None else DhtConfig()
        self.node_key = node_key
        self.public_key = node_key.public_key
        self._node_id_of = self.config.node_id_function
        self.node_id = self._node_id_of(self.public_key)
        self._rng = rng
        self._token_secret = rng.randbytes(32)
        self._token_prefixes: dict[int, hashlib.blake2b] = {}  # epoch -> keyed hash state
        # STUN on the DHT port: IPs that presented a valid write token count as receiving
        self.stun = StunResponder(blake2b_256(b"dhtchat/stun-secret/v1", self._token_secret),
                                  epoch=self.config.token_epoch)
        self.table = RoutingTable(
            self.node_id,
            k=self.config.k,
            max_failures=self.config.max_failures,
            max_per_subnet_bucket=self.config.max_per_subnet_bucket,
            max_per_subnet_table=self.config.max_per_subnet_table,
            now=now,
        )
        self.store = RecordStore(
            max_records=self.config.max_records,
            max_bytes=self.config.max_bytes,
            quota_records_per_subnet=self.config.quota_records_per_subnet,
            quota_bytes_per_subnet=self.config.quota_bytes_per_subnet,
            max_owners_per_key=self.config.max_owners_per_key,
        )
        self.stats: Counter[str] = Counter()
        self._flags = FLAG_READ_ONLY if self.config.read_only else 0
        self._request_pad = self.config.request_pad
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._transactions: dict[bytes, _Transaction] = {}
        # (node id, address) -> transactions awaiting a reply from that node at that address
        self._awaiting: dict[tuple[bytes, Address], int] = {}
        self._deadlines: list[tuple[float, bytes]] = []
        self._queries: dict[int, _Query] = {}
        self._next_query_id = 1
        # per-address state, at most _MAX_TRACKED_ADDRESSES records (see _Peer)
        self._peers: dict[Address, _Peer] = {}
        self._overall_rtt = _Rtt()  # over every peer: the prior for addresses never measured
        # address -> when a request to it first went unanswered past its RTO (see
        # NodeConfig.suspect_memory); empty while every peer answers
        self._suspects: dict[Address, float] = {}
        self._ip_limiter = TokenBuckets(self.config.rate_per_ip, self.config.burst_per_ip)
        self._subnet_limiter = TokenBuckets(
            self.config.rate_per_subnet, self.config.burst_per_subnet
        )
        self._listeners: dict[bytes, dict[Address, _Listener]] = {}
        self._listener_count = 0
        self._listen_tids: dict[bytes, tuple[int, float]] = {}
        self._owned: dict[tuple[bytes, bytes], _Owned] = {}
        self._verifying: dict[bytes, float] = {}
        self._next_maintenance = now + self.config.maintenance_interval
        self._rejoin_at = math.inf
        self._rejoins = 0

    # ----------------------------------------------------------- sans-IO verbs shared by every part

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Datagrams queued for sending, oldest first; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        """The oldest unread event, or None."""
        return self._events.popleft() if self._events else None

    # --------------------------------------------------------- sending requests (transactions, RTO)

    def _send_request(
        self,
        address: Address,
        body: RequestBody,
        now: float,
        *,
        purpose: _Purpose,
        query_id: int | None = None,
        expected_id: bytes | None = None,
    ) -> bytes:
        tid = self._rng.randbytes(8)
        while tid in self._transactions:
            tid = self._rng.randbytes(8)
        # Nobody waits on a verification or liveness ping: give it the longest timeout, so a
        # slow but live node is not counted as failed.
        rto = self.config.max_rto if purpose in _BACKGROUND else self._rto(address)
        soft = rto
        if purpose is _Purpose.LOOKUP and not self.config.soft_timeout_backoff:
            # The backoff says "wait longer before retransmitting to this address"; a lookup
            # never retransmits, and a suspect node must not hold a lookup slot the longer.
            soft = self._rto(address, backoff=False)
        txn = _Transaction(tid, address, expected_id, purpose, query_id, body, now, now + soft,
                           rto=rto)
        self._remember_transaction(txn)
        self.stats[_SENT_STAT[purpose]] += 1
        heapq.heappush(self._deadlines, (txn.deadline, tid))
        self._transmit(txn, now)
        return tid

    def _remember_transaction(self, txn: _Transaction) -> None:
        self._transactions[txn.tid] = txn
        if txn.expected_id is not None:
            key = (txn.expected_id, txn.address)
            awaiting = self._awaiting
            awaiting[key] = awaiting.get(key, 0) + 1

    def _forget_transaction(self, txn: _Transaction) -> None:
        del self._transactions[txn.tid]
        if txn.expected_id is not None:
            key = (txn.expected_id, txn.address)
            awaiting = self._awaiting
            left = awaiting[key] - 1
            if left:
                awaiting[key] = left
            else:
                del awaiting[key]

    def _transmit(self, txn: _Transaction, now: float) -> None:
        peer = self._peers.get(txn.address)
        if peer is not None and now - peer.token_at < self.config.token_epoch:
            token, pad_to = peer.token, 0
        else:
            token = peer.token if peer is not None else b""
            # without a fresh token: room for the reply (a Pong only, for a Ping)
            pad_to = _PING_PAD if isinstance(txn.body, Ping) else self._request_pad
        data = encode_request(txn.tid, self.public_key, self._flags, token, txn.body, pad_to)
        self._outbox.append((data, txn.address))
        stats = self.stats
        stats["requests_sent"] += 1
        size = len(data)
        stats["bytes_sent"] += size
        if txn.query_id is not None:
            query = self._queries.get(txn.query_id)
            if query is not None:
                query.requests_sent += 1
                query.bytes_sent += size

    def _peer(self, address: Address, now: float) -> _Peer:
        """The record of ``address``, created if new; marks it used at ``now``."""
        peers = self._peers
        peer = peers.get(address)
        if peer is None:
            peer = peers[address] = _Peer(used=now)
            if len(peers) > _MAX_TRACKED_ADDRESSES:
                self._evict_peers()
        else:
            peer.used = now
        return peer

    def _evict_peers(self) -> None:
        """Forget the least recently used eighth of the address records (ties: oldest first)."""
        peers = self._peers
        ranked = sorted(peers.items(), key=lambda item: item[1].used)  # stable
        for address, _ in ranked[: len(peers) // 8]:
            del peers[address]

    def _note_unanswered(self, address: Address, now: float) -> None:
        """A request to ``address`` passed its RTO: the address is suspect until it answers."""
        suspects = self._suspects
        if address in suspects or self.config.suspect_memory <= 0:
            return
        if len(suspects) >= _MAX_SUSPECTS:
            del suspects[next(iter(suspects))]  # insertion order: the oldest suspicion
        suspects[address] = now

    def suspect_count(self) -> int:
        """How many suspect addresses are remembered now (memory: see ``_MAX_SUSPECTS``)."""
        return len(self._suspects)

    def _forget_old_suspicions(self, now: float) -> None:
        """Drop the suspicions older than ``suspect_memory`` (maintenance: a simulated
        network of many nodes under churn must not keep one per dead address per node)."""
        memory = self.config.suspect_memory
        suspects = self._suspects
        while suspects:
            address, since = next(iter(suspects.items()))  # insertion order: the oldest
            if now - since < memory:
                break
            del suspects[address]

    def is_suspect(self, address: Address, now: float) -> bool:
        """Whether ``address`` left a request unanswered within ``suspect_memory`` (and has
        not answered since)."""
        since = self._suspects.get(address)
        if since is None:
            return False
        if now - since < self.config.suspect_memory:
            return True
        del self._suspects[address]
        return False

    def _rto(self, address: Address, *, backoff: bool = True) -> float:
        est = self._peers.get(address)
        cfg = self.config
        if est is None or est.srtt is None:
            # Never measured: the RTT seen across all peers is a far better prior than the
            # generic 1 s of RFC 6298 (which would hold every lookup step to a dead node).
            overall = self._overall_rtt
            base = cfg.initial_rto if overall.srtt is None else min(
                cfg.initial_rto, overall.srtt + max(0.01, 4 * overall.rttvar))
        else:
            base = est.srtt + max(0.01, 4 * est.rttvar)
        factor = est.backoff if est is not None and backoff else 1.0
        return min(cfg.max_rto, max(cfg.min_rto, base) * factor)

    # ------------------------------------------------------------------ replies, tokens and events

    def _respond(
        self, tid: bytes, requester_id: bytes, address: Address, body: ResponseBody, now: float,
        token: bytes | None = None,
    ) -> bytes:
        if token is None:
            token = self._make_token(address, self._epoch(now))
        envelope_bytes = encode_envelope(
            Envelope(tid, self.public_key, self._flags, token, body)
        )
        if self.config.verify_signatures:
            signature = self.node_key.sign(response_signed_bytes(requester_id, envelope_bytes))
        else:
            signature = _ZERO_SIGNATURE
        return pack(envelope_bytes, signature)

    def _epoch(self, now: float) -> int:
        return int(now // self.config.token_epoch)

    def _make_token(self, address: Address, epoch: int) -> bytes:
        """The write token of ``address`` in ``epoch``: a keyed hash, recomputed rather than
        stored (a node answers far more one-off requesters than it could usefully remember).
        The keyed hash state after the epoch is kept, so a token costs one copy and update."""
        prefix = self._token_prefixes.get(epoch)
        if prefix is None:
            prefix = hashlib.blake2b(key=self._token_secret, digest_size=16)
            prefix.update(epoch.to_bytes(8, "big", signed=True))
            if len(self._token_prefixes) >= 4:
                self._token_prefixes.clear()  # only this epoch and the previous one are used
            self._token_prefixes[epoch] = prefix
        h = prefix.copy()
        h.update(address[0].encode())
        h.update(address[1].to_bytes(2, "big"))
        return h.digest()

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) > self.config.max_queued_events:
            self._events.popleft()
            self.stats["events_dropped"] += 1

    def _misbehaved(self, address: Address, reason: str) -> None:
        self.stats["misbehaved"] += 1
        self._emit(PeerMisbehaved(address=address, reason=reason))

    # ----------------------------------------------------------- the record store and its listeners

    def _store_record(self, record: Record, source: Address | None, now: float) -> StoreStatus:
        """Validate and store a record from ``source`` (None: this node itself)."""
        key = record.key
        try:
            validate_record(record, key, now, verify_signature_=self.config.verify_signatures)
        except InvalidRecord as exc:
            self.stats["store_invalid"] += 1
            if source is not None:
                self._misbehaved(source, f"invalid record: {exc}")
            return StoreStatus.INVALID
        previous = self.store.records(key, now, record.owner)
        subnet = subnet_of(source[0]) if source is not None else "self"
        status = self.store.put(record, encoded_size(record), subnet, now)
        self.stats[f"store_{status.name.lower()}"] += 1
        if status is StoreStatus.OK and (not previous or previous[0] != record):
            if source is not None:
                self._emit(RecordStored(key=key, owner=record.owner, seq=record.seq,
                                        source=source))
            self._notify_listeners(key, record, now)
        return status

    def _notify_listeners(self, key: bytes, record: Record, now: float) -> None:
        for address, listener in list(self._listeners.get(key, {}).items()):
            if listener.expires <= now:
                continue
            data = self._respond(listener.tid, listener.node_id, address, Push(key, record), now)
            self._outbox.append((data, address))
            self.stats["pushes_sent"] += 1
        for query in list(self._queries.values()):
            if query.kind is _Kind.LISTEN and query.target == key:
                self._deliver_push(query, record)

    def _deliver_push(self, query: _Query, record: Record,
                      source: Address | None = None) -> None:
        marker = (record.owner, record.seq)
        if marker in query.seen:
            return
        query.seen.add(marker)
        if len(query.seen) > 4096:
            query.seen.clear()
            query.seen.add(marker)
        self._emit(ValueFound(query_id=query.query_id, key=query.target, record=record,
                              source=source))
