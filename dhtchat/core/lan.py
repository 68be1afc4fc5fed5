"""LAN discovery: a multicast announce of this node's DHT port, and what to make of others'.

Theory of operation (docs/protocol.md, "LAN discovery"; after Tox's LAN discovery, which
broadcasts the DHT key every 10 s and pings the source of what it hears, and BitTorrent's
Local Service Discovery, BEP 14, which multicasts on an organisation-local group with TTL 1):

* Every node sends a small datagram to the group :data:`LAN_GROUP`:data:`LAN_PORT` with TTL 1
  (it never leaves the link): ``LAN_MAGIC || msgpack([node_id, port, instance, flags])``
  (:class:`Announce`). It names no address: whoever hears it contacts the *source address* of
  the datagram at the announced DHT *port*, and nothing else, so an announce cannot point a
  node at a third party.
* A node announces at start, then at growing intervals (``interval_min`` doubling up to
  ``interval_max``), and soon after it hears a node it did not know (so a newcomer learns of
  the others in a second, not a minute). A token bucket caps every send, whatever the cause.
* What it hears goes through, in order: a size cap (before any decoding), the source rule
  (:func:`is_local_source`: a private, link-local, shared or loopback address, and on one
  of this host's links when the driver knows them), per-source and global token buckets, the
  bounded decoder, the own-announce filter (the random per-run ``instance``), and a repeat
  filter (one :class:`Found` per node, address, run and role per ``repeat_after``: a node
  that starts serving is reported again at once). Each refusal is
  counted in :attr:`LanDiscovery.stats`; nothing raises on bad input.

Sans-IO: datagrams and ``now`` come in, datagrams and :class:`Found` go out; the socket
driver is :mod:`dhtchat.net.lan`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from dhtchat.core.addresses import Address
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.ratelimit import TokenBuckets
from dhtchat.core.records import Bytes32

LAN_MAGIC: Final = b"dL\x01"  # "dhtchat LAN", version 1
LAN_GROUP: Final = "239.192.68.67"  # organisation-local scope (RFC 2365), like BEP 14's
LAN_PORT: Final = 6767
MAX_ANNOUNCE_BYTES: Final = 128  # a version-1 announce is 52 bytes
INSTANCE_BYTES: Final = 8
FLAG_SERVING: Final = 1  # the announcer answers DHT requests (not a read-only client)

#: Sources an announce is accepted from: RFC 1918, link-local, shared address space (RFC 6598),
#: loopback, IPv6 link-local and unique local. A multicast with TTL 1 comes from the link; a
#: public source means a misconfigured or hostile sender.
LOCAL_RANGES: Final = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
    "127.0.0.0/8", "fe80::/10", "fc00::/7", "::1/128"))

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Instance = Annotated[bytes, msgspec.Meta(min_length=INSTANCE_BYTES, max_length=INSTANCE_BYTES)]
Flags = Annotated[int, msgspec.Meta(ge=0, le=255)]


class Announce(msgspec.Struct, array_like=True, frozen=True):
    """A LAN announce (version 1). Fields a later version appends are ignored."""

    node_id: Bytes32
    port: Port  # the announcer's DHT port, at the datagram's source address
    instance: Instance  # random per daemon run: a node drops its own announces
    flags: Flags = 0


_decoder = msgspec.msgpack.Decoder(Announce)


def encode_announce(announce: Announce) -> bytes:
    """The datagram of ``announce``."""
    return LAN_MAGIC + msgspec.msgpack.encode(announce)


def decode_announce(data: bytes) -> Announce:
    """Parse an announce; :class:`RemoteProtocolError` for anything else (never another
    exception)."""
    if len(data) > MAX_ANNOUNCE_BYTES:
        raise RemoteProtocolError(f"announce of {len(data)} bytes (at most "
                                  f"{MAX_ANNOUNCE_BYTES})")
    if not data.startswith(LAN_MAGIC):
        if data[:2] == LAN_MAGIC[:2]:
            raise RemoteProtocolError(f"unknown announce version {data[2:3].hex()}")
        raise RemoteProtocolError("not a dhtchat announce")
    try:
        return _decoder.decode(data[len(LAN_MAGIC):])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RemoteProtocolError(f"malformed announce: {exc}") from None


def is_local_source(host: str, links: Sequence[Network] | None = None) -> bool:
    """Whether an announce from ``host`` may be heard: in :data:`LOCAL_RANGES` and, when
    ``links`` (this host's interface networks) is given, on one of them or loopback."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not any(ip in network for network in LOCAL_RANGES):
        return False
    if links is None or ip.is_loopback or ip.is_link_local:
        return True
    return any(ip in network for network in links)


@dataclass(frozen=True)
class Found:
    """A node heard on the link: contact ``address`` (source IP, announced port) if
    ``serving``; ``node_id`` is what it claims (the DHT's signed pong proves it)."""

    node_id: bytes
    address: Address
    serving: bool


@dataclass(frozen=True)
class LanConfig:
    """Timings and limits of LAN discovery (seconds, per-second rates)."""

    interval_min: float = 2.0  # first gap after the start announce; doubles each time
    interval_max: float = 60.0  # the steady announce period
    reply_delay: float = 0.5  # announce this soon after hearing a node we did not know
    send_rate: float = 0.2  # at most one announce per 5 s on average ...
    send_burst: float = 3.0  # ... after a burst of 3 (start, reply, first interval)
    source_rate: float = 1.0  # announces accepted per source IP (several daemons per host)
    source_burst: float = 8.0
    global_rate: float = 5.0  # announces accepted from all sources together
    global_burst: float = 20.0
    repeat_after: float = 60.0  # one Found per (node, address, run, flags) per period
    max_known: int = 256  # nodes remembered for the repeat filter
    max_sources: int = 1024  # per-source buckets kept


class LanDiscovery:
    """The announce schedule and the filter of what is heard (sans-IO, ``now`` passed in).

    ``port`` and ``serving`` may change while it runs (:meth:`update`)."""

    def __init__(self, node_id: bytes, port: int, instance: bytes, now: float,
                 config: LanConfig | None = None, *, serving: bool = True) -> None:
        if len(instance) != INSTANCE_BYTES:
            raise ValueError(f"instance must be {INSTANCE_BYTES} bytes")
        self.config = config or LanConfig()
        self.node_id = node_id
        self.port = port
        self.instance = instance
        self.serving = serving
        self.stats: Counter[str] = Counter()
        self._next_at = now
        self._gap = self.config.interval_min
        self._send = TokenBuckets(self.config.send_rate, self.config.send_burst, max_keys=1)
        self._per_source = TokenBuckets(self.config.source_rate, self.config.source_burst,
                                        max_keys=self.config.max_sources)
        self._global = TokenBuckets(self.config.global_rate, self.config.global_burst,
                                    max_keys=1)
        # (node id, address, instance, flags) -> when last reported
        self._known: OrderedDict[tuple[bytes, Address, bytes, int], float] = OrderedDict()

    def update(self, *, port: int | None = None, serving: bool | None = None,
               now: float | None = None) -> None:
        """Our DHT port or role changed; with ``now``, say so soon (a reply-delay away)."""
        changed = (port is not None and port != self.port) or \
            (serving is not None and serving != self.serving)
        if port is not None:
            self.port = port
        if serving is not None:
            self.serving = serving
        if changed and now is not None:
            self._next_at = min(self._next_at, now + self.config.reply_delay)

    @property
    def known(self) -> int:
        """How many (node, address, run, role) the repeat filter remembers."""
        return len(self._known)

    @property
    def deadline(self) -> float:
        """When :meth:`announce` next has a datagram to send."""
        return self._next_at

    def announce(self, now: float) -> bytes | None:
        """The announce to send now, if one is due and the send bucket allows it."""
        if now < self._next_at:
            return None
        if not self._send.allow("send", now):
            self.stats["send_rate_limited"] += 1
            self._next_at = now + 1.0 / self.config.send_rate
            return None
        self._next_at = now + self._gap
        self._gap = min(self._gap * 2, self.config.interval_max)
        self.stats["sent"] += 1
        return encode_announce(Announce(self.node_id, self.port, self.instance,
                                        FLAG_SERVING if self.serving else 0))

    def receive(self, data: bytes, source: Address, now: float,
                links: Sequence[Network] | None = None) -> Found | None:
        """What an announce from ``source`` (IP, UDP port) tells us: a :class:`Found`, or
        None (refused or nothing new; :attr:`stats` says why)."""
        stats = self.stats
        stats["received"] += 1
        host = source[0]
        if len(data) > MAX_ANNOUNCE_BYTES:
            stats["oversized"] += 1
            return None
        if not is_local_source(host, links):
            stats["non_local"] += 1
            return None
        if not (self._per_source.allow(host, now) and self._global.allow("all", now)):
            stats["rate_limited"] += 1
            return None
        try:
            announce = decode_announce(data)
        except RemoteProtocolError:
            stats["malformed"] += 1
            return None
        if announce.instance == self.instance:
            stats["own"] += 1
            return None
        if announce.node_id == self.node_id:  # our node key in another run: a copied profile
            stats["own_node_id"] += 1
            return None
        address = (host.split("%", 1)[0], announce.port)
        key = (announce.node_id, address, announce.instance, announce.flags)
        seen = self._known.get(key)
        if seen is not None and now - seen < self.config.repeat_after:
            stats["repeat"] += 1
            return None
        if seen is None:  # a node, run or role we did not know: tell it about us soon
            self._next_at = min(self._next_at, now + self.config.reply_delay)
        self._known.pop(key, None)
        self._known[key] = now
        while len(self._known) > self.config.max_known:
            self._known.popitem(last=False)
        stats["found"] += 1
        return Found(announce.node_id, address, bool(announce.flags & FLAG_SERVING))
