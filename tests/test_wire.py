"""Wire codec: round trips, size caps, padding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import (
    MAX_SALT_BYTES,
    MAX_VALUE_BYTES,
    Record,
    RecordType,
    make_record,
)
from dhtchat.core.wire import (
    MAGIC,
    MAX_DATAGRAM_BYTES,
    Envelope,
    Error,
    FindNode,
    GetValues,
    Listen,
    Listening,
    NodeInfo,
    Nodes,
    Ping,
    Pong,
    Push,
    Store,
    Stored,
    Values,
    decode,
    encode_envelope,
    encode_request,
    pack,
)

SIGNER = SigningIdentity.from_seed(b"s" * 32)
b32 = st.binary(min_size=32, max_size=32)
ips = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
node_infos = st.builds(NodeInfo, b32, ips, st.integers(0, 65535))
records = st.builds(
    lambda t, salt, seq, exp, value: make_record(SIGNER, t, salt, value, seq=seq, expires=exp),
    st.integers(7, 0xFFFF), st.binary(max_size=MAX_SALT_BYTES), st.integers(0, 2**63 - 1),
    st.integers(0, 2**40), st.binary(max_size=MAX_VALUE_BYTES),
)
pads = st.binary(max_size=64)
bodies = st.one_of(
    st.builds(Ping, pads),
    st.builds(FindNode, b32, pads),
    st.builds(GetValues, b32, st.sampled_from([b"", b"o" * 32]), st.integers(0, 2**31), pads),
    st.builds(Store, records),
    st.builds(Listen, b32, pads),
    st.builds(Pong, ips, st.integers(0, 65535)),
    st.builds(Nodes, st.lists(node_infos, max_size=8)),
    st.builds(Values, st.lists(records, max_size=1), st.integers(0, 2**31), st.booleans(),
              st.lists(node_infos, max_size=2)),
    st.builds(Stored, st.integers(0, 255)),
    st.builds(Listening, st.integers(0, 2**31)),
    st.builds(Error, st.integers(0, 255), st.text(max_size=50)),
    st.builds(Push, b32, records),
)


@settings(max_examples=400, deadline=None)
@given(tid=st.binary(min_size=8, max_size=8), sender=b32, flags=st.integers(0, 255),
       token=st.binary(max_size=16), body=bodies,
       signature=st.sampled_from([b"", b"\x07" * 64]))
def test_envelope_round_trip(tid: bytes, sender: bytes, flags: int, token: bytes,
                             body: object, signature: bytes) -> None:
    envelope = Envelope(tid, sender, flags, token, body)  # type: ignore[arg-type]
    envelope_bytes = encode_envelope(envelope)
    data = pack(envelope_bytes, signature)
    if len(data) > MAX_DATAGRAM_BYTES:
        with pytest.raises(RemoteProtocolError):
            decode(data)
        return
    decoded = decode(data)
    assert decoded.envelope == envelope
    assert decoded.envelope_bytes == envelope_bytes
    assert decoded.signature == signature


def test_largest_store_fits_in_a_datagram() -> None:
    # the largest record: an open-write type (a foreign namespace) with the longest salt
    record = make_record(SIGNER, RecordType.CONTACT_REQUEST, b"s" * MAX_SALT_BYTES,
                         b"v" * MAX_VALUE_BYTES, seq=2**63 - 1, expires=2**40,
                         namespace=b"n" * 32)
    data = encode_request(b"t" * 8, b"p" * 32, 255, b"k" * 16, Store(record))
    assert len(data) <= MAX_DATAGRAM_BYTES
    assert decode(data).envelope.body == Store(record)


def test_oversized_datagram_refused_before_decoding() -> None:
    with pytest.raises(RemoteProtocolError, match="size cap"):
        decode(MAGIC + b"\x00" * MAX_DATAGRAM_BYTES)


@pytest.mark.parametrize("data", [
    b"", b"dc", b"xx\x01\x92\xc4\x00\xc4\x00", MAGIC, MAGIC + b"\xc1", MAGIC + b"\x92\xc4\x00",
    MAGIC + b"\x92\xc4\x01\x90\xc4\x00",  # envelope is an empty array
    MAGIC + b"\x92\xc4\x00\xc4\x05hello",  # 5-byte signature
])
def test_malformed_datagrams_raise_remote_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data)


def test_out_of_range_fields_are_rejected() -> None:
    good = make_record(SIGNER, 1, b"", b"v", seq=1, expires=10)
    bad_records = [
        Record(1, b"o" * 31, b"", b"", 1, 10, b"v", b"s" * 64),  # short owner
        Record(1, b"o" * 32, b"n" * 33, b"", 1, 10, b"v", b"s" * 64),  # long namespace
        Record(1, b"o" * 32, b"", b"x" * (MAX_SALT_BYTES + 1), 1, 10, b"v", b"s" * 64),
        Record(1, b"o" * 32, b"", b"", 1, 10, b"v" * (MAX_VALUE_BYTES + 1), b"s" * 64),
        Record(70000, b"o" * 32, b"", b"", 1, 10, b"v", b"s" * 64),
        Record(1, b"o" * 32, b"", b"", -1, 10, b"v", b"s" * 64),
    ]
    assert decode(encode_request(b"t" * 8, b"p" * 32, 0, b"", Store(good)))
    for record in bad_records:
        data = pack(encode_envelope(Envelope(b"t" * 8, b"p" * 32, 0, b"", Store(record))))
        with pytest.raises(RemoteProtocolError):
            decode(data)


@given(st.integers(0, 2000))
def test_requests_pad_to_the_requested_size(pad_to: int) -> None:
    data = encode_request(b"t" * 8, b"p" * 32, 0, b"", FindNode(b"x" * 32), pad_to)
    natural = len(encode_request(b"t" * 8, b"p" * 32, 0, b"", FindNode(b"x" * 32)))
    wanted = max(natural, min(pad_to, MAX_DATAGRAM_BYTES))
    assert wanted - 2 <= len(data) <= wanted
    assert decode(data).envelope.body.target == b"x" * 32  # type: ignore[union-attr]
