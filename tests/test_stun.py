"""STUN Binding on the DHT port (RFC 5389): codec, interoperability with aioice, fuzzing,
amplification bound, and a real UDP node answering while it keeps serving the DHT."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aioice import stun as aioice_stun
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.stun import (
    answer_binding_request,
    binding_request,
    looks_like_stun,
    parse_binding_response,
)
from dhtchat.core.wire import MAGIC
from dhtchat.net.stun import first_stun_responder
from dhtchat.net.udp import UdpDhtNode

TID = bytes(range(12))


@pytest.mark.parametrize("address", [("203.0.113.7", 40000), ("2001:db8::1", 1),
                                     ("10.1.0.2", 65535)])
def test_round_trip(address: tuple[str, int]) -> None:
    response = answer_binding_request(binding_request(TID), address)
    assert response is not None
    assert parse_binding_response(response, TID) == address
    with pytest.raises(RemoteProtocolError):
        parse_binding_response(response, bytes(12))  # another transaction


def test_aioice_understands_our_answer_and_we_answer_aioice() -> None:
    """The client ICE really uses (aioice) parses our response and we answer its request."""
    request = aioice_stun.Message(message_method=aioice_stun.Method.BINDING,
                                  message_class=aioice_stun.Class.REQUEST)
    request.attributes["SOFTWARE"] = "aioice"  # comprehension-optional: still answered
    response = answer_binding_request(bytes(request), ("198.51.100.9", 3478))
    assert response is not None
    parsed = aioice_stun.parse_message(response)
    assert parsed.message_class == aioice_stun.Class.RESPONSE
    assert parsed.transaction_id == request.transaction_id
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("198.51.100.9", 3478)


def test_only_plain_binding_requests_are_answered() -> None:
    assert answer_binding_request(MAGIC + bytes(40), ("1.2.3.4", 5)) is None  # a DHT datagram
    assert not looks_like_stun(MAGIC + bytes(40))
    indication = bytearray(binding_request(TID))
    indication[1] = 0x11  # Binding indication
    assert answer_binding_request(bytes(indication), ("1.2.3.4", 5)) is None
    with_username = aioice_stun.Message(message_method=aioice_stun.Method.BINDING,
                                        message_class=aioice_stun.Class.REQUEST)
    with_username.attributes["USERNAME"] = "a:b"  # comprehension-required (an ICE check)
    assert answer_binding_request(bytes(with_username), ("1.2.3.4", 5)) is None


@settings(max_examples=3000, deadline=None)
@given(data=st.binary(max_size=600))
def test_fuzzed_datagrams_never_raise(data: bytes) -> None:
    response = answer_binding_request(data, ("192.0.2.1", 9))
    if response is not None:
        assert len(response) <= 44
    try:  # the client side: an address or a RemoteProtocolError, nothing else
        host, port = parse_binding_response(data, TID)
        assert isinstance(host, str) and 0 <= port <= 65535
    except RemoteProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(tail=st.binary(max_size=64))
def test_mutated_requests_never_raise(tail: bytes) -> None:
    request = bytearray(binding_request(TID) + tail)
    request[2:4] = len(tail).to_bytes(2, "big")
    answer_binding_request(bytes(request), ("192.0.2.1", 9))


def test_amplification_is_bounded() -> None:
    """A 20-byte request gets at most 32 bytes (IPv4) or 44 (IPv6): 1.6x / 2.2x, and the
    driver rate-limits answers per source IP (see test_real_node_answers_and_rate_limits)."""
    request = binding_request(TID)
    v4 = answer_binding_request(request, ("192.0.2.1", 9))
    v6 = answer_binding_request(request, ("2001:db8::1", 9))
    assert v4 is not None and v6 is not None
    assert (len(request), len(v4), len(v6)) == (20, 32, 44)


def test_real_node_answers_and_rate_limits() -> None:
    async def scenario() -> tuple[object, object, int, int, list[bytes]]:
        a = await UdpDhtNode.create("127.0.0.1", 0, seed=1)
        b = await UdpDhtNode.create("127.0.0.1", 0, seed=2)
        try:
            found = await first_stun_responder([("127.0.0.1", 9), a.address], timeout=1.0)
            # A flood of 200 requests from one socket: answers stop at the bucket's burst.
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            for i in range(200):
                sock.sendto(binding_request(i.to_bytes(12, "big")), a.address)
            await asyncio.sleep(0.3)
            answers = 0
            while True:
                try:
                    sock.recv(100)
                except BlockingIOError:
                    break
                answers += 1
            sock.close()
            # The DHT still works on the same port.
            await b.bootstrap([a.address])
            contacts = [c.node_id for c in b.core.table.contacts()]
            return a.address, found, answers, a.stun_answered, contacts
        finally:
            await a.close()
            await b.close()

    node_address, found, answers, counted, contacts = asyncio.run(scenario())
    assert found is not None
    server, mapped = found  # type: ignore[misc]
    assert server == node_address  # the live node, not the dead address listed first
    assert mapped[0] == "127.0.0.1" and mapped[1] > 0
    assert 1 <= answers <= 25
    assert counted >= answers
    assert contacts
