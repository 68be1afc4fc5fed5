"""STUN Binding on the DHT port, so NAT traversal needs no STUN server of ours.

Theory of operation (RFC 5389 sec. 6-7, 15.2; RFC 8489 keeps the same wire format): a STUN
message is a 20-byte header (type, length, magic cookie ``0x2112A442``, 96-bit transaction id)
followed by TLV attributes padded to 4 bytes. A Binding request asks the server to tell the
client which transport address it saw; the success response carries it in
XOR-MAPPED-ADDRESS (the port XORed with the cookie's top 16 bits, the IP with the cookie, and
for IPv6 with cookie || transaction id). A DHT datagram starts with ``b"dc\\x01"`` and a STUN
message with two zero bits, so both share one UDP socket unambiguously.

Only unauthenticated Binding requests are answered (that is all ICE needs from a STUN server
to learn a server-reflexive address); anything else is ignored. Responses are 32 bytes for
IPv4 and 44 for IPv6 against requests of at least 20 bytes: the driver rate-limits them per
source so a spoofed flood cannot use a node as an amplifier. The client half
(:func:`binding_request`, :func:`parse_binding_response`) lets a daemon probe DHT peers before
choosing one as its STUN server.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from dhtchat.core.addresses import Address
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError

MAGIC_COOKIE: Final = 0x2112A442
HEADER_BYTES: Final = 20
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
MAX_STUN_BYTES: Final = 548  # RFC 5389 sec. 7.1: a request that fits any path MTU

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


def binding_request(transaction_id: bytes) -> bytes:
    """A Binding request with the given 12-byte transaction id (the caller's randomness)."""
    if len(transaction_id) != 12:
        raise LocalProtocolError("a STUN transaction id is 12 bytes")
    return _HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction_id)


def _xor_address(address: Address, transaction_id: bytes) -> bytes:
    ip = ipaddress.ip_address(address[0])
    port = address[1] ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        raw = int.from_bytes(ip.packed, "big") ^ MAGIC_COOKIE
        return struct.pack("!BBH", 0, 1, port) + raw.to_bytes(4, "big")
    mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
    raw = int.from_bytes(ip.packed, "big") ^ mask
    return struct.pack("!BBH", 0, 2, port) + raw.to_bytes(16, "big")


def answer_binding_request(data: bytes, source: Address) -> bytes | None:
    """The Binding success response for a Binding request from ``source``, else ``None``.

    Malformed messages, other methods and classes, and requests carrying attributes that
    require understanding (comprehension-required range 0x0000-0x7FFF) get no answer.
    """
    if not looks_like_stun(data) or len(data) > MAX_STUN_BYTES:
        return None
    msg_type, length, _cookie, transaction_id = _HEADER.unpack_from(data)
    if msg_type != BINDING_REQUEST:
        return None
    offset = HEADER_BYTES
    end = HEADER_BYTES + length
    while offset + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        if attr_type < 0x8000:  # comprehension-required: we understand none in a request
            return None
        offset += 4 + attr_len + (-attr_len % 4)
    if offset != end:
        return None
    value = _xor_address(source, transaction_id)
    body = struct.pack("!HH", ATTR_XOR_MAPPED_ADDRESS, len(value)) + value
    return _HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, transaction_id) + body


def parse_binding_response(data: bytes, transaction_id: bytes) -> Address:
    """The reflexive address in a Binding success response to ``transaction_id``.

    Raises :class:`RemoteProtocolError` when the datagram is not that response.
    """
    if not looks_like_stun(data):
        raise RemoteProtocolError("not a STUN message")
    msg_type, length, _cookie, got_id = _HEADER.unpack_from(data)
    if msg_type != BINDING_SUCCESS or got_id != transaction_id:
        raise RemoteProtocolError("not the Binding success response we asked for")
    offset = HEADER_BYTES
    fallback: Address | None = None
    while offset + 4 <= HEADER_BYTES + length:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + attr_len]
        if len(value) != attr_len:
            raise RemoteProtocolError("truncated STUN attribute")
        if attr_type in (ATTR_XOR_MAPPED_ADDRESS, ATTR_MAPPED_ADDRESS) and attr_len in (8, 20):
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
                return address
            fallback = address
        offset += 4 + attr_len + (-attr_len % 4)
    if fallback is not None:
        return fallback
    raise RemoteProtocolError("STUN response without a mapped address")
