"""Short authentication string (SAS) for calls: a few words both callers read to each other.

Theory of operation
-------------------

A call's media is protected by DTLS-SRTP: each side has a (self-signed) DTLS certificate and the
SDP carries its ``a=fingerprint:sha-256 ...``; the DTLS handshake fails unless the peer holds
the private key of the certificate whose fingerprint the SDP announced (RFC 8122 sec. 5). The
offer and answer are signed by the callers' Ed25519 identity keys over that fingerprint
(:mod:`dhtchat.core.contacts`), so a man in the middle (MITM) who only relays signalling cannot
substitute a fingerprint. What remains is the case where an identity key itself is wrong: the
contact was added through an untrusted channel and Alice's "Bob" is really Mallory's key (and
Bob's "Alice" too). Mallory then terminates two DTLS sessions, Alice<->Mallory and
Mallory<->Bob, with two certificates of her own, and signs everything with her two keys.

The SAS detects this, as in ZRTP (RFC 6189 sec. 4.5.2 computes ``sashash``/``sasvalue``; sec. 7
is the SAS and its verbal comparison): each side hashes what *it* sees of the session and
renders the leftmost bits as words::

    pairs     = sorted([(identity_A, fingerprint_A), (identity_B, fingerprint_B)])
    sas_hash  = BLAKE2b-256("dhtchat/call-sas/v2" || 0x00 || id_1 || fp_1 || id_2 || fp_2
                            || u8(len(offer_nonce)) || offer_nonce
                            || u8(len(answer_nonce)) || answer_nonce)
    sas_value = leftmost 24 bits of sas_hash      (3 words of 8 bits, or 8 decimal digits)

Identities are 32-byte Ed25519 public keys and fingerprints are the 32 raw SHA-256 bytes, so
the concatenation is unambiguous; sorting the (identity, fingerprint) pairs makes the value
independent of who called, and keeps each fingerprint tied to the identity that claimed it.
The nonces are not sorted: the caller's (offerer's) comes first on both sides.
Under attack Alice hashes ``(A, fp_A), (M_b, fp_M1)`` while Bob hashes ``(M_a, fp_M2),
(B, fp_B)``: the inputs differ in both identities and both fingerprints, so the two SAS agree
only by chance, with probability 2^-24 per call, and the people hear different words. Binding
both fingerprints catches a MITM who kept the right identities but swapped certificates (a
signature bug, a leaked signalling key); binding both identities catches one who swapped keys,
and stops a SAS verified with one contact from being replayed for another.

**Grinding, and why both sides contribute a nonce.** Whatever a MITM sends last on a leg is
hers to choose: a certificate or a nonce is cheap to vary, so if she knows every other input
of a leg's SAS she can try values until it equals the other leg's (2^24 hashes: seconds).
Version 1 had only the caller's committed nonce: on the leg where Mallory is the *caller*
(to Bob) she knew every input (Bob's certificate is kept per contact, so its fingerprint is
known in advance) and could grind her own nonce. ZRTP's hash commitment (RFC 6189 sec.
4.4.1.1, ``hvi``) closes both legs, and version 2 does the same:

1. the caller draws ``offer_nonce`` and sends only ``commitment(offer_nonce)`` in the invite;
2. the callee, having seen the commitment, draws a fresh ``answer_nonce`` and sends it in
   the accept;
3. only then does the caller reveal ``offer_nonce``; the callee refuses the call unless it
   opens the commitment (:func:`check_commitment`).

On each leg the SAS then depends on a random value the MITM cannot influence and learns only
after her own contribution is fixed: as callee (to Alice) she must send her answer before
Alice reveals; as caller (to Bob) she is bound by her commitment before Bob draws his nonce.
Each attempt thus matches with probability 2^-24, however much she computes; an attempt is a
call that rings. With empty nonces the SAS still detects a MITM who does not grind.

Everything here is pure: no clock, randomness or I/O (the nonces come from the caller).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.ids import blake2b_256

SAS_BITS: Final = 24
"""Bits of the SAS value (ZRTP's B32 renders 20, its B256 16)."""
WORD_BITS: Final = 8
SAS_WORD_COUNT: Final = SAS_BITS // WORD_BITS
SAS_DIGITS: Final = 8
"""Decimal digits of the numeric form (2^24 - 1 = 16777215)."""
IDENTITY_BYTES: Final = 32
FINGERPRINT_BYTES: Final = 32
MIN_NONCE_BYTES: Final = 16
MAX_NONCE_BYTES: Final = 64
# The SAS scheme this code speaks, sent with every call signal: 2 = both nonces (commit,
# callee nonce in accept, reveal). A callee refuses an invite of an older scheme, whose SAS
# would differ from ours and look like a man in the middle.
SAS_VERSION: Final = 2
COMMITMENT_BYTES: Final = 32

_SAS_DOMAIN: Final = b"dhtchat/call-sas/v2\x00"
_COMMIT_DOMAIN: Final = b"dhtchat/call-sas-commit/v1\x00"

WORDS: Final[tuple[str, ...]] = (
    "acorn", "almond", "amber", "anchor", "apple", "arrow", "autumn", "badger", "bagel", "bamboo",
    "banana", "banjo", "barn", "basket", "beach", "beaver", "bell", "bicycle", "bison", "blanket",
    "boat", "boot", "bottle", "brave", "bread", "bridge", "bright", "bucket", "button", "cabin",
    "cable", "cactus", "cake", "calm", "camel", "candy", "canoe", "canyon", "carpet", "carrot",
    "castle", "chair", "cheese", "cherry", "chess", "clever", "cliff", "clock", "cloud", "cobra",
    "coffee", "comet", "cookie", "coral", "corn", "cow", "crab", "cream", "crimson", "crow", "cup",
    "daisy", "desert", "desk", "dolphin", "donkey", "door", "dress", "drum", "duck", "eagle",
    "eel", "elk", "engine", "falcon", "farm", "fern", "field", "flute", "forest", "fork", "fox",
    "frog", "garden", "garlic", "gentle", "ginger", "glacier", "glove", "goat", "golden", "golf",
    "goose", "grape", "guitar", "gull", "hammer", "happy", "harbor", "harp", "hat", "hawk",
    "helmet", "hill", "hockey", "honey", "island", "jacket", "jeep", "jungle", "kayak", "kettle",
    "key", "kite", "kitten", "ladder", "lamp", "lantern", "leaf", "lemon", "lily", "lion",
    "lizard", "llama", "lobster", "lucky", "magnet", "mango", "maple", "market", "meadow", "melon",
    "mirror", "mole", "monkey", "moon", "moss", "mountain", "mouse", "muffin", "needle", "noodle",
    "oak", "ocean", "olive", "onion", "orange", "otter", "oven", "owl", "oyster", "palace",
    "panda", "parrot", "pasta", "peanut", "pebble", "pencil", "pepper", "piano", "pickle",
    "pigeon", "pillow", "pine", "pizza", "planet", "pocket", "pond", "pony", "potato", "proud",
    "puma", "pumpkin", "puppy", "purple", "puzzle", "quiet", "rabbit", "radio", "raven", "ribbon",
    "rice", "river", "robot", "rocket", "rope", "ruler", "saddle", "salad", "salmon", "sand",
    "scarf", "school", "scooter", "shadow", "shark", "sheep", "shirt", "shovel", "silver", "skirt",
    "sled", "snake", "snow", "soup", "spider", "spoon", "stamp", "star", "station", "stone",
    "storm", "stream", "sugar", "summer", "sunny", "swan", "sweater", "swift", "table", "taxi",
    "temple", "tennis", "tent", "thunder", "ticket", "tiger", "toast", "tomato", "towel",
    "tractor", "train", "tray", "trout", "truck", "trumpet", "tulip", "tunnel", "turtle", "valley",
    "vest", "village", "violin", "volcano", "waffle", "wagon", "wallet", "walnut", "whistle",
    "window", "winter", "wolf", "worm", "yellow", "zebra", "zipper",
)
"""256 common English words, one per byte value (index = byte). All distinct, 3-8 lower-case
letters, no homophones, and no two share their first four letters, so a typed prefix is
enough. Changing this list changes every SAS: it is part of the protocol."""

_WORD_INDEX: Final[dict[str, int]] = {word: i for i, word in enumerate(WORDS)}

_FINGERPRINT_RE: Final = re.compile(
    r"(?:a=fingerprint:)?(?:(?P<alg>[A-Za-z0-9-]+)[ \t]+)?(?P<hex>[0-9A-Fa-f:]+)"
)
_HEX_RE: Final = re.compile(r"(?:[0-9a-f]{2}:){31}[0-9a-f]{2}")
_SEPARATORS_RE: Final = re.compile(r"[\s,;/-]+")


def parse_fingerprint(fingerprint: str | bytes) -> bytes:
    """The 32 raw bytes of a SHA-256 DTLS fingerprint.

    Accepts ``"sha-256 AB:CD:..."`` (an SDP ``a=fingerprint:`` value, with or without the
    attribute name or the algorithm; hex in either case) or the 32 bytes themselves. Raises
    :class:`RemoteProtocolError` for another algorithm or a malformed value.
    """
    if isinstance(fingerprint, bytes):
        if len(fingerprint) != FINGERPRINT_BYTES:
            raise RemoteProtocolError(
                f"a SHA-256 fingerprint has {FINGERPRINT_BYTES} bytes, not {len(fingerprint)}"
            )
        return fingerprint
    match = _FINGERPRINT_RE.fullmatch(fingerprint.strip())
    if match is None:
        raise RemoteProtocolError(f"malformed DTLS fingerprint: {fingerprint[:120]!r}")
    algorithm = match["alg"]
    if algorithm is not None and algorithm.lower() != "sha-256":
        raise RemoteProtocolError(f"DTLS fingerprint algorithm {algorithm!r} is not sha-256")
    hex_pairs = match["hex"].lower()
    if _HEX_RE.fullmatch(hex_pairs) is None:
        raise RemoteProtocolError(
            "a sha-256 DTLS fingerprint is 32 colon-separated hex bytes, got "
            f"{hex_pairs[:120]!r}"
        )
    return bytes.fromhex(hex_pairs.replace(":", ""))


def _identity(key: bytes, role: str) -> bytes:
    if len(key) != IDENTITY_BYTES:
        raise LocalProtocolError(f"the {role} identity must be a {IDENTITY_BYTES}-byte key")
    return key


def check_nonce(nonce: bytes) -> None:
    """Raise :class:`RemoteProtocolError` unless ``nonce`` is empty or 16-64 bytes."""
    if nonce and not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise RemoteProtocolError(
            f"a SAS nonce has {MIN_NONCE_BYTES}-{MAX_NONCE_BYTES} bytes, not {len(nonce)}"
        )


@dataclass(frozen=True, slots=True)
class Sas:
    """A short authentication string: a 24-bit value and its spoken forms."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < 1 << SAS_BITS:
            raise LocalProtocolError(f"a SAS value has {SAS_BITS} bits")

    @property
    def words(self) -> tuple[str, ...]:
        """Three words, most significant byte first."""
        return tuple(
            WORDS[(self.value >> (WORD_BITS * (SAS_WORD_COUNT - 1 - i))) & 0xFF]
            for i in range(SAS_WORD_COUNT)
        )

    @property
    def text(self) -> str:
        """The words separated by spaces, e.g. ``"maple rocket zebra"``."""
        return " ".join(self.words)

    @property
    def number(self) -> str:
        """The value as 8 decimal digits in two groups, e.g. ``"0123 4567"``."""
        digits = f"{self.value:0{SAS_DIGITS}d}"
        return f"{digits[:4]} {digits[4:]}"

    def __str__(self) -> str:
        return f"{self.text} ({self.number})"


def compute_sas(*, local_identity: bytes, local_fingerprint: str | bytes,
                remote_identity: bytes, remote_fingerprint: str | bytes,
                offer_nonce: bytes = b"", answer_nonce: bytes = b"") -> Sas:
    """The SAS of a call as this side sees it; both sides get the same value.

    ``*_identity`` are Ed25519 public keys (32 bytes); ``*_fingerprint`` are the SHA-256 DTLS
    fingerprints of the local certificate and of the one the peer's SDP announced;
    ``offer_nonce`` is the caller's revealed (committed) nonce and ``answer_nonce`` the
    callee's, whoever computes (see the module docstring); ``b""`` for none.
    Raises :class:`RemoteProtocolError` for a malformed fingerprint or nonce, or when the
    peer announced our own fingerprint (a reflection), and :class:`LocalProtocolError` for a
    malformed identity key.
    """
    return Sas(int.from_bytes(sas_hash(
        local_identity=local_identity, local_fingerprint=local_fingerprint,
        remote_identity=remote_identity, remote_fingerprint=remote_fingerprint,
        offer_nonce=offer_nonce, answer_nonce=answer_nonce,
    )[:4], "big") >> (32 - SAS_BITS))


def sas_hash(*, local_identity: bytes, local_fingerprint: str | bytes,
             remote_identity: bytes, remote_fingerprint: str | bytes,
             offer_nonce: bytes = b"", answer_nonce: bytes = b"") -> bytes:
    """The full 32-byte hash the SAS is cut from (arguments as for :func:`compute_sas`)."""
    local = (_identity(local_identity, "local"), parse_fingerprint(local_fingerprint))
    remote = (_identity(remote_identity, "remote"), parse_fingerprint(remote_fingerprint))
    if local[1] == remote[1]:
        raise RemoteProtocolError("the peer announced our own DTLS fingerprint")
    check_nonce(offer_nonce)
    check_nonce(answer_nonce)
    first, second = sorted((local, remote))
    return blake2b_256(_SAS_DOMAIN, *first, *second, bytes([len(offer_nonce)]), offer_nonce,
                       bytes([len(answer_nonce)]), answer_nonce)


def sas_from_words(words: str | Iterable[str]) -> Sas:
    """Parse three SAS words (any case; spaces, commas or hyphens between them).

    Each word may be abbreviated to its first four letters. Raises
    :class:`LocalProtocolError` for an unknown word or a wrong count.
    """
    items = _SEPARATORS_RE.split(words.strip()) if isinstance(words, str) else list(words)
    items = [item.strip().lower() for item in items if item.strip()]
    if len(items) != SAS_WORD_COUNT:
        raise LocalProtocolError(f"a SAS has {SAS_WORD_COUNT} words, got {len(items)}")
    value = 0
    for item in items:
        index = _WORD_INDEX.get(item)
        if index is None and len(item) >= 4:
            matches = [i for word, i in _WORD_INDEX.items() if word.startswith(item)]
            index = matches[0] if len(matches) == 1 else None
        if index is None:
            raise LocalProtocolError(f"{item!r} is not a SAS word")
        value = (value << WORD_BITS) | index
    return Sas(value)


def sas_from_number(number: str) -> Sas:
    """Parse the 8-digit numeric form (spaces or hyphens allowed)."""
    digits = _SEPARATORS_RE.sub("", number)
    if len(digits) != SAS_DIGITS or not digits.isascii() or not digits.isdigit():
        raise LocalProtocolError(f"a numeric SAS has {SAS_DIGITS} digits")
    value = int(digits)
    if value >= 1 << SAS_BITS:
        raise LocalProtocolError(f"{number!r} is larger than a {SAS_BITS}-bit SAS")
    return Sas(value)


def commitment(nonce: bytes) -> bytes:
    """The 32-byte commitment to the caller's SAS nonce, sent in the invite."""
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise LocalProtocolError(
            f"a SAS nonce has {MIN_NONCE_BYTES}-{MAX_NONCE_BYTES} bytes, not {len(nonce)}"
        )
    return blake2b_256(_COMMIT_DOMAIN, nonce)


def check_commitment(committed: bytes, nonce: bytes) -> None:
    """Raise :class:`RemoteProtocolError` unless ``nonce`` opens the invite's ``committed``."""
    check_nonce(nonce)
    if not nonce or not hmac.compare_digest(committed, blake2b_256(_COMMIT_DOMAIN, nonce)):
        raise RemoteProtocolError("the revealed SAS nonce does not match the offer's commitment")
