"""Wire codec: versioned msgpack datagrams with a hard size cap checked before decoding.

Theory of operation
-------------------
Every datagram is ``MAGIC(3) || msgpack([envelope: bin, signature: bin])``. The envelope is a
msgpack array ``[tid, sender_public_key, flags, token, body]`` where ``body`` is a tagged
array (the tag selects the message kind). Requests carry no signature. Responses and pushes
are signed by the responder's node key over
``"dhtchat/resp/v1" || requester_node_id || envelope``; since ``tid`` is 8 random bytes chosen
by the requester, a valid signature proves that the holder of the node key received the
request at this address (the signed challenge of S/Kademlia, Baumgart & Mies 2007, sec. 4.1).

All lengths and counts are bounded by ``msgspec.Meta`` constraints, so a decoder never
allocates more than the datagram itself; the datagram is refused before decoding when it is
larger than :data:`MAX_DATAGRAM_BYTES`. See docs/protocol.md for the full specification.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Final

import msgspec

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.records import Bytes32, Record

MAGIC: Final = b"dc\x01"  # protocol name + version 1
MAX_DATAGRAM_BYTES: Final = 1400
TID_BYTES: Final = 8
TOKEN_BYTES: Final = 16
MAX_NODES_PER_REPLY: Final = 20  # 20 IPv6 contacts + envelope fit in MAX_DATAGRAM_BYTES
MAX_RECORDS_PER_REPLY: Final = 16
MAX_PAD_BYTES: Final = MAX_DATAGRAM_BYTES

FLAG_READ_ONLY: Final = 1  # sender is a client: do not add it to routing tables (cf. BEP 43)

Tid = Annotated[bytes, msgspec.Meta(min_length=TID_BYTES, max_length=TID_BYTES)]
Token = Annotated[bytes, msgspec.Meta(max_length=TOKEN_BYTES)]
Pad = Annotated[bytes, msgspec.Meta(max_length=MAX_PAD_BYTES)]
IpBytes = Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
OwnerFilter = Annotated[bytes, msgspec.Meta(max_length=32)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31)]
ShortText = Annotated[str, msgspec.Meta(max_length=200)]


class NodeInfo(msgspec.Struct, array_like=True, frozen=True):
    """A contact as carried in replies: node id, packed IP (4 or 16 bytes) and port."""

    node_id: Bytes32
    ip: IpBytes
    port: Port


# --- requests -----------------------------------------------------------------------------


class Ping(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """Liveness and identity check; the signed Pong proves the node key."""

    pad: Pad = b""


class FindNode(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """Ask for the contacts closest to ``target``."""

    target: Bytes32
    pad: Pad = b""


class GetValues(msgspec.Struct, array_like=True, frozen=True, tag=3):
    """Ask for the records under ``key`` (optionally of one owner) plus closer contacts."""

    key: Bytes32
    owner: OwnerFilter = b""
    offset: Count = 0
    pad: Pad = b""


class Store(msgspec.Struct, array_like=True, frozen=True, tag=4):
    """Store a signed record. Requires a write token bound to the sender's address."""

    record: Record


class Listen(msgspec.Struct, array_like=True, frozen=True, tag=5):
    """Subscribe to new records under ``key`` for a bounded time. Requires a token."""

    key: Bytes32
    pad: Pad = b""


# --- responses ----------------------------------------------------------------------------


class Pong(msgspec.Struct, array_like=True, frozen=True, tag=101):
    """Reply to Ping, echoing the address the request came from."""

    observed_ip: IpBytes
    observed_port: Port


class Nodes(msgspec.Struct, array_like=True, frozen=True, tag=102):
    """Reply to FindNode."""

    nodes: Annotated[list[NodeInfo], msgspec.Meta(max_length=MAX_NODES_PER_REPLY)]


class Values(msgspec.Struct, array_like=True, frozen=True, tag=103):
    """Reply to GetValues: a page of records, the total held, and closer contacts.

    ``truncated`` is set when the reply was cut to respect the amplification limit for an
    address that has not yet shown a token; the requester retries with the token it just got.
    """

    records: Annotated[list[Record], msgspec.Meta(max_length=MAX_RECORDS_PER_REPLY)]
    total: Count
    truncated: bool
    nodes: Annotated[list[NodeInfo], msgspec.Meta(max_length=MAX_NODES_PER_REPLY)]


class StoreStatus(IntEnum):
    """Outcome codes of a Store."""

    OK = 0
    BAD_TOKEN = 1
    INVALID = 2
    ROLLBACK = 3
    QUOTA = 4


class Stored(msgspec.Struct, array_like=True, frozen=True, tag=104):
    """Reply to Store."""

    status: Annotated[int, msgspec.Meta(ge=0, le=255)]


class Listening(msgspec.Struct, array_like=True, frozen=True, tag=105):
    """Reply to Listen: pushes will be sent for ``duration`` seconds."""

    duration: Count


class ErrorCode(IntEnum):
    """Codes of :class:`Error` replies."""

    TOKEN_REQUIRED = 1
    OVERLOADED = 2


class Error(msgspec.Struct, array_like=True, frozen=True, tag=110):
    """A request was refused."""

    code: Annotated[int, msgspec.Meta(ge=0, le=255)]
    message: ShortText = ""


class Push(msgspec.Struct, array_like=True, frozen=True, tag=201):
    """Unsolicited new record for a listener; ``tid`` is the Listen request's tid."""

    key: Bytes32
    record: Record


RequestBody = Ping | FindNode | GetValues | Store | Listen
ResponseBody = Pong | Nodes | Values | Stored | Listening | Error | Push
Body = Ping | FindNode | GetValues | Store | Listen | Pong | Nodes | Values | Stored | Listening \
    | Error | Push
REQUEST_TYPES: Final = (Ping, FindNode, GetValues, Store, Listen)


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """Everything but the signature."""

    tid: Tid
    sender: Bytes32
    flags: Annotated[int, msgspec.Meta(ge=0, le=255)]
    token: Token
    body: Body


_Outer = tuple[Annotated[bytes, msgspec.Meta(max_length=MAX_DATAGRAM_BYTES)],
               Annotated[bytes, msgspec.Meta(max_length=64)]]

_encoder = msgspec.msgpack.Encoder()
_outer_decoder = msgspec.msgpack.Decoder(_Outer)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)

RESPONSE_SIG_DOMAIN: Final = b"dhtchat/resp/v1"
_PADDED: Final = (Ping, FindNode, GetValues, Listen)  # request bodies with a pad field
_EMPTY_BIN: Final = b"\xc4\x00"


class Datagram(msgspec.Struct, frozen=True):
    """A decoded datagram: the envelope, its exact bytes (for signatures) and the signature."""

    envelope: Envelope
    envelope_bytes: bytes
    signature: bytes


def encode_envelope(envelope: Envelope) -> bytes:
    """Serialize an envelope (the signed part of a datagram)."""
    return _encoder.encode(envelope)


def pack(envelope_bytes: bytes, signature: bytes = b"") -> bytes:
    """Frame an encoded envelope and its signature as a datagram."""
    return MAGIC + _encoder.encode((envelope_bytes, signature))


def response_signed_bytes(requester_node_id: bytes, envelope_bytes: bytes) -> bytes:
    """The bytes a response signature covers."""
    return RESPONSE_SIG_DOMAIN + requester_node_id + envelope_bytes


def decode(data: bytes) -> Datagram:
    """Parse a datagram; raises :class:`RemoteProtocolError` for anything malformed."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes exceeds the size cap")
    if not data.startswith(MAGIC):
        raise RemoteProtocolError("not a dhtchat v1 datagram")
    try:
        envelope_bytes, signature = _outer_decoder.decode(memoryview(data)[len(MAGIC):])
        envelope = _envelope_decoder.decode(envelope_bytes)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        # msgspec reports invalid UTF-8 in a str field as UnicodeDecodeError
        raise RemoteProtocolError(f"malformed datagram: {exc}") from None
    if signature and len(signature) != 64:
        raise RemoteProtocolError("bad signature length")
    return Datagram(envelope, envelope_bytes, signature)


def encode_request(
    tid: bytes, sender: bytes, flags: int, token: bytes, body: RequestBody, pad_to: int = 0
) -> bytes:
    """Encode an (unsigned) request, padded to ``pad_to`` bytes when its body has a pad field.

    Length headers grow at 256 and 65536 bytes, so a few sizes cannot be hit exactly; the
    result is then at most 2 bytes short of ``pad_to`` (never longer).

    Padding lets a requester without a token receive a full-size reply while the responder
    keeps its reply no larger than the request (anti-amplification, cf. RFC 9000 sec. 8.1).
    """
    envelope_bytes = _encoder.encode(Envelope(tid, sender, flags, token, body))
    data = MAGIC + _encoder.encode((envelope_bytes, b""))
    if pad_to <= len(data) or not isinstance(body, _PADDED):
        return data
    target = min(pad_to, MAX_DATAGRAM_BYTES)
    # Sizes are computed, not searched: a pad of n bytes adds n bytes (plus one once its bin
    # header grows at 256), and the envelope's own bin header grows at 256 too.
    base = len(envelope_bytes)

    def total(n: int) -> int:
        size = base + n + (1 if n >= 256 else 0)
        return len(data) - base - (2 if base < 256 else 3) + (2 if size < 256 else 3) + size

    n = target - len(data)
    while n > 0 and total(n) > target:
        n -= 1
    if n <= 0:
        return data
    if body.pad or not envelope_bytes.endswith(_EMPTY_BIN):  # pragma: no cover - never sent
        padded = msgspec.structs.replace(body, pad=bytes(n))
        return pack(encode_envelope(Envelope(tid, sender, flags, token, padded)))
    # The pad is the last field of the body, itself the last field of the envelope, so the
    # padded envelope is the unpadded one with its empty pad (bin 8, length 0) replaced by
    # n zero bytes: the exact msgpack that encoding the padded struct gives (see tests).
    header = b"\xc4" + n.to_bytes(1, "big") if n < 256 else b"\xc5" + n.to_bytes(2, "big")
    return pack(envelope_bytes[:-2] + header + bytes(n))
