"""Identities: Ed25519 keypairs, user ids with a checksum, and safety fingerprints.

A person *is* a keypair; no account, phone number or e-mail. The user id shown to people is
the lowercase RFC 4648 base32 form of ``public_key || checksum`` where the checksum is the
first 4 bytes of ``BLAKE2b-256("dhtchat/user-id/v1" || public_key)``; a mistyped id fails the
checksum (probability of an undetected random typo: 2**-32) instead of naming a stranger.

The safety fingerprint is a 60-digit number (12 groups of 5, like Signal's safety numbers)
derived from the public key, for comparison out of band. :func:`safety_number` combines two
keys in a canonical order so both parties see the same digits.

Key generation needs randomness, which the sans-IO core never takes from the OS: callers pass
a 32-byte seed (the app layer uses :func:`secrets.token_bytes`).
"""

from __future__ import annotations

import base64
import functools
from typing import Final

import nacl.exceptions
import nacl.signing

from dhtchat.core.errors import InvalidUserId, LocalProtocolError
from dhtchat.core.ids import blake2b_256

PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
SEED_BYTES: Final = 32
CHECKSUM_BYTES: Final = 4
USER_ID_LENGTH: Final = 58  # ceil((32 + 4) * 8 / 5)


class SigningIdentity:
    """An Ed25519 private key (a person's identity, or a DHT node's key)."""

    __slots__ = ("_signing_key", "public_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningIdentity:
        """Deterministically derive the keypair from a 32-byte secret seed."""
        if len(seed) != SEED_BYTES:
            raise LocalProtocolError(f"identity seed must be {SEED_BYTES} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed (handle with care: it *is* the identity)."""
        return bytes(self._signing_key)

    @property
    def user_id(self) -> str:
        """Printable user id (base32 + checksum)."""
        return encode_user_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature over ``message``."""
        return self._signing_key.sign(message).signature


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        return False
    return True


def _checksum(public_key: bytes) -> bytes:
    return blake2b_256(b"dhtchat/user-id/v1", public_key)[:CHECKSUM_BYTES]


def encode_user_id(public_key: bytes) -> str:
    """The printable user id for an Ed25519 public key."""
    return _encode_user_id(bytes(public_key))


@functools.lru_cache(maxsize=4096)  # pure, and asked for every message a client lists
def _encode_user_id(public_key: bytes) -> str:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise LocalProtocolError("a user id encodes a 32-byte Ed25519 public key")
    raw = public_key + _checksum(public_key)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


@functools.lru_cache(maxsize=4096)  # pure (a typo raises, and is not cached)
def decode_user_id(text: str) -> bytes:
    """Parse a user id back to the public key; raises :class:`InvalidUserId` on any typo.

    Spaces and dashes are ignored and case does not matter, so ids can be read aloud or
    copied in groups.
    """
    cleaned = "".join(text.split()).replace("-", "").upper()
    if cleaned.isdigit() and len(cleaned) >= 25:  # 60 digits: a fingerprint, 70: a safety number
        raise InvalidUserId(
            "that is a fingerprint (digits, for comparing keys), not a user id: ask for the "
            f"{USER_ID_LENGTH}-character id that `dhtchat id show` prints"
        )
    if len(cleaned) != USER_ID_LENGTH:
        raise InvalidUserId(
            f"a user id has {USER_ID_LENGTH} characters, this one has {len(cleaned)}"
        )
    padded = cleaned + "=" * (-len(cleaned) % 8)
    try:
        raw = base64.b32decode(padded)
    except ValueError as exc:
        raise InvalidUserId("a user id uses only the letters a-z and digits 2-7") from exc
    public_key, checksum = raw[:PUBLIC_KEY_BYTES], raw[PUBLIC_KEY_BYTES:]
    if _checksum(public_key) != checksum or encode_user_id(public_key) != cleaned.lower():
        raise InvalidUserId("user id checksum mismatch: the id was mistyped or altered")
    return public_key


def _digits(data: bytes, groups: int) -> list[str]:
    out = []
    for i in range(groups):
        chunk = int.from_bytes(data[i * 5 : i * 5 + 5], "big") % 100_000
        out.append(f"{chunk:05d}")
    return out


def fingerprint(public_key: bytes) -> str:
    """A 60-digit safety fingerprint of one key, in 12 groups of 5 digits."""
    digest = blake2b_256(b"dhtchat/fingerprint/v1", public_key)
    digest += blake2b_256(b"dhtchat/fingerprint/v1/2", public_key)
    return " ".join(_digits(digest, 12))


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """The safety number two contacts compare: the same on both sides."""
    first, second = sorted((key_a, key_b))
    return fingerprint(first)[:35] + " " + fingerprint(second)[:35]
