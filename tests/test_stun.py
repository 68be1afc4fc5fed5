"""STUN Binding on the DHT port (RFC 5389): codec, interoperability with aioice, fuzzing,
amplification bound, and a real UDP node answering while it keeps serving the DHT."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from aioice import Candidate
from aioice import stun as aioice_stun
from aioice.ice import StunProtocol, server_reflexive_candidate
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.stun import (
    PROBE_BYTES,
    StunResponder,
    answer_binding_request,
    binding_request,
    looks_like_stun,
    parse_binding_answer,
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


def test_response_sizes() -> None:
    """The codec's answer to a bare 20-byte request is 32 bytes (IPv4) or 44 (IPv6): 1.6x /
    2.2x, which is why StunResponder sends it only to an IP that has shown it receives."""
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
            await asyncio.sleep(0.3)  # a window: every answer that will come has come
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


SECRET = b"s" * 32
NOW = 1_700_000_000.0


def _aioice_request() -> bytes:
    return bytes(aioice_stun.Message(message_method=aioice_stun.Method.BINDING,
                                     message_class=aioice_stun.Class.REQUEST))


@settings(max_examples=2000, deadline=None)
@given(pad_to=st.integers(0, 600), token=st.sampled_from([b"", b"t" * 16]),
       ipv6=st.booleans(), junk=st.binary(max_size=80))
def test_unverified_sources_never_get_more_bytes_than_they_sent(
        pad_to: int, token: bytes, ipv6: bool, junk: bytes) -> None:
    responder = StunResponder(SECRET, rate_per_ip=1e9, burst_per_ip=1e9,
                              rate_per_subnet=1e9, burst_per_subnet=1e9)
    source = ("2001:db8::7", 5) if ipv6 else ("192.0.2.7", 5)
    for data in (binding_request(TID, pad_to=min(pad_to, 540), receives_token=token), junk,
                 _aioice_request()):
        response = responder.answer(data, source, NOW)
        assert response is None or len(response) <= len(data)
    assert not responder.receives(source[0], NOW)


def test_a_bare_request_is_answered_only_after_the_ip_showed_it_receives() -> None:
    responder = StunResponder(SECRET)
    ip = "198.51.100.20"
    assert responder.answer(_aioice_request(), (ip, 4000), NOW) is None
    probe = binding_request(TID, pad_to=PROBE_BYTES)
    assert len(probe) == PROBE_BYTES
    answer = responder.answer(probe, (ip, 5000), NOW)
    assert answer is not None and len(answer) <= len(probe)
    mapped, token = parse_binding_answer(answer, TID)
    assert mapped == (ip, 5000) and len(token) == 16
    # a forged or foreign token proves nothing
    assert responder.answer(binding_request(TID, pad_to=PROBE_BYTES, receives_token=b"x" * 16),
                            (ip, 5000), NOW) is not None
    other = "198.51.100.21"
    responder.answer(binding_request(TID, pad_to=PROBE_BYTES, receives_token=token),
                     (other, 5000), NOW)
    assert not responder.receives(ip, NOW) and not responder.receives(other, NOW)
    # a token two epochs old is refused; the previous epoch's is accepted
    late = NOW + 2 * responder.epoch
    responder.answer(binding_request(TID, pad_to=PROBE_BYTES, receives_token=token),
                     (ip, 5000), late)
    assert not responder.receives(ip, late)
    responder.answer(binding_request(TID, pad_to=PROBE_BYTES, receives_token=token),
                     (ip, 5001), NOW + responder.epoch)
    assert responder.receives(ip, NOW + responder.epoch)
    # now aioice's bare request from another port of that IP is answered (ICE gathering)
    bare = _aioice_request()
    reply = responder.answer(bare, (ip, 4000), NOW + responder.epoch)
    assert reply is not None
    parsed = aioice_stun.parse_message(reply)
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == (ip, 4000)
    # ... until the memory of it runs out
    assert responder.answer(bare, (ip, 4000), NOW + responder.epoch
                            + responder.remember_for + 1) is None


def test_the_receiving_ips_table_is_bounded() -> None:
    responder = StunResponder(SECRET, max_remembered=100)
    for i in range(1000):
        responder.mark_receives(f"10.0.{i // 250}.{i % 250}", NOW + i)
    assert not responder.receives("10.0.0.0", NOW + 1000)
    assert responder.receives("10.0.3.249", NOW + 1000)
    assert sum(responder.receives(f"10.0.{i // 250}.{i % 250}", NOW + 1000)
               for i in range(1000)) == 100


def test_answers_are_capped_per_subnet() -> None:
    """250 sources of one /24 flooding padded requests get the /24's burst (80) and no more;
    a source in another /24 is still answered."""
    responder = StunResponder(SECRET)
    probe = binding_request(TID, pad_to=PROBE_BYTES)
    answered = sent_bytes = 0
    for round_ in range(4):
        for i in range(250):
            response = responder.answer(probe, (f"203.0.113.{i + 1}", 7000 + round_), NOW)
            if response is not None:
                answered += 1
                sent_bytes += len(response)
    assert answered == 80
    assert sent_bytes <= 80 * len(probe)
    assert responder.stats["stun_rate_limited"] == 1000 - 80
    assert responder.answer(probe, ("198.51.100.1", 7000), NOW) is not None
    # one IP alone is held to its own burst (20)
    single = StunResponder(SECRET)
    assert sum(single.answer(probe, ("192.0.2.1", 1), NOW) is not None
               for _ in range(100)) == 20


def _recv_until(sock: socket.socket, transaction_id: bytes, deadline: float) -> list[bytes]:
    """Every datagram received until the answer to ``transaction_id`` (or the deadline)."""
    got: list[bytes] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(2048)
        except TimeoutError:
            break
        got.append(data)
        if data[8:20] == transaction_id:
            break
    return got


def test_a_fresh_node_does_not_amplify_a_bare_request() -> None:
    """A spoofed-looking bare 20-byte request (aioice's shape) gets no answer from a node that
    never saw its IP receive; a padded request sent after it on the same socket is answered
    (and arrives after where the bare one's answer would have), no larger than itself."""
    async def scenario() -> list[bytes]:
        node = await UdpDhtNode.create("127.0.0.1", 0, seed=3)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.sendto(_aioice_request(), node.address)
            probe_id = bytes(range(1, 13))
            sock.sendto(binding_request(probe_id, pad_to=PROBE_BYTES), node.address)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _recv_until, sock, probe_id,
                                              time.monotonic() + 5.0)
        finally:
            sock.close()
            await node.close()

    got = asyncio.run(scenario())
    assert len(got) == 1, [len(g) for g in got]
    assert got[0][8:20] == bytes(range(1, 13)) and len(got[0]) <= PROBE_BYTES


class _NoIce:
    """The receiver aioice's StunProtocol reports to (a Connection in aioice)."""

    def protocol_lost(self, protocol: Any) -> None:
        pass

    def data_received(self, data: bytes, component: int) -> None:
        pass


def test_aioice_gathers_a_reflexive_candidate_from_our_node_after_our_probe() -> None:
    """The daemon's flow: first_stun_responder picks (and verifies us at) the node, then
    aioice's own server-reflexive request, from another port of our IP, is answered."""
    async def scenario() -> tuple[object, str, int]:
        node = await UdpDhtNode.create("127.0.0.1", 0, seed=4)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(_NoIce()), local_addr=("127.0.0.1", 0))  # type: ignore[arg-type]
        try:
            found = await first_stun_responder([node.address], timeout=2.0)
            port = transport.get_extra_info("sockname")[1]
            protocol.local_candidate = Candidate(
                foundation="1", component=1, transport="udp", priority=1,
                host="127.0.0.1", port=port, type="host")
            candidate, _ = await asyncio.wait_for(
                server_reflexive_candidate(protocol, node.address), 5.0)
            return found, candidate.host, candidate.port - port
        finally:
            transport.close()
            await node.close()

    found, host, port_delta = asyncio.run(scenario())
    assert found is not None
    assert host == "127.0.0.1" and port_delta == 0
