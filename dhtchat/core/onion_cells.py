"""Onion cells: the fixed-size wire format, the ntor-style handshake and the layer crypto.

Theory of operation
-------------------
This module holds everything of the onion protocol (docs/protocol.md section 42) that is pure
function: the cell codec, the circuit-extension handshake and the per-hop layers.
:mod:`dhtchat.core.onion` builds the relay and client state machines on top of it.

*Cells.* Every onion datagram is exactly :data:`CELL_BYTES` (1200) bytes:
``b"do\\x01" || msgpack([tag, circ_id: bin 8, seq: bin 8, body: bin BODY_BYTES])``, a tagged
``msgspec`` struct like the DHT messages of :mod:`dhtchat.core.wire`. 1200 bytes fit the IPv6
minimum MTU (1280 - 40 - 8) and the DHT's 1400-byte datagram cap, as QUIC's initial packets
do (RFC 9000 sec. 14). Every field has a fixed length, so every cell of every kind has the same
size; the decoder refuses anything else before it allocates.

*Handshake.* Tor's ntor (tor-spec "The ntor handshake"; Goldberg, Stebila, Ustaoglu 2013)
with BLAKE2b in place of HMAC-SHA256: the client sends an ephemeral X25519 key ``X``; the
relay, holding the static onion key ``b`` (its Ed25519 node key converted to X25519, so the
key a DHT contact already proves is the onion key) answers ``Y`` and
``AUTH = H(verify || ID || B || Y || X || "server")``. Both derive the hop's forward and
backward keys from ``X^y || X^b || ID || B || X || Y``. Only the holder of ``b`` can compute
AUTH: the client knows it talks to the relay it chose, the relay learns nothing of the client.

*Forward layers* (client to the end of the circuit) are ChaCha20-Poly1305 (IETF) per hop,
length-preserving through a Sphinx-style filler (Danezis & Goldberg 2009, sec. 3.2): a hop
opens ``body = tag(16) || ct``, reads the next leg's ``seq`` from the first 8 plaintext bytes,
and forwards ``plaintext[8:] || filler(24)`` where the filler is a deterministic function of
its key and seq. The client, which knows every filler in advance, chooses the trailing bytes
of the inner plaintexts so that every hop's tag verifies. So each hop authenticates its own
layer (a tagged or forged cell dies at the first honest hop, unlike Tor's relay crypto before
counter-galois-onion), and no hop can tell its position from the cell. Cost: 24 bytes/hop.

*Backward layers* (towards the client) are sealed once, by the hop that originates the
message, with ChaCha20-Poly1305 over a fixed region of :data:`SEALED_BYTES`; every hop closer
to the client prepends the seq it received and XORs the whole body with its own ChaCha20
keystream (Tor's backward direction, with the seq stack of Tox's stored return path in
place of Tor's TLS framing). The client peels layers one by one and tries the seal at each
depth. Cost: 8 bytes/hop plus one 16-byte tag.

Nonces are ``domain(4) || seq(8)``; a seq is a per-leg counter starting at a random offset, so
no value is shared between two legs of a circuit.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
import nacl.bindings
import nacl.exceptions

from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError

ONION_MAGIC: Final = b"do\x01"  # dhtchat onion, version 1
CELL_BYTES: Final = 1200
CIRC_ID_BYTES: Final = 8
SEQ_BYTES: Final = 8
# magic 3, fixarray 1, tag 1, bin8 circ id 2+8, bin8 seq 2+8, bin16 header 3
BODY_BYTES: Final = CELL_BYTES - 28
TAG_BYTES: Final = 16
KEY_BYTES: Final = 32
MAX_HOPS: Final = 3
FORWARD_HOP_BYTES: Final = SEQ_BYTES + TAG_BYTES  # what each forward layer costs
FILLER_BYTES: Final = FORWARD_HOP_BYTES
# the sealed region of a backward message survives MAX_HOPS - 1 prepended seqs
SEALED_BYTES: Final = BODY_BYTES - SEQ_BYTES * (MAX_HOPS - 1)
HANDSHAKE_REPLY_BYTES: Final = 64  # Y || AUTH

_PROTO: Final = b"dhtchat/onion-ntor/v1"
_NONCE_FWD: Final = b"fwd\x00"
_NONCE_FILL: Final = b"fil\x00"
_NONCE_SEAL: Final = b"bsl\x00"
_NONCE_STREAM: Final = b"bst\x00"

CircId = Annotated[bytes, msgspec.Meta(min_length=CIRC_ID_BYTES, max_length=CIRC_ID_BYTES)]
Seq = Annotated[bytes, msgspec.Meta(min_length=SEQ_BYTES, max_length=SEQ_BYTES)]
Body = Annotated[bytes, msgspec.Meta(min_length=BODY_BYTES, max_length=BODY_BYTES)]


class Create(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """Open a circuit leg: ``body`` starts with the client's ephemeral X25519 key."""

    circ_id: CircId
    seq: Seq
    body: Body


class Created(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """Answer to Create: ``body`` starts with ``Y || AUTH`` (64 bytes)."""

    circ_id: CircId
    seq: Seq
    body: Body


class Relay(msgspec.Struct, array_like=True, frozen=True, tag=3):
    """A layered cell in either direction (the leg it arrives on tells which)."""

    circ_id: CircId
    seq: Seq
    body: Body


class Destroy(msgspec.Struct, array_like=True, frozen=True, tag=4):
    """Tear a circuit down, hop by hop (unauthenticated, like Tor's DESTROY: it only
    comes from the neighbour that holds the leg, checked by address)."""

    circ_id: CircId
    seq: Seq
    body: Body


Cell = Create | Created | Relay | Destroy

_encoder = msgspec.msgpack.Encoder()
_cell_decoder: msgspec.msgpack.Decoder[Cell] = msgspec.msgpack.Decoder(Cell)
_ZERO_SEQ: Final = bytes(SEQ_BYTES)


def encode_cell(cell: Cell) -> bytes:
    """The datagram of a cell (always :data:`CELL_BYTES` long)."""
    data = ONION_MAGIC + _encoder.encode(cell)
    if len(data) != CELL_BYTES:  # pragma: no cover - guarded by the field constraints
        raise LocalProtocolError(f"cell of {len(data)} bytes")
    return data


def decode_cell(data: bytes) -> Cell:
    """Parse a cell; :class:`RemoteProtocolError` for anything that is not a valid cell."""
    if len(data) != CELL_BYTES:
        raise RemoteProtocolError(f"an onion cell is {CELL_BYTES} bytes, got {len(data)}")
    if not data.startswith(ONION_MAGIC):
        raise RemoteProtocolError("not a dhtchat onion v1 cell")
    try:
        return _cell_decoder.decode(memoryview(data)[len(ONION_MAGIC):])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RemoteProtocolError(f"malformed cell: {exc}") from None


def is_onion_datagram(data: bytes) -> bool:
    """True when ``data`` looks like an onion cell (for a driver demultiplexing one socket)."""
    return data[: len(ONION_MAGIC)] == ONION_MAGIC


def pad_body(prefix: bytes) -> bytes:
    """A handshake body: ``prefix`` then zeros to :data:`BODY_BYTES`."""
    return prefix + bytes(BODY_BYTES - len(prefix))


def seq_bytes(value: int) -> bytes:
    """A seq as carried on the wire (8 bytes big-endian)."""
    return (value % (1 << 64)).to_bytes(SEQ_BYTES, "big")


def seq_value(raw: bytes) -> int:
    """The integer value of a wire seq."""
    return int.from_bytes(raw, "big")


# --- keys and handshake ---------------------------------------------------------------------


def _h(tag: bytes, *parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=32, person=b"dcOnion1")
    digest.update(_PROTO + b":" + tag + b"|")
    for part in parts:
        digest.update(part)
    return digest.digest()


def _x25519(secret: bytes, public: bytes) -> bytes:
    try:
        shared = nacl.bindings.crypto_scalarmult(secret, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise RemoteProtocolError("low-order X25519 point") from None
    if not any(shared):  # pragma: no cover - libsodium already refuses these
        raise RemoteProtocolError("low-order X25519 point")
    return shared


def x25519_public(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret (clamped by libsodium)."""
    return nacl.bindings.crypto_scalarmult_base(secret)


def onion_public_key(ed25519_public_key: bytes) -> bytes:
    """A relay's onion key from its Ed25519 node key (what a client derives from a contact);
    raises :class:`RemoteProtocolError` for a key that is not a valid Ed25519 point."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise RemoteProtocolError("not an Ed25519 public key") from None


def onion_secret_key(node_key_seed: bytes) -> bytes:
    """A relay's onion secret from the 32-byte seed of its Ed25519 node key."""
    _, secret64 = nacl.bindings.crypto_sign_seed_keypair(node_key_seed)
    return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret64)


@dataclass(frozen=True, slots=True)
class HopKeys:
    """The symmetric keys of one hop of one circuit."""

    forward: bytes
    backward: bytes


def _derive(x_y: bytes, x_b: bytes, node_id: bytes, onion_key: bytes, client_pub: bytes,
            relay_pub: bytes) -> tuple[HopKeys, bytes]:
    secret = x_y + x_b + node_id + onion_key + client_pub + relay_pub
    seed = _h(b"key", secret)
    verify = _h(b"verify", secret)
    auth = _h(b"mac", verify, node_id, onion_key, relay_pub, client_pub, b"server")
    return HopKeys(_h(b"fwd", seed), _h(b"bwd", seed)), auth


def relay_handshake(onion_secret: bytes, node_id: bytes, client_pub: bytes,
                    ephemeral_secret: bytes) -> tuple[HopKeys, bytes]:
    """The relay's side: keys and the 64-byte ``Y || AUTH`` reply. Raises
    :class:`RemoteProtocolError` for a degenerate client key."""
    relay_pub = x25519_public(ephemeral_secret)
    keys, auth = _derive(_x25519(ephemeral_secret, client_pub), _x25519(onion_secret, client_pub),
                         node_id, x25519_public(onion_secret), client_pub, relay_pub)
    return keys, relay_pub + auth


def client_handshake(client_secret: bytes, node_id: bytes, onion_key: bytes,
                     reply: bytes) -> HopKeys:
    """The client's side: check AUTH and derive the keys; :class:`RemoteProtocolError` when
    the reply does not come from the holder of ``onion_key``."""
    relay_pub, auth = reply[:32], reply[32:HANDSHAKE_REPLY_BYTES]
    keys, expected = _derive(_x25519(client_secret, relay_pub), _x25519(client_secret, onion_key),
                             node_id, onion_key, x25519_public(client_secret), relay_pub)
    if not hmac.compare_digest(auth, expected):
        raise RemoteProtocolError("handshake AUTH does not verify")
    return keys


# --- layers ---------------------------------------------------------------------------------


def _nonce(domain: bytes, seq: int) -> bytes:
    return domain + struct.pack(">Q", seq % (1 << 64))


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    # ChaCha20-Poly1305 (IETF) encrypts with the ChaCha20 stream from block 1: sealing zeros
    # yields that keystream (libsodium's AEAD is the only ChaCha20 binding PyNaCl exposes).
    return nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(length), None, nonce, key)[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def filler(key: bytes, seq: int) -> bytes:
    """The 24 bytes a hop appends to a forward body it peeled."""
    return _keystream(key, _nonce(_NONCE_FILL, seq), FILLER_BYTES)


def peel_forward(key: bytes, seq: int, body: bytes) -> tuple[int, bytes] | None:
    """Open one forward layer: ``(next seq, body for the next hop)`` or None when the tag
    does not verify. The hop with no next leg reads its command from ``body[:-filler]``."""
    try:
        plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            body[TAG_BYTES:] + body[:TAG_BYTES], None, _nonce(_NONCE_FWD, seq), key)
    except nacl.exceptions.CryptoError:
        return None
    return seq_value(plain[:SEQ_BYTES]), plain[SEQ_BYTES:] + filler(key, seq)


def forward_payload_bytes(hops: int) -> int:
    """Bytes the last of ``hops`` hops can read from a forward cell."""
    return BODY_BYTES - TAG_BYTES - SEQ_BYTES - FILLER_BYTES * (hops - 1)


def wrap_forward(hops: list[tuple[bytes, int]], payload: bytes) -> bytes:
    """The body the client sends so that hop ``i`` (key, seq) of ``hops`` peels it in turn
    and the last one reads ``payload`` (zero-padded to :func:`forward_payload_bytes`)."""
    n = len(hops)
    room = forward_payload_bytes(n)
    if len(payload) > room:
        raise LocalProtocolError(f"onion payload of {len(payload)} bytes exceeds {room}")
    plain_len = BODY_BYTES - TAG_BYTES
    streams = [_keystream(key, _nonce(_NONCE_FWD, seq), plain_len) for key, seq in hops]
    # tails[j]: the last 24*j bytes of the body hop j receives, fixed by the fillers before it
    tails = [b""]
    for j in range(n - 1):
        key, seq = hops[j]
        tail = tails[j]
        tails.append(_xor(tail, streams[j][plain_len - len(tail):]) + filler(key, seq))
    last_tail = tails[n - 1]
    forced = _xor(last_tail, streams[n - 1][plain_len - len(last_tail):])
    plain = _ZERO_SEQ + payload + bytes(room - len(payload)) + forced
    body = b""
    for j in range(n - 1, -1, -1):
        key, seq = hops[j]
        if j < n - 1:
            plain = seq_bytes(hops[j + 1][1]) + body[: plain_len - SEQ_BYTES]
        sealed = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plain, None, _nonce(_NONCE_FWD, seq), key)
        body = sealed[-TAG_BYTES:] + sealed[:-TAG_BYTES]
    return body


def seal_backward(key: bytes, seq: int, payload: bytes, pad: bytes) -> bytes:
    """A backward body originated by a hop: the sealed region, then ``pad`` (random bytes)."""
    room = SEALED_BYTES - TAG_BYTES
    if len(payload) > room:
        raise LocalProtocolError(f"onion reply of {len(payload)} bytes exceeds {room}")
    sealed = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        payload + bytes(room - len(payload)), None, _nonce(_NONCE_SEAL, seq), key)
    return sealed + pad[: BODY_BYTES - SEALED_BYTES]


def wrap_backward(key: bytes, out_seq: int, in_seq: int, body: bytes) -> bytes:
    """What a hop does to a backward body from its next hop: prepend that leg's seq, cut to
    size and XOR with its own keystream."""
    inner = seq_bytes(in_seq) + body[: BODY_BYTES - SEQ_BYTES]
    return _xor(inner, _keystream(key, _nonce(_NONCE_STREAM, out_seq), BODY_BYTES))


def open_sealed(key: bytes, seq: int, body: bytes) -> bytes | None:
    """The payload when ``body`` is a message sealed by the hop with ``key``; else None."""
    try:
        return nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            body[:SEALED_BYTES], None, _nonce(_NONCE_SEAL, seq), key)
    except nacl.exceptions.CryptoError:
        return None


def unwrap_backward(key: bytes, seq: int, body: bytes) -> tuple[int, bytes]:
    """Undo :func:`wrap_backward`: the inner seq and the inner body (zero-padded)."""
    inner = _xor(body, _keystream(key, _nonce(_NONCE_STREAM, seq), BODY_BYTES))
    return seq_value(inner[:SEQ_BYTES]), inner[SEQ_BYTES:] + _ZERO_SEQ


class ReplayWindow:
    """Anti-replay over a per-leg counter: a 64-wide sliding bitmap (RFC 4303 sec. 3.4.3).

    The first authenticated seq sets the base; after that a seq is accepted once, and only if
    it is no more than 64 behind the highest seen.
    """

    __slots__ = ("_bitmap", "_top")
    WIDTH: Final = 64

    def __init__(self) -> None:
        self._top = -1
        self._bitmap = 0

    def check(self, seq: int) -> bool:
        """True when ``seq`` would be accepted (nothing is recorded)."""
        if self._top < 0 or seq > self._top:
            return True
        offset = self._top - seq
        return offset < self.WIDTH and not (self._bitmap >> offset) & 1

    def record(self, seq: int) -> None:
        """Mark ``seq`` as seen (after its cell authenticated)."""
        if self._top < 0:
            self._top, self._bitmap = seq, 1
        elif seq > self._top:
            shift = seq - self._top  # a jump past the width forgets the bitmap (no huge shift)
            kept = self._bitmap << shift if shift < self.WIDTH else 0
            self._bitmap = (kept | 1) & ((1 << self.WIDTH) - 1)
            self._top = seq
        else:
            self._bitmap |= 1 << (self._top - seq)
