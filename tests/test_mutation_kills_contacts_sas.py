"""Tests that kill the mutants of contacts.py and sas.py that survived the mutation run.

Issue 11 item 17 (docs/benchmarks.md "contacts.py and sas.py survivors"): each test pins one
security decision (a bound, a key or domain input, a signature, a replay rule) that the
existing tests left free; the docstrings name the mutants they kill.
"""

from __future__ import annotations

import hashlib
import zlib

import msgspec
import nacl.bindings
import pytest

from dhtchat.core.contacts import (
    ContactRequest,
    Pair,
    Purpose,
    RecentIds,
    ReplayGuard,
    SdpSecurity,
    epoch_of,
    make_contact_request,
    make_presence,
    make_signal,
    open_contact_request,
    open_presence,
    open_signal,
    sdp_security,
)
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.pow import solve_pow
from dhtchat.core.records import MAX_VALUE_BYTES, RecordType, make_record, record_key
from dhtchat.core.sas import MAX_NONCE_BYTES, check_commitment
from tests.support import deterministic_bytes

NOW = 1_800_000_000.0
ALICE, BOB, EVE = (SigningIdentity.from_seed(bytes([n]) * 32) for n in (1, 2, 3))
FINGERPRINT = ("62:74:FF:42:E2:9D:F0:EA:07:08:BD:51:E3:70:1D:D5:74:13:24:92:8E:01:04:5B:F6:33:"
               "F3:56:3A:C0:8D:1B")
SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
    f"a=fingerprint:sha-256 {FINGERPRINT}\r\n"
    "a=fingerprint:sha-384 F8:6D:24:03:24:6A:B1:B5:36:F4:1D:FA:7B:3B:37:55:FD:E2:F2:6A:D0:46:"
    "0C:A8:3A:78:A5:43:A0:65:9E:B7:F9:68:DE:A3:ED:BE:B0:AB:1A:E5:FC:49:36:47:C2:37\r\n"
    "a=setup:actpass\r\n"
)


def _h(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"".join(parts), digest_size=32).digest()




# ---------------------------------------------------------------------------- sas.py


def test_a_revealed_nonce_of_a_forbidden_length_never_opens_a_commitment() -> None:
    """check_commitment checks the nonce length itself, even for a commitment that a
    peer computed over an over-long nonce by hand (kills check_nonce(nonce) -> (None))."""
    for nonce in (b"x", b"x" * 15, b"x" * (MAX_NONCE_BYTES + 1)):
        committed = _h(b"dhtchat/call-sas-commit/v1\x00", nonce)
        with pytest.raises(RemoteProtocolError):
            check_commitment(committed, nonce)
    good = b"n" * 16
    check_commitment(_h(b"dhtchat/call-sas-commit/v1\x00", good), good)  # the formula


# ---------------------------------------------------------------------------- keys


def test_epochs_are_whole_hours() -> None:
    """Kills ``//`` -> ``/`` and ``int(None)`` in epoch_of (a float epoch has no bytes)."""
    assert epoch_of(3599.9) == 0
    assert epoch_of(3600) == 1
    assert isinstance(epoch_of(NOW + 0.5), int)
    assert epoch_of(NOW) == int(NOW) // 3600


def test_channel_key_aead_key_and_aad_are_the_known_derivations() -> None:
    """Pins every input of the channel signer seed (domain, pair secret, purpose, sender,
    recipient, 8-byte epoch) and of the AEAD key and AAD: the record's owner must be the
    key of that seed and its value must open with the key and AAD computed here. Kills the
    dropped-argument, swapped-recipient and 9-byte-epoch mutants of channel_signer,
    _aead_key and _aad."""
    ab = Pair.derive(ALICE, BOB.public_key)
    epoch, salt, plaintext = 7, b"slot-1", b"hello"
    record = ab.seal_record(Purpose.PRESENCE, epoch, plaintext, seq=1, expires=int(NOW) + 60,
                            random_bytes=deterministic_bytes(1), salt=salt)
    seed = _h(b"dhtchat/channel/v1", ab.secret, b"presence", ALICE.public_key,
              BOB.public_key, epoch.to_bytes(8, "big"))
    signer = SigningIdentity.from_seed(seed)
    assert record.owner == signer.public_key
    assert ab.channel_key(Purpose.PRESENCE, ALICE.public_key, epoch) == record_key(
        RecordType.PRESENCE, signer.public_key, b"")
    key = _h(b"dhtchat/pair-aead/v1", ab.secret, b"presence", ALICE.public_key)
    aad = b"presence" + ALICE.public_key + BOB.public_key + epoch.to_bytes(8, "big") + salt
    opened = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        record.value[24:], aad, record.value[:24], key)
    assert opened == plaintext
    # Bob's direction has its own seed (sender first, then recipient).
    back = _h(b"dhtchat/channel/v1", ab.secret, b"presence", BOB.public_key,
              ALICE.public_key, epoch.to_bytes(8, "big"))
    assert ab.channel_signer(Purpose.PRESENCE, BOB.public_key, epoch).public_key == \
        SigningIdentity.from_seed(back).public_key


def test_an_empty_message_and_a_full_record_still_seal_and_open() -> None:
    """The length bounds are exact: a sealed value of nonce + tag only (40 bytes) opens and
    a value of exactly MAX_VALUE_BYTES seals (kills ``<`` -> ``<=`` and 16 -> 17 in
    _aead_open, ``>`` -> ``>=`` in seal_record); one byte more is refused."""
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    empty = ab.seal_record(Purpose.SIGNAL, 3, b"", seq=1, expires=int(NOW),
                           random_bytes=deterministic_bytes(2))
    assert len(empty.value) == 40
    assert ba.open_record(Purpose.SIGNAL, 3, empty) == b""
    full = ab.seal_record(Purpose.SIGNAL, 3, bytes(MAX_VALUE_BYTES - 40), seq=1,
                          expires=int(NOW), random_bytes=deterministic_bytes(3))
    assert len(full.value) == MAX_VALUE_BYTES
    assert ba.open_record(Purpose.SIGNAL, 3, full) == bytes(MAX_VALUE_BYTES - 40)
    with pytest.raises(LocalProtocolError):
        ab.seal_record(Purpose.SIGNAL, 3, bytes(MAX_VALUE_BYTES - 39), seq=1,
                       expires=int(NOW), random_bytes=deterministic_bytes(3))


def test_a_genuine_ciphertext_re_signed_by_another_key_is_refused() -> None:
    """A storer who copies a contact's sealed value into a record signed by its own key (same
    type, salt) must not get it accepted: the owner alone decides (kills ``or`` -> ``and``
    in open_record)."""
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    genuine = ab.seal_record(Purpose.PRESENCE, 5, b"online", seq=1, expires=int(NOW),
                             random_bytes=deterministic_bytes(4))
    copied = make_record(EVE, RecordType.PRESENCE, genuine.salt, genuine.value, seq=2,
                         expires=int(NOW))
    assert ba.open_record(Purpose.PRESENCE, 5, genuine) == b"online"
    with pytest.raises(RemoteProtocolError, match="channel"):
        ba.open_record(Purpose.PRESENCE, 5, copied)


# ---------------------------------------------------------------------------- requests


def test_the_request_signature_covers_every_field() -> None:
    """signed_bytes must change with each field (kills ``encode(None)``: a signature over a
    constant would let anyone reuse one signature of Alice's for any request)."""
    base = ContactRequest("request", ALICE.public_key, BOB.public_key, "Alice", "hi", 1,
                          EVE.public_key, bytes(64))
    variants = [
        msgspec.structs.replace(base, kind="accept"),
        msgspec.structs.replace(base, sender=EVE.public_key),
        msgspec.structs.replace(base, recipient=EVE.public_key),
        msgspec.structs.replace(base, name="Mallory"),
        msgspec.structs.replace(base, message="bye"),
        msgspec.structs.replace(base, created=2),
        msgspec.structs.replace(base, envelope_owner=BOB.public_key),
    ]
    signed = {v.signed_bytes() for v in [base, *variants]}
    assert len(signed) == len(variants) + 1
    assert base.signed_bytes().startswith(b"dhtchat/contact-request/v1")
    assert msgspec.structs.replace(base, signature=b"\x01" * 64).signed_bytes() == \
        base.signed_bytes()


def test_request_name_and_message_limits_are_exact_and_independent() -> None:
    """64 name characters and 280 message characters are allowed; one more of either alone
    is refused (kills ``or`` -> ``and`` and ``>`` -> ``>=`` in make_contact_request)."""
    request = make_contact_request(ALICE, BOB.public_key, name="n" * 64, message="m" * 280,
                                   now=NOW, random_bytes=deterministic_bytes(5), pow_bits=1)
    body = open_contact_request(BOB, request, NOW, pow_bits=1)
    assert (len(body.name), len(body.message)) == (64, 280)
    for name, message in (("n" * 65, ""), ("", "m" * 281)):
        with pytest.raises(LocalProtocolError):
            make_contact_request(ALICE, BOB.public_key, name=name, message=message, now=NOW,
                                 random_bytes=deterministic_bytes(6), pow_bits=1)


def test_a_request_of_exactly_a_full_record_is_made() -> None:
    """The size check before the proof of work is exact: a request whose value is exactly
    MAX_VALUE_BYTES is made, one byte more is refused (kills 8 -> 9 and ``>`` -> ``>=``)."""
    name = "n" * 64
    probe = make_contact_request(ALICE, BOB.public_key, name=name, message="", now=NOW,
                                 random_bytes=deterministic_bytes(7), pow_bits=1)
    # A message of k UTF-8 bytes (256 <= k < 65536) adds k bytes and 2 more of its msgpack
    # str16 header to the empty message's; 4-byte characters fill most of it.
    spare = MAX_VALUE_BYTES - len(probe.value) - 2
    four, one = divmod(spare, 4)
    message = "\U0001F600" * four + "m" * one
    assert len(message.encode()) == spare and spare >= 256 and len(message) <= 280
    exact = make_contact_request(ALICE, BOB.public_key, name=name, message=message, now=NOW,
                                 random_bytes=deterministic_bytes(7), pow_bits=1)
    assert len(exact.value) == MAX_VALUE_BYTES
    assert open_contact_request(BOB, exact, NOW, pow_bits=1).message == message
    with pytest.raises(LocalProtocolError, match="bytes sealed"):
        make_contact_request(ALICE, BOB.public_key, name=name, message=message + "m",
                             now=NOW, random_bytes=deterministic_bytes(7), pow_bits=1)


def test_every_request_has_a_fresh_secret_ephemeral_key() -> None:
    """The sealing key must come from the injected randomness: a constant ephemeral key
    (derivable from the code) would let anyone open every request (kills dropping
    ``random_bytes(32)`` from the ephemeral key)."""
    constant = nacl.bindings.crypto_scalarmult_base(_h(b"dhtchat/ephemeral/v1"))
    ephemerals = set()
    for seed in (8, 9):
        record = make_contact_request(ALICE, BOB.public_key, name="A", message="", now=NOW,
                                      random_bytes=deterministic_bytes(seed), pow_bits=1)
        ephemerals.add(record.value[8:40])
    assert len(ephemerals) == 2 and constant not in ephemerals


def test_a_request_in_another_namespace_is_refused_even_with_its_proof_of_work() -> None:
    """A request made for Bob but re-signed by its envelope key into Carol's namespace (so it
    is stored in another inbox) is not a request for Bob (kills ``or`` -> ``and`` in the
    type/namespace check: the proof of work and the seal would both pass)."""
    draws = deterministic_bytes(10)
    envelope_seed = deterministic_bytes(10)(32)  # drawn first by make_contact_request
    genuine = make_contact_request(ALICE, BOB.public_key, name="A", message="", now=NOW,
                                   random_bytes=draws, pow_bits=4)
    envelope = SigningIdentity.from_seed(envelope_seed)
    assert envelope.public_key == genuine.owner
    moved = make_record(envelope, RecordType.CONTACT_REQUEST, b"", genuine.value, seq=0,
                        expires=genuine.expires, namespace=EVE.public_key)
    assert open_contact_request(BOB, genuine, NOW, pow_bits=4).sender == ALICE.public_key
    with pytest.raises(RemoteProtocolError, match="not a contact request for this identity"):
        open_contact_request(BOB, moved, NOW, pow_bits=4)


def test_a_short_request_is_refused_before_any_public_key_operation() -> None:
    """Values shorter than counter + ephemeral key + nonce + tag (80 bytes) are refused by the
    cheap length check, with their proof of work paid, before X25519 would read a short
    key (kills the lowered bounds 8 - 32, 32 - 24 and 24 - 16)."""
    envelope = SigningIdentity.from_seed(b"\x07" * 32)
    for length in (8, 20, 39, 40, 47, 48, 79):
        sealed = bytes(range(length - 8))
        counter = solve_pow(BOB.public_key + envelope.public_key, sealed, 4)
        record = make_record(envelope, RecordType.CONTACT_REQUEST, b"",
                             counter.to_bytes(8, "big") + sealed, seq=0,
                             expires=int(NOW) + 60, namespace=BOB.public_key)
        with pytest.raises(RemoteProtocolError, match="contact request too short"):
            open_contact_request(BOB, record, NOW, pow_bits=4)


def test_recent_ids_remember_the_newest_and_forget_the_oldest_at_capacity() -> None:
    """Kills the RecentIds mutants: inverted membership, ``>`` -> ``>=`` in the bound,
    popping the newest, the default capacity 4096 and the broken constructors."""
    ids = RecentIds(capacity=2)
    ids.add(b"a")
    ids.add(b"b")
    assert len(ids) == 2 and b"a" in ids and b"b" in ids and b"c" not in ids
    ids.add(b"a")  # refreshed: b is now the oldest
    ids.add(b"c")
    assert b"c" in ids and b"a" in ids and b"b" not in ids and len(ids) == 2
    ids.clear()
    assert len(ids) == 0 and b"a" not in ids
    default = RecentIds()
    for n in range(4097):
        default.add(n.to_bytes(2, "big"))
    assert len(default) == 4096
    assert (0).to_bytes(2, "big") not in default and (4096).to_bytes(2, "big") in default


# ---------------------------------------------------------------------------- presence


def test_presence_signature_binds_epoch_direction_and_fields() -> None:
    """The presence signature covers the sender, recipient, epoch and every field (kills
    ``encode(None)`` in _presence_signed); ``online`` defaults to True (make_presence)."""
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    plaintext = make_presence(ALICE, ab, 7, bytes(16), 1000, False)
    presence = open_presence(ba, 7, plaintext)
    assert presence.online is True and presence.published == 1000
    with pytest.raises(RemoteProtocolError, match="signature"):
        open_presence(ba, 8, plaintext)  # replayed into the next epoch
    with pytest.raises(RemoteProtocolError, match="signature"):
        open_presence(ab, 7, plaintext)  # reflected back to Alice as Bob's
    fields = msgspec.msgpack.decode(plaintext)
    for index, value in ((0, b"\x01" * 16), (1, 999), (2, True), (3, False)):
        changed = list(fields)
        changed[index] = value
        with pytest.raises(RemoteProtocolError, match="signature"):
            open_presence(ba, 7, msgspec.msgpack.encode(changed))


# ---------------------------------------------------------------------------- signalling


def _signed_signal(identity: SigningIdentity, recipient: bytes, kind: str, session: bytes,
                   created_ms: int, security: SdpSecurity, sdp_z: bytes) -> bytes:
    """A signal with an arbitrary ``sdp_z``, signed by the documented format."""
    encoder = msgspec.msgpack.Encoder()
    signed = b"dhtchat/signal/v1" + encoder.encode(
        (kind, identity.public_key, recipient, session, created_ms, security.fingerprint,
         security.ice_ufrag, security.ice_pwd, _h(sdp_z)))
    return encoder.encode((kind, session, created_ms, security.fingerprint,
                           security.ice_ufrag, security.ice_pwd, sdp_z,
                           identity.sign(signed)))


def test_an_answer_is_decompressed_and_checked_like_an_offer() -> None:
    """Kills ``"answer"`` mutated out of the kinds whose SDP is inflated and compared with
    the signed fingerprint, and the dropped session / created_ms of OpenedSignal (the
    replay guard keys on them)."""
    ba = Pair.derive(BOB, ALICE.public_key)
    session = b"\x05" * 16
    for kind in ("offer", "answer"):
        opened = open_signal(ba, make_signal(ALICE, BOB.public_key, kind, session, 1234, SDP))
        assert opened.kind == kind and opened.session == session and opened.created_ms == 1234
        assert opened.security == SdpSecurity(FINGERPRINT, "abcd", "0123456789abcdefghijkl")
        assert "a=fingerprint:sha-256" in opened.sdp
        # the other fingerprints are removed whole, their lines with them
        assert "sha-384" not in opened.sdp and "XX" not in opened.sdp
        assert "\r\na=setup:actpass\r\n" in opened.sdp
    evil = zlib.compress(SDP.replace("62:74:FF", "00:00:00").encode(), 9)
    security = sdp_security(SDP)
    forged = _signed_signal(ALICE, BOB.public_key, "answer", session, 1234, security, evil)
    with pytest.raises(RemoteProtocolError, match="DTLS fingerprint"):
        open_signal(ba, forged)


def test_an_sdp_that_inflates_past_the_limit_is_refused() -> None:
    """A signed offer whose SDP decompresses to more than MAX_SDP_BYTES is refused (kills
    dropping the max_length of decompress: a zip bomb would be inflated whole)."""
    ba = Pair.derive(BOB, ALICE.public_key)
    padding = "a=x-padding:" + "p" * 100 + "\r\n"
    big = SDP + padding * 200  # about 23 kB, compresses to well under a record
    offer = make_signal(ALICE, BOB.public_key, "offer", bytes(16), 1, big)
    with pytest.raises(RemoteProtocolError, match="too large"):
        open_signal(ba, offer)


def test_an_sdp_with_invalid_utf8_is_decoded_with_replacement() -> None:
    """Bytes that are not UTF-8 inside a signed SDP must not escape as UnicodeDecodeError or
    LookupError (kills the mutated ``errors="replace"`` of the SDP decode)."""
    ba = Pair.derive(BOB, ALICE.public_key)
    raw = SDP.replace("s=-", "s=\udcff", 1).encode("utf-8", "surrogateescape")
    sdp_z = zlib.compress(raw, 9)
    signal = _signed_signal(ALICE, BOB.public_key, "offer", bytes(16), 1, sdp_security(SDP),
                            sdp_z)
    opened = open_signal(ba, signal)
    assert "s=\ufffd" in opened.sdp


def test_bye_and_done_carry_a_reason_and_no_transport() -> None:
    """A hang-up signs an empty transport and carries its (clipped) reason (kills the
    mutants of the bye/done branch of make_signal and of the reason decode)."""
    ba = Pair.derive(BOB, ALICE.public_key)
    for kind in ("bye", "done"):
        opened = open_signal(ba, make_signal(ALICE, BOB.public_key, kind, bytes(16), 1,
                                             "busy"))
        assert opened.kind == kind and opened.sdp == "busy"
        assert opened.security == SdpSecurity("", "", "")
        assert open_signal(ba, make_signal(ALICE, BOB.public_key, kind, bytes(16), 2)).sdp == ""
    long_reason = open_signal(ba, make_signal(ALICE, BOB.public_key, "bye", bytes(16), 3,
                                              "r" * 500))
    assert long_reason.sdp == "r" * 200


def test_sdp_fingerprints_are_signed_in_upper_case() -> None:
    """Both sides normalise the fingerprint to upper case before signing (kills
    ``upper`` -> ``lower``: a peer on the other normalisation would be refused)."""
    assert sdp_security(SDP.replace(FINGERPRINT, FINGERPRINT.lower())).fingerprint == \
        FINGERPRINT


def test_replay_guard_remembers_a_message_for_its_whole_acceptance_window() -> None:
    """A message dated max_age in the future is acceptable until max_age after its date, so
    its entry must outlive 2 * max_age exactly (kills ``<`` -> ``<=`` in the pruning)."""
    guard = ReplayGuard(max_age=120)
    created_ms = 1_120_000
    guard.check(b"s", "offer", b"k", created_ms, 1000.0)  # 120 s ahead: accepted
    guard.check(b"s", "offer", b"other", 1_240_000, 1240.0)  # prunes what is older than 240 s
    with pytest.raises(RemoteProtocolError, match="replayed"):
        guard.check(b"s", "offer", b"k", created_ms, 1240.0)  # exactly 120 s old: in window


def test_replay_guard_default_capacity_forgets_the_oldest_after_4096() -> None:
    """Kills the default capacity 4096 -> 4097 of ReplayGuard."""
    guard = ReplayGuard(max_age=120)
    for n in range(4097):
        guard.check(b"s", "offer", n.to_bytes(2, "big"), 1_000_000, 1000.0)
    guard.check(b"s", "offer", (0).to_bytes(2, "big"), 1_000_000, 1000.0)  # forgotten
    with pytest.raises(RemoteProtocolError, match="replayed"):
        guard.check(b"s", "offer", (4096).to_bytes(2, "big"), 1_000_000, 1000.0)
