"""Invalid UTF-8 inside a msgpack string is bad input like any other: msgspec raises
UnicodeDecodeError (not DecodeError) for it, which must still become RemoteProtocolError."""

from __future__ import annotations

import msgspec
import pytest

from dhtchat.core.contacts import Pair, open_presence, open_signal
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.wire import MAGIC, Envelope, Error, decode

_encoder = msgspec.msgpack.Encoder()


def _with_bad_utf8(encoded: bytes, text: bytes) -> bytes:
    marker = bytes([0xA0 | len(text)]) + text  # msgpack fixstr
    assert encoded.count(marker) == 1
    return encoded.replace(marker, bytes([0xA0 | len(text)]) + b"\x80" * len(text))


def test_datagram_with_invalid_utf8_error_text() -> None:
    envelope = _encoder.encode(Envelope(bytes(8), bytes(32), 0, b"", Error(1, "ZZZZ")))
    datagram = MAGIC + _encoder.encode((_with_bad_utf8(envelope, b"ZZZZ"), b""))
    with pytest.raises(RemoteProtocolError):
        decode(datagram)


def test_signal_and_presence_with_invalid_utf8() -> None:
    alice = SigningIdentity.from_seed(bytes([1]) * 32)
    bob = SigningIdentity.from_seed(bytes([2]) * 32)
    pair = Pair.derive(bob, alice.public_key)
    bad = b"\x98\xa3\x00\x00\x80"  # found by hypothesis: a str field holding 0x80
    with pytest.raises(RemoteProtocolError):
        open_signal(pair, bad)
    with pytest.raises(RemoteProtocolError):
        open_presence(pair, 1, bad)
