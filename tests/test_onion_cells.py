"""Onion cells: the parser, the handshake and the layers, with property tests."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.onion import (
    MAX_REPLY_BYTES,
    Extend,
    Reply,
    Request,
    Truncated,
    frame,
    parse_backward,
    parse_forward,
)
from dhtchat.core.onion_cells import (
    BODY_BYTES,
    CELL_BYTES,
    MAX_HOPS,
    SEALED_BYTES,
    Create,
    Created,
    Destroy,
    Relay,
    ReplayWindow,
    client_handshake,
    decode_cell,
    encode_cell,
    forward_payload_bytes,
    onion_public_key,
    onion_secret_key,
    open_sealed,
    peel_forward,
    relay_handshake,
    seal_backward,
    unwrap_backward,
    wrap_backward,
    wrap_forward,
    x25519_public,
)

KINDS = (Create, Created, Relay, Destroy)
keys = st.binary(min_size=32, max_size=32)
seqs = st.integers(min_value=0, max_value=2**63)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=CELL_BYTES + 10))
def test_the_cell_parser_only_raises_remote_errors(data: bytes) -> None:
    try:
        cell = decode_cell(data)
    except RemoteProtocolError:
        return
    assert len(data) == CELL_BYTES and encode_cell(cell) == data  # pragma: no cover


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(KINDS), st.binary(min_size=8, max_size=8),
       st.binary(min_size=8, max_size=8), st.binary(min_size=BODY_BYTES, max_size=BODY_BYTES),
       st.integers(min_value=0, max_value=CELL_BYTES - 1), st.integers(min_value=0, max_value=255))
def test_cells_round_trip_and_mutations_never_crash(
        kind: type[Create], circ_id: bytes, seq: bytes, body: bytes, at: int, byte: int) -> None:
    data = encode_cell(kind(circ_id, seq, body))
    assert len(data) == CELL_BYTES
    assert decode_cell(data) == kind(circ_id, seq, body)
    mutated = data[:at] + bytes([byte]) + data[at + 1:]
    with contextlib.suppress(RemoteProtocolError):
        decode_cell(mutated)
    with pytest.raises(RemoteProtocolError):
        decode_cell(data[:at])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=BODY_BYTES))
def test_the_command_parsers_only_raise_remote_errors(payload: bytes) -> None:
    for parse in (parse_forward, parse_backward):
        with contextlib.suppress(RemoteProtocolError):
            parse(payload)


def test_commands_round_trip() -> None:
    extend = Extend(b"i" * 32, b"\x0a\x00\x00\x01", 4000, b"o" * 32, b"c" * 32)
    assert parse_forward(frame(extend) + bytes(40)) == extend
    assert parse_forward(frame(Request(7, b"get"))) == Request(7, b"get")
    assert parse_backward(frame(Truncated(2))) == Truncated(2)
    with pytest.raises(RemoteProtocolError):
        parse_forward(frame(Reply(1, b"")))  # a backward message is no forward command
    with pytest.raises(RemoteProtocolError):
        parse_forward(frame(Request(1, b"x"))[:-1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(keys, seqs), min_size=1, max_size=MAX_HOPS), st.data())
def test_random_forward_layer_sequences_peel_in_order(
        hops: list[tuple[bytes, int]], data: st.DataObject) -> None:
    room = forward_payload_bytes(len(hops))
    payload = data.draw(st.binary(max_size=room))
    body = wrap_forward(hops, payload)
    assert len(body) == BODY_BYTES
    for i, (key, seq) in enumerate(hops):
        peeled = peel_forward(key, seq, body)
        assert peeled is not None, f"hop {i} could not open its layer"
        next_seq, body = peeled
        assert len(body) == BODY_BYTES
        if i + 1 < len(hops):
            assert next_seq == hops[i + 1][1]
    assert body[: len(payload)] == payload
    # a hop's layer only opens with its own key and seq, and any flipped byte kills it
    first = wrap_forward(hops, payload)
    key, seq = hops[0]
    assert peel_forward(key, seq + 1, first) is None
    at = data.draw(st.integers(min_value=0, max_value=BODY_BYTES - 1))
    assert peel_forward(key, seq, first[:at] + bytes([first[at] ^ 1]) + first[at + 1:]) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(keys, seqs, seqs), min_size=1, max_size=MAX_HOPS), st.data())
def test_random_backward_layer_sequences_open_at_the_originating_depth(
        hops: list[tuple[bytes, int, int]], data: st.DataObject) -> None:
    origin = data.draw(st.integers(min_value=0, max_value=len(hops) - 1))
    payload = data.draw(st.binary(max_size=SEALED_BYTES - 16))
    key, origin_seq, _ = hops[origin]
    body = seal_backward(key, origin_seq, payload, random.Random(1).randbytes(BODY_BYTES))
    seq = origin_seq
    for hop_key, _, out_seq in reversed(hops[:origin]):  # each hop nearer the client
        body = wrap_backward(hop_key, out_seq, seq, body)
        seq = out_seq
    # the client peels: try the seal at each depth, else strip that hop's layer
    for depth, (hop_key, _, _) in enumerate(hops):
        opened = open_sealed(hop_key, seq, body)
        if opened is not None:
            assert depth == origin
            assert opened[: len(payload)] == payload
            return
        assert depth < origin
        seq, body = unwrap_backward(hop_key, seq, body)
    raise AssertionError("the message never opened")  # pragma: no cover


def test_a_tampered_backward_cell_does_not_open() -> None:
    key, other = b"k" * 32, b"m" * 32
    body = wrap_backward(other, 5, 9, seal_backward(key, 9, b"reply", bytes(BODY_BYTES)))
    seq, inner = unwrap_backward(other, 5, body)
    assert (seq, open_sealed(key, 9, inner)[:5]) == (9, b"reply")  # type: ignore[index]
    flipped = body[:100] + bytes([body[100] ^ 0x80]) + body[101:]
    seq, inner = unwrap_backward(other, 5, flipped)
    assert open_sealed(key, seq, inner) is None
    assert len(frame(Reply(2**32 - 1, bytes(MAX_REPLY_BYTES)))) <= SEALED_BYTES - 16


def test_the_handshake_agrees_and_authenticates_the_relay() -> None:
    node = SigningIdentity.from_seed(bytes(range(32)))
    secret = onion_secret_key(node.seed)
    onion_key = onion_public_key(node.public_key)
    assert x25519_public(secret) == onion_key  # a client derives the key from the node key
    client_secret, node_id = b"\x05" * 32, b"n" * 32
    relay_keys, reply = relay_handshake(secret, node_id, x25519_public(client_secret), b"\x09" * 32)
    assert client_handshake(client_secret, node_id, onion_key, reply) == relay_keys
    assert relay_keys.forward != relay_keys.backward
    with pytest.raises(RemoteProtocolError):  # someone without the onion secret
        client_handshake(client_secret, node_id, x25519_public(b"\x07" * 32), reply)
    with pytest.raises(RemoteProtocolError):  # the relay claimed another node id
        client_handshake(client_secret, b"m" * 32, onion_key, reply)
    with pytest.raises(RemoteProtocolError):  # a low-order point from a client
        relay_handshake(secret, node_id, bytes(32), b"\x09" * 32)
    with pytest.raises(RemoteProtocolError):
        onion_public_key(b"\xff" * 32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_the_replay_window_accepts_each_seq_once_within_its_width(values: list[int]) -> None:
    window = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for value in values:
        expected = value not in seen and (top < 0 or value > top - ReplayWindow.WIDTH)
        assert window.check(value) == expected, (value, top)
        if expected:
            window.record(value)
            seen.add(value)
            top = max(top, value)


def test_the_replay_window_survives_huge_jumps() -> None:
    window = ReplayWindow()
    window.record(5)
    window.record(2**64 - 1)  # must not build a 2**64-bit integer
    assert not window.check(2**64 - 1) and not window.check(5) and window.check(2**64 - 2)
