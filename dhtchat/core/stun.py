"""STUN Binding on the DHT port, so NAT traversal needs no STUN server of ours.

Theory of operation (RFC 5389 sec. 6-7, 15.2; RFC 8489 keeps the same wire format): a STUN
message is a 20-byte header (type, length, magic cookie ``0x2112A442``, 96-bit transaction id)
followed by TLV attributes padded to 4 bytes. A Binding request asks the server to tell the
client which transport address it saw; the success response carries it in
XOR-MAPPED-ADDRESS (the port XORed with the cookie's top 16 bits, the IP with the cookie, and
for IPv6 with cookie || transaction id). A DHT datagram starts with ``b"dc\\x01"`` and a STUN
message with two zero bits, so both share one UDP socket unambiguously.

Only unauthenticated Binding requests are answered (that is all ICE needs from a STUN server
to learn a server-reflexive address); anything else is ignored. A response is 32 bytes for
IPv4 and 44 for IPv6, larger than a bare 20-byte request, so a spoofed request could make a
node amplify. :class:`StunResponder` therefore answers with more bytes than the request only
an IP that has shown it receives there (review item 8): it echoed a *receives token* (a keyed
hash of its IP and the epoch that we put in an earlier answer) or presented a valid DHT write
token to this node. Anyone else gets an answer only to a request at least as large as the
answer (our client pads its requests to :data:`PROBE_BYTES`), so the amplification factor
towards a spoofed address is at most 1; answers are rate-limited per IP and per /24 (/64) too.
aioice's server-reflexive request is a bare 20-byte Binding request, answered because our
client (:mod:`dhtchat.net.stun`) verified the IP just before ICE starts. The client half
(:func:`binding_request`, :func:`parse_binding_answer`) lets a daemon probe DHT peers before
choosing one as its STUN server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import Counter
from typing import Final

from dhtchat.core.addresses import Address, subnet_of
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.ratelimit import TokenBuckets

MAGIC_COOKIE: Final = 0x2112A442
HEADER_BYTES: Final = 20
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_PADDING: Final = 0x0026  # RFC 5780 sec. 7.6: understood in a request (and not echoed)
ATTR_RECEIVES_TOKEN: Final = 0xC0DC  # dhtchat's own, comprehension-optional (RFC 8489 18.3)
RECEIVES_TOKEN_BYTES: Final = 16
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
MAX_STUN_BYTES: Final = 548  # RFC 5389 sec. 7.1: a request that fits any path MTU
# Our client's request size: room for the largest answer that carries a receives token
# (20-byte header + IPv6 XOR-MAPPED-ADDRESS 24 + token 20).
PROBE_BYTES: Final = 64

_HEADER = struct.Struct("!HHI12s")
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")


def looks_like_stun(data: bytes) -> bool:
    """True for a datagram shaped like a STUN message (first two bits zero, magic cookie)."""
    return (
        len(data) >= HEADER_BYTES
        and data[0] & 0xC0 == 0
        and data[4:8] == _COOKIE_BYTES
        and len(data) == HEADER_BYTES + int.from_bytes(data[2:4], "big")
    )


def binding_request(transaction_id: bytes, *, pad_to: int = 0,
                    receives_token: bytes = b"") -> bytes:
    """A Binding request with the given 12-byte transaction id (the caller's randomness).

    ``receives_token`` echoes the token of an earlier answer; ``pad_to`` pads the request to
    at least that many bytes with a SOFTWARE attribute (comprehension-optional, so any
    STUN server ignores it), so that an unverified client's request is as large as the answer.
    """
    if len(transaction_id) != 12:
        raise LocalProtocolError("a STUN transaction id is 12 bytes")
    body = b""
    if receives_token:
        body += _attribute(ATTR_RECEIVES_TOKEN, receives_token)
    if pad_to > HEADER_BYTES + len(body):
        room = max(0, pad_to - HEADER_BYTES - len(body) - 4)
        text = b"dhtchat"[:room] + b" " * max(0, room - 7)
        body += _attribute(ATTR_SOFTWARE, text)
    if HEADER_BYTES + len(body) > MAX_STUN_BYTES:
        raise LocalProtocolError("STUN request too large")
    return _HEADER.pack(BINDING_REQUEST, len(body), MAGIC_COOKIE, transaction_id) + body


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _xor_address(address: Address, transaction_id: bytes) -> bytes:
    ip = ipaddress.ip_address(address[0])
    port = address[1] ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        raw = int.from_bytes(ip.packed, "big") ^ MAGIC_COOKIE
        return struct.pack("!BBH", 0, 1, port) + raw.to_bytes(4, "big")
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    raw = int.from_bytes(ip.packed, "big") ^ mask
    return struct.pack("!BBH", 0, 2, port) + raw.to_bytes(16, "big")


def _parse_request(data: bytes) -> tuple[bytes, bytes] | None:
    """(transaction id, receives token or b"") of a Binding request we answer, else None."""
    if not looks_like_stun(data) or len(data) > MAX_STUN_BYTES:
        return None
    msg_type, length, _cookie, transaction_id = _HEADER.unpack_from(data)
    if msg_type != BINDING_REQUEST:
        return None
    offset = HEADER_BYTES
    end = HEADER_BYTES + length
    token = b""
    while offset + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        if attr_type == ATTR_RECEIVES_TOKEN and attr_len == RECEIVES_TOKEN_BYTES:
            token = data[offset + 4 : offset + 4 + attr_len]
        elif attr_type < 0x8000 and attr_type != ATTR_PADDING:
            return None  # comprehension-required: we understand none but PADDING in a request
        offset += 4 + attr_len + (-attr_len % 4)
    if offset != end:
        return None
    return transaction_id, token


def binding_response(transaction_id: bytes, source: Address,
                     receives_token: bytes = b"") -> bytes:
    """The Binding success response telling ``source`` its address (and a receives token)."""
    value = _xor_address(source, transaction_id)
    body = _attribute(ATTR_XOR_MAPPED_ADDRESS, value)
    if receives_token:
        body += _attribute(ATTR_RECEIVES_TOKEN, receives_token)
    return _HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, transaction_id) + body


def answer_binding_request(data: bytes, source: Address) -> bytes | None:
    """The Binding success response for a Binding request from ``source``, else ``None``.

    Malformed messages, other methods and classes, and requests carrying attributes that
    require understanding (comprehension-required range 0x0000-0x7FFF, except PADDING) get
    no answer. This is the codec only: whether to send the answer is
    :meth:`StunResponder.answer`'s decision.
    """
    parsed = _parse_request(data)
    return None if parsed is None else binding_response(parsed[0], source)


class StunResponder:
    """Decides which Binding requests a node answers, so that it never amplifies.

    An answer larger than its request goes only to an IP that has shown it receives there
    (it echoed a receives token of this or the previous epoch, or :meth:`mark_receives` was
    called because it presented a DHT write token); such IPs are remembered for
    ``remember_for`` seconds, at most ``max_remembered`` (oldest forgotten first). Every
    answer also needs a token from the source IP's and its /24's (/64's) bucket.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        epoch: float = 300.0,
        remember_for: float = 900.0,
        max_remembered: int = 4096,
        rate_per_ip: float = 5.0,
        burst_per_ip: float = 20.0,
        rate_per_subnet: float = 20.0,
        burst_per_subnet: float = 80.0,
    ) -> None:
        self._secret = secret
        self.epoch = epoch
        self.remember_for = remember_for
        self.max_remembered = max_remembered
        self._receiving: dict[str, float] = {}  # IP -> until when it counts as receiving
        self._ip_limit = TokenBuckets(rate_per_ip, burst_per_ip)
        self._subnet_limit = TokenBuckets(rate_per_subnet, burst_per_subnet)
        self.stats: Counter[str] = Counter()

    def receives_token(self, ip: str, now: float) -> bytes:
        """The token an answer to ``ip`` carries in the epoch of ``now``."""
        return self._token(ip, int(now // self.epoch))

    def _token(self, ip: str, epoch: int) -> bytes:
        return hashlib.blake2b(epoch.to_bytes(8, "big", signed=True) + ip.encode(),
                               key=self._secret, digest_size=RECEIVES_TOKEN_BYTES).digest()

    def mark_receives(self, ip: str, now: float) -> None:
        """Record that ``ip`` has shown it receives datagrams sent to it."""
        receiving = self._receiving
        until = receiving.get(ip)
        if until is not None:
            if until - now > self.remember_for / 2:
                return  # fresh enough: spare the re-insertion on every DHT request
            del receiving[ip]
        receiving[ip] = now + self.remember_for
        while len(receiving) > self.max_remembered:
            del receiving[next(iter(receiving))]  # the least recently marked

    def receives(self, ip: str, now: float) -> bool:
        """Whether ``ip`` has shown recently that it receives at that address."""
        until = self._receiving.get(ip)
        return until is not None and until > now

    def answer(self, data: bytes, source: Address, now: float) -> bytes | None:
        """The response to send to ``source`` for ``data``, or ``None`` to stay silent."""
        parsed = _parse_request(data)
        if parsed is None:
            return None
        transaction_id, echoed = parsed
        ip = source[0]
        if echoed:
            epoch = int(now // self.epoch)
            if (hmac.compare_digest(echoed, self._token(ip, epoch))
                    or hmac.compare_digest(echoed, self._token(ip, epoch - 1))):
                self.mark_receives(ip, now)
        with_token = binding_response(transaction_id, source, self.receives_token(ip, now))
        if len(with_token) <= len(data):
            response = with_token
        else:
            response = binding_response(transaction_id, source)
            if len(response) > len(data) and not self.receives(ip, now):
                self.stats["stun_dropped_amplification"] += 1
                return None
        if not (self._ip_limit.allow(ip, now) and self._subnet_limit.allow(subnet_of(ip), now)):
            self.stats["stun_rate_limited"] += 1
            return None
        self.stats["stun_answered"] += 1
        return response


def parse_binding_response(data: bytes, transaction_id: bytes) -> Address:
    """The reflexive address in a Binding success response to ``transaction_id``.

    Raises :class:`RemoteProtocolError` when the datagram is not that response.
    """
    return parse_binding_answer(data, transaction_id)[0]


def parse_binding_answer(data: bytes, transaction_id: bytes) -> tuple[Address, bytes]:
    """The reflexive address and the receives token (``b""`` if none) of a Binding success
    response to ``transaction_id``; raises :class:`RemoteProtocolError` otherwise."""
    if not looks_like_stun(data):
        raise RemoteProtocolError("not a STUN message")
    msg_type, length, _cookie, got_id = _HEADER.unpack_from(data)
    if msg_type != BINDING_SUCCESS or got_id != transaction_id:
        raise RemoteProtocolError("not the Binding success response we asked for")
    offset = HEADER_BYTES
    found: Address | None = None
    fallback: Address | None = None
    token = b""
    while offset + 4 <= HEADER_BYTES + length:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + attr_len]
        if len(value) != attr_len:
            raise RemoteProtocolError("truncated STUN attribute")
        if attr_type == ATTR_RECEIVES_TOKEN and attr_len == RECEIVES_TOKEN_BYTES:
            token = value
        elif (attr_type in (ATTR_XOR_MAPPED_ADDRESS, ATTR_MAPPED_ADDRESS)
              and attr_len in (8, 20) and found is None):
            family = value[1]
            port = int.from_bytes(value[2:4], "big")
            raw = int.from_bytes(value[4:], "big")
            if attr_type == ATTR_XOR_MAPPED_ADDRESS:
                port ^= MAGIC_COOKIE >> 16
                raw ^= (MAGIC_COOKIE if family == 1
                        else int.from_bytes(_COOKIE_BYTES + transaction_id, "big"))
            if family == 1 and attr_len == 8:
                address: Address = (str(ipaddress.IPv4Address(raw)), port)
            elif family == 2 and attr_len == 20:
                address = (str(ipaddress.IPv6Address(raw)), port)
            else:
                raise RemoteProtocolError("bad address family in STUN response")
            if attr_type == ATTR_XOR_MAPPED_ADDRESS:
                found = address
            else:
                fallback = address
        offset += 4 + attr_len + (-attr_len % 4)
    address_found = found or fallback
    if address_found is not None:
        return address_found, token
    raise RemoteProtocolError("STUN response without a mapped address")
