"""Hashcash-style proof of work for contact requests (Back 2002).

``BLAKE2b-256("dhtchat/pow/v1" || recipient || owner || counter(8, big endian) || sealed)``
must start with ``bits`` zero bits, where ``owner`` is the one-time key that signs the inbox
record: a solved request cannot be re-signed under other owner keys to fill the inbox's
owner slots. The sender searches the counter (about ``2**bits`` hashes); checking
costs one hash, so storers check it before accepting an inbox record and recipients before
any public-key operation. ``REQUEST_POW_BITS`` is a network-wide constant: storers refuse
cheaper requests, so filling someone's inbox (256 owner slots per key) costs real CPU.
"""

from __future__ import annotations

import hashlib
from typing import Final

REQUEST_POW_BITS: Final = 18

_DOMAIN: Final = b"dhtchat/pow/v1"


def pow_ok(subject: bytes, sealed: bytes, counter: int, bits: int) -> bool:
    """Whether ``counter`` solves the puzzle for ``subject`` (recipient || owner) and
    ``sealed`` at ``bits``."""
    if bits <= 0:
        return True
    digest = hashlib.blake2b(_DOMAIN + subject + counter.to_bytes(8, "big") + sealed,
                             digest_size=32).digest()
    return int.from_bytes(digest, "big") >> (256 - bits) == 0


def solve_pow(subject: bytes, sealed: bytes, bits: int) -> int:
    """The first counter whose hash has ``bits`` leading zero bits."""
    prefix = hashlib.blake2b(_DOMAIN + subject, digest_size=32)
    limit = 256 - bits
    counter = 0
    while True:
        h = prefix.copy()
        h.update(counter.to_bytes(8, "big") + sealed)
        if int.from_bytes(h.digest(), "big") >> limit == 0:
            return counter
        counter += 1
