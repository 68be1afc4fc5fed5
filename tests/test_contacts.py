"""Contact requests, pair rendezvous keys, presence and signalling (core, no I/O)."""

from __future__ import annotations

import contextlib
import random
import zlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.contacts import (
    Pair,
    Purpose,
    ReplayGuard,
    inbox_key,
    make_contact_request,
    make_presence,
    make_signal,
    open_contact_request,
    open_presence,
    open_signal,
)
from dhtchat.core.errors import InvalidRecord, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import Record, RecordType, make_record, validate_record

NOW = 1_800_000_000.0
SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=sctp-port:5000\r\na=candidate:1 1 udp 2130706431 10.1.0.2 40000 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
    "a=fingerprint:sha-256 62:74:FF:42:E2:9D:F0:EA:07:08:BD:51:E3:70:1D:D5:74:13:24:92:8E:01:"
    "04:5B:F6:33:F3:56:3A:C0:8D:1B\r\n"
    "a=fingerprint:sha-384 F8:6D:24:03:24:6A:B1:B5:36:F4:1D:FA:7B:3B:37:55:FD:E2:F2:6A:D0:46:"
    "0C:A8:3A:78:A5:43:A0:65:9E:B7:F9:68:DE:A3:ED:BE:B0:AB:1A:E5:FC:49:36:47:C2:37\r\n"
    "a=setup:actpass\r\n"
)


def ident(n: int) -> SigningIdentity:
    return SigningIdentity.from_seed(bytes([n]) * 32)


def rng_bytes(seed: int = 1) -> random.Random:
    return random.Random(seed)


ALICE, BOB, EVE = ident(1), ident(2), ident(3)


def test_pair_secret_is_symmetric_and_private() -> None:
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    assert ab.secret == ba.secret
    assert Pair.derive(EVE, BOB.public_key).secret != ab.secret
    for purpose in Purpose:
        key = ab.channel_key(purpose, ALICE.public_key, 7)
        assert key == ba.channel_key(purpose, ALICE.public_key, 7)
        assert key != ab.channel_key(purpose, BOB.public_key, 7)  # one channel per direction
        assert key != ab.channel_key(purpose, ALICE.public_key, 8)  # rotates every epoch


def test_contact_request_round_trip_and_privacy() -> None:
    r = rng_bytes()
    record = make_contact_request(ALICE, BOB.public_key, name="Alice", message="hi, it's me",
                                  now=NOW, random_bytes=r.randbytes)
    assert record.key == inbox_key(BOB.public_key)
    validate_record(record, record.key, NOW)  # storers accept it as an open-write record
    assert record.owner != ALICE.public_key  # one-time envelope key: storers do not see Alice
    assert ALICE.public_key not in record.value and b"Alice" not in record.value
    body = open_contact_request(BOB, record, NOW)
    assert (body.sender, body.name, body.message, body.kind) == (
        ALICE.public_key, "Alice", "hi, it's me", "request")
    with pytest.raises(RemoteProtocolError):
        open_contact_request(EVE, record, NOW)  # sealed to Bob only


def test_contact_request_needs_proof_of_work() -> None:
    r = rng_bytes(2)
    cheap = make_contact_request(ALICE, BOB.public_key, name="", message="", now=NOW,
                                 random_bytes=r.randbytes, pow_bits=0)
    # With 0 bits the counter is 0; demanding 16 bits refuses it (2**-16 chance it passes).
    with pytest.raises(RemoteProtocolError, match="proof of work"):
        open_contact_request(BOB, cheap, NOW, pow_bits=16)
    # Storers refuse it too, before checking the signature: spam cannot fill an inbox cheaply.
    with pytest.raises(InvalidRecord, match="proof of work"):
        validate_record(cheap, cheap.key, NOW)


def _sample_request() -> Record:
    return make_contact_request(ALICE, BOB.public_key, name="A", message="m", now=NOW,
                                random_bytes=random.Random(3).randbytes, pow_bits=0)


_REQUEST_SIZE = len(_sample_request().value)


@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=8, max_value=_REQUEST_SIZE - 1), flip=st.integers(1, 255))
def test_tampered_request_is_refused(position: int, flip: int) -> None:
    """Any change to the sealed part is refused (bytes 0-7 are the proof-of-work counter,
    which only has to satisfy the difficulty, here zero). Every drawn position lies inside
    the record, so every example tampers and asserts the refusal."""
    record = _sample_request()
    open_contact_request(BOB, record, NOW, pow_bits=0)  # the untampered request opens
    value = bytearray(record.value)
    value[position] ^= flip
    tampered = msgspec.structs.replace(record, value=bytes(value))
    with pytest.raises(RemoteProtocolError):
        open_contact_request(BOB, tampered, NOW, pow_bits=0)


def test_presence_round_trip_and_wrong_direction() -> None:
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    r = rng_bytes(4)
    plaintext = make_presence(ALICE, ab, 5, bytes(16), int(NOW), False)
    record = ab.seal_record(Purpose.PRESENCE, 5, plaintext, seq=1, expires=int(NOW) + 600,
                            random_bytes=r.randbytes)
    assert record.type == RecordType.PRESENCE
    assert record.key == ba.channel_key(Purpose.PRESENCE, ALICE.public_key, 5)
    validate_record(record, record.key, NOW)
    presence = open_presence(ba, 5, ba.open_record(Purpose.PRESENCE, 5, record))
    assert presence.published == int(NOW)
    with pytest.raises(RemoteProtocolError):
        ab.open_record(Purpose.PRESENCE, 5, record)  # Alice's own record is not "from Bob"
    with pytest.raises(RemoteProtocolError):
        ba.open_record(Purpose.PRESENCE, 6, record)  # wrong epoch


def _sealed_offer(sdp: str = SDP) -> tuple[Pair, Record]:
    ab = Pair.derive(ALICE, BOB.public_key)
    plaintext = make_signal(ALICE, BOB.public_key, "offer", bytes(range(16)), int(NOW * 1000),
                            sdp)
    record = ab.seal_record(Purpose.SIGNAL, 9, plaintext, seq=1, expires=int(NOW) + 300,
                            random_bytes=rng_bytes(5).randbytes)
    return Pair.derive(BOB, ALICE.public_key), record


def test_signal_round_trip_keeps_only_sha256() -> None:
    ba, record = _sealed_offer()
    opened = open_signal(ba, ba.open_record(Purpose.SIGNAL, 9, record))
    assert opened.kind == "offer"
    assert "sha-384" not in opened.sdp and "a=fingerprint:sha-256 62:74" in opened.sdp
    assert opened.security.ice_ufrag == "abcd"


def test_substituted_fingerprint_is_refused() -> None:
    """Someone who could re-encrypt (i.e. holds the pair key) still cannot swap the DTLS
    fingerprint: it is signed by Alice's identity key."""
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    genuine = msgspec.msgpack.decode(
        make_signal(ALICE, BOB.public_key, "offer", bytes(16), int(NOW * 1000), SDP))
    evil_sdp = SDP.replace("62:74:FF", "00:00:00")
    genuine[6] = zlib.compress(evil_sdp.encode(), 9)
    with pytest.raises(RemoteProtocolError, match="not signed"):
        open_signal(ba, msgspec.msgpack.encode(genuine))
    # Signed by Eve over the substituted fingerprint: not Alice's signature.
    forged = make_signal(EVE, BOB.public_key, "offer", bytes(16), int(NOW * 1000), evil_sdp)
    with pytest.raises(RemoteProtocolError, match="not signed"):
        open_signal(ba, forged)
    assert ab.secret == ba.secret


def test_replay_guard() -> None:
    guard = ReplayGuard(max_age=120)
    guard.check(b"a", "offer", b"s1", int(NOW * 1000), NOW)
    with pytest.raises(RemoteProtocolError, match="replayed"):
        guard.check(b"a", "offer", b"s1", int(NOW * 1000), NOW + 1)
    with pytest.raises(RemoteProtocolError, match="old"):
        guard.check(b"a", "offer", b"s2", int((NOW - 500) * 1000), NOW)
    guard.check(b"a", "answer", b"s1", int(NOW * 1000), NOW)


@settings(max_examples=400, deadline=None)
@given(value=st.binary(max_size=1000), plaintext=st.binary(max_size=600))
def test_fuzzed_inputs_raise_only_remote_errors(value: bytes, plaintext: bytes) -> None:
    """Whatever a peer stores or seals, opening it fails only with RemoteProtocolError."""
    ab = Pair.derive(ALICE, BOB.public_key)
    ba = Pair.derive(BOB, ALICE.public_key)
    owner = ab.channel_signer(Purpose.SIGNAL, ALICE.public_key, 1).public_key
    inbox = Record(RecordType.CONTACT_REQUEST, EVE.public_key, BOB.public_key, b"", 0,
                   int(NOW) + 60, value, bytes(64))
    channel = Record(RecordType.SIGNAL, owner, b"", b"", 0, int(NOW) + 60, value, bytes(64))
    attempts = (
        lambda: open_contact_request(BOB, inbox, NOW, pow_bits=0),
        lambda: ba.open_record(Purpose.SIGNAL, 1, channel),
        lambda: open_signal(ba, plaintext),
        lambda: open_presence(ba, 1, plaintext),
    )
    for attempt in attempts:
        with contextlib.suppress(RemoteProtocolError):
            attempt()


@settings(max_examples=60, deadline=None)
@given(junk=st.binary(min_size=1, max_size=40))
def test_sealed_signal_with_garbage_inside_is_refused(junk: bytes) -> None:
    ab, ba = Pair.derive(ALICE, BOB.public_key), Pair.derive(BOB, ALICE.public_key)
    record = ab.seal_record(Purpose.SIGNAL, 3, junk, seq=1, expires=int(NOW) + 60,
                            random_bytes=rng_bytes(9).randbytes)
    with pytest.raises(RemoteProtocolError):
        open_signal(ba, ba.open_record(Purpose.SIGNAL, 3, record))


def test_solved_request_cannot_be_re_signed_by_other_owners() -> None:
    """The proof of work covers the envelope key: one solution fills one inbox slot, not 256."""
    record = make_contact_request(ALICE, BOB.public_key, name="A", message="m", now=NOW,
                                  random_bytes=rng_bytes(11).randbytes)
    validate_record(record, record.key, NOW)
    clone = make_record(ident(9), RecordType.CONTACT_REQUEST, b"", record.value, seq=0,
                        expires=record.expires, namespace=BOB.public_key)
    assert clone.key == record.key
    with pytest.raises(InvalidRecord, match="proof of work"):
        validate_record(clone, clone.key, NOW)
