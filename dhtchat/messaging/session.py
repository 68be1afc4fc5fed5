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
merely ``warnings.warn``\\s and skips nothing. The ratchet of
:mod:`dhtchat.messaging.ratchet` therefore checks both jumps (``n - Nr`` on the current chain;
``pn - Nr`` and ``n`` on a new one) before any KDF step, as in the spec's ``SkipMessageKeys``.
Decryption works on a copy of the ratchet (the library's behaviour), so a rejected or forged
message never changes session state.

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

Modules. This docstring is the normative description of the whole layer; the code is in three
modules, imported downward only: :mod:`dhtchat.messaging.ratchet` (the Double Ratchet
configuration and the message wire format), :mod:`dhtchat.messaging.prekeys` (X3DH:
:class:`PrekeyStore` and the bundle wire format) and this one (:class:`Session` and
:class:`Conversation`; it re-exports the public names of the other two).

Persistence. Every mutating call (``initiate``, ``accept``, ``encrypt``, ``decrypt``,
``maintain``) changes state that must be saved (``to_json``) together -- the prekey store as
well as the session or conversation -- before the result is acted upon; otherwise a crash
could reuse a message key or resurrect a consumed prekey. The JSON holds secret keys (not the
identity seed, which is supplied on load) and must be stored encrypted.
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec
import x3dh
from doubleratchet import (
    DuplicateMessageException,
    EncryptedMessage,
    InconsistentSerializationException,
)
from pydantic import ValidationError

from dhtchat.messaging.prekeys import (
    BUNDLE_PREKEYS,
    MAX_BUNDLE_PREKEYS,
    PREKEY_TARGET,
    SPK_ROTATION_SECONDS,
    PrekeyStore,
    parse_bundle,
)
from dhtchat.messaging.ratchet import (
    AEAD_OVERHEAD,
    MAX_PLAINTEXT,
    MAX_SKIP,
    RATCHET_ARGS,
    REJECTED,
    InitialWire,
    Ratchet,
    RatchetWire,
    SessionError,
    check_plaintext,
    encrypted_message,
    is_initial_message,
    parse_message,
)

__all__ = [
    "BUNDLE_PREKEYS",
    "MAX_ARCHIVED",
    "MAX_BUNDLE_PREKEYS",
    "MAX_PLAINTEXT",
    "MAX_SKIP",
    "PREKEY_TARGET",
    "SPK_ROTATION_SECONDS",
    "Conversation",
    "PrekeyStore",
    "Session",
    "SessionError",
    "is_initial_message",
    "parse_bundle",
]

MAX_ARCHIVED: Final = 4  # archived sessions per conversation, besides the current one
_STATE_VERSION: Final = 1

_encoder = msgspec.msgpack.Encoder()


def _check_key(name: str, key: bytes) -> None:
    if len(key) != 32:
        raise SessionError(f"{name} must be a 32-byte Ed25519 public key, got {len(key)} bytes")


# --- sessions -------------------------------------------------------------------------------


class Session:
    """One Double Ratchet session with one contact, started by X3DH."""

    def __init__(
        self,
        ratchet: Ratchet,
        associated_data: bytes,
        their_identity: bytes,
        initiator_key: bytes,
        base_key: bytes,
        pending: InitialWire | None,
    ) -> None:
        self._ratchet = ratchet
        self._ad = associated_data
        self.their_identity = their_identity
        self.initiator_key = initiator_key  # identity key of whoever ran X3DH actively
        self.base_key = base_key  # the X3DH ephemeral key: identifies the session on both sides
        self._pending = pending  # X3DH header to attach until the first reply (initiator only)
        self._heard = initiator_key == their_identity  # peer has sent on it (Conversation rule)
        self.seq = 0  # creation order within a Conversation (set by it)

    @property
    def initiated_by_me(self) -> bool:
        """True if we ran X3DH actively (sent the initial message)."""
        return self.initiator_key != self.their_identity

    @property
    def heard(self) -> bool:
        """True once the peer has sent on this session, as far as the :class:`Conversation`
        rule knows (a session the peer initiated is heard when accepted)."""
        return self._heard

    def mark_unheard(self) -> None:
        """Forget that the peer has sent on this session: it must be confirmed again (by a
        decrypted message) before a :class:`Conversation` prefers it."""
        self._heard = False

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
        check_plaintext(plaintext)
        bundle = parse_bundle(their_bundle)
        if bundle.identity_key != their_identity:
            raise SessionError("prekey bundle is not signed by this contact's identity key")
        if not bundle.pre_keys:
            raise SessionError("prekey bundle has no one-time prekeys left")
        try:
            secret, ad, header = await store.agree_active(bundle)
            ratchet, msg = await Ratchet.encrypt_initial_message(
                *RATCHET_ARGS, secret, bundle.signed_pre_key, plaintext, ad
            )
        except REJECTED as exc:
            raise SessionError(f"X3DH with this bundle failed: {exc}") from None
        assert header.pre_key is not None  # require_pre_key=True
        pending = InitialWire(
            ik=header.identity_key,
            ek=header.ephemeral_key,
            spk=header.signed_pre_key,
            opk=header.pre_key,
            dh=msg.header.ratchet_pub,
            pn=0,
            n=0,
            ct=b"\0" * AEAD_OVERHEAD,
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
        parsed = parse_message(wire)
        if not isinstance(parsed, InitialWire):
            raise SessionError("not an initial message (no X3DH header)")
        return await cls.accept_parsed(store, their_identity, parsed)

    @classmethod
    async def accept_parsed(
        cls, store: PrekeyStore, their_identity: bytes, msg: InitialWire
    ) -> tuple[Session, bytes]:
        """:meth:`accept` for a message already parsed with
        :func:`~dhtchat.messaging.ratchet.parse_message`."""
        if msg.ik != their_identity:
            raise SessionError("initial message is from a different identity key")
        header = x3dh.Header(
            identity_key=msg.ik, ephemeral_key=msg.ek, signed_pre_key=msg.spk, pre_key=msg.opk
        )
        try:
            # the one-time prekey is not deleted yet: only after the ratchet message
            # authenticated (store.consume below)
            secret, ad, spk = await store.agree_passive(header)
            ratchet, plaintext = await Ratchet.decrypt_initial_message(
                *RATCHET_ARGS, secret, spk.priv, encrypted_message(msg), ad
            )
        except REJECTED as exc:
            raise SessionError(f"cannot accept initial message: {exc}") from None
        store.consume(msg.opk)
        return cls(ratchet, ad, their_identity, their_identity, msg.ek, None), plaintext

    async def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt the next message (with the X3DH header until the peer has replied)."""
        check_plaintext(plaintext)
        return self._wire(await self._ratchet.encrypt_message(plaintext, self._ad))

    async def decrypt(self, wire: bytes) -> bytes:
        """Decrypt a message of this session; on any failure the state is unchanged."""
        return await self.decrypt_parsed(parse_message(wire))

    async def decrypt_parsed(self, msg: RatchetWire | InitialWire) -> bytes:
        """:meth:`decrypt` for a message already parsed with
        :func:`~dhtchat.messaging.ratchet.parse_message`."""
        if isinstance(msg, InitialWire) and (
            self.initiated_by_me or msg.ek != self.base_key or msg.ik != self.their_identity
        ):
            raise SessionError("initial message belongs to another session")
        try:
            plaintext = await self._ratchet.decrypt_message(encrypted_message(msg), self._ad)
        except DuplicateMessageException:
            raise SessionError("replayed message (its key was already used)") from None
        except REJECTED as exc:
            raise SessionError(f"cannot decrypt: {exc}") from None
        self._pending = None
        self._heard = True
        return plaintext

    def _wire(self, msg: EncryptedMessage) -> bytes:
        h = msg.header
        if self._pending is None:
            out: RatchetWire | InitialWire = RatchetWire(
                h.ratchet_pub,
                h.previous_sending_chain_length,
                h.sending_chain_length,
                msg.ciphertext,
            )
        else:
            p = self._pending
            out = InitialWire(
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

    def to_dict(self) -> dict[str, Any]:
        """The session state as a JSON-ready dict (see :meth:`to_json`)."""
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
            "seq": self.seq,
        }

    def to_json(self) -> str:
        """Serialise the full session state (secret keys included: store encrypted)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Session:
        """Restore a session from :meth:`to_dict` (raises :class:`SessionError` if corrupt)."""
        try:
            if obj.get("v") != _STATE_VERSION:
                raise ValueError(f"unsupported session version {obj.get('v')!r}")
            ratchet = Ratchet.from_json(obj["ratchet"], *RATCHET_ARGS)
            p = obj["pending"]
            pending = None
            if p is not None:
                ik, ek, spk, opk = (bytes.fromhex(x) for x in p)
                pending = InitialWire(ik, ek, spk, opk, b"\0" * 32, 0, 0, b"\0" * AEAD_OVERHEAD)
            session = cls(
                ratchet,
                bytes.fromhex(obj["ad"]),
                bytes.fromhex(obj["their_identity"]),
                bytes.fromhex(obj["initiator_key"]),
                bytes.fromhex(obj["base_key"]),
                pending,
            )
            session._heard = bool(obj["heard"])
            session.seq = int(obj["seq"])
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
        return cls.from_dict(obj)


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
            session.mark_unheard()

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
        msg = parse_message(wire)
        if isinstance(msg, InitialWire):
            if msg.ik != self.their_identity:
                raise SessionError("initial message is from a different identity key")
            match = next(
                (s for s in self._sessions if not s.initiated_by_me and s.base_key == msg.ek), None
            )
            if match is None:
                session, plaintext = await Session.accept_parsed(
                    self._store, self.their_identity, msg
                )
                self._add(session)
            else:
                session = match
                plaintext = await session.decrypt_parsed(msg)
            # The peer has not heard us on this session yet, hence on no other session since it
            # started this one: other sessions must be confirmed again before being preferred.
            for other in self._sessions:
                if other is not session:
                    other.mark_unheard()
        else:
            first_error: SessionError | None = None
            ordered = [s for s in self._sessions if s is self._current]
            ordered += [s for s in self._sessions if s is not self._current]
            for session in ordered:
                try:
                    plaintext = await session.decrypt_parsed(msg)
                    break
                except SessionError as exc:
                    first_error = first_error or exc
            else:
                raise first_error or SessionError("no session with this contact")
        self._select()
        return plaintext

    def _add(self, session: Session) -> None:
        session.seq = self._next_seq
        self._next_seq += 1
        self._sessions.insert(0, session)

    def _select(self) -> None:
        heard = [s for s in self._sessions if s.heard]
        if heard:
            self._current = max(heard, key=lambda s: (s.initiator_key, s.seq))
        elif self._current is None and self._sessions:
            self._current = self._sessions[0]
        keep = [s for s in self._sessions if s is not self._current][:MAX_ARCHIVED]
        self._sessions = sorted(
            keep + ([self._current] if self._current else []), key=lambda s: -s.seq
        )

    def to_json(self) -> str:
        """Serialise all sessions of this conversation."""
        return json.dumps(
            {
                "v": _STATE_VERSION,
                "my_identity": self.my_identity.hex(),
                "their_identity": self.their_identity.hex(),
                "next_seq": self._next_seq,
                "current": None if self._current is None else self._current.seq,
                "sessions": [s.to_dict() for s in self._sessions],
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
            conv._sessions = [Session.from_dict(s) for s in obj["sessions"]]
            current = obj["current"]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SessionError(f"corrupt conversation state: {exc}") from None
        conv._current = next((s for s in conv._sessions if s.seq == current), None)
        return conv
