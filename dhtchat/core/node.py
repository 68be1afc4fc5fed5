"""The sans-IO DHT node: a Kademlia state machine driven by datagrams, timers and commands.

Theory of operation
-------------------
The node follows the connection model of aioquic's ``QuicConnection``: the driver feeds it
datagrams (:meth:`DhtNode.receive_datagram`) and timer expiries (:meth:`DhtNode.handle_timer`),
then sends what :meth:`DhtNode.datagrams_to_send` returns, arms a timer at
:meth:`DhtNode.get_timer` and consumes :meth:`DhtNode.next_event`. Commands (``find_node``,
``get``, ``put``, ``listen``, ``bootstrap``) only queue work and return a query id that later
events carry. Nothing here reads a clock, touches a socket or draws OS randomness.

Protocol (Kademlia, Maymounkov & Mazieres 2002; hardening from S/Kademlia, BEP 5/44, discv5):

* Requests carry a random 8-byte tid. Responses are signed by the responder's node key over
  the requester's node id and the envelope, so a response proves both key ownership and
  presence at the address: that is the challenge a contact passes before entering a bucket.
  A node that sends us a request is verified with a Ping before it is added.
* Every response carries a write token, ``BLAKE2b(secret, epoch || ip || port)``, bound to the
  requester's address and valid for one to two epochs. Store and Listen require it. A request
  without a valid token comes from an unvalidated address: its reply is never larger than the
  request (amplification <= 1.0); replies are cut or dropped to honour that, so requesters
  without a fresh token pad their requests.
* Requests are rate limited per source IP and per /24; storage is charged per /24.
* Lookups are asynchronous with ``alpha`` queries in flight (see :mod:`dhtchat.core.lookup`);
  timeouts come from a per-address RTT estimator (RFC 6298); a contact is evicted after
  ``max_failures`` consecutive failures.
* Owners republish their records; storers push new records to listeners; when a closer node
  joins, records it should hold are handed over to it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Final

from dhtchat.core.addresses import Address, is_valid_contact_address, pack_ip, subnet_of, unpack_ip
from dhtchat.core.errors import InvalidRecord, LocalProtocolError, RemoteProtocolError
from dhtchat.core.events import (
    BootstrapCompleted,
    ContactAdded,
    ContactEvicted,
    Event,
    GetCompleted,
    ListenStarted,
    LookupCompleted,
    PeerMisbehaved,
    PutCompleted,
    RecordStored,
    ValueFound,
)
from dhtchat.core.identity import SigningIdentity, verify_signature
from dhtchat.core.ids import ID_BITS, ID_BYTES, blake2b_256, distance, node_id_from_public_key
from dhtchat.core.lookup import Candidate, DisjointLookup, Lookup
from dhtchat.core.ratelimit import TokenBuckets
from dhtchat.core.records import Record, encoded_size, validate_record
from dhtchat.core.routing import AddResult, Contact, RoutingTable
from dhtchat.core.storage import RecordStore
from dhtchat.core.stun import StunResponder
from dhtchat.core.wire import (
    FLAG_READ_ONLY,
    MAX_DATAGRAM_BYTES,
    MAX_NODES_PER_REPLY,
    MAX_RECORDS_PER_REPLY,
    REQUEST_TYPES,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    GetValues,
    Listen,
    Listening,
    NodeInfo,
    Nodes,
    Ping,
    Pong,
    Push,
    RequestBody,
    ResponseBody,
    Store,
    Stored,
    StoreStatus,
    Values,
    decode,
    encode_envelope,
    encode_request,
    pack,
    response_signed_bytes,
)

_ZERO_SIGNATURE: Final = bytes(64)
_MAX_TRACKED_ADDRESSES: Final = 8192
_VALUES_OVERHEAD: Final = 160  # envelope, signature and Values fields around the lists
_NODE_INFO_SIZE: Final = 60  # upper bound of one encoded NodeInfo (IPv6)
_MAX_RECORDS_PER_GET: Final = 4096  # a get follows pages up to this many records per storer
_MAX_PAGES_PER_QUERY: Final = 256


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
_MAX_REJOINS: Final = 4
_REJOIN_DELAY: Final = 5.0
_BACKGROUND: Final = frozenset({_Purpose.VERIFY, _Purpose.LIVENESS})
_SENT_STAT: Final = {purpose: f"sent_{purpose.value}" for purpose in _Purpose}


@lru_cache(maxsize=1 << 18)
def _contact_address(ip: bytes, port: int) -> Address | None:
    """The address of a contact as carried in a reply, or None if no contact can have it."""
    try:
        host = unpack_ip(ip)
    except RemoteProtocolError:
        return None
    return (host, port) if is_valid_contact_address(host, port) else None


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
    recomputed, see :meth:`DhtNode._make_token`.)

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


class DhtNode:
    """A Kademlia node as a pure state machine (see the module docstring)."""

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

    # ------------------------------------------------------------------ sans-IO verbs

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Process one datagram. Invalid input never raises: it is counted and reported."""
        self.stats["datagrams_received"] += 1
        try:
            datagram = decode(data)
            envelope = datagram.envelope
            if isinstance(envelope.body, REQUEST_TYPES):
                self._handle_request(envelope, address, len(data), now)
            else:
                self._handle_response(envelope, datagram.envelope_bytes, datagram.signature,
                                      address, now)
        except RemoteProtocolError as exc:
            self._misbehaved(address, str(exc))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Datagrams queued for sending, oldest first; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """Absolute time at which :meth:`handle_timer` must be called next."""
        deadlines = self._deadlines
        while deadlines:
            deadline, tid = deadlines[0]
            txn = self._transactions.get(tid)
            if txn is not None and txn.deadline == deadline:
                return min(deadline, self._next_maintenance)
            heapq.heappop(deadlines)
        return self._next_maintenance

    def handle_timer(self, now: float) -> None:
        """Expire transactions and run periodic maintenance due at ``now``."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, tid = heapq.heappop(deadlines)
            txn = self._transactions.get(tid)
            if txn is None or txn.deadline != deadline:
                continue
            self._on_timeout(txn, now)
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.config.maintenance_interval
            self._maintenance(now)

    def next_event(self) -> Event | None:
        """The oldest unread event, or None."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ commands

    def bootstrap(self, addresses: list[Address], now: float) -> int:
        """Ping ``addresses`` (ids unknown), then look up our own id to fill the table."""
        query = self._new_query(_Kind.BOOTSTRAP, self.node_id)
        for address in addresses:
            if not is_valid_contact_address(*address):
                raise LocalProtocolError(f"invalid bootstrap address {address!r}")
            query.pending += 1
            self._send_request(address, Ping(), now, purpose=_Purpose.BOOTSTRAP_PING,
                               query_id=query.query_id)
        if not addresses:
            self._start_lookup(query, now)
        return query.query_id

    def add_known_contacts(self, contacts: list[tuple[bytes, Address]], now: float) -> None:
        """Re-verify contacts remembered from an earlier run (they join once they answer)."""
        for node_id, address in contacts:
            if len(node_id) == ID_BYTES and is_valid_contact_address(*address):
                self._send_request(address, Ping(), now, purpose=_Purpose.VERIFY,
                                   expected_id=node_id)

    def find_node(self, target: bytes, now: float) -> int:
        """Look up the k closest nodes to ``target``; ends with :class:`LookupCompleted`."""
        self._check_id(target)
        query = self._new_query(_Kind.FIND_NODE, target)
        self._start_lookup(query, now)
        return query.query_id

    def get(self, key: bytes, now: float, *, owner: bytes | None = None) -> int:
        """Fetch the records under ``key``; ends with :class:`GetCompleted`."""
        self._check_id(key)
        if owner is not None and len(owner) != 32:
            raise LocalProtocolError("owner filter must be a 32-byte public key")
        query = self._new_query(_Kind.GET, key)
        query.owner = owner
        for record in self.store.records(key, now, owner):
            query.records[record.owner] = record
        self._start_lookup(query, now)
        return query.query_id

    def put(self, record: Record, now: float, *, republish: bool = False) -> int:
        """Store ``record`` on the k closest nodes; ends with :class:`PutCompleted`.

        With ``republish`` the node keeps re-storing it every ``republish_interval`` until it
        expires (the owner's republish duty).
        """
        try:
            validate_record(record, record.key, now)
        except InvalidRecord as exc:
            raise LocalProtocolError(f"cannot put this record: {exc}") from None
        query = self._new_query(_Kind.PUT, record.key)
        query.record = record
        if republish:
            self._owned[(record.key, record.owner)] = _Owned(
                record, now + self.config.republish_interval
            )
        self._start_lookup(query, now)
        return query.query_id

    def listen(self, key: bytes, now: float) -> int:
        """Subscribe to new records under ``key``: :class:`ValueFound` events until cancelled."""
        self._check_id(key)
        query = self._new_query(_Kind.LISTEN, key)
        self._start_lookup(query, now)
        return query.query_id

    def cancel(self, query_id: int) -> None:
        """Stop a query (in particular a ``listen``); its late replies are ignored."""
        self._queries.pop(query_id, None)
        for tid in [t for t, (q, _) in self._listen_tids.items() if q == query_id]:
            del self._listen_tids[tid]

    def owned_records(self) -> list[Record]:
        """Records this node republishes as their owner."""
        return [owned.record for owned in self._owned.values()]

    # ------------------------------------------------------------------ internals: queries

    def _check_id(self, identifier: bytes) -> None:
        if len(identifier) != ID_BYTES:
            raise LocalProtocolError(f"ids and keys are {ID_BYTES} bytes")

    def _new_query(self, kind: _Kind, target: bytes, *, internal: bool = False) -> _Query:
        query = _Query(self._next_query_id, kind, target, internal=internal)
        self._next_query_id += 1
        self._queries[query.query_id] = query
        return query

    def _start_lookup(self, query: _Query, now: float) -> None:
        # Kademlia sec. 2.3: a lookup for an id refreshes the bucket that id falls in.
        if query.target != self.node_id:
            self.table.touch_bucket(self.table.bucket_index(query.target), now)
        lookup: Lookup | DisjointLookup
        if self.config.disjoint_paths > 1:
            lookup = DisjointLookup(query.target, k=self.config.k, alpha=self.config.alpha,
                                    paths=self.config.disjoint_paths,
                                    max_queries=self.config.max_lookup_queries,
                                    max_per_ip=self.config.max_per_subnet_table)
            seeds = self.config.k * self.config.disjoint_paths
        else:
            lookup = Lookup(query.target, k=self.config.k, alpha=self.config.alpha,
                            max_queries=self.config.max_lookup_queries,
                            max_per_ip=self.config.max_per_subnet_table)
            seeds = self.config.k
        for contact in self.table.closest(query.target, seeds):
            lookup.add(contact.node_id, contact.address)
        query.lookup = lookup
        self._pump(query, now)

    def _pump(self, query: _Query, now: float) -> None:
        lookup = query.lookup
        if lookup is None:
            return
        for cand in lookup.next_queries():
            body: RequestBody
            if query.kind is _Kind.GET:
                body = GetValues(query.target, query.owner or b"")
            else:
                body = FindNode(query.target)
            self._send_request(cand.address, body, now, purpose=_Purpose.LOOKUP,
                               query_id=query.query_id, expected_id=cand.node_id)
        if lookup.finished and query.pending == 0:
            query.lookup = None
            self._lookup_done(query, lookup, now)

    def _lookup_done(
        self, query: _Query, lookup: Lookup | DisjointLookup, now: float
    ) -> None:
        closest = lookup.closest_answered()
        if query.kind is _Kind.FIND_NODE:
            self._finish(query, LookupCompleted(
                query_id=query.query_id, target=query.target,
                contacts=tuple((c.node_id, c.address) for c in closest),
                queries=lookup.queries_sent, hops=lookup.hops(),
                requests_sent=query.requests_sent, bytes_sent=query.bytes_sent))
        elif query.kind is _Kind.BOOTSTRAP:
            self._finish(query, BootstrapCompleted(query_id=query.query_id,
                                                   contacts=len(self.table)))
            if len(self.table) >= self.config.k:
                self._rejoins = 0
            elif self._rejoins < _MAX_REJOINS:
                # Joined through a node that knew too little (e.g. one still joining itself):
                # look ourselves up again soon, with backoff, instead of waiting for refresh.
                self._rejoin_at = now + _REJOIN_DELAY * 2**self._rejoins
                self._rejoins += 1
            if self.config.refresh_on_join and closest:
                # Kademlia sec. 2.3: refresh the buckets farther than the closest neighbour;
                # those the self-lookup already gave contacts are left to the periodic refresh.
                nearest = self.table.bucket_index(closest[0].node_id)
                for index in range(nearest):
                    if self.table.bucket_size(index) == 0:
                        self._refresh_bucket(index, now)
        elif query.kind is _Kind.GET:
            records = tuple(sorted(query.records.values(), key=lambda r: r.owner))
            self._finish(query, GetCompleted(query_id=query.query_id, key=query.target,
                                             records=records, queries=lookup.queries_sent,
                                             hops=lookup.hops(),
                                             requests_sent=query.requests_sent,
                                             bytes_sent=query.bytes_sent))
        elif query.kind is _Kind.PUT:
            record = query.record
            assert record is not None
            if self._should_store_locally(query.target, closest):
                query.attempted += 1
                status = self._store_record(record, None, now)
                if status is StoreStatus.OK:
                    query.stored += 1
            for cand in closest:
                query.attempted += 1
                query.pending += 1
                self._send_request(cand.address, Store(record), now, purpose=_Purpose.STORE,
                                   query_id=query.query_id, expected_id=cand.node_id)
            self._maybe_finish_put(query)
        elif query.kind is _Kind.LISTEN:
            query.stored = 0
            query.renew_at = now + self.config.listen_duration / 2
            for cand in closest:
                query.pending += 1
                self._send_request(cand.address, Listen(query.target), now,
                                   purpose=_Purpose.LISTEN, query_id=query.query_id,
                                   expected_id=cand.node_id)
            self._maybe_announce_listen(query)

    def _should_store_locally(self, key: bytes, closest: list[Candidate]) -> bool:
        """Are we ourselves among the k closest nodes to ``key``?"""
        if self.config.read_only:
            return False
        if len(closest) < self.config.k:
            return True
        return distance(self.node_id, key) < closest[-1].distance

    def _maybe_finish_put(self, query: _Query) -> None:
        if query.pending == 0 and query.record is not None:
            self._finish(query, PutCompleted(query_id=query.query_id, key=query.target,
                                             stored=query.stored, attempted=query.attempted))

    def _maybe_announce_listen(self, query: _Query) -> None:
        if query.pending == 0 and not query.announced:
            query.announced = True
            self._emit(ListenStarted(query_id=query.query_id, key=query.target,
                                     storers=query.stored))

    def _finish(self, query: _Query, event: Event) -> None:
        self._queries.pop(query.query_id, None)
        if not query.internal:
            self._emit(event)

    # ------------------------------------------------------------------ internals: sending

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
        txn = _Transaction(tid, address, expected_id, purpose, query_id, body, now, now + rto)
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

    def _rto(self, address: Address) -> float:
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
        backoff = est.backoff if est is not None else 1.0
        return min(cfg.max_rto, max(cfg.min_rto, base) * backoff)

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

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) > self.config.max_queued_events:
            self._events.popleft()
            self.stats["events_dropped"] += 1

    def _misbehaved(self, address: Address, reason: str) -> None:
        self.stats["misbehaved"] += 1
        self._emit(PeerMisbehaved(address=address, reason=reason))

    # ------------------------------------------------------------------ tokens

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

    # ------------------------------------------------------------------ requests (server)

    def _handle_request(
        self, envelope: Envelope, address: Address, request_size: int, now: float
    ) -> None:
        if self.config.read_only:
            self.stats["requests_ignored_read_only"] += 1
            return
        host = address[0]
        stats = self.stats
        if not (self._ip_limiter.allow(host, now)
                and self._subnet_limiter.allow(subnet_of(host), now)):
            stats["rate_limited"] += 1
            return
        stats["requests_received"] += 1
        requester_id = self._node_id_of(envelope.sender)
        # the token this reply carries, and the check of the one the request carries (ours
        # of this epoch or of the previous one)
        epoch = int(now // self.config.token_epoch)
        token = self._make_token(address, epoch)
        presented = envelope.token
        validated = len(presented) == 16 and (
            hmac.compare_digest(presented, token)
            or hmac.compare_digest(presented, self._make_token(address, epoch - 1)))
        if validated:
            self.stun.mark_receives(host, now)
        body = envelope.body
        reply: ResponseBody
        if isinstance(body, Ping):
            reply = Pong(pack_ip(host), address[1])
        elif isinstance(body, FindNode):
            reply = Nodes(self._nodes_for(body.target, requester_id))
        elif isinstance(body, GetValues):
            reply = self._values_for(body, requester_id, now)
        elif isinstance(body, Store):
            reply = self._handle_store(body.record, address, validated, now)
        elif isinstance(body, Listen):
            reply = self._handle_listen(body.key, envelope.tid, requester_id, address,
                                        validated, now)
        else:  # pragma: no cover - RequestBody is exhaustive
            raise RemoteProtocolError("unexpected request")
        data: bytes | None = self._respond(envelope.tid, requester_id, address, reply, now,
                                           token)
        if not validated and data is not None and len(data) > request_size:
            data = self._shrink_reply(envelope.tid, requester_id, address, reply, request_size,
                                      now)
        if data is None:
            stats["replies_dropped_amplification"] += 1
        else:
            self._outbox.append((data, address))
            stats["bytes_sent"] += len(data)
        if not envelope.flags & FLAG_READ_ONLY and (validated or request_size >= _PING_PAD):
            # (a tiny tokenless request may be spoofed: our ping must not amplify it)
            self._consider_contact(requester_id, address, now)

    def _shrink_reply(
        self,
        tid: bytes,
        requester_id: bytes,
        address: Address,
        reply: ResponseBody,
        limit: int,
        now: float,
    ) -> bytes | None:
        """Largest variant of ``reply`` that is no bigger than the request, or None."""
        variants: list[ResponseBody] = []
        if isinstance(reply, Nodes):
            variants = [Nodes(reply.nodes[:n]) for n in range(len(reply.nodes) - 1, -1, -1)]
        elif isinstance(reply, Values):
            for n in range(len(reply.records) - 1, -1, -1):
                variants.append(Values(reply.records[:n], reply.total, True, reply.nodes))
            variants += [Values([], reply.total, True, reply.nodes[:n])
                         for n in range(len(reply.nodes) - 1, -1, -1)]
        for variant in variants:
            data = self._respond(tid, requester_id, address, variant, now)
            if len(data) <= limit:
                return data
        return None

    def _nodes_for(self, target: bytes, requester_id: bytes) -> list[NodeInfo]:
        k = self.config.k
        closest = self.table.closest(target, k)
        infos = []
        for c in closest:
            if c.node_id == requester_id:  # never tell a node about itself
                closest = [c for c in self.table.closest(target, k + 1)
                           if c.node_id != requester_id]
                return self._nodes_for_contacts(closest)
            info = c.info
            if info is None:
                info = c.info = NodeInfo(c.node_id, pack_ip(c.address[0]), c.address[1])
            infos.append(info)
        return infos

    @staticmethod
    def _nodes_for_contacts(closest: list[Contact]) -> list[NodeInfo]:
        infos = []
        for c in closest:
            info = c.info
            if info is None:
                info = c.info = NodeInfo(c.node_id, pack_ip(c.address[0]), c.address[1])
            infos.append(info)
        return infos

    def _values_for(self, body: GetValues, requester_id: bytes, now: float) -> Values:
        if len(body.owner) not in (0, 32):
            raise RemoteProtocolError("owner filter must be empty or 32 bytes")
        records = self.store.records(body.key, now, body.owner or None)
        nodes = self._nodes_for(body.key, requester_id) if body.offset == 0 else []
        budget = MAX_DATAGRAM_BYTES - _VALUES_OVERHEAD - _NODE_INFO_SIZE * len(nodes)
        page: list[Record] = []
        for record in records[body.offset : body.offset + MAX_RECORDS_PER_REPLY]:
            size = encoded_size(record)
            if size > budget and not page and nodes:
                nodes = []  # one large record per datagram: leave the contacts out
                budget = MAX_DATAGRAM_BYTES - _VALUES_OVERHEAD
            if size > budget:
                break
            page.append(record)
            budget -= size
        return Values(page, len(records), False, nodes)

    def _handle_store(
        self, record: Record, address: Address, validated: bool, now: float
    ) -> Stored:
        if not validated:
            self.stats["store_bad_token"] += 1
            return Stored(StoreStatus.BAD_TOKEN)
        return Stored(self._store_record(record, address, now))

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

    def _handle_listen(
        self,
        key: bytes,
        tid: bytes,
        requester_id: bytes,
        address: Address,
        validated: bool,
        now: float,
    ) -> Listening | Error:
        if not validated:
            return Error(ErrorCode.TOKEN_REQUIRED, "token required")
        listeners = self._listeners.setdefault(key, {})
        if address not in listeners and (
            len(listeners) >= self.config.max_listeners_per_key
            or self._listener_count >= self.config.max_listeners
        ):
            if not listeners:
                del self._listeners[key]
            return Error(ErrorCode.OVERLOADED, "too many listeners")
        if address not in listeners:
            self._listener_count += 1
        duration = self.config.listen_duration
        listeners[address] = _Listener(tid, requester_id, now + duration)
        return Listening(int(duration))

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

    # ------------------------------------------------------------------ responses (client)

    def _handle_response(
        self,
        envelope: Envelope,
        envelope_bytes: bytes,
        signature: bytes,
        address: Address,
        now: float,
    ) -> None:
        body = envelope.body
        # Match before verifying: a flood of unsolicited replies costs a dict lookup each,
        # not a signature check.
        txn: _Transaction | None = None
        if isinstance(body, Push):
            if envelope.tid not in self._listen_tids:
                self.stats["pushes_unmatched"] += 1
                return
        else:
            txn = self._transactions.get(envelope.tid)
            if txn is None or txn.address != address:
                self.stats["responses_unmatched"] += 1
                return
        if self.config.verify_signatures and not verify_signature(
            envelope.sender, response_signed_bytes(self.node_id, envelope_bytes), signature
        ):
            raise RemoteProtocolError("response signature invalid")
        if txn is None:
            assert isinstance(body, Push)
            self._handle_push(envelope.tid, body, address, now)
            return
        sender_id = self._node_id_of(envelope.sender)
        if txn.expected_id is not None and sender_id != txn.expected_id:
            self._forget_transaction(txn)
            self._misbehaved(address, "responder is not the node we asked")
            self._fail(txn, now)
            return
        self._forget_transaction(txn)
        self.stats["responses_received"] += 1
        peer = self._peer(address, now)
        if txn.attempts == 1:
            sample = max(0.0, now - txn.sent_at)
            peer.update(sample)
            peer.backoff = 1.0
            self._overall_rtt.update(sample)
        if envelope.token:
            peer.token = envelope.token
            peer.token_at = now
        if not envelope.flags & FLAG_READ_ONLY:
            self._on_verified(sender_id, address, now)
        if isinstance(body, (Error, Stored)) and self._retry_with_token(txn, body, now):
            return
        if isinstance(body, REQUEST_TYPES):  # pragma: no cover - routed to _handle_request
            return
        self._dispatch(txn, body, sender_id, address, now)

    def _retry_with_token(self, txn: _Transaction, body: Error | Stored, now: float) -> bool:
        needs_token = (isinstance(body, Error) and body.code == ErrorCode.TOKEN_REQUIRED) or (
            isinstance(body, Stored) and body.status == StoreStatus.BAD_TOKEN
        )
        if not needs_token or txn.token_retry_done:
            return False
        txn.token_retry_done = True
        txn.sent_at = now
        txn.attempts += 1
        txn.deadline = now + self._rto(txn.address)
        self._remember_transaction(txn)
        heapq.heappush(self._deadlines, (txn.deadline, txn.tid))
        self._transmit(txn, now)
        return True

    def _dispatch(
        self, txn: _Transaction, body: ResponseBody, sender_id: bytes, address: Address,
        now: float,
    ) -> None:
        query = self._queries.get(txn.query_id) if txn.query_id is not None else None
        purpose = txn.purpose
        if purpose is _Purpose.BOOTSTRAP_PING:
            if query is not None:
                query.pending -= 1
                if query.pending == 0:
                    self._start_lookup(query, now)
            return
        if query is None:
            return
        if purpose is _Purpose.LOOKUP and query.lookup is not None:
            lookup = query.lookup
            closer: list[tuple[bytes, Address]] = []
            if isinstance(body, (Nodes, Values)):
                contact_address_of = _contact_address
                own = self.node_id
                known = lookup.owns
                for info in body.nodes:
                    node_id = info.node_id
                    # a candidate the lookup holds already would be ignored: skip it early
                    if node_id == own or known(node_id):
                        continue
                    contact_address = contact_address_of(info.ip, info.port)
                    if contact_address is not None:
                        closer.append((node_id, contact_address))
            lookup.on_response(sender_id, closer)
            if isinstance(body, Values) and isinstance(txn.body, GetValues):
                self._collect_values(query, txn, txn.body, body, address, now)
            self._pump(query, now)
        elif purpose is _Purpose.PAGE:
            query.pending -= 1
            if isinstance(body, Values) and isinstance(txn.body, GetValues):
                self._collect_values(query, txn, txn.body, body, address, now)
            self._pump(query, now)
        elif purpose is _Purpose.STORE:
            query.pending -= 1
            if isinstance(body, Stored) and body.status == StoreStatus.OK:
                query.stored += 1
            self._maybe_finish_put(query)
        elif purpose is _Purpose.LISTEN:
            query.pending -= 1
            if isinstance(body, Listening):
                query.stored += 1
                # a storer's word on the duration is bounded by ours (and a floor of 10 s)
                duration = min(max(10.0, float(body.duration)), self.config.listen_duration)
                self._listen_tids[txn.tid] = (query.query_id, now + duration + 5)
                # renew before the shortest subscription a storer granted runs out
                query.renew_at = min(query.renew_at, now + duration / 2)
            self._maybe_announce_listen(query)

    def _collect_values(
        self,
        query: _Query,
        txn: _Transaction,
        request: GetValues,
        body: Values,
        address: Address,
        now: float,
    ) -> None:
        for record in body.records:
            if query.owner is not None and record.owner != query.owner:
                continue
            held = query.records.get(record.owner)
            if held is not None and (held == record or held.seq > record.seq):
                continue  # already verified (each storer returns the same record) or older
            try:
                validate_record(record, query.target, now,
                                verify_signature_=self.config.verify_signatures)
            except InvalidRecord as exc:
                self._misbehaved(address, f"invalid record in reply: {exc}")
                continue
            query.records[record.owner] = record
        offset = request.offset
        more = offset + len(body.records) < min(body.total, _MAX_RECORDS_PER_GET)
        if body.records:
            if not more:
                return
        elif not (body.truncated and body.total > 0 and txn.purpose is _Purpose.LOOKUP):
            return  # no progress: never ask for the same page twice
        if query.pages >= _MAX_PAGES_PER_QUERY:
            self.stats["page_budget_exhausted"] += 1
            return
        query.pages += 1
        query.pending += 1
        next_offset = offset + len(body.records)
        self._send_request(address, GetValues(query.target, query.owner or b"", next_offset),
                           now, purpose=_Purpose.PAGE, query_id=query.query_id,
                           expected_id=txn.expected_id)

    def _handle_push(self, tid: bytes, body: Push, address: Address, now: float) -> None:
        entry = self._listen_tids.get(tid)
        if entry is None:
            self.stats["pushes_unmatched"] += 1
            return
        query = self._queries.get(entry[0])
        if query is None or query.target != body.key:
            self.stats["pushes_unmatched"] += 1
            return
        try:
            validate_record(body.record, body.key, now,
                            verify_signature_=self.config.verify_signatures)
        except InvalidRecord as exc:
            self._misbehaved(address, f"invalid pushed record: {exc}")
            return
        self._deliver_push(query, body.record, address)

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

    # ------------------------------------------------------------------ failures

    def _on_timeout(self, txn: _Transaction, now: float) -> None:
        if txn.purpose is _Purpose.LOOKUP and not txn.slow:
            # Soft timeout (Jimenez et al. 2011): give the slot to the next candidate now but
            # keep listening for this answer until the hard limit.
            txn.slow = True
            # hard limit: three RTOs (a dead node must not hold a lookup for max_rto), and
            # never under RFC 6298's initial 1 s for a path we have not measured yet (the
            # prior from other peers says nothing about this one)
            cfg = self.config
            wait = 3 * (txn.deadline - txn.sent_at)
            measured = self._peers.get(txn.address)
            if measured is None or measured.srtt is None:
                wait = max(wait, cfg.initial_rto)
            hard = txn.sent_at + min(cfg.max_rto, wait)
            if hard > now:
                txn.deadline = hard
                heapq.heappush(self._deadlines, (hard, txn.tid))
                self.stats["soft_timeouts"] += 1
                query = self._queries.get(txn.query_id) if txn.query_id is not None else None
                if query is not None and query.lookup is not None and \
                        txn.expected_id is not None:
                    query.lookup.on_slow(txn.expected_id)
                    self._pump(query, now)
                return
        est = self._peer(txn.address, now)
        est.backoff = min(8.0, est.backoff * 2)
        retries = self.config.store_retries if txn.purpose in (
            _Purpose.STORE, _Purpose.LISTEN, _Purpose.PAGE, _Purpose.HANDOVER,
            _Purpose.BOOTSTRAP_PING) else 0
        if txn.attempts <= retries:
            txn.attempts += 1
            txn.sent_at = now
            txn.deadline = now + self._rto(txn.address)
            heapq.heappush(self._deadlines, (txn.deadline, txn.tid))
            self.stats["retransmissions"] += 1
            self._transmit(txn, now)
            return
        self._forget_transaction(txn)
        self.stats["timeouts"] += 1
        self._fail(txn, now)

    def _fail(self, txn: _Transaction, now: float) -> None:
        if txn.expected_id is not None:
            contact = self.table.get(txn.expected_id)
            # Only a failure at the contact's known address counts against it: a spoofed
            # request naming the contact from elsewhere must not get it evicted.
            if contact is not None and contact.address == txn.address and \
                    self.table.record_failure(txn.expected_id, now):
                self._emit(ContactEvicted(node_id=txn.expected_id, address=txn.address))
        if txn.purpose is _Purpose.VERIFY and txn.expected_id is not None:
            self._verifying.pop(txn.expected_id, None)
        query = self._queries.get(txn.query_id) if txn.query_id is not None else None
        if query is None:
            return
        purpose = txn.purpose
        if purpose is _Purpose.BOOTSTRAP_PING:
            query.pending -= 1
            if query.pending == 0:
                self._start_lookup(query, now)
        elif purpose is _Purpose.LOOKUP and query.lookup is not None:
            assert txn.expected_id is not None
            query.lookup.on_failure(txn.expected_id)
            self._pump(query, now)
        elif purpose is _Purpose.PAGE:
            query.pending -= 1
            self._pump(query, now)
        elif purpose is _Purpose.STORE:
            query.pending -= 1
            self._maybe_finish_put(query)
        elif purpose is _Purpose.LISTEN:
            query.pending -= 1
            self._maybe_announce_listen(query)

    # ------------------------------------------------------------------ contacts

    def _consider_contact(self, node_id: bytes, address: Address, now: float) -> None:
        """A node sent us a request: verify it with a signed challenge before adding it."""
        contact = self.table.get(node_id)
        if contact is not None and contact.address == address:
            return  # known here; last_seen moves only on verified replies (requests spoof)
        if node_id == self.node_id or node_id in self._verifying:
            return
        if not is_valid_contact_address(*address):
            return
        if contact is None and not self.table.has_room_for(node_id, address):
            # A full bucket keeps its long-lived contacts (Kademlia sec. 2.2); new ones only
            # get in through the replacement cache, fed by verified lookup replies.
            self.stats["verifications_not_needed"] += 1
            return
        if (node_id, address) in self._awaiting:
            # We are waiting for this node's reply at this address: that signed reply is the
            # same challenge as a Ping and admits it (its Ping to us often overtakes it).
            self.stats["verifications_pending_reply"] += 1
            return
        if len(self._verifying) >= self.config.max_pending_verifications:
            self.stats["verifications_skipped"] += 1
            return
        self._verifying[node_id] = now
        self._send_request(address, Ping(), now, purpose=_Purpose.VERIFY, expected_id=node_id)

    def _on_verified(self, node_id: bytes, address: Address, now: float) -> None:
        self._verifying.pop(node_id, None)
        if not is_valid_contact_address(*address):
            return
        result, lru = self.table.add(node_id, address, now)
        if result is AddResult.ADDED:
            self._emit(ContactAdded(node_id=node_id, address=address))
            self._hand_over(node_id, address, now)
        elif result is AddResult.CACHED and lru is not None and (
            lru.failures > 0 or now - lru.last_seen > 60.0
        ) and not any(t.expected_id == lru.node_id for t in self._liveness_checks()):
            self._send_request(lru.address, Ping(), now, purpose=_Purpose.LIVENESS,
                               expected_id=lru.node_id)
        elif result is AddResult.REJECTED_DIVERSITY:
            self.stats["contacts_rejected_diversity"] += 1

    def _liveness_checks(self) -> list[_Transaction]:
        return [t for t in self._transactions.values() if t.purpose is _Purpose.LIVENESS]

    def _hand_over(self, node_id: bytes, address: Address, now: float) -> None:
        """Give a newly verified node the records it is now among the k closest for."""
        if self.config.read_only:
            return
        sent = 0
        for key in self.store.held_keys():
            if sent >= self.config.handover_limit:
                break
            if distance(node_id, key) >= distance(self.node_id, key):
                continue
            closest = self.table.closest(key, self.config.k)
            if not any(c.node_id == node_id for c in closest):
                continue
            for record in self.store.records(key, now):
                if sent >= self.config.handover_limit:
                    break
                self._send_request(address, Store(record), now, purpose=_Purpose.HANDOVER,
                                   expected_id=node_id)
                sent += 1
                self.stats["handover_sent"] += 1

    # ------------------------------------------------------------------ maintenance

    def _maintenance(self, now: float) -> None:
        self.stats["expired_records"] += self.store.expire(now)
        for key in list(self._listeners):
            listeners = self._listeners[key]
            for address in [a for a, item in listeners.items() if item.expires <= now]:
                del listeners[address]
                self._listener_count -= 1
            if not listeners:
                del self._listeners[key]
        for tid in [t for t, (_, exp) in self._listen_tids.items() if exp <= now]:
            del self._listen_tids[tid]
        for vid in [n for n, at in self._verifying.items() if now - at > 30.0]:
            del self._verifying[vid]
        if self._rejoin_at <= now:
            self._rejoin_at = math.inf
            self.stats["rejoins"] += 1
            self._start_lookup(self._new_query(_Kind.BOOTSTRAP, self.node_id, internal=True),
                               now)
        for owned_key, owned in list(self._owned.items()):
            if owned.record.expires <= now:
                del self._owned[owned_key]
            elif owned.next_publish <= now:
                owned.next_publish = now + self.config.republish_interval
                query = self._new_query(_Kind.PUT, owned.record.key, internal=True)
                query.record = owned.record
                self._start_lookup(query, now)
                self.stats["republished"] += 1
        for query in list(self._queries.values()):
            if query.kind is _Kind.LISTEN and query.lookup is None and query.pending == 0 \
                    and query.renew_at <= now:
                self._start_lookup(query, now)
        if len(self.table):
            for index in self.table.stale_buckets(now, self.config.bucket_refresh_interval)[:8]:
                self._refresh_bucket(index, now)

    def _refresh_bucket(self, index: int, now: float) -> None:
        """Look up a random id in bucket ``index``'s range (Kademlia sec. 2.3)."""
        self.table.touch_bucket(index, now)
        query = self._new_query(_Kind.FIND_NODE, self._random_id_in_bucket(index),
                                internal=True)
        self._start_lookup(query, now)
        self.stats["bucket_refreshes"] += 1

    def _random_id_in_bucket(self, index: int) -> bytes:
        own = int.from_bytes(self.node_id, "big")
        flip = 1 << (ID_BITS - 1 - index)
        low_mask = flip - 1
        value = ((own ^ flip) & ~low_mask) | (self._rng.getrandbits(ID_BITS) & low_mask)
        return value.to_bytes(ID_BYTES, "big")

