"""Contacts: sealed contact requests, per-pair rendezvous, private presence and signalling.

Theory of operation (design sec. 5):

* **Keys.** A user id is an Ed25519 key; its birationally equivalent X25519 key (RFC 7748,
  libsodium's ``ed25519_pk_to_curve25519``) lets anyone seal to it. Two contacts share
  ``pair_secret = BLAKE2b(X25519(a, B) || sorted(A, B))``, which nobody else can compute.
* **Contact requests** are sealed boxes (ephemeral X25519 + XChaCha20-Poly1305) stored in the
  recipient's public inbox ``record_key(CONTACT_REQUEST, recipient, "")``. The record is signed
  by a fresh one-time key, so storers do not learn who asks; inside, the sender's identity
  signs the request bound to that one-time key. A hashcash-style proof of work (Back 2002) over
  the sealed bytes makes request spam cost CPU; the recipient checks it before decrypting.
* **Rendezvous.** For every ordered pair (sender, recipient), purpose (presence, signal) and
  epoch, both contacts derive the same Ed25519 *channel key* from the pair secret; the channel
  key signs the DHT record, so its storage key ``record_key(type, channel_key, "")`` is
  computable only by the two contacts and rotates every epoch. A stranger who knows my id
  cannot derive any of these keys, and a storer sees an unlinkable key and signer
  (Jami publishes presence under the account id; Tox hides it with onion routing).
* **Private presence** and **signalling** values are AEAD-encrypted with a per-direction key
  from the pair secret, and carry an inner signature by the sender's identity key. A signalling
  message signs the DTLS fingerprint, the ICE credentials and a digest of the SDP (RFC 8122
  sec. 5: the fingerprint authenticates the DTLS certificate; binding it to the identity
  signature defeats a substituted fingerprint). Replays are refused by :class:`ReplayGuard`.

Randomness is injected (``random_bytes``); nothing here reads clocks or the OS.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Final, Literal

import msgspec
import nacl.bindings
import nacl.exceptions

from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id, verify_signature
from dhtchat.core.ids import blake2b_256
from dhtchat.core.pow import REQUEST_POW_BITS, pow_ok, solve_pow
from dhtchat.core.records import MAX_VALUE_BYTES, Record, RecordType, make_record, record_key

RandomBytes = Callable[[int], bytes]

EPOCH_SECONDS: Final = 3600
REQUEST_TTL: Final = 7 * 24 * 3600
DEFAULT_POW_BITS: Final = REQUEST_POW_BITS
MAX_NAME_CHARS: Final = 64
MAX_REQUEST_MESSAGE_CHARS: Final = 280
SIGNAL_MAX_AGE: Final = 120  # seconds an offer/answer stays acceptable (clock skew included)
MAX_SDP_BYTES: Final = 16384
MAX_BYE_REASON: Final = 200

_NONCE_BYTES: Final = 24
_PAIR_DOMAIN: Final = b"dhtchat/pair/v1"
_CHANNEL_DOMAIN: Final = b"dhtchat/channel/v1"
_AEAD_DOMAIN: Final = b"dhtchat/pair-aead/v1"
_REQUEST_DOMAIN: Final = b"dhtchat/contact-request/v1"
_PRESENCE_SIG_DOMAIN: Final = b"dhtchat/presence/v1"
_SIGNAL_SIG_DOMAIN: Final = b"dhtchat/signal/v1"

_encoder = msgspec.msgpack.Encoder()

Bytes16 = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Bytes64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_REQUEST_MESSAGE_CHARS)]
Short = Annotated[str, msgspec.Meta(max_length=256)]
Time = Annotated[int, msgspec.Meta(ge=0, le=2**44)]


class Purpose(bytes, Enum):
    """What a rendezvous channel carries."""

    PRESENCE = b"presence"
    SIGNAL = b"signal"
    PREKEYS = b"prekeys"
    MAILBOX = b"mailbox"


# ---------------------------------------------------------------------------- keys


def x25519_public(ed25519_public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 public key; raises on a key that is not a point."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError) as exc:
        raise RemoteProtocolError("not a valid Ed25519 public key") from exc


def x25519_private(identity: SigningIdentity) -> bytes:
    """The X25519 private key of an identity."""
    return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        identity.seed + identity.public_key
    )


def _x25519(private: bytes, public: bytes) -> bytes:
    try:
        shared = nacl.bindings.crypto_scalarmult(private, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError) as exc:
        raise RemoteProtocolError("X25519 with a low-order key") from exc
    if shared == bytes(32):
        raise RemoteProtocolError("X25519 with a low-order key")
    return shared


def epoch_of(now: float) -> int:
    """The rendezvous epoch containing UNIX time ``now``."""
    return int(now) // EPOCH_SECONDS


def _aead_seal(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes) -> bytes:
    return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, aad, nonce, key
    )


def _aead_open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < _NONCE_BYTES + 16:
        raise RemoteProtocolError("sealed value too short")
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[_NONCE_BYTES:], aad, sealed[:_NONCE_BYTES], key
        )
    except nacl.exceptions.CryptoError as exc:
        raise RemoteProtocolError("sealed value failed authentication") from exc


@dataclass(frozen=True)
class Pair:
    """The shared secret of two contacts and everything derived from it."""

    me: bytes
    them: bytes
    secret: bytes

    @classmethod
    def derive(cls, identity: SigningIdentity, their_public_key: bytes) -> Pair:
        """Compute the pair secret with a contact (either side gets the same secret)."""
        if their_public_key == identity.public_key:
            raise LocalProtocolError("a contact must be someone else")
        shared = _x25519(x25519_private(identity), x25519_public(their_public_key))
        low, high = sorted((identity.public_key, their_public_key))
        secret = blake2b_256(_PAIR_DOMAIN, shared, low, high)
        return cls(identity.public_key, their_public_key, secret)

    def channel_signer(self, purpose: Purpose, sender: bytes, epoch: int) -> SigningIdentity:
        """The one-epoch key that signs ``sender``'s records of ``purpose`` for this pair."""
        recipient = self.them if sender == self.me else self.me
        seed = blake2b_256(_CHANNEL_DOMAIN, self.secret, purpose.value, sender, recipient,
                           epoch.to_bytes(8, "big"))
        return SigningIdentity.from_seed(seed)

    def channel_key(self, purpose: Purpose, sender: bytes, epoch: int) -> bytes:
        """DHT key of ``sender``'s ``purpose`` channel to the other side in ``epoch``."""
        return self.slot_key(purpose, sender, epoch, b"")

    def slot_key(self, purpose: Purpose, sender: bytes, epoch: int, salt: bytes) -> bytes:
        """DHT key of one slot (``salt``) of a channel, e.g. mailbox slot ``i``."""
        signer = self.channel_signer(purpose, sender, epoch)
        return record_key(_RECORD_TYPES[purpose], signer.public_key, salt)

    def _aead_key(self, purpose: Purpose, sender: bytes) -> bytes:
        return blake2b_256(_AEAD_DOMAIN, self.secret, purpose.value, sender)

    def seal_record(
        self, purpose: Purpose, epoch: int, plaintext: bytes, *, seq: int, expires: int,
        random_bytes: RandomBytes, salt: bytes = b"",
    ) -> Record:
        """Encrypt ``plaintext`` from me to them and sign it with the channel key (in slot
        ``salt`` of the channel; the salt is authenticated too)."""
        signer = self.channel_signer(purpose, self.me, epoch)
        aad = _aad(purpose, self.me, self.them, epoch) + salt
        value = _aead_seal(self._aead_key(purpose, self.me), plaintext, aad,
                           random_bytes(_NONCE_BYTES))
        if len(value) > MAX_VALUE_BYTES:
            raise LocalProtocolError(
                f"{purpose.name.lower()} message is {len(value)} bytes sealed; "
                f"a record holds {MAX_VALUE_BYTES}"
            )
        return make_record(signer, _RECORD_TYPES[purpose], salt, value, seq=seq,
                           expires=expires)

    def open_record(self, purpose: Purpose, epoch: int, record: Record) -> bytes:
        """Decrypt a record the other side sealed to me on the ``epoch`` channel."""
        signer = self.channel_signer(purpose, self.them, epoch)
        if record.owner != signer.public_key or record.type != _RECORD_TYPES[purpose]:
            raise RemoteProtocolError("record is not from this contact's channel")
        aad = _aad(purpose, self.them, self.me, epoch) + record.salt
        return _aead_open(self._aead_key(purpose, self.them), record.value, aad)


_RECORD_TYPES: Final = {
    Purpose.PRESENCE: RecordType.PRESENCE,
    Purpose.SIGNAL: RecordType.SIGNAL,
    Purpose.PREKEYS: RecordType.PREKEYS,
    Purpose.MAILBOX: RecordType.MAILBOX,
}


def _aad(purpose: Purpose, sender: bytes, recipient: bytes, epoch: int) -> bytes:
    return purpose.value + sender + recipient + epoch.to_bytes(8, "big")


# ---------------------------------------------------------------------------- requests


class ContactRequest(msgspec.Struct, array_like=True, frozen=True):
    """The sealed content of a contact request (``kind="request"``) or acceptance."""

    kind: Literal["request", "accept"]
    sender: Bytes32
    recipient: Bytes32
    name: Name
    message: Text
    created: Time
    envelope_owner: Bytes32
    signature: Bytes64

    def signed_bytes(self) -> bytes:
        """Bytes covered by the sender's identity signature."""
        return _REQUEST_DOMAIN + _encoder.encode(
            (self.kind, self.sender, self.recipient, self.name, self.message, self.created,
             self.envelope_owner)
        )


_request_decoder = msgspec.msgpack.Decoder(ContactRequest)


def inbox_key(recipient: bytes) -> bytes:
    """DHT key of a user's public contact-request inbox."""
    return record_key(RecordType.CONTACT_REQUEST, recipient, b"")


def make_contact_request(
    identity: SigningIdentity,
    recipient: bytes,
    *,
    kind: Literal["request", "accept"] = "request",
    name: str,
    message: str,
    now: float,
    random_bytes: RandomBytes,
    pow_bits: int = DEFAULT_POW_BITS,
) -> Record:
    """A sealed contact request (or acceptance) for ``recipient``'s inbox, with its proof of
    work solved (about ``2**pow_bits`` hashes: run it off the event loop)."""
    if len(name) > MAX_NAME_CHARS or len(message) > MAX_REQUEST_MESSAGE_CHARS:
        raise LocalProtocolError(
            f"name is limited to {MAX_NAME_CHARS} characters and the message to "
            f"{MAX_REQUEST_MESSAGE_CHARS}"
        )
    envelope = SigningIdentity.from_seed(random_bytes(32))
    unsigned = ContactRequest(kind, identity.public_key, recipient, name, message, int(now),
                              envelope.public_key, bytes(64))
    body = msgspec.structs.replace(unsigned, signature=identity.sign(unsigned.signed_bytes()))
    ephemeral_private = blake2b_256(b"dhtchat/ephemeral/v1", random_bytes(32))
    ephemeral_public = nacl.bindings.crypto_scalarmult_base(ephemeral_private)
    recipient_x = x25519_public(recipient)
    key = blake2b_256(_REQUEST_DOMAIN, _x25519(ephemeral_private, recipient_x),
                      ephemeral_public, recipient_x)
    sealed = ephemeral_public + _aead_seal(key, _encoder.encode(body), recipient,
                                           random_bytes(_NONCE_BYTES))
    if 8 + len(sealed) > MAX_VALUE_BYTES:  # check before spending the proof of work
        raise LocalProtocolError(
            f"contact request is {8 + len(sealed)} bytes sealed; a record holds "
            f"{MAX_VALUE_BYTES} (shorten the name or message)")
    counter = solve_pow(recipient + envelope.public_key, sealed, pow_bits)
    return make_record(envelope, RecordType.CONTACT_REQUEST, b"",
                       counter.to_bytes(8, "big") + sealed, seq=0,
                       expires=int(now) + REQUEST_TTL, namespace=recipient)


def open_contact_request(
    identity: SigningIdentity, record: Record, now: float, pow_bits: int = DEFAULT_POW_BITS
) -> ContactRequest:
    """Check and decrypt a request from my inbox; raises :class:`RemoteProtocolError`.

    Order: cheap checks (type, inbox, proof of work) before any public-key operation.
    """
    if record.type != RecordType.CONTACT_REQUEST or record.namespace != identity.public_key:
        raise RemoteProtocolError("not a contact request for this identity")
    value = record.value
    if len(value) < 8 + 32 + _NONCE_BYTES + 16:
        raise RemoteProtocolError("contact request too short")
    counter, sealed = int.from_bytes(value[:8], "big"), value[8:]
    if not pow_ok(identity.public_key + record.owner, sealed, counter, pow_bits):
        raise RemoteProtocolError("contact request without enough proof of work")
    ephemeral_public, boxed = sealed[:32], sealed[32:]
    my_private = x25519_private(identity)
    my_x = nacl.bindings.crypto_scalarmult_base(my_private)
    key = blake2b_256(_REQUEST_DOMAIN, _x25519(my_private, ephemeral_public),
                      ephemeral_public, my_x)
    plaintext = _aead_open(key, boxed, identity.public_key)
    try:
        body = _request_decoder.decode(plaintext)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed contact request: {exc}") from exc
    if body.recipient != identity.public_key or body.envelope_owner != record.owner:
        raise RemoteProtocolError("contact request was sealed for another envelope")
    if body.sender == identity.public_key:
        raise RemoteProtocolError("contact request from myself")
    if body.created > now + 600:
        raise RemoteProtocolError("contact request dated in the future")
    if not verify_signature(body.sender, body.signed_bytes(), body.signature):
        raise RemoteProtocolError("contact request signature is not the sender's")
    return body


def request_id(record: Record) -> bytes:
    """What identifies one contact request: its one-time envelope key.

    The proof of work covers the recipient, this key and the sealed body, so a new request
    costs a new proof of work only with a new key; re-signing the same envelope with another
    ``seq`` or ``expires`` gives the same id (those fields are outside the proof of work).
    """
    return record.owner


class RecentIds:
    """A bounded set of recently seen ids: the least recently added is forgotten first."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, ident: object) -> bool:
        return ident in self._ids

    def add(self, ident: bytes) -> None:
        """Remember ``ident`` (refreshing it if known), forgetting the oldest over capacity."""
        self._ids[ident] = None
        self._ids.move_to_end(ident)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def clear(self) -> None:
        """Forget every id."""
        self._ids.clear()


# ---------------------------------------------------------------------------- presence


class Presence(msgspec.Struct, array_like=True, frozen=True):
    """What an online daemon tells one contact: I am online, in this session."""

    session: Bytes16
    published: Time
    relay_only: bool
    online: bool
    signature: Bytes64


def _presence_signed(sender: bytes, recipient: bytes, epoch: int, session: bytes,
                     published: int, relay_only: bool, online: bool) -> bytes:
    return _PRESENCE_SIG_DOMAIN + _encoder.encode(
        (sender, recipient, epoch, session, published, relay_only, online)
    )


_presence_decoder = msgspec.msgpack.Decoder(Presence)


def make_presence(identity: SigningIdentity, pair: Pair, epoch: int, session: bytes,
                  published: int, relay_only: bool, *, online: bool = True) -> bytes:
    """Serialized presence for ``pair``'s other side (encrypt with :meth:`Pair.seal_record`);
    ``online=False`` is the goodbye a stopping daemon publishes."""
    signature = identity.sign(_presence_signed(pair.me, pair.them, epoch, session, published,
                                               relay_only, online))
    return _encoder.encode(Presence(session, published, relay_only, online, signature))


def open_presence(pair: Pair, epoch: int, plaintext: bytes) -> Presence:
    """Decode and authenticate a contact's presence; raises :class:`RemoteProtocolError`."""
    try:
        presence = _presence_decoder.decode(plaintext)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed presence: {exc}") from exc
    signed = _presence_signed(pair.them, pair.me, epoch, presence.session, presence.published,
                              presence.relay_only, presence.online)
    if not verify_signature(pair.them, signed, presence.signature):
        raise RemoteProtocolError("presence signature is not the contact's")
    return presence


# ---------------------------------------------------------------------------- signalling


class Signal(msgspec.Struct, array_like=True, frozen=True):
    """An SDP offer or answer (or a hang-up) from one contact to the other."""

    kind: Literal["offer", "answer", "bye", "done"]
    session: Bytes16
    created_ms: Time
    fingerprint: Short
    ice_ufrag: Short
    ice_pwd: Short
    sdp_z: bytes
    signature: Bytes64


_signal_decoder = msgspec.msgpack.Decoder(Signal)

_FINGERPRINT_RE = re.compile(r"^a=fingerprint:sha-256 ([0-9A-Fa-f:]+)\s*$", re.MULTILINE)
_UFRAG_RE = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)
_PWD_RE = re.compile(r"^a=ice-pwd:(\S+)\s*$", re.MULTILINE)
_OTHER_FINGERPRINTS_RE = re.compile(r"^a=fingerprint:(?!sha-256 ).*\r?\n", re.MULTILINE)


@dataclass(frozen=True)
class SdpSecurity:
    """The security-relevant attributes of an SDP (one bundled transport)."""

    fingerprint: str
    ice_ufrag: str
    ice_pwd: str


def sdp_security(sdp: str) -> SdpSecurity:
    """Extract the sha-256 DTLS fingerprint and ICE credentials; all must be unique."""
    found = [regex.findall(sdp) for regex in (_FINGERPRINT_RE, _UFRAG_RE, _PWD_RE)]
    values = [set(items) for items in found]
    if any(len(v) != 1 for v in values):
        raise RemoteProtocolError(
            "SDP must carry exactly one sha-256 DTLS fingerprint and one set of ICE credentials"
        )
    fingerprint, ufrag, pwd = (v.pop() for v in values)
    return SdpSecurity(fingerprint.upper(), ufrag, pwd)


def _signal_signed(kind: str, sender: bytes, recipient: bytes, session: bytes, created_ms: int,
                   security: SdpSecurity, sdp_z: bytes) -> bytes:
    return _SIGNAL_SIG_DOMAIN + _encoder.encode(
        (kind, sender, recipient, session, created_ms, security.fingerprint,
         security.ice_ufrag, security.ice_pwd, blake2b_256(sdp_z))
    )


SignalKind = Literal["offer", "answer", "bye", "done"]


def make_signal(identity: SigningIdentity, recipient: bytes, kind: SignalKind, session: bytes,
                created_ms: int, sdp: str = "") -> bytes:
    """Serialize a signed offer/answer; only the sha-256 fingerprint of the SDP is kept (the
    others are redundant and would not fit a DHT record). For ``bye``, ``sdp`` is the reason."""
    if kind in ("bye", "done"):  # the SDP field carries the reason, in clear inside the seal
        security, sdp_z = SdpSecurity("", "", ""), sdp.encode("utf-8")[:MAX_BYE_REASON]
    else:
        sdp = _OTHER_FINGERPRINTS_RE.sub("", sdp)
        security = sdp_security(sdp)
        sdp_z = zlib.compress(sdp.encode("utf-8"), 9)
    signature = identity.sign(_signal_signed(kind, identity.public_key, recipient, session,
                                             created_ms, security, sdp_z))
    return _encoder.encode(Signal(kind, session, created_ms, security.fingerprint,
                                  security.ice_ufrag, security.ice_pwd, sdp_z, signature))


@dataclass(frozen=True)
class OpenedSignal:
    """A verified signalling message."""

    kind: SignalKind
    session: bytes
    created_ms: int
    sdp: str
    security: SdpSecurity


def open_signal(pair: Pair, plaintext: bytes) -> OpenedSignal:
    """Decode and verify a contact's signalling message.

    Raises :class:`RemoteProtocolError` when the identity signature fails, or when the SDP's
    DTLS fingerprint or ICE credentials differ from the signed ones (a substitution).
    """
    try:
        signal = _signal_decoder.decode(plaintext)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed signalling message: {exc}") from exc
    signed_security = SdpSecurity(signal.fingerprint, signal.ice_ufrag, signal.ice_pwd)
    signed = _signal_signed(signal.kind, pair.them, pair.me, signal.session, signal.created_ms,
                            signed_security, signal.sdp_z)
    if not verify_signature(pair.them, signed, signal.signature):
        raise RemoteProtocolError(
            f"{signal.kind} is not signed by {encode_user_id(pair.them)[:12]}…"
        )
    sdp = signal.sdp_z[:MAX_BYE_REASON].decode("utf-8", errors="replace")
    if signal.kind in ("offer", "answer"):
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(signal.sdp_z, MAX_SDP_BYTES)
        except zlib.error as exc:
            raise RemoteProtocolError("SDP does not decompress") from exc
        if inflater.unconsumed_tail:
            raise RemoteProtocolError("SDP is too large")
        sdp = raw.decode("utf-8", errors="replace")
        actual = sdp_security(sdp)
        if actual.fingerprint != signed_security.fingerprint:
            raise RemoteProtocolError(
                "the DTLS fingerprint in the SDP does not match the one the contact signed"
            )
        if actual != signed_security:
            raise RemoteProtocolError(
                "the ICE credentials in the SDP do not match the ones the contact signed"
            )
    return OpenedSignal(signal.kind, signal.session, signal.created_ms, sdp, signed_security)


class ReplayGuard:
    """Refuses a signalling message seen before or too old (bounded memory)."""

    def __init__(self, max_age: float = SIGNAL_MAX_AGE, capacity: int = 4096) -> None:
        self.max_age = max_age
        self.capacity = capacity
        self._seen: OrderedDict[tuple[bytes, str, bytes], float] = OrderedDict()

    def check(self, sender: bytes, kind: str, session: bytes, created_ms: int,
              now: float) -> None:
        """Record the message; raises :class:`RemoteProtocolError` for a replay or stale one."""
        age = now - created_ms / 1000
        if age > self.max_age or age < -self.max_age:
            raise RemoteProtocolError(
                f"{kind} is {age:.0f} s old; accepted within ±{self.max_age:.0f} s"
            )
        key = (sender, kind, session)
        if key in self._seen:
            raise RemoteProtocolError(f"replayed {kind}")
        self._seen[key] = now
        while self._seen and (len(self._seen) > self.capacity
                              or next(iter(self._seen.values())) < now - 2 * self.max_age):
            self._seen.popitem(last=False)
