"""The onion relay: the sans-IO machine every DHT node runs to carry other people's circuits.

Theory of operation
-------------------
Circuits are Tor's (tor-spec, "Creating and extending circuits"): a client opens a leg to its
first relay with ``Create`` (an ntor handshake, :mod:`dhtchat.core.onion_cells`), then grows
the circuit one hop at a time by sending ``Extend`` inside the layers to the current last hop,
which opens the next leg with its own ``Create`` and answers ``Extended``: telescopic
building, so every hop's keys come from a handshake with the client that no other hop sees.
Unlike Tox's onion (c-toxcore onion.c, stateless relays with the return path sealed into the
packet), relays keep per-circuit state: a listen must be able to push records back for
minutes, and a state entry is cheaper than a sealed return path in every cell. The state is
bounded: :attr:`OnionConfig.max_circuits` in all and per /24 of the previous hop, an idle
timeout and a hard lifetime, and per-/24 token buckets for cells and (costlier) handshakes.

A relay knows only its two neighbours' addresses. A cell on the previous leg of a circuit is
peeled (the hop's AEAD must verify, its seq must pass a replay window) and forwarded on the
next leg; with no next leg the hop is the end of the circuit and reads a command: ``Extend``
(refused when it loops back to this relay or to the previous hop) or ``Request``, handed to
the local node as an :class:`ExitRequest` event that it answers with :meth:`OnionRelay.respond`.
Backward cells from the next leg get this hop's layer and go to the previous leg. Every input
from the network is decoded defensively: a bad cell is counted in :attr:`OnionRelay.stats` and
dropped, never raised.

The driver feeds :meth:`OnionRelay.receive_datagram` and :meth:`OnionRelay.handle_timer`, then
sends :meth:`OnionRelay.datagrams_to_send` and reads :meth:`OnionRelay.next_event`, as with
:class:`~dhtchat.core.node.DhtNode`. The client side is :mod:`dhtchat.core.onion_client`.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Annotated, Final

import msgspec

from dhtchat.core.addresses import Address, is_valid_contact_address, subnet_of, unpack_ip
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.events import Event
from dhtchat.core.onion_cells import (
    BODY_BYTES,
    CIRC_ID_BYTES,
    SEALED_BYTES,
    TAG_BYTES,
    Create,
    Created,
    Destroy,
    HopKeys,
    Relay,
    ReplayWindow,
    decode_cell,
    encode_cell,
    forward_payload_bytes,
    pad_body,
    peel_forward,
    relay_handshake,
    seal_backward,
    seq_bytes,
    seq_value,
    wrap_backward,
    x25519_public,
)
from dhtchat.core.ratelimit import TokenBuckets
from dhtchat.core.wire import IpBytes, Port

__all__ = [
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "CircuitClosed",
    "ExitRequest",
    "OnionConfig",
    "OnionRelay",
]

MAX_REQUEST_BYTES: Final = 1024  # the opaque request a client can send to the exit
MAX_REPLY_BYTES: Final = 1024  # the opaque reply (or push) an exit can send back
_LEN_BYTES: Final = 2

Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
RequestId = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
Data = Annotated[bytes, msgspec.Meta(max_length=MAX_REQUEST_BYTES)]


# --- commands inside the layers (docs/protocol.md section 42.5) ------------------------------


class Extend(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """To the last hop: open a leg to ``node_id`` at ``ip:port`` with this handshake."""

    node_id: Key32
    ip: IpBytes
    port: Port
    onion_key: Key32
    client_key: Key32


class Request(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """To the exit: opaque request bytes for its local DHT node."""

    request_id: RequestId
    data: Data


class Extended(msgspec.Struct, array_like=True, frozen=True, tag=11):
    """From the hop that extended: the new hop's ``Y || AUTH``."""

    reply: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class Reply(msgspec.Struct, array_like=True, frozen=True, tag=12):
    """From the exit: a reply (or later a push) to ``request_id``."""

    request_id: RequestId
    data: Data


class TruncateReason:
    """Codes of :class:`Truncated`."""

    TIMEOUT = 1  # the next hop did not answer Create
    LOOP = 2  # the extension would loop back
    DESTROYED = 3  # the next hop tore its leg down


class Truncated(msgspec.Struct, array_like=True, frozen=True, tag=13):
    """From a hop: the circuit ends here now (see :class:`TruncateReason`)."""

    reason: Annotated[int, msgspec.Meta(ge=0, le=255)]


Forward = Extend | Request
Backward = Extended | Reply | Truncated
_encoder = msgspec.msgpack.Encoder()
_forward_decoder: msgspec.msgpack.Decoder[Forward] = msgspec.msgpack.Decoder(Forward)
_backward_decoder: msgspec.msgpack.Decoder[Backward] = msgspec.msgpack.Decoder(Backward)


def frame(message: Forward | Backward) -> bytes:
    """A command as carried in a layer: 2-byte length, then msgpack."""
    data = _encoder.encode(message)
    return len(data).to_bytes(_LEN_BYTES, "big") + data


def _unframe(payload: bytes) -> bytes:
    length = int.from_bytes(payload[:_LEN_BYTES], "big")
    if length == 0 or length > len(payload) - _LEN_BYTES:
        raise RemoteProtocolError("bad command length")
    return payload[_LEN_BYTES:_LEN_BYTES + length]


def parse_forward(payload: bytes) -> Forward:
    """The command the end of a circuit reads; :class:`RemoteProtocolError` if malformed."""
    try:
        return _forward_decoder.decode(_unframe(payload))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RemoteProtocolError(f"malformed onion command: {exc}") from None


def parse_backward(payload: bytes) -> Backward:
    """The message a client opened; :class:`RemoteProtocolError` if malformed."""
    try:
        return _backward_decoder.decode(_unframe(payload))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RemoteProtocolError(f"malformed onion message: {exc}") from None


# the largest frames fit their regions (checked at import: a failure here is a bug)
assert len(frame(Request(2**32 - 1, bytes(MAX_REQUEST_BYTES)))) <= forward_payload_bytes(3)
assert len(frame(Reply(2**32 - 1, bytes(MAX_REPLY_BYTES)))) <= SEALED_BYTES - TAG_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitRequest(Event):
    """The end of a circuit received a request; answer with :meth:`OnionRelay.respond`.

    ``circuit`` is a local handle: it names the circuit, never the client (the relay does
    not know who that is; the previous hop's address is not part of the event).
    """

    circuit: int
    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitClosed(Event):
    """A circuit that carried an :class:`ExitRequest` is gone (destroyed, idle or past its
    lifetime): the node drops what it keeps for it (e.g. a listen's subscription)."""

    circuit: int


@dataclass(frozen=True, slots=True)
class OnionConfig:
    """Limits of the onion relay and client (docs/protocol.md section 42.7)."""

    hops: int = 3
    max_circuits: int = 1024
    max_circuits_per_subnet: int = 64
    circuit_idle_timeout: float = 300.0
    circuit_lifetime: float = 1800.0
    extend_timeout: float = 3.0  # below build_timeout: the client hears Truncated first
    cell_rate_per_subnet: float = 500.0
    cell_burst_per_subnet: float = 1000.0
    create_rate_per_subnet: float = 20.0
    create_burst_per_subnet: float = 40.0
    handshake_cache: int = 4096
    sweep_interval: float = 1.0
    # client
    build_timeout: float = 5.0
    request_timeout: float = 10.0
    path_lifetime: float = 600.0
    max_request_timeouts: int = 2
    max_pending_requests: int = 64
    relay_avoid_time: float = 600.0
    max_build_attempts: int = 4


@dataclass(slots=True)
class _Circuit:
    handle: int
    prev: Address
    prev_id: bytes
    keys: HopKeys
    created: float
    active: float
    prev_window: ReplayWindow = field(default_factory=ReplayWindow)
    back_seq: int = 0
    next: Address | None = None
    next_id: bytes = b""
    extend_deadline: float | None = None  # set while a Create to ``next`` is unanswered
    exit_used: bool = False  # an ExitRequest was reported: report CircuitClosed too


class OnionRelay:
    """The relay machine (see the module docstring).

    ``rng`` draws the relay's X25519 ephemeral secrets: in production it MUST be
    ``random.SystemRandom()``, never the Mersenne Twister the DHT node uses for tids (its
    state can be recovered from the circuit ids it puts on the wire). Tests pass a seeded
    ``random.Random``.
    """

    def __init__(self, onion_secret: bytes, node_id: bytes, *, rng: random.Random, now: float,
                 config: OnionConfig | None = None) -> None:
        self.config = config if config is not None else OnionConfig()
        self.node_id = node_id
        self._secret = onion_secret
        self.onion_key = x25519_public(onion_secret)
        self._rng = rng
        self.stats: Counter[str] = Counter()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._circuits: dict[int, _Circuit] = {}
        self._legs: dict[tuple[Address, bytes], tuple[_Circuit, bool]] = {}  # -> (c, is_prev)
        self._per_subnet: Counter[str] = Counter()
        self._seen_handshakes: OrderedDict[bytes, None] = OrderedDict()
        self._next_handle = 1
        self._next_sweep = now + self.config.sweep_interval
        self._cell_budget = TokenBuckets(self.config.cell_rate_per_subnet,
                                         self.config.cell_burst_per_subnet)
        self._create_budget = TokenBuckets(self.config.create_rate_per_subnet,
                                           self.config.create_burst_per_subnet)

    # ------------------------------------------------------------------ sans-IO verbs

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Cells queued for sending, oldest first; the queue is emptied."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        """The oldest unread event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (None: no circuit to look after)."""
        return self._next_sweep if self._circuits else None

    def handle_timer(self, now: float) -> None:
        """Expire unanswered extensions, idle circuits and circuits past their lifetime."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.config.sweep_interval
        cfg = self.config
        for circuit in list(self._circuits.values()):
            if (now - circuit.active > cfg.circuit_idle_timeout
                    or now - circuit.created > cfg.circuit_lifetime):
                self.stats["circuits_expired"] += 1
                self._destroy(circuit, notify_prev=True)
            elif circuit.extend_deadline is not None and now >= circuit.extend_deadline:
                self.stats["extends_timed_out"] += 1
                self._drop_next(circuit)
                self._originate(circuit, Truncated(TruncateReason.TIMEOUT))

    @property
    def circuit_count(self) -> int:
        """Circuits held now."""
        return len(self._circuits)

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Process one cell. Invalid input never raises: it is counted in :attr:`stats`."""
        self.stats["cells_received"] += 1
        subnet = subnet_of(address[0])
        if not self._cell_budget.allow(subnet, now):  # before any work on the cell
            self.stats["cells_over_budget"] += 1
            return
        try:
            cell = decode_cell(data)
        except RemoteProtocolError:
            self.stats["malformed_cells"] += 1
            return
        if isinstance(cell, Create):
            self._on_create(cell, address, subnet, now)
            return
        entry = self._legs.get((address, cell.circ_id))
        if entry is None:
            self.stats["unknown_circuit"] += 1
            return
        circuit, is_prev = entry
        if isinstance(cell, Destroy):
            self.stats["destroys_received"] += 1
            if is_prev:
                self._destroy(circuit, notify_prev=False)
            else:
                self._drop_next(circuit, notify=False)
                self._originate(circuit, Truncated(TruncateReason.DESTROYED))
        elif isinstance(cell, Created):
            self._on_created(circuit, is_prev, cell, now)
        elif is_prev:
            self._on_forward(circuit, cell, now)
        else:
            self._on_backward(circuit, cell, now)

    def respond(self, circuit: int, request_id: int, data: bytes, now: float) -> bool:
        """Send ``data`` back to the client of ``circuit`` (the answer to an
        :class:`ExitRequest`, or later a push). False when the circuit is gone; raises
        :class:`LocalProtocolError` when ``data`` is longer than :data:`MAX_REPLY_BYTES`."""
        if len(data) > MAX_REPLY_BYTES:
            raise LocalProtocolError(f"onion reply of {len(data)} bytes > {MAX_REPLY_BYTES}")
        entry = self._circuits.get(circuit)
        if entry is None or entry.next is not None:
            return False
        entry.active = now
        self._originate(entry, Reply(request_id, data))
        self.stats["replies_sent"] += 1
        return True

    # ------------------------------------------------------------------ cells

    def _on_create(self, cell: Create, address: Address, subnet: str, now: float) -> None:
        cfg = self.config
        if (address, cell.circ_id) in self._legs:
            self.stats["duplicate_create"] += 1
            return
        if not self._create_budget.allow(subnet, now):
            self.stats["creates_over_budget"] += 1
            return
        if (len(self._circuits) >= cfg.max_circuits
                or self._per_subnet[subnet] >= cfg.max_circuits_per_subnet):
            self.stats["creates_refused_full"] += 1
            return
        client_key = bytes(cell.body[:32])
        if client_key in self._seen_handshakes:
            self.stats["replayed_handshake"] += 1
            return
        try:
            keys, reply = relay_handshake(self._secret, self.node_id, client_key,
                                          self._rng.randbytes(32))
        except RemoteProtocolError:
            self.stats["bad_handshake"] += 1
            return
        self._seen_handshakes[client_key] = None
        if len(self._seen_handshakes) > cfg.handshake_cache:
            self._seen_handshakes.popitem(last=False)
        circuit = _Circuit(self._next_handle, address, cell.circ_id, keys, now, now,
                           back_seq=self._rng.getrandbits(48))
        self._next_handle += 1
        self._circuits[circuit.handle] = circuit
        self._legs[(address, cell.circ_id)] = (circuit, True)
        self._per_subnet[subnet] += 1
        self.stats["circuits_created"] += 1
        self._send(Created(cell.circ_id, bytes(8), pad_body(reply)), address)

    def _on_created(self, circuit: _Circuit, is_prev: bool, cell: Created, now: float) -> None:
        if is_prev or circuit.extend_deadline is None:
            self.stats["unexpected_created"] += 1
            return
        circuit.extend_deadline = None
        circuit.active = now
        self.stats["extends_completed"] += 1
        self._originate(circuit, Extended(bytes(cell.body[:64])))

    def _on_forward(self, circuit: _Circuit, cell: Relay, now: float) -> None:
        seq = seq_value(cell.seq)
        if not circuit.prev_window.check(seq):
            self.stats["replayed_cells"] += 1
            return
        peeled = peel_forward(circuit.keys.forward, seq, cell.body)
        if peeled is None:
            self.stats["bad_layer"] += 1
            return
        circuit.prev_window.record(seq)
        circuit.active = now
        next_seq, body = peeled
        if circuit.next is not None:
            if circuit.extend_deadline is not None:
                self.stats["cells_while_extending"] += 1
                return
            self.stats["cells_forwarded"] += 1
            self._send(Relay(circuit.next_id, seq_bytes(next_seq), body), circuit.next)
            return
        try:
            command = parse_forward(body[:BODY_BYTES])
        except RemoteProtocolError:
            self.stats["malformed_commands"] += 1
            return
        if isinstance(command, Extend):
            self._extend(circuit, command, now)
        else:
            self.stats["exit_requests"] += 1
            circuit.exit_used = True
            self._events.append(ExitRequest(circuit=circuit.handle,
                                            request_id=command.request_id, data=command.data))

    def _on_backward(self, circuit: _Circuit, cell: Relay, now: float) -> None:
        seq = seq_value(cell.seq)
        if circuit.extend_deadline is not None:
            self.stats["cells_while_extending"] += 1
            return
        # no replay window here: a relay cannot authenticate backward cells, so a window
        # would let anyone who spoofs the next hop with a high seq block the circuit; the
        # client drops replays after each seal opens (docs/protocol.md section 42.6)
        circuit.active = now
        out_seq = self._take_back_seq(circuit)
        self.stats["cells_returned"] += 1
        self._send(Relay(circuit.prev_id, seq_bytes(out_seq),
                         wrap_backward(circuit.keys.backward, out_seq, seq, cell.body)),
                   circuit.prev)

    def _extend(self, circuit: _Circuit, command: Extend, now: float) -> None:
        try:
            host = unpack_ip(command.ip)
        except RemoteProtocolError:
            host = ""
        target = (host, command.port)
        if not host or not is_valid_contact_address(*target):
            self.stats["malformed_commands"] += 1
            self._originate(circuit, Truncated(TruncateReason.LOOP))
            return
        if (command.node_id == self.node_id or command.onion_key == self.onion_key
                or host == circuit.prev[0]):
            self.stats["loops_refused"] += 1
            self._originate(circuit, Truncated(TruncateReason.LOOP))
            return
        circ_id = self._rng.randbytes(CIRC_ID_BYTES)
        circuit.next, circuit.next_id = target, circ_id
        circuit.extend_deadline = now + self.config.extend_timeout
        self._legs[(target, circ_id)] = (circuit, False)
        self.stats["extends_started"] += 1
        self._send(Create(circ_id, bytes(8), pad_body(command.client_key)), target)

    # ------------------------------------------------------------------ helpers

    def _take_back_seq(self, circuit: _Circuit) -> int:
        seq = circuit.back_seq
        circuit.back_seq += 1
        return seq

    def _originate(self, circuit: _Circuit, message: Backward) -> None:
        seq = self._take_back_seq(circuit)
        body = seal_backward(circuit.keys.backward, seq, frame(message),
                             self._rng.randbytes(BODY_BYTES - SEALED_BYTES))
        self._send(Relay(circuit.prev_id, seq_bytes(seq), body), circuit.prev)

    def _drop_next(self, circuit: _Circuit, notify: bool = True) -> None:
        if circuit.next is None:
            return
        if notify:
            self._send(Destroy(circuit.next_id, bytes(8), pad_body(b"")), circuit.next)
        self._legs.pop((circuit.next, circuit.next_id), None)
        circuit.next, circuit.next_id, circuit.extend_deadline = None, b"", None

    def _destroy(self, circuit: _Circuit, notify_prev: bool) -> None:
        self._drop_next(circuit)
        if notify_prev:
            self._send(Destroy(circuit.prev_id, bytes(8), pad_body(b"")), circuit.prev)
        self._legs.pop((circuit.prev, circuit.prev_id), None)
        del self._circuits[circuit.handle]
        if circuit.exit_used:
            self._events.append(CircuitClosed(circuit=circuit.handle))
        subnet = subnet_of(circuit.prev[0])
        self._per_subnet[subnet] -= 1
        if self._per_subnet[subnet] <= 0:
            del self._per_subnet[subnet]

    def _send(self, cell: Create | Created | Relay | Destroy, address: Address) -> None:
        self._outbox.append((encode_cell(cell), address))
