"""The Double Ratchet as dhtchat configures it, and the wire format of ratchet messages.

Theory of operation
-------------------
Perrin & Marlinspike, *The Double Ratchet Algorithm*, rev. 1, 2016
(https://signal.org/docs/specifications/doubleratchet/), run by Syndace's ``doubleratchet``
package with the spec's recommended primitives (sec. 5.2): X25519 for the DH ratchet, HKDF
over SHA-256 for the root chain (``KDF_RK``), separate HMACs for the message chain
(``MK = HMAC(CK, 0x01)``, ``CK' = HMAC(CK, 0x02)``: ``KDF_CK``) and AES-256-CBC with
HMAC-SHA-256 as the AEAD (``ENCRYPT``). The associated data bound to every message is the
X3DH ``AD`` followed by the header ``dh || pn || n`` (``CONCAT``, sec. 3.1).

:data:`MAX_SKIP` is the spec's ``MAX_SKIP`` (sec. 3.5, ``SkipMessageKeys``): it bounds the
skipped message keys kept and the chain jump a header may ask for, checked for the current
receiving chain and, for a new ratchet key, for both the rest of the old chain (``pn - Nr``)
and the new one (``n``) before any KDF step (:class:`_DHRatchet`; the library itself only
warns about the second). How sessions use this is described in :mod:`dhtchat.messaging.session`.

Wire formats (msgspec msgpack arrays, all lengths bounded before any allocation)::

    message  = [1, dh(32), pn(u32), n(u32), ciphertext]
    initial  = [2, ik(32), ek(32), spk(32), opk(32), dh(32), pn(u32), n(u32), ciphertext]

An *initial* message is a ratchet message with the X3DH header (X3DH spec sec. 3.3) attached.
"""

from __future__ import annotations

import copy
from typing import Annotated, Final

import msgspec
import x3dh
import xeddsa
from doubleratchet import (
    AuthenticationFailedException,
    ChainNotAvailableException,
    DecryptionFailedException,
    DoSProtectionException,
    DoubleRatchet,
    DuplicateMessageException,
    EncryptedMessage,
    Header,
    SkippedMessageKeys,
)
from doubleratchet.recommended import (
    HashFunction,
    aead_aes_hmac,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)

__all__ = [
    "AEAD_OVERHEAD",
    "MAX_PLAINTEXT",
    "MAX_SKIP",
    "RATCHET_ARGS",
    "REJECTED",
    "Bytes32",
    "InitialWire",
    "Ratchet",
    "RatchetWire",
    "SessionError",
    "check_plaintext",
    "encrypted_message",
    "is_initial_message",
    "parse_message",
]

MAX_SKIP: Final = 1000  # max skipped message keys kept / chain jump accepted
MAX_PLAINTEXT: Final = 1 << 20  # bytes per message; the delivery layer chunks files
ROOT_INFO: Final = b"dhtchat/ratchet-root/v1"
AEAD_INFO: Final = b"dhtchat/ratchet-aead/v1"
MESSAGE_CHAIN_CONSTANT: Final = b"\x02\x01"  # CK' = HMAC(CK, 0x02), MK = HMAC(CK, 0x01)
AEAD_OVERHEAD: Final = 16 + 32  # max PKCS#7 padding + HMAC-SHA-256 tag


class SessionError(Exception):
    """Raised for any message that cannot be accepted (clear reason in str)."""


# --- wire format ----------------------------------------------------------------------------

Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Ciphertext = Annotated[
    bytes, msgspec.Meta(min_length=AEAD_OVERHEAD, max_length=MAX_PLAINTEXT + AEAD_OVERHEAD)
]


class RatchetWire(msgspec.Struct, array_like=True, frozen=True, tag=1):
    """A ratchet message: the header ``dh || pn || n`` (spec sec. 3.4) and the ciphertext."""

    dh: Bytes32
    pn: U32
    n: U32
    ct: Ciphertext


class InitialWire(msgspec.Struct, array_like=True, frozen=True, tag=2):
    """A ratchet message with the X3DH header ``ik, ek, spk, opk`` (X3DH sec. 3.3) attached."""

    ik: Bytes32
    ek: Bytes32
    spk: Bytes32
    opk: Bytes32
    dh: Bytes32
    pn: U32
    n: U32
    ct: Ciphertext


_wire_decoder = msgspec.msgpack.Decoder(RatchetWire | InitialWire)

# Everything the libraries raise for hostile input (XEdDSAException: low-order / invalid keys;
# ValueError: cryptography's X25519 refusing an all-zero shared secret).
REJECTED = (
    x3dh.KeyAgreementException,
    AuthenticationFailedException,
    DecryptionFailedException,
    DoSProtectionException,
    DuplicateMessageException,
    ChainNotAvailableException,
    xeddsa.XEdDSAException,
    ValueError,
)


def parse_message(wire: bytes) -> RatchetWire | InitialWire:
    """Decode a ratchet or initial message, checking every size; :class:`SessionError` if
    it is malformed."""
    if len(wire) > MAX_PLAINTEXT + 1024:
        raise SessionError(f"message too large ({len(wire)} bytes)")
    try:
        msg: RatchetWire | InitialWire = _wire_decoder.decode(wire)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SessionError(f"malformed message: {exc}") from None
    return msg


def is_initial_message(wire: bytes) -> bool:
    """True if ``wire`` is a well-formed message carrying an X3DH header."""
    try:
        return isinstance(parse_message(wire), InitialWire)
    except SessionError:
        return False


def check_plaintext(plaintext: bytes) -> None:
    """Refuse a plaintext above :data:`MAX_PLAINTEXT` (:class:`SessionError`)."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise SessionError(f"message too large ({len(plaintext)} > {MAX_PLAINTEXT} bytes)")


def encrypted_message(msg: RatchetWire | InitialWire) -> EncryptedMessage:
    """The library's form of a parsed message."""
    return EncryptedMessage(Header(msg.dh, msg.pn, msg.n), msg.ct)


# --- library configuration ------------------------------------------------------------------


class _RootKDF(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return ROOT_INFO


class _MessageKDF(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256


class _AEAD(aead_aes_hmac.AEAD):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return AEAD_INFO


_ATOMIC: Final = (bytes, str, int, float, bool, type(None), type)


def _plain_copy(value: object, memo: dict[int, object]) -> object:
    """A deep copy of the ratchet's state objects (plain ``__dict__`` objects holding bytes,
    numbers, classes and each other) without :func:`copy.deepcopy`'s generic protocol, which
    cost more than the decryption itself (the library copies the ratchet before every
    decrypt, to roll back on failure). Anything else goes through ``copy.deepcopy``."""
    if isinstance(value, _ATOMIC):
        return value
    if not hasattr(value, "__dict__") or not _plain_class(type(value)):
        return copy.deepcopy(value, memo)
    return _plain_copy_object(value, memo)


_PLAIN_CLASSES: dict[type, bool] = {}


def _plain_class(cls: type) -> bool:
    """Whether instances are copied by their ``__dict__`` alone (no copy protocol, no slots)."""
    plain = _PLAIN_CLASSES.get(cls)
    if plain is None:
        hooks = ("__deepcopy__", "__setstate__", "__reduce_ex__", "__reduce__")
        plain = not any(any(h in c.__dict__ for h in hooks) or c.__dict__.get("__slots__")
                        for c in cls.__mro__[:-1])
        if len(_PLAIN_CLASSES) < 64:
            _PLAIN_CLASSES[cls] = plain
    return plain


def _plain_copy_object(value: object, memo: dict[int, object]) -> object:
    """A new instance of ``value``'s class with a :func:`_plain_copy` of its ``__dict__``."""
    done = memo.get(id(value))
    if done is not None:
        return done
    twin = object.__new__(type(value))
    memo[id(value)] = twin
    twin.__dict__.update({name: _plain_copy(item, memo) for name, item in vars(value).items()})
    return twin


class _DHRatchet(diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet):
    """The recommended X25519 ratchet, refusing any chain jump above MAX_SKIP before KDF work."""

    _own_pub: tuple[bytes, bytes] = (b"", b"")  # (ratchet private key, its public key)

    def __deepcopy__(self, memo: dict[int, object]) -> _DHRatchet:
        twin = _plain_copy_object(self, memo)
        assert isinstance(twin, _DHRatchet)
        return twin

    def _derive_pub(self, priv: bytes) -> bytes:  # type: ignore[override]  # (called on self)
        # Asked for every message sent (its header): the key changes only with a DH step, so
        # the last answer is kept beside the private key this object holds anyway.
        if self._own_pub[0] != priv:
            self._own_pub = (priv, super()._derive_pub(priv))
        return self._own_pub[1]

    async def next_decryption_key(self, header: Header) -> tuple[bytes, SkippedMessageKeys]:
        received = self.receiving_chain_length or 0
        if header.ratchet_pub == self.model.other_ratchet_pub:
            jump = header.sending_chain_length - received
        else:
            # A new ratchet key: the rest of the old chain (pn - Nr) and the new chain (n).
            # The library would only warn about pn; the spec rejects it.
            jump = max(header.previous_sending_chain_length - received, header.sending_chain_length)
        if jump > MAX_SKIP:
            raise DoSProtectionException(f"header asks to skip {jump} keys (max {MAX_SKIP})")
        return await super().next_decryption_key(header)


class Ratchet(DoubleRatchet):
    """The library's Double Ratchet with our associated data ``AD || dh || pn || n``; build
    it with :data:`RATCHET_ARGS`."""

    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        # AD has a fixed length (two 33-byte encoded identity keys), so this is unambiguous.
        return (
            associated_data
            + header.ratchet_pub
            + header.previous_sending_chain_length.to_bytes(4, "big")
            + header.sending_chain_length.to_bytes(4, "big")
        )


RATCHET_ARGS: Final = (
    _DHRatchet,
    _RootKDF,
    _MessageKDF,
    MESSAGE_CHAIN_CONSTANT,
    MAX_SKIP,  # dos_protection_threshold
    MAX_SKIP,  # max_num_skipped_message_keys
    _AEAD,
)
