"""Signed, typed DHT records (design sec. 4; BEP 44 "mutable items" is the closest relative).

A record is signed by its owner's Ed25519 key and lives in a *namespace*, the public key
whose key space it belongs to: ``namespace`` is empty (the owner's own space) or, for the
open-write type (a contact request), the recipient's key. The storage key is bound to it:
``key = BLAKE2b-256("dhtchat/record-key/v1" || type(u16 be) || namespace_key || salt)``
with ``namespace_key = namespace or owner``. Owner-only types (app values, presence, prekeys,
mailbox slots, signalling) require ``namespace`` to be empty or the owner, so nobody else can
write under the key; open-write types let many owners store under one key (one record per
owner), which is how an inbox holds requests from many senders (each paid for with proof of
work). A mailbox slot's owner is the pair's channel key, which only the two contacts can
derive, so nobody else can write, or squat, a slot key.

Validation order, used by storers and readers alike: bounded sizes (enforced by the decoder
before anything else), type policy, key binding, expiry, the proof of work of a contact
request (one hash, :mod:`dhtchat.core.pow`), and only then the Ed25519 signature
over ``"dhtchat/record/v1" || msgpack([type, owner, namespace, salt, seq, expires, value])``.
Sequence numbers may only grow: a storer refuses an older ``seq`` for the same (key, owner) and a
different value under the same ``seq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Final

import msgspec

from dhtchat.core.errors import InvalidRecord, LocalProtocolError
from dhtchat.core.identity import SigningIdentity, verify_signature
from dhtchat.core.ids import blake2b_256
from dhtchat.core.pow import REQUEST_POW_BITS, pow_ok

MAX_VALUE_BYTES: Final = 1000
MAX_SALT_BYTES: Final = 64
MAX_SEQ: Final = 2**63 - 1
CLOCK_SKEW_ALLOWANCE: Final = 300  # seconds a record's expiry may exceed the policy maximum

_KEY_DOMAIN: Final = b"dhtchat/record-key/v1"
_SIG_DOMAIN: Final = b"dhtchat/record/v1"


class RecordType(IntEnum):
    """Known record types. Storers accept unknown types under the default policy."""

    APP = 1  # generic application value (``dhtchat dht put``)
    PRESENCE = 2
    PREKEYS = 3
    MAILBOX = 4
    SIGNAL = 5
    CONTACT_REQUEST = 6


@dataclass(frozen=True, slots=True)
class RecordPolicy:
    """Limits a storer applies to one record type."""

    max_value_bytes: int = MAX_VALUE_BYTES
    max_ttl: int = 24 * 3600
    open_write: bool = False  # may owners other than the namespace's key write under it?


DEFAULT_POLICY: Final = RecordPolicy()
POLICIES: Final[dict[int, RecordPolicy]] = {
    RecordType.APP: RecordPolicy(max_ttl=7 * 24 * 3600),
    RecordType.PRESENCE: RecordPolicy(max_ttl=3600),
    RecordType.PREKEYS: RecordPolicy(max_ttl=30 * 24 * 3600),
    # owner-only: a slot's key is bound to the pair's channel key (review item 4)
    RecordType.MAILBOX: RecordPolicy(max_ttl=14 * 24 * 3600),
    RecordType.SIGNAL: RecordPolicy(max_ttl=600),
    RecordType.CONTACT_REQUEST: RecordPolicy(max_ttl=14 * 24 * 3600, open_write=True),
}

Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Bytes64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
Namespace = Annotated[bytes, msgspec.Meta(max_length=32)]
Salt = Annotated[bytes, msgspec.Meta(max_length=MAX_SALT_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=2**40)]


class Record(msgspec.Struct, array_like=True, frozen=True):
    """A signed value. ``expires`` is an absolute UNIX time in seconds."""

    type: U16
    owner: Bytes32
    namespace: Namespace
    salt: Salt
    seq: Seq
    expires: Timestamp
    value: Value
    signature: Bytes64

    @property
    def key(self) -> bytes:
        """The storage key this record belongs under."""
        return record_key(self.type, self.namespace or self.owner, self.salt)

    def signed_bytes(self) -> bytes:
        """The exact bytes covered by :attr:`signature`."""
        return _signed_bytes(self.type, self.owner, self.namespace, self.salt, self.seq,
                             self.expires, self.value)


_encoder = msgspec.msgpack.Encoder()


def _signed_bytes(
    type_: int, owner: bytes, namespace: bytes, salt: bytes, seq: int, expires: int,
    value: bytes,
) -> bytes:
    return _SIG_DOMAIN + _encoder.encode((type_, owner, namespace, salt, seq, expires, value))


def encoded_size(record: Record) -> int:
    """Bytes the record takes on the wire."""
    return len(_encoder.encode(record))


def record_key(type_: int, namespace_key: bytes, salt: bytes) -> bytes:
    """Storage key for records of ``type_`` in the namespace of ``namespace_key``."""
    return blake2b_256(_KEY_DOMAIN, type_.to_bytes(2, "big"), namespace_key, salt)


def app_salt(app_key: str) -> bytes:
    """Salt for an application key string (hashed so any length of key fits)."""
    return blake2b_256(b"dhtchat/app-key/v1", app_key.encode("utf-8"))


def policy_for(type_: int) -> RecordPolicy:
    """The storage policy of a record type."""
    return POLICIES.get(type_, DEFAULT_POLICY)


def make_record(
    signer: SigningIdentity,
    type_: int,
    salt: bytes,
    value: bytes,
    *,
    seq: int,
    expires: int,
    namespace: bytes = b"",
) -> Record:
    """Create and sign a record. Raises :class:`LocalProtocolError` on out-of-range input.

    ``namespace`` is the recipient's public key for open-write types (a contact request), empty
    for a record in the signer's own key space.
    """
    policy = policy_for(type_)
    if namespace == signer.public_key:
        namespace = b""
    if namespace and (len(namespace) != 32 or not policy.open_write):
        raise LocalProtocolError(
            f"records of type {type_} can only be written in the owner's own namespace"
        )
    if not 0 <= type_ <= 0xFFFF:
        raise LocalProtocolError("record type must fit in 16 bits")
    if len(value) > policy.max_value_bytes:
        raise LocalProtocolError(
            f"value is {len(value)} bytes; records of type {type_} hold at most "
            f"{policy.max_value_bytes}"
        )
    if len(salt) > MAX_SALT_BYTES:
        raise LocalProtocolError(f"salt is limited to {MAX_SALT_BYTES} bytes")
    if not 0 <= seq <= MAX_SEQ:
        raise LocalProtocolError("seq out of range")
    signature = signer.sign(
        _signed_bytes(type_, signer.public_key, namespace, salt, seq, expires, value)
    )
    return Record(type_, signer.public_key, namespace, salt, seq, expires, value, signature)


def make_app_record(
    signer: SigningIdentity, app_key: str, value: bytes, *, seq: int, expires: int
) -> Record:
    """A :attr:`RecordType.APP` record under the application key string ``app_key``."""
    return make_record(signer, RecordType.APP, app_salt(app_key), value, seq=seq, expires=expires)


def validate_record(
    record: Record, key: bytes, now: float, *, verify_signature_: bool = True
) -> None:
    """Check a record received for ``key``; raises :class:`InvalidRecord` with the reason.

    Sizes were bounded by the decoder; this checks the type policy (value size, who may
    write), the key binding and the expiry before spending time on the signature.
    """
    policy = policy_for(record.type)
    if len(record.value) > policy.max_value_bytes:
        raise InvalidRecord("value larger than its type allows")
    if record.namespace and (len(record.namespace) != 32 or record.namespace == record.owner
                             or not policy.open_write):
        raise InvalidRecord("this record type is writable only by its namespace's owner")
    if record.key != key:
        raise InvalidRecord("record is not bound to this key (owner/type/salt mismatch)")
    if record.expires <= now:
        raise InvalidRecord("record has expired")
    if record.expires > now + policy.max_ttl + CLOCK_SKEW_ALLOWANCE:
        raise InvalidRecord("record lifetime exceeds its type's maximum")
    if record.type == RecordType.CONTACT_REQUEST and not (
        len(record.value) > 8 and pow_ok(record.namespace + record.owner, record.value[8:],
                                         int.from_bytes(record.value[:8], "big"),
                                         REQUEST_POW_BITS)
    ):
        raise InvalidRecord("contact request without enough proof of work")
    if verify_signature_ and not verify_signature(
        record.owner, record.signed_bytes(), record.signature
    ):
        raise InvalidRecord("bad signature")
