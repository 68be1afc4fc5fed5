"""Cryptographic sessions: X3DH prekey agreement and the Double Ratchet, per contact.

Theory of operation
-------------------
This module is the cryptographic layer of 1:1 messaging; it knows nothing about transport,
message ids, outboxes or history. It follows two Signal specifications and delegates both to
Syndace's maintained implementations (the ones python-omemo uses), never reimplementing them:

* **X3DH** -- Marlinspike & Perrin, *The X3DH Key Agreement Protocol*, rev. 1, 2016
  (https://signal.org/docs/specifications/x3dh/), via the ``x3dh`` package. The identity key
  is the person's Ed25519 key: :class:`PrekeyStore` hands x3dh the 32-byte identity *seed*
  (``IdentityKeyPairSeed``, ``IdentityKeyFormat.ED_25519``), so the ``ik`` in a bundle is
  byte-for-byte the dhtchat user's public key (the user id) and the signed prekey signature
  verifies with it. Curve25519 forms are derived by the birational map (XEdDSA, spec sec. 2).
  Hash SHA-256, info ``"dhtchat/x3dh/v1"``; public keys are encoded for signing / associated
  data as ``0x05 || X25519`` and ``0xED || Ed25519``. A one-time prekey is *required*: an
  initial message without one could be replayed into a fresh session forever.
* **Double Ratchet** -- Perrin & Marlinspike, *The Double Ratchet Algorithm*, rev. 1, 2016
  (https://signal.org/docs/specifications/doubleratchet/), via ``doubleratchet`` with the
  spec's recommended primitives from ``doubleratchet.recommended``: X25519 DH ratchet, HKDF
  root chain, separate-HMACs message chain (``MK = HMAC(CK, 0x01)``, ``CK' = HMAC(CK, 0x02)``)
  and the AES-256-CBC + HMAC AEAD, all with SHA-256. The X3DH shared secret ``SK`` is the
  first root key and the responder's signed prekey is its first ratchet key (spec sec. 3.3);
  the X3DH associated data ``AD = Encode(IK_A) || Encode(IK_B)`` is bound to every message
  together with the header ``dh || pn || n``.

Wire formats (msgspec msgpack arrays, all lengths bounded before any allocation)::

    bundle   = [1, ik(32), spk(32), spk_sig(64), [opk(32), ...<= 16]]        (~550 B with 12)
    message  = [1, dh(32), pn(u32), n(u32), ciphertext]
    initial  = [2, ik(32), ek(32), spk(32), opk(32), dh(32), pn(u32), n(u32), ciphertext]

An *initial* message is a ratchet message with the X3DH header attached. The initiator keeps
attaching it to every message until it has decrypted a reply on that session (as Signal does),
so losing the first message does not break the session.

Bounds (denial of service). :data:`MAX_SKIP` bounds both the number of skipped message keys
kept (oldest dropped first) and the chain jump a header may ask for. The library's own
``dos_protection_threshold`` (set to :data:`MAX_SKIP`) raises only for a jump in the *current*
receiving chain; for a header with a *new* ratchet key whose ``pn`` claims a huge jump it
merely ``warnings.warn``\\s and skips nothing. :class:`_DHRatchet` therefore checks both
jumps (``n - Nr`` on the current chain; ``pn - Nr`` and ``n`` on a new one) before any KDF
step, as in the spec's ``SkipMessageKeys``. Decryption works on a copy of the ratchet (the
library's behaviour), so a rejected or forged message never changes session state.

Replay. A message key is used once: a replayed message finds neither a skipped key nor a
forward chain position and is rejected (``DuplicateMessageException``); this survives
:meth:`Session.to_json`. A replayed *initial* message is routed by its X3DH ephemeral key to
the session it created (duplicate again), or, if that session is gone, fails because its
one-time prekey was deleted when it was first accepted. The prekey is deleted only after the
ratchet message authenticated, so a forged copy of someone's initial message cannot burn the
prekey the genuine one needs.

Simultaneous initiation (:class:`Conversation`). Both sides may initiate before hearing from
the other. Like a Signal session record, a conversation keeps the current session plus up to
:data:`MAX_ARCHIVED` older ones and tries them in turn. A session is *heard* once the peer has
sent on it (a session the peer initiated is heard when accepted); a message still carrying an
X3DH header proves the peer has not yet heard us on that session, so it clears the *heard*
mark of every other session. The current session is the heard session whose initiator has the
larger identity key (the newest one among sessions of the same initiator); with nothing heard
yet it stays our own pending session. Both sides apply the same rule to the same facts, so
after one exchange in each direction they converge on the same session, and every message
sent meanwhile still decrypts from the archive.

Randomness and time. This module reads no clock and draws no randomness itself (an
import-linter contract forbids ``time``, ``secrets``, ``asyncio`` and sockets here): time is
passed in (``PrekeyStore.create(seed, now)``, :meth:`PrekeyStore.maintain`). The libraries
under it are not deterministic: x3dh and doubleratchet draw their own randomness
(``os.urandom`` via ``cryptography``) for prekeys, ephemeral keys and ratchet keys, and
x3dh stamps prekeys with its own ``time.time()``; the library's time-based rotation is
disabled.

Persistence. Every mutating call (``initiate``, ``accept``, ``encrypt``, ``decrypt``,
``maintain``) changes state that must be saved (``to_json``) together -- the prekey store as
well as the session or conversation -- before the result is acted upon; otherwise a crash
could reuse a message key or resurrect a consumed prekey. The JSON holds secret keys (not the
identity seed, which is supplied on load) and must be stored encrypted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Final

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
    InconsistentSerializationException,
    SkippedMessageKeys,
)
from doubleratchet.recommended import (
    HashFunction,
    aead_aes_hmac,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)
from pydantic import ValidationError

__all__ = [
    "MAX_SKIP",
    "Conversation",
    "PrekeyStore",
    "Session",
    "SessionError",
    "is_initial_message",
    "parse_bundle",
]

MAX_SKIP: Final = 1000  # max skipped message keys kept / chain jump accepted
MAX_ARCHIVED: Final = 4  # archived sessions per conversation, besides the current one
MAX_PLAINTEXT: Final = 1 << 20  # bytes per message; the delivery layer chunks files
MAX_BUNDLE_PREKEYS: Final = 16
BUNDLE_PREKEYS: Final = 12  # default one-time prekeys per published bundle
PREKEY_TARGET: Final = 100  # one-time prekeys kept in stock
SPK_ROTATION_SECONDS: Final = 7 * 24 * 3600  # signed prekey lifetime (the old one is kept 1 more)
X3DH_INFO: Final = b"dhtchat/x3dh/v1"
ROOT_INFO: Final = b"dhtchat/ratchet-root/v1"
AEAD_INFO: Final = b"dhtchat/ratchet-aead/v1"
MESSAGE_CHAIN_CONSTANT: Final = b"\x02\x01"  # CK' = HMAC(CK, 0x02), MK = HMAC(CK, 0x01)
_NEVER: Final = 100 * 365 * 24 * 3600  # disables x3dh's wall-clock spk rotation
_AEAD_OVERHEAD: Final = 16 + 32  # max PKCS#7 padding + HMAC-SHA-256 tag
_STATE_VERSION: Final = 1


class SessionError(Exception):
    """Raised for any message that cannot be accepted (clear reason in str)."""


# --- wire formats ---------------------------------------------------------------------------

Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Bytes64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Ciphertext = Annotated[
    bytes, msgspec.Meta(min_length=_AEAD_OVERHEAD, max_length=MAX_PLAINTEXT + _AEAD_OVERHEAD)
]


class _BundleWire(msgspec.Struct, array_like=True, frozen=True, tag=1):
    ik: Bytes32
    spk: Bytes32
    spk_sig: Bytes64
    opks: Annotated[list[Bytes32], msgspec.Meta(max_length=MAX_BUNDLE_PREKEYS)]


class _RatchetWire(msgspec.Struct, array_like=True, frozen=True, tag=1):
    dh: Bytes32
    pn: U32
    n: U32
    ct: Ciphertext


class _InitialWire(msgspec.Struct, array_like=True, frozen=True, tag=2):
    ik: Bytes32
    ek: Bytes32
    spk: Bytes32
    opk: Bytes32
    dh: Bytes32
    pn: U32
    n: U32
    ct: Ciphertext


_encoder = msgspec.msgpack.Encoder()
_bundle_decoder = msgspec.msgpack.Decoder(_BundleWire)
_wire_decoder = msgspec.msgpack.Decoder(_RatchetWire | _InitialWire)

# Everything the libraries raise for hostile input (XEdDSAException: low-order / invalid keys;
# ValueError: cryptography's X25519 refusing an all-zero shared secret).
_REJECT = (
    x3dh.KeyAgreementException,
    AuthenticationFailedException,
    DecryptionFailedException,
    DoSProtectionException,
    DuplicateMessageException,
    ChainNotAvailableException,
    xeddsa.XEdDSAException,
    ValueError,
)


def _parse(wire: bytes) -> _RatchetWire | _InitialWire:
    if len(wire) > MAX_PLAINTEXT + 1024:
        raise SessionError(f"message too large ({len(wire)} bytes)")
    try:
        msg: _RatchetWire | _InitialWire = _wire_decoder.decode(wire)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SessionError(f"malformed message: {exc}") from None
    return msg


def is_initial_message(wire: bytes) -> bool:
    """True if ``wire`` is a well-formed message carrying an X3DH header."""
    try:
        return isinstance(_parse(wire), _InitialWire)
    except SessionError:
        return False


def parse_bundle(data: bytes) -> x3dh.Bundle:
    """Decode a published prekey bundle, checking every size (not the signature: see initiate)."""
    if len(data) > 2048:
        raise SessionError(f"prekey bundle too large ({len(data)} bytes)")
    try:
        wire = _bundle_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SessionError(f"malformed prekey bundle: {exc}") from None
    return x3dh.Bundle(
        identity_key=wire.ik,
        signed_pre_key=wire.spk,
        signed_pre_key_sig=wire.spk_sig,
        pre_keys=frozenset(wire.opks),
    )


# --- library configuration ------------------------------------------------------------------


def _encode_public_key(key_format: x3dh.IdentityKeyFormat, pub: bytes) -> bytes:
    prefix = b"\x05" if key_format is x3dh.IdentityKeyFormat.CURVE_25519 else b"\xed"
    return prefix + pub


class _X3DHState(x3dh.State):
    """x3dh's managed state; publication is the caller's job (see PrekeyStore.maintain)."""

    def _publish_bundle(self, bundle: x3dh.Bundle) -> None:
        pass

    @staticmethod
    def _encode_public_key(key_format: x3dh.IdentityKeyFormat, pub: bytes) -> bytes:
        return _encode_public_key(key_format, pub)


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


class _DHRatchet(diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet):
    """The recommended X25519 ratchet, refusing any chain jump above MAX_SKIP before KDF work."""

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


class _Ratchet(DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        # AD has a fixed length (two 33-byte encoded identity keys), so this is unambiguous.
        return (
            associated_data
            + header.ratchet_pub
            + header.previous_sending_chain_length.to_bytes(4, "big")
            + header.sending_chain_length.to_bytes(4, "big")
        )


_RATCHET_ARGS: Final = (
    _DHRatchet,
    _RootKDF,
    _MessageKDF,
    MESSAGE_CHAIN_CONSTANT,
    MAX_SKIP,  # dos_protection_threshold
    MAX_SKIP,  # max_num_skipped_message_keys
    _AEAD,
)


def _lib_bytes(data: bytes) -> str:
    """The libraries' JSON encoding of bytes (one code point per byte)."""
    return "".join(map(chr, data))


def _check_key(name: str, key: bytes) -> None:
    if len(key) != 32:
        raise SessionError(f"{name} must be a 32-byte Ed25519 public key, got {len(key)} bytes")


# --- prekeys --------------------------------------------------------------------------------


class PrekeyStore:
    """Our X3DH identity, signed prekey (plus the previous one) and one-time prekeys."""

    def __init__(
        self, identity_seed: bytes, state: _X3DHState, spk_created: float, published: bytes
    ) -> None:
        self._seed = identity_seed
        self._state = state
        self._spk_created = spk_created
        self._published = published
        self.identity_key: bytes = xeddsa.seed_to_ed25519_pub(identity_seed)
        # The library derives every prekey's public half on each access (~100 scalar
        # multiplications); kept until our prekeys change (_changed()).
        self._public: x3dh.Bundle | None = None

    def _public_bundle(self) -> x3dh.Bundle:
        if self._public is None:
            self._public = self._state.bundle
        return self._public

    def _changed(self) -> None:
        self._public = None

    @staticmethod
    def _make_state(identity_seed: bytes) -> _X3DHState:
        return _X3DHState.create(
            x3dh.IdentityKeyFormat.ED_25519,
            x3dh.HashFunction.SHA_256,
            X3DH_INFO,
            x3dh.identity_key_pair.IdentityKeyPairSeed(identity_seed),
            signed_pre_key_rotation_period=_NEVER,
            pre_key_refill_threshold=1,
            pre_key_refill_target=PREKEY_TARGET,
        )

    @classmethod
    def create(cls, identity_seed: bytes, now: float) -> PrekeyStore:
        """A fresh store made at ``now``: new signed prekey and :data:`PREKEY_TARGET` one-time
        prekeys."""
        if len(identity_seed) != 32:
            raise ValueError("identity seed must be 32 bytes")
        store = cls(identity_seed, cls._make_state(identity_seed), now, b"")
        store._published = store.bundle()
        return store

    def to_json(self) -> str:
        """Serialise (without the identity seed; secret prekeys included: store encrypted)."""
        state = dict(self._state.json)
        identity = dict(state["identity_key"])  # type: ignore[arg-type]
        identity["secret"] = ""
        state["identity_key"] = identity
        return json.dumps(
            {
                "v": _STATE_VERSION,
                "ik": self.identity_key.hex(),
                "x3dh": state,
                "spk_created": self._spk_created,
                "published": self._published.hex(),
            }
        )

    @classmethod
    def from_json(cls, identity_seed: bytes, data: str) -> PrekeyStore:
        """Restore a store saved by :meth:`to_json`; ``identity_seed`` must be the same person's."""
        if len(identity_seed) != 32:
            raise ValueError("identity seed must be 32 bytes")
        obj = json.loads(data)
        if obj.get("v") != _STATE_VERSION:
            raise ValueError(f"unsupported prekey store version {obj.get('v')!r}")
        if bytes.fromhex(obj["ik"]) != xeddsa.seed_to_ed25519_pub(identity_seed):
            raise ValueError("prekey store belongs to a different identity")
        state_json = obj["x3dh"]
        state_json["identity_key"]["secret"] = _lib_bytes(identity_seed)
        state, _ = _X3DHState.from_json(
            state_json,
            x3dh.IdentityKeyFormat.ED_25519,
            x3dh.HashFunction.SHA_256,
            X3DH_INFO,
            signed_pre_key_rotation_period=_NEVER,
            pre_key_refill_threshold=1,
            pre_key_refill_target=PREKEY_TARGET,
        )
        return cls(identity_seed, state, float(obj["spk_created"]), bytes.fromhex(obj["published"]))

    def bundle(self, max_prekeys: int = BUNDLE_PREKEYS) -> bytes:
        """The public bundle: ik, spk, spk_sig and up to ``max_prekeys`` one-time prekeys.

        The prekeys shown are the numerically smallest, so the bundle only changes when one of
        them is consumed or on rotation/replenishment. ~550 bytes with 12 prekeys.
        """
        if not 0 <= max_prekeys <= MAX_BUNDLE_PREKEYS:
            raise ValueError(f"max_prekeys must be in 0..{MAX_BUNDLE_PREKEYS}")
        b = self._public_bundle()
        return _encoder.encode(
            _BundleWire(
                ik=b.identity_key,
                spk=b.signed_pre_key,
                spk_sig=b.signed_pre_key_sig,
                opks=sorted(b.pre_keys)[:max_prekeys],
            )
        )

    def bundle_for(self, contact: bytes, max_prekeys: int = BUNDLE_PREKEYS) -> bytes:
        """The bundle published to one contact: its one-time prekeys are the first in an
        order keyed by the contact, so contacts mostly see different prekeys and two of them
        rarely pick the same one from stale bundles (a collision fails the later session)."""
        if not 0 <= max_prekeys <= MAX_BUNDLE_PREKEYS:
            raise ValueError(f"max_prekeys must be in 0..{MAX_BUNDLE_PREKEYS}")
        b = self._public_bundle()
        ranked = sorted(b.pre_keys, key=lambda pk: hashlib.blake2b(
            b"dhtchat/opk-order/v1" + contact + pk, digest_size=16).digest())
        return _encoder.encode(
            _BundleWire(ik=b.identity_key, spk=b.signed_pre_key, spk_sig=b.signed_pre_key_sig,
                        opks=ranked[:max_prekeys])
        )

    def maintain(self, now: float) -> bool:
        """Rotate the signed prekey every 7 days (the previous one keeps working until the next
        rotation) and top the one-time prekeys up to :data:`PREKEY_TARGET`.

        Returns True if :meth:`bundle` (default size) differs from the one returned last time,
        i.e. the caller should republish it (and save the store).
        """
        if now - self._spk_created >= SPK_ROTATION_SECONDS:
            self._state.rotate_signed_pre_key(force=True)
            self._spk_created = now
            self._changed()
        missing = PREKEY_TARGET - self._state.get_num_visible_pre_keys()
        if missing > 0:
            self._state.generate_pre_keys(missing)
            self._changed()
        current = self.bundle()
        changed = current != self._published
        self._published = current
        return changed

    def one_time_prekeys_left(self) -> int:
        """Number of unused one-time prekeys in stock."""
        return self._state.get_num_visible_pre_keys()

    def _consume(self, pre_key: bytes) -> None:
        self._changed()
        self._state.delete_pre_key(pre_key)
        if self._state.get_num_visible_pre_keys() == 0:  # never publish an empty bundle
            self._state.generate_pre_keys(PREKEY_TARGET)


# --- sessions -------------------------------------------------------------------------------


class Session:
    """One Double Ratchet session with one contact, started by X3DH."""

    def __init__(
        self,
        ratchet: _Ratchet,
        associated_data: bytes,
        their_identity: bytes,
        initiator_key: bytes,
        base_key: bytes,
        pending: _InitialWire | None,
    ) -> None:
        self._ratchet = ratchet
        self._ad = associated_data
        self.their_identity = their_identity
        self.initiator_key = initiator_key  # identity key of whoever ran X3DH actively
        self.base_key = base_key  # the X3DH ephemeral key: identifies the session on both sides
        self._pending = pending  # X3DH header to attach until the first reply (initiator only)
        self._heard = initiator_key == their_identity  # peer has sent on it (Conversation rule)
        self._seq = 0  # creation order within a Conversation

    @property
    def initiated_by_me(self) -> bool:
        return self.initiator_key != self.their_identity

    @property
    def acknowledged(self) -> bool:
        """True once the peer is known to have this session (always, for the responder)."""
        return self._pending is None

    @property
    def skipped_message_keys(self) -> int:
        """Number of stored skipped message keys (at most :data:`MAX_SKIP`)."""
        return len(self._ratchet.model.skipped_message_keys)

    @classmethod
    async def initiate(
        cls, store: PrekeyStore, their_identity: bytes, their_bundle: bytes, plaintext: bytes
    ) -> tuple[Session, bytes]:
        """Active X3DH against ``their_bundle``; returns the session and the first message."""
        _check_key("their_identity", their_identity)
        _check_plaintext(plaintext)
        bundle = parse_bundle(their_bundle)
        if bundle.identity_key != their_identity:
            raise SessionError("prekey bundle is not signed by this contact's identity key")
        if not bundle.pre_keys:
            raise SessionError("prekey bundle has no one-time prekeys left")
        try:
            secret, ad, header = await store._state.get_shared_secret_active(bundle)
            ratchet, msg = await _Ratchet.encrypt_initial_message(
                *_RATCHET_ARGS, secret, bundle.signed_pre_key, plaintext, ad
            )
        except _REJECT as exc:
            raise SessionError(f"X3DH with this bundle failed: {exc}") from None
        assert header.pre_key is not None  # require_pre_key=True
        pending = _InitialWire(
            ik=header.identity_key,
            ek=header.ephemeral_key,
            spk=header.signed_pre_key,
            opk=header.pre_key,
            dh=msg.header.ratchet_pub,
            pn=0,
            n=0,
            ct=b"\0" * _AEAD_OVERHEAD,
        )
        me = store.identity_key
        session = cls(ratchet, ad, their_identity, me, header.ephemeral_key, pending)
        return session, session._wire(msg)

    @classmethod
    async def accept(
        cls, store: PrekeyStore, their_identity: bytes, wire: bytes
    ) -> tuple[Session, bytes]:
        """Passive X3DH for an initial message; deletes the one-time prekey it used."""
        _check_key("their_identity", their_identity)
        parsed = _parse(wire)
        if not isinstance(parsed, _InitialWire):
            raise SessionError("not an initial message (no X3DH header)")
        return await cls._accept_parsed(store, their_identity, parsed)

    @classmethod
    async def _accept_parsed(
        cls, store: PrekeyStore, their_identity: bytes, msg: _InitialWire
    ) -> tuple[Session, bytes]:
        if msg.ik != their_identity:
            raise SessionError("initial message is from a different identity key")
        header = x3dh.Header(
            identity_key=msg.ik, ephemeral_key=msg.ek, signed_pre_key=msg.spk, pre_key=msg.opk
        )
        try:
            # BaseState's variant does not delete the prekey; we do so only after the ratchet
            # message authenticated (x3dh.State would delete it up front).
            secret, ad, spk = await x3dh.BaseState.get_shared_secret_passive(
                store._state, header, b"", True
            )
            ratchet, plaintext = await _Ratchet.decrypt_initial_message(
                *_RATCHET_ARGS, secret, spk.priv, _encrypted(msg), ad
            )
        except _REJECT as exc:
            raise SessionError(f"cannot accept initial message: {exc}") from None
        store._consume(msg.opk)
        return cls(ratchet, ad, their_identity, their_identity, msg.ek, None), plaintext

    async def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt the next message (with the X3DH header until the peer has replied)."""
        _check_plaintext(plaintext)
        return self._wire(await self._ratchet.encrypt_message(plaintext, self._ad))

    async def decrypt(self, wire: bytes) -> bytes:
        """Decrypt a message of this session; on any failure the state is unchanged."""
        return await self._decrypt_parsed(_parse(wire))

    async def _decrypt_parsed(self, msg: _RatchetWire | _InitialWire) -> bytes:
        if isinstance(msg, _InitialWire) and (
            self.initiated_by_me or msg.ek != self.base_key or msg.ik != self.their_identity
        ):
            raise SessionError("initial message belongs to another session")
        try:
            plaintext = await self._ratchet.decrypt_message(_encrypted(msg), self._ad)
        except DuplicateMessageException:
            raise SessionError("replayed message (its key was already used)") from None
        except _REJECT as exc:
            raise SessionError(f"cannot decrypt: {exc}") from None
        self._pending = None
        self._heard = True
        return plaintext

    def _wire(self, msg: EncryptedMessage) -> bytes:
        h = msg.header
        if self._pending is None:
            out: _RatchetWire | _InitialWire = _RatchetWire(
                h.ratchet_pub,
                h.previous_sending_chain_length,
                h.sending_chain_length,
                msg.ciphertext,
            )
        else:
            p = self._pending
            out = _InitialWire(
                p.ik,
                p.ek,
                p.spk,
                p.opk,
                h.ratchet_pub,
                h.previous_sending_chain_length,
                h.sending_chain_length,
                msg.ciphertext,
            )
        return _encoder.encode(out)

    def _to_obj(self) -> dict[str, Any]:
        p = self._pending
        return {
            "v": _STATE_VERSION,
            "ratchet": self._ratchet.json,
            "ad": self._ad.hex(),
            "their_identity": self.their_identity.hex(),
            "initiator_key": self.initiator_key.hex(),
            "base_key": self.base_key.hex(),
            "pending": None if p is None else [p.ik.hex(), p.ek.hex(), p.spk.hex(), p.opk.hex()],
            "heard": self._heard,
            "seq": self._seq,
        }

    def to_json(self) -> str:
        """Serialise the full session state (secret keys included: store encrypted)."""
        return json.dumps(self._to_obj())

    @classmethod
    def _from_obj(cls, obj: dict[str, Any]) -> Session:
        try:
            if obj.get("v") != _STATE_VERSION:
                raise ValueError(f"unsupported session version {obj.get('v')!r}")
            ratchet = _Ratchet.from_json(obj["ratchet"], *_RATCHET_ARGS)
            p = obj["pending"]
            pending = None
            if p is not None:
                ik, ek, spk, opk = (bytes.fromhex(x) for x in p)
                pending = _InitialWire(ik, ek, spk, opk, b"\0" * 32, 0, 0, b"\0" * _AEAD_OVERHEAD)
            session = cls(
                ratchet,
                bytes.fromhex(obj["ad"]),
                bytes.fromhex(obj["their_identity"]),
                bytes.fromhex(obj["initiator_key"]),
                bytes.fromhex(obj["base_key"]),
                pending,
            )
            session._heard = bool(obj["heard"])
            session._seq = int(obj["seq"])
        except (
            KeyError,
            TypeError,
            ValueError,
            ValidationError,
            InconsistentSerializationException,
        ) as exc:
            raise SessionError(f"corrupt session state: {exc}") from None
        return session

    @classmethod
    def from_json(cls, data: str) -> Session:
        """Restore a session saved by :meth:`to_json`."""
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise SessionError(f"corrupt session state: {exc}") from None
        if not isinstance(obj, dict):
            raise SessionError("corrupt session state: not an object")
        return cls._from_obj(obj)


def _check_plaintext(plaintext: bytes) -> None:
    if len(plaintext) > MAX_PLAINTEXT:
        raise SessionError(f"message too large ({len(plaintext)} > {MAX_PLAINTEXT} bytes)")


def _encrypted(msg: _RatchetWire | _InitialWire) -> EncryptedMessage:
    return EncryptedMessage(Header(msg.dh, msg.pn, msg.n), msg.ct)


# --- conversations --------------------------------------------------------------------------


class Conversation:
    """All sessions with one contact; hides simultaneous initiation and session set-up races."""

    def __init__(self, store: PrekeyStore, my_identity: bytes, their_identity: bytes) -> None:
        _check_key("my_identity", my_identity)
        _check_key("their_identity", their_identity)
        if my_identity != store.identity_key:
            raise ValueError("my_identity does not match the prekey store's identity")
        if my_identity == their_identity:
            raise ValueError("a conversation needs two different identities")
        self._store = store
        self.my_identity = my_identity
        self.their_identity = their_identity
        self._sessions: list[Session] = []  # newest first
        self._current: Session | None = None
        self._next_seq = 0

    @property
    def established(self) -> bool:
        """True when a session exists, i.e. :meth:`encrypt` needs no prekey bundle."""
        return self._current is not None

    @property
    def current_session_id(self) -> bytes | None:
        """X3DH ephemeral key of the session used for sending (equal on both sides once
        they have converged)."""
        return None if self._current is None else self._current.base_key

    def restart(self) -> None:
        """Stop sending on the current session (the contact cannot decrypt it): the next
        :meth:`encrypt` starts a new one from the contact's bundle. Older sessions still
        decrypt what is in flight, but none is preferred again until the contact answers on
        it."""
        self._current = None
        for session in self._sessions:
            session._heard = False

    async def encrypt(self, plaintext: bytes, their_bundle: bytes | None) -> bytes:
        """Encrypt on the current session, starting one from ``their_bundle`` if there is none."""
        if self._current is not None:
            return await self._current.encrypt(plaintext)
        if their_bundle is None:
            raise SessionError("need the contact's prekey bundle")
        session, wire = await Session.initiate(
            self._store, self.their_identity, their_bundle, plaintext
        )
        self._add(session)
        self._current = session
        return wire

    async def decrypt(self, wire: bytes) -> bytes:
        """Decrypt with the current session, then archived ones, or accept a new session."""
        msg = _parse(wire)
        if isinstance(msg, _InitialWire):
            if msg.ik != self.their_identity:
                raise SessionError("initial message is from a different identity key")
            match = next(
                (s for s in self._sessions if not s.initiated_by_me and s.base_key == msg.ek), None
            )
            if match is None:
                session, plaintext = await Session._accept_parsed(
                    self._store, self.their_identity, msg
                )
                self._add(session)
            else:
                session = match
                plaintext = await session._decrypt_parsed(msg)
            # The peer has not heard us on this session yet, hence on no other session since it
            # started this one: other sessions must be confirmed again before being preferred.
            for other in self._sessions:
                if other is not session:
                    other._heard = False
        else:
            first_error: SessionError | None = None
            ordered = [s for s in self._sessions if s is self._current]
            ordered += [s for s in self._sessions if s is not self._current]
            for session in ordered:
                try:
                    plaintext = await session._decrypt_parsed(msg)
                    break
                except SessionError as exc:
                    first_error = first_error or exc
            else:
                raise first_error or SessionError("no session with this contact")
        self._select()
        return plaintext

    def _add(self, session: Session) -> None:
        session._seq = self._next_seq
        self._next_seq += 1
        self._sessions.insert(0, session)

    def _select(self) -> None:
        heard = [s for s in self._sessions if s._heard]
        if heard:
            self._current = max(heard, key=lambda s: (s.initiator_key, s._seq))
        elif self._current is None and self._sessions:
            self._current = self._sessions[0]
        keep = [s for s in self._sessions if s is not self._current][:MAX_ARCHIVED]
        self._sessions = sorted(
            keep + ([self._current] if self._current else []), key=lambda s: -s._seq
        )

    def to_json(self) -> str:
        """Serialise all sessions of this conversation."""
        return json.dumps(
            {
                "v": _STATE_VERSION,
                "my_identity": self.my_identity.hex(),
                "their_identity": self.their_identity.hex(),
                "next_seq": self._next_seq,
                "current": None if self._current is None else self._current._seq,
                "sessions": [s._to_obj() for s in self._sessions],
            }
        )

    @classmethod
    def from_json(cls, store: PrekeyStore, data: str) -> Conversation:
        """Restore a conversation saved by :meth:`to_json`."""
        try:
            obj = json.loads(data)
            if obj.get("v") != _STATE_VERSION:
                raise ValueError(f"unsupported conversation version {obj.get('v')!r}")
            conv = cls(
                store, bytes.fromhex(obj["my_identity"]), bytes.fromhex(obj["their_identity"])
            )
            conv._next_seq = int(obj["next_seq"])
            conv._sessions = [Session._from_obj(s) for s in obj["sessions"]]
            current = obj["current"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SessionError(f"corrupt conversation state: {exc}") from None
        conv._current = next((s for s in conv._sessions if s._seq == current), None)
        return conv
