"""Our X3DH identity and prekeys, and the wire format of the prekey bundle we publish.

Theory of operation
-------------------
Marlinspike & Perrin, *The X3DH Key Agreement Protocol*, rev. 1, 2016
(https://signal.org/docs/specifications/x3dh/), run by Syndace's ``x3dh`` package. The identity
key is the person's Ed25519 key: x3dh is handed the 32-byte identity *seed*
(``IdentityKeyPairSeed``, ``IdentityKeyFormat.ED_25519``), so the ``ik`` in a bundle is
byte-for-byte the dhtchat user's public key and the signed prekey signature verifies with it
(XEdDSA, spec sec. 2.4 and 3.2; Curve25519 forms by the birational map). Hash SHA-256, info
``"dhtchat/x3dh/v1"``; public keys are encoded as ``0x05 || X25519`` and ``0xED || Ed25519``
(``Encode(PK)``, sec. 2.5).

:class:`PrekeyStore` publishes what sec. 3.2 calls the prekey bundle: the signed prekey is
rotated every :data:`SPK_ROTATION_SECONDS` (the previous one is kept until the next rotation,
for messages in flight) and the one-time prekeys are topped up to :data:`PREKEY_TARGET`. The
agreement itself is :meth:`PrekeyStore.agree_active` (Alice, sec. 3.3) and
:meth:`PrekeyStore.agree_passive` (Bob, sec. 3.4), the latter *without* deleting the one-time
prekey: the session layer calls :meth:`PrekeyStore.consume` only after the first ratchet
message authenticated, so a forged copy of an initial message cannot burn the prekey the
genuine one needs (replay, sec. 4.2). Time is passed in; x3dh's own wall-clock rotation is
disabled.

Wire format (msgspec msgpack array, all lengths bounded before any allocation)::

    bundle   = [1, ik(32), spk(32), spk_sig(64), [opk(32), ...<= 16]]        (~550 B with 12)
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Final

import msgspec
import x3dh
import xeddsa
from x3dh.signed_pre_key_pair import SignedPreKeyPair

from dhtchat.messaging.ratchet import Bytes32, SessionError

__all__ = [
    "BUNDLE_PREKEYS",
    "MAX_BUNDLE_PREKEYS",
    "PREKEY_TARGET",
    "SPK_ROTATION_SECONDS",
    "PrekeyStore",
    "parse_bundle",
]

MAX_BUNDLE_PREKEYS: Final = 16
BUNDLE_PREKEYS: Final = 12  # default one-time prekeys per published bundle
PREKEY_TARGET: Final = 100  # one-time prekeys kept in stock
SPK_ROTATION_SECONDS: Final = 7 * 24 * 3600  # signed prekey lifetime (the old one is kept 1 more)
X3DH_INFO: Final = b"dhtchat/x3dh/v1"
_NEVER: Final = 100 * 365 * 24 * 3600  # disables x3dh's wall-clock spk rotation
_STATE_VERSION: Final = 1


# --- wire format ----------------------------------------------------------------------------

Bytes64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class _BundleWire(msgspec.Struct, array_like=True, frozen=True, tag=1):
    ik: Bytes32
    spk: Bytes32
    spk_sig: Bytes64
    opks: Annotated[list[Bytes32], msgspec.Meta(max_length=MAX_BUNDLE_PREKEYS)]


_encoder = msgspec.msgpack.Encoder()
_bundle_decoder = msgspec.msgpack.Decoder(_BundleWire)


def parse_bundle(data: bytes) -> x3dh.Bundle:
    """Decode a published prekey bundle, checking every size (not the signature: see
    :meth:`~dhtchat.messaging.session.Session.initiate`)."""
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


def _lib_bytes(data: bytes) -> str:
    """The libraries' JSON encoding of bytes (one code point per byte)."""
    return "".join(map(chr, data))


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

    async def agree_active(self, bundle: x3dh.Bundle) -> tuple[bytes, bytes, x3dh.Header]:
        """X3DH as the initiator (spec sec. 3.3) against a parsed ``bundle``: the shared
        secret ``SK``, the associated data ``AD`` and the header to send. A one-time prekey
        is required. Raises the libraries' errors for a bad bundle."""
        return await self._state.get_shared_secret_active(bundle)

    async def agree_passive(
        self, header: x3dh.Header
    ) -> tuple[bytes, bytes, SignedPreKeyPair]:
        """X3DH as the responder (spec sec. 3.4) for an initial message's ``header``: ``SK``,
        ``AD`` and our signed prekey it used. The one-time prekey is *not* deleted (unlike
        ``x3dh.State``'s variant): call :meth:`consume` once the message authenticated."""
        return await x3dh.BaseState.get_shared_secret_passive(self._state, header, b"", True)

    def consume(self, pre_key: bytes) -> None:
        """Delete the one-time prekey an accepted session used (replenishing the stock when
        it runs out, so a bundle is never published empty)."""
        self._changed()
        self._state.delete_pre_key(pre_key)
        if self._state.get_num_visible_pre_keys() == 0:  # never publish an empty bundle
            self._state.generate_pre_keys(PREKEY_TARGET)
