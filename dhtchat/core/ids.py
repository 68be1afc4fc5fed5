"""256-bit identifiers and the XOR metric (Maymounkov & Mazieres, Kademlia, IPTPS 2002, sec. 2.1).

Node ids are ``BLAKE2b-256(node public key)``, so an id cannot be chosen without a key and a
contact proves ownership of its id by signing a challenge with that key. Record keys live in
the same space (see :mod:`dhtchat.core.records`).
"""

from __future__ import annotations

import hashlib
from typing import Final

ID_BITS: Final = 256
ID_BYTES: Final = ID_BITS // 8


def blake2b_256(*parts: bytes) -> bytes:
    """BLAKE2b with a 32-byte digest over the concatenation of ``parts``."""
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(part)
    return h.digest()


def node_id_from_public_key(public_key: bytes) -> bytes:
    """The DHT node id for an Ed25519 node public key."""
    return blake2b_256(b"dhtchat/node-id/v1", public_key)


def to_int(identifier: bytes) -> int:
    """Big-endian integer value of a 32-byte id."""
    return int.from_bytes(identifier, "big")


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two ids, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Number of leading bits ``a`` and ``b`` share (256 when equal)."""
    d = distance(a, b)
    return ID_BITS - d.bit_length()


def short(identifier: bytes) -> str:
    """Short hex form for logs."""
    return identifier[:6].hex()
