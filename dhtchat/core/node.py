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

The node is written in three layers (:mod:`dhtchat.core.node_state`: state and sending;
:mod:`dhtchat.core.node_queries`: commands, lookups, timers, upkeep; this module: datagrams in,
i.e. request handling and the checks on replies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import hmac
from functools import lru_cache
from typing import Final

from dhtchat.core.addresses import Address, is_valid_contact_address, pack_ip, subnet_of, unpack_ip
from dhtchat.core.errors import InvalidRecord, RemoteProtocolError
from dhtchat.core.events import AddressObserved
from dhtchat.core.identity import verify_signature
from dhtchat.core.node_queries import NodeQueries
from dhtchat.core.node_state import _PING_PAD, DhtConfig, _Listener, _Purpose, _Query, _Transaction
from dhtchat.core.records import Record, encoded_size, validate_record
from dhtchat.core.routing import Contact
from dhtchat.core.wire import (
    FLAG_READ_ONLY,
    MAX_DATAGRAM_BYTES,
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
    ResponseBody,
    Store,
    Stored,
    StoreStatus,
    Values,
    decode,
    response_signed_bytes,
)

__all__ = ["DhtConfig", "DhtNode"]

_VALUES_OVERHEAD: Final = 160  # envelope, signature and Values fields around the lists
_NODE_INFO_SIZE: Final = 60  # upper bound of one encoded NodeInfo (IPv6)
_MAX_RECORDS_PER_GET: Final = 4096  # a get follows pages up to this many records per storer
_MAX_PAGES_PER_QUERY: Final = 256


@lru_cache(maxsize=1 << 18)
def _contact_address(ip: bytes, port: int) -> Address | None:
    """The address of a contact as carried in a reply, or None if no contact can have it."""
    try:
        host = unpack_ip(ip)
    except RemoteProtocolError:
        return None
    return (host, port) if is_valid_contact_address(host, port) else None


class DhtNode(NodeQueries):
    """A Kademlia node as a pure state machine (see the module docstring)."""

    def set_read_only(self, read_only: bool) -> None:
        """Only ask (``True``: a DHT client, BEP 43) or also serve; peers add us to their
        routing tables, or stop, from our next request on (dhtchat.core.reachability)."""
        self.config = dataclasses.replace(self.config, read_only=read_only)
        self._flags = FLAG_READ_ONLY if read_only else 0

    # ------------------------------------------------------------------ sans-IO verbs: datagrams

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
        if self._suspects:
            self._suspects.pop(address, None)  # it answers again
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
        if isinstance(body, Pong) and self.config.report_observed_addresses:
            # where our ping came from, as the peer saw it
            with contextlib.suppress(ValueError):
                observed = (unpack_ip(body.observed_ip), body.observed_port)
                self._emit(AddressObserved(peer=address, observed=observed))
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
