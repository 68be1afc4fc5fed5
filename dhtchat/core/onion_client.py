"""The onion client: builds 3-hop paths telescopically and sends requests through them.

Theory of operation
-------------------
The client side of :mod:`dhtchat.core.onion` (circuits as in Tor's tor-spec; layers and
handshake in :mod:`dhtchat.core.onion_cells`). A path is chosen from candidate relays (the
caller passes them, later from the routing table): ``hops`` relays on distinct /16s (IPv6:
/32s), none of the excluded node ids (contacts), none that failed recently. The client sends
``Create`` to the first relay, then one ``Extend`` per further hop through the hops built so
far, checking each hop's ntor AUTH, so a hop that is not the holder of the onion key the
client chose fails the build. Requests queue until a path is ready; each is wrapped in one
forward layer per hop and its reply peeled off layer by layer (the seal tells the client which
hop spoke, so a ``Truncated`` names the failing link).

Paths rotate: after :attr:`OnionConfig.path_lifetime` a fresh path is built while the old one
keeps serving; once the new one is ready, new requests go to it and the old one is destroyed
when its requests are answered or timed out (if the new build fails, the old path serves on
and is replaced a little later). A failed
build step, a ``Truncated``, or :attr:`OnionConfig.max_request_timeouts` unanswered requests
in a row fail the path: the suspected relay is avoided for
:attr:`OnionConfig.relay_avoid_time` and a new path is built while requests wait (Tox's
onion_client.c rotates paths on timeouts the same way). Sans-IO like the relay: ``now`` comes
in, randomness is the injected ``rng``.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from dhtchat.core.addresses import Address, pack_ip
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.events import Event
from dhtchat.core.onion import (
    MAX_REQUEST_BYTES,
    Extend,
    Extended,
    OnionConfig,
    Reply,
    Request,
    Truncated,
    frame,
    parse_backward,
)
from dhtchat.core.onion_cells import (
    CIRC_ID_BYTES,
    HANDSHAKE_REPLY_BYTES,
    Create,
    Created,
    Destroy,
    HopKeys,
    Relay,
    ReplayWindow,
    client_handshake,
    decode_cell,
    encode_cell,
    open_sealed,
    pad_body,
    seq_bytes,
    seq_value,
    unwrap_backward,
    wrap_forward,
    x25519_public,
)

__all__ = ["OnionClient", "OnionReply", "PathFailed", "PathReady", "RelayInfo",
           "RequestFailed", "choose_path"]

_SEQ_START_BITS: Final = 48


@dataclass(frozen=True, slots=True)
class RelayInfo:
    """A relay a path may use: its node id, address and X25519 onion key."""

    node_id: bytes
    address: Address
    onion_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PathReady(Event):
    """A path is built; ``relays`` are its node ids, first hop first."""

    path_id: int
    relays: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PathFailed(Event):
    """A path was given up; ``relay`` is the node the failure points at (None: unknown)."""

    path_id: int
    reason: str
    relay: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OnionReply(Event):
    """The exit's reply to :meth:`OnionClient.request`."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFailed(Event):
    """A request got no reply (``reason``: timeout, no_path)."""

    request_id: int
    reason: str


@lru_cache(maxsize=4096)
def _prefix16(host: str) -> str:
    ip = ipaddress.ip_address(host)
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def choose_path(candidates: Sequence[RelayInfo], hops: int, rng: random.Random,
                exclude: Iterable[bytes] = ()) -> tuple[RelayInfo, ...] | None:
    """``hops`` random relays on distinct /16s, none in ``exclude``; None if there are not
    enough such relays."""
    excluded = set(exclude)
    pool = [relay for relay in candidates if relay.node_id not in excluded]
    rng.shuffle(pool)
    chosen: list[RelayInfo] = []
    prefixes: set[str] = set()
    ids: set[bytes] = set()
    for relay in pool:
        prefix = _prefix16(relay.address[0])
        if prefix in prefixes or relay.node_id in ids:
            continue
        chosen.append(relay)
        prefixes.add(prefix)
        ids.add(relay.node_id)
        if len(chosen) == hops:
            return tuple(chosen)
    return None


@dataclass(slots=True)
class _Hop:
    relay: RelayInfo
    keys: HopKeys
    seq: int  # next forward seq on the leg into this hop
    window: ReplayWindow = field(default_factory=ReplayWindow)  # backward seqs from this hop


@dataclass(slots=True)
class _Path:
    path_id: int
    relays: tuple[RelayInfo, ...]
    circ_id: bytes
    created: float
    deadline: float  # of the build step under way
    secret: bytes  # the ephemeral X25519 secret of the hop being built
    hops: list[_Hop] = field(default_factory=list)
    ready: bool = False
    retiring: bool = False
    timeouts: int = 0
    active: float = 0.0  # last cell sent or received on it
    # request id -> (deadline, stream); an answered stream has no deadline (math.inf)
    pending: dict[int, tuple[float, bool]] = field(default_factory=dict)


class OnionClient:
    """The client machine (see the module docstring).

    ``rng`` draws the client's X25519 secrets and chooses relays: in production it MUST be
    ``random.SystemRandom()`` (see :class:`~dhtchat.core.onion.OnionRelay`).
    """

    def __init__(self, *, rng: random.Random, now: float,
                 config: OnionConfig | None = None) -> None:
        self.config = config if config is not None else OnionConfig()
        self._rng = rng
        self.stats: Counter[str] = Counter()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._candidates: list[RelayInfo] = []
        self._excluded: set[bytes] = set()
        self._avoid: dict[bytes, float] = {}  # node id -> avoided until
        self._paths: dict[int, _Path] = {}
        self._legs: dict[tuple[Address, bytes], int] = {}
        self._current: int | None = None  # the newest path (new requests go to it when ready)
        self._previous: int | None = None  # the path it replaces, serving until it is ready
        self._next_path_id = 1
        self._next_request = rng.getrandbits(31)
        self._queued: deque[tuple[int, bytes, float, bool]] = deque()  # id, data, deadline, stream
        self._build_attempts = 0

    # ------------------------------------------------------------------ configuration

    def set_relays(self, candidates: Iterable[RelayInfo]) -> None:
        """The relays paths are chosen from (replaces the previous set)."""
        self._candidates = list(candidates)

    def exclude(self, node_ids: Iterable[bytes]) -> None:
        """Node ids never to use as a relay (e.g. the node ids of contacts)."""
        self._excluded = set(node_ids)

    def path_relays(self) -> tuple[bytes, ...] | None:
        """Node ids of the path requests go to now (None: no path is ready)."""
        for path_id in (self._current, self._previous):
            path = self._paths.get(path_id) if path_id is not None else None
            if path is not None and path.ready and not path.retiring:
                return tuple(r.node_id for r in path.relays)
        return None

    def _serving(self, now: float) -> _Path | None:
        # relays drop a circuit idle for circuit_idle_timeout: do not start on one close to it
        stale = now - 0.9 * self.config.circuit_idle_timeout
        for path_id in (self._current, self._previous):
            path = self._paths.get(path_id) if path_id is not None else None
            if path is None or not path.ready or path.retiring:
                continue
            if path.active >= stale:
                return path
            self.stats["paths_idle"] += 1
            for request_id in path.pending:
                self._events.append(RequestFailed(request_id=request_id, reason="path_failed"))
            path.pending.clear()
            self._close(path, notify=True)
        return None

    # ------------------------------------------------------------------ sans-IO verbs

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Cells queued for sending, oldest first; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        """The oldest unread event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The next deadline (build step, request, path rotation), or None."""
        deadlines = [entry[2] for entry in self._queued]
        for path in self._paths.values():
            if not path.ready:
                deadlines.append(path.deadline)
            else:
                deadlines.extend(d for d, _ in path.pending.values() if d < math.inf)
                if path.path_id == self._current:
                    deadlines.append(path.created + self.config.path_lifetime)
        return min(deadlines) if deadlines else None

    def build_path(self, now: float, relays: Sequence[RelayInfo] | None = None) -> int:
        """Start building a path (through ``relays``, or chosen from the candidates); once
        it is ready new requests go to it and the path it replaces is retired (until then
        that one still serves). Raises :class:`LocalProtocolError` when no path can be
        chosen."""
        cfg = self.config
        if relays is None:
            avoided = {node for node, until in self._avoid.items() if until > now}
            chosen = choose_path(self._candidates, cfg.hops, self._rng,
                                 self._excluded | avoided)
            if chosen is None:
                raise LocalProtocolError(f"not enough relays on distinct /16s for {cfg.hops} hops")
        else:
            chosen = tuple(relays)
            if not 1 <= len(chosen) <= 3:
                raise LocalProtocolError("a path has 1 to 3 relays")
        path = _Path(self._next_path_id, chosen, self._rng.randbytes(CIRC_ID_BYTES), now,
                     now + cfg.build_timeout, self._rng.randbytes(32))
        self._next_path_id += 1
        self._paths[path.path_id] = path
        self._legs[(chosen[0].address, path.circ_id)] = path.path_id
        old = self._paths.get(self._current) if self._current is not None else None
        if old is not None and old.ready:
            previous = self._paths.get(self._previous) if self._previous is not None else None
            if previous is not None:
                self._retire(previous)
            self._previous = old.path_id
        elif old is not None:
            self._close(old, notify=True)
        self._current = path.path_id
        self.stats["paths_started"] += 1
        self._send(Create(path.circ_id, bytes(8), pad_body(x25519_public(path.secret))),
                   chosen[0].address)
        return path.path_id

    def request(self, data: bytes, now: float, stream: bool = False) -> int:
        """Send opaque ``data`` to the exit of the current path (building one if needed);
        the answer is an :class:`OnionReply` or a :class:`RequestFailed` with the returned id.

        A ``stream`` request (later: a listen) stays open after its first reply: every
        further reply the exit sends for it is an :class:`OnionReply` too, until
        :meth:`cancel`, or a :class:`RequestFailed` (``rotated``, ``path_failed``) when its
        path goes; the caller then asks again on the new path."""
        if len(data) > MAX_REQUEST_BYTES:
            raise LocalProtocolError(f"onion request of {len(data)} bytes > {MAX_REQUEST_BYTES}")
        if len(self._queued) + self._in_flight() >= self.config.max_pending_requests:
            raise LocalProtocolError("too many onion requests in flight")
        request_id = self._next_request
        self._next_request = (self._next_request + 1) % (1 << 32)
        deadline = now + self.config.request_timeout
        path = self._serving(now)
        if path is not None:
            self._send_request(path, request_id, data, deadline, stream, now)
        else:
            self._queued.append((request_id, data, deadline, stream))
            if self._current is None:
                self._try_build(now)
        return request_id

    def cancel(self, request_id: int) -> None:
        """Forget a request or stream: later replies to it are dropped."""
        self._queued = deque(entry for entry in self._queued if entry[0] != request_id)
        for path in self._paths.values():
            path.pending.pop(request_id, None)

    def handle_timer(self, now: float) -> None:
        """Fail build steps and requests past their deadline; rotate old paths."""
        while self._queued and self._queued[0][2] <= now:
            request_id = self._queued.popleft()[0]
            self._events.append(RequestFailed(request_id=request_id, reason="timeout"))
        for path in list(self._paths.values()):
            if not path.ready:
                if now >= path.deadline:
                    building = path.relays[len(path.hops)]
                    self._fail(path, "timeout", building.node_id, now)
                continue
            for request_id, (deadline, _) in list(path.pending.items()):
                if deadline <= now:
                    del path.pending[request_id]
                    path.timeouts += 1
                    self._events.append(RequestFailed(request_id=request_id, reason="timeout"))
            if path.retiring and not path.pending:
                self._close(path, notify=True)
            elif path.timeouts >= self.config.max_request_timeouts:
                self._fail(path, "request_timeouts", None, now)
            elif (path.path_id == self._current
                  and now >= path.created + self.config.path_lifetime):
                try:
                    self.build_path(now)
                    self.stats["paths_rotated"] += 1
                except LocalProtocolError:  # no other path now: keep this one a while
                    path.created += self.config.build_timeout

    def receive_datagram(self, data: bytes, address: Address, now: float) -> bool:
        """Process a cell; True when it belonged to one of this client's paths (a driver
        sharing one socket with an :class:`~dhtchat.core.onion.OnionRelay` passes it there
        otherwise). Invalid input never raises: it is counted in :attr:`stats`."""
        try:
            cell = decode_cell(data)
        except RemoteProtocolError:
            return False
        path_id = self._legs.get((address, cell.circ_id))
        path = self._paths.get(path_id) if path_id is not None else None
        if path is None or isinstance(cell, Create):
            return False
        self.stats["cells_received"] += 1
        path.active = now
        if isinstance(cell, Destroy):  # unauthenticated, and relays expire idle circuits
            self._fail(path, "destroyed", None, now)
        elif isinstance(cell, Created):
            self._on_created(path, cell, now)
        else:
            self._on_relay(path, cell, now)
        return True

    # ------------------------------------------------------------------ cells

    def _on_created(self, path: _Path, cell: Created, now: float) -> None:
        if path.hops:
            self.stats["unexpected_cells"] += 1
            return
        self._add_hop(path, bytes(cell.body[:HANDSHAKE_REPLY_BYTES]), now)

    def _add_hop(self, path: _Path, reply: bytes, now: float) -> None:
        relay = path.relays[len(path.hops)]
        try:
            keys = client_handshake(path.secret, relay.node_id, relay.onion_key, reply)
        except RemoteProtocolError:
            self.stats["bad_handshakes"] += 1
            self._fail(path, "bad_handshake", relay.node_id, now)
            return
        path.hops.append(_Hop(relay, keys, self._rng.getrandbits(_SEQ_START_BITS)))
        if len(path.hops) == len(path.relays):
            path.ready = True
            self._build_attempts = 0
            self.stats["paths_ready"] += 1
            self._events.append(PathReady(path_id=path.path_id,
                                          relays=tuple(r.node_id for r in path.relays)))
            if path.path_id == self._current:
                previous = self._paths.get(self._previous) if self._previous is not None else None
                self._previous = None
                if previous is not None:
                    self._retire(previous)
                while self._queued:
                    request_id, data, deadline, stream = self._queued.popleft()
                    self._send_request(path, request_id, data, deadline, stream, now)
            return
        nxt = path.relays[len(path.hops)]
        path.secret = self._rng.randbytes(32)
        path.deadline = now + self.config.build_timeout
        self._send_forward(path, frame(Extend(nxt.node_id, pack_ip(nxt.address[0]),
                                              nxt.address[1], nxt.onion_key,
                                              x25519_public(path.secret))))

    def _on_relay(self, path: _Path, cell: Relay, now: float) -> None:
        if not path.hops:
            self.stats["unexpected_cells"] += 1
            return
        seq, body = seq_value(cell.seq), bytes(cell.body)
        seqs: list[int] = []
        for depth, hop in enumerate(path.hops):
            if not hop.window.check(seq):
                self.stats["replayed_cells"] += 1
                return
            seqs.append(seq)
            payload = open_sealed(hop.keys.backward, seq, body)
            if payload is not None:
                for hop_seen, seen in zip(path.hops, seqs, strict=False):
                    hop_seen.window.record(seen)
                self._on_message(path, depth, payload, now)
                return
            seq, body = unwrap_backward(hop.keys.backward, seq, body)
        self.stats["bad_layer"] += 1

    def _on_message(self, path: _Path, depth: int, payload: bytes, now: float) -> None:
        try:
            message = parse_backward(payload)
        except RemoteProtocolError:
            self.stats["malformed_messages"] += 1
            return
        last = depth == len(path.hops) - 1
        if isinstance(message, Truncated):
            self.stats["truncated"] += 1
            suspect = path.relays[depth + 1] if depth + 1 < len(path.relays) else None
            self._fail(path, f"truncated:{message.reason}",
                       suspect.node_id if suspect else None, now)
        elif isinstance(message, Extended) and last and not path.ready:
            self._add_hop(path, message.reply, now)
        elif isinstance(message, Reply) and last and message.request_id in path.pending:
            _, stream = path.pending[message.request_id]
            if stream:
                path.pending[message.request_id] = (math.inf, True)
            else:
                del path.pending[message.request_id]
            path.timeouts = 0
            self.stats["replies"] += 1
            self._events.append(OnionReply(request_id=message.request_id, data=message.data))
            if path.retiring and not path.pending:
                self._close(path, notify=True)
        else:
            self.stats["unexpected_messages"] += 1

    # ------------------------------------------------------------------ helpers

    def _in_flight(self) -> int:
        return sum(len(path.pending) for path in self._paths.values())

    def _send_request(self, path: _Path, request_id: int, data: bytes, deadline: float,
                      stream: bool, now: float) -> None:
        path.pending[request_id] = (deadline, stream)
        path.active = now
        self.stats["requests_sent"] += 1
        self._send_forward(path, frame(Request(request_id, data)))

    def _send_forward(self, path: _Path, payload: bytes) -> None:
        layers = [(hop.keys.forward, hop.seq) for hop in path.hops]
        first_seq = path.hops[0].seq
        for hop in path.hops:
            hop.seq += 1
        self._send(Relay(path.circ_id, seq_bytes(first_seq), wrap_forward(layers, payload)),
                   path.relays[0].address)

    def _try_build(self, now: float) -> None:
        if self._build_attempts >= self.config.max_build_attempts:
            self._fail_queued("no_path")
            self._build_attempts = 0
            return
        self._build_attempts += 1
        try:
            self.build_path(now)
        except LocalProtocolError:
            self._fail_queued("no_path")

    def _fail_queued(self, reason: str) -> None:
        while self._queued:
            request_id = self._queued.popleft()[0]
            self._events.append(RequestFailed(request_id=request_id, reason=reason))

    def _fail(self, path: _Path, reason: str, relay: bytes | None, now: float) -> None:
        self.stats["paths_failed"] += 1
        if relay is not None:
            self._avoid[relay] = now + self.config.relay_avoid_time
        self._events.append(PathFailed(path_id=path.path_id, reason=reason, relay=relay))
        was_current = path.path_id == self._current
        if was_current and self._previous is not None:  # the path it was to replace serves on
            self._current, self._previous = self._previous, None
            was_current = False
            restored = self._paths.get(self._current)
            if restored is not None:  # and is replaced a little later
                restored.created = now - self.config.path_lifetime + self.config.build_timeout
        for request_id in path.pending:  # requests in flight on it are lost with it
            self._events.append(RequestFailed(request_id=request_id, reason="path_failed"))
        path.pending.clear()
        self._close(path, notify=reason != "destroyed")
        if was_current and self._queued:
            self._try_build(now)

    def _retire(self, path: _Path) -> None:
        path.retiring = True
        for request_id, (deadline, _) in list(path.pending.items()):
            if deadline == math.inf:  # an open stream ends with its path
                del path.pending[request_id]
                self._events.append(RequestFailed(request_id=request_id, reason="rotated"))
        if not path.ready or not path.pending:
            self._close(path, notify=True)

    def _close(self, path: _Path, notify: bool) -> None:
        if path.path_id not in self._paths:
            return
        if notify and path.hops:
            self._send(Destroy(path.circ_id, bytes(8), pad_body(b"")), path.relays[0].address)
        del self._paths[path.path_id]
        self._legs.pop((path.relays[0].address, path.circ_id), None)
        if self._current == path.path_id:
            self._current = None
        if self._previous == path.path_id:
            self._previous = None

    def _send(self, cell: Create | Created | Relay | Destroy, address: Address) -> None:
        self._outbox.append((encode_cell(cell), address))
