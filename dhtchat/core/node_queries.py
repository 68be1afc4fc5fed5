"""The DHT node's queries: commands, lookups in flight, timers, failures, contact upkeep.

Theory of operation
-------------------
:class:`NodeQueries` is the middle layer of :class:`~dhtchat.core.node.DhtNode` (the layers
are described in :mod:`dhtchat.core.node_state`). A command (``bootstrap``, ``find_node``,
``get``, ``put``, ``listen``) creates a query and starts a node lookup (Kademlia,
Maymounkov & Mazieres 2002, sec. 2.3): the ``k`` closest known contacts seed it, ``alpha``
requests are in flight (:mod:`dhtchat.core.lookup` picks them), and every reply moves the query
on until the lookup has converged; then the query stores (STORE on the ``k`` closest), subscribes
(Listen) or reports what it found as an event.

Timers: a lookup request past its RTO is a *soft* timeout (Jimenez et al., "Sub-second lookups
on a large-scale Kademlia-based overlay", 2011): its slot goes to the next candidate while the
reply is still accepted until a hard limit. The soft timeout ignores the address's backoff
(``soft_timeout_backoff``; the hard limit keeps it), and a GET does not wait for slow
candidates once ``get_quorum`` of the closest answered (see :mod:`dhtchat.core.lookup`).
Other requests are retried (``store_retries``) and then fail; a failure counts against the
contact only at its known address, and ``max_failures`` in a row evict it (paper sec. 2.2,
4.1).

Contacts enter the routing table only after a signed challenge (a Ping, or a reply we were
already waiting for). A full bucket keeps its long-lived contacts (sec. 2.2); a newcomer waits
in the replacement cache while the least recently seen contact is pinged. A newly verified
node is handed the records it is now among the ``k`` closest for (sec. 2.5).

Upkeep (``maintenance_interval``): records and subscriptions expire, owned records are
republished every ``republish_interval`` (sec. 2.5), subscriptions are renewed before the
storers drop them, a node that joined with too few contacts looks itself up again with
backoff, and buckets without a lookup for ``bucket_refresh_interval`` are refreshed with a
lookup of a random id in their range (sec. 2.3).
"""

from __future__ import annotations

import heapq
import math
from typing import Final

from dhtchat.core.addresses import Address, is_valid_contact_address
from dhtchat.core.errors import InvalidRecord, LocalProtocolError
from dhtchat.core.events import (
    BootstrapCompleted,
    ContactAdded,
    ContactEvicted,
    Event,
    GetCompleted,
    ListenStarted,
    LookupCompleted,
    PutCompleted,
)
from dhtchat.core.ids import ID_BITS, ID_BYTES, distance
from dhtchat.core.lookup import Candidate, DisjointLookup, Lookup
from dhtchat.core.node_state import NodeState, _Kind, _Owned, _Purpose, _Query, _Transaction
from dhtchat.core.records import Record, validate_record
from dhtchat.core.routing import AddResult
from dhtchat.core.wire import (
    FindNode,
    GetValues,
    Listen,
    Ping,
    RequestBody,
    Store,
    StoreStatus,
)

_MAX_REJOINS: Final = 4
_QUORUM_KINDS: Final = frozenset({_Kind.GET, _Kind.BOOTSTRAP})
_REJOIN_DELAY: Final = 5.0


class NodeQueries(NodeState):
    """Commands, queries, timers and upkeep of a :class:`~dhtchat.core.node.DhtNode` (see the
    module docstring). Not used on its own."""

    # ------------------------------------------------------------------ sans-IO verbs: timers

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

    # ------------------------------------------------------------------ queries

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
        # a GET needs some replicas, not the exact k closest, and a bootstrap a filled table:
        # neither need wait for slow candidates (FIND_NODE, PUT and LISTEN need the true k)
        quorum = self.config.get_quorum if query.kind in _QUORUM_KINDS else None
        if self.config.disjoint_paths > 1:
            lookup = DisjointLookup(query.target, k=self.config.k, alpha=self.config.alpha,
                                    paths=self.config.disjoint_paths,
                                    max_queries=self.config.max_lookup_queries,
                                    max_per_ip=self.config.max_per_subnet_table,
                                    quorum=quorum)
            seeds = self.config.k * self.config.disjoint_paths
        else:
            lookup = Lookup(query.target, k=self.config.k, alpha=self.config.alpha,
                            max_queries=self.config.max_lookup_queries,
                            max_per_ip=self.config.max_per_subnet_table, quorum=quorum)
            seeds = self.config.k
        for contact in self.table.closest(query.target, seeds):
            lookup.add(contact.node_id, contact.address)
        query.lookup = lookup
        self._pump(query, now)

    def _pump(self, query: _Query, now: float) -> None:
        lookup = query.lookup
        if lookup is None:
            return
        # A suspect candidate (it left a request unanswered lately) is asked, but its query
        # starts slow: its slot goes to the next candidate at once. Every pass sends at least
        # one new query, so max_lookup_queries bounds the loop.
        started_slow = True
        while started_slow:
            started_slow = False
            for cand in lookup.next_queries():
                body: RequestBody
                if query.kind is _Kind.GET:
                    body = GetValues(query.target, query.owner or b"")
                else:
                    body = FindNode(query.target)
                tid = self._send_request(cand.address, body, now, purpose=_Purpose.LOOKUP,
                                         query_id=query.query_id, expected_id=cand.node_id)
                if self._suspects and self.is_suspect(cand.address, now) and \
                        self._go_slow(self._transactions[tid], now):
                    self.stats["suspects_started_slow"] += 1
                    lookup.on_slow(cand.node_id)
                    started_slow = True
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

    # ------------------------------------------------------------------ failures

    def _on_timeout(self, txn: _Transaction, now: float) -> None:
        self._note_unanswered(txn.address, now)
        if txn.purpose is _Purpose.LOOKUP and not txn.slow and self._go_slow(txn, now):
            # Soft timeout (Jimenez et al. 2011): give the slot to the next candidate now but
            # keep listening for this answer until the hard limit.
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

    def _go_slow(self, txn: _Transaction, now: float) -> bool:
        """Mark a lookup request slow: it waits on until its hard limit (False: none left)."""
        # hard limit: three RTOs (a dead node must not hold a lookup for max_rto), and never
        # under RFC 6298's initial 1 s for a path we have not measured yet (the prior from
        # other peers says nothing about this one)
        cfg = self.config
        wait = 3 * txn.rto
        measured = self._peers.get(txn.address)
        if measured is None or measured.srtt is None:
            wait = max(wait, cfg.initial_rto)
        hard = txn.sent_at + min(cfg.max_rto, wait)
        if hard <= now:
            return False
        txn.slow = True
        txn.deadline = hard
        heapq.heappush(self._deadlines, (hard, txn.tid))
        return True

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
        self._forget_old_suspicions(now)
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
