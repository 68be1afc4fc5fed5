"""The onion relay and client machines over an in-memory network on a manual clock."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtchat.core.addresses import pack_ip
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.onion import (
    MAX_REPLY_BYTES,
    CircuitClosed,
    ExitRequest,
    OnionConfig,
    OnionRelay,
)
from dhtchat.core.onion_cells import (
    BODY_BYTES,
    CELL_BYTES,
    ONION_MAGIC,
    Create,
    Created,
    Destroy,
    Relay,
    decode_cell,
    encode_cell,
    pad_body,
    x25519_public,
)
from dhtchat.core.onion_client import (
    OnionReply,
    PathFailed,
    PathReady,
    RelayInfo,
    RequestFailed,
    choose_path,
)
from tests.onion_support import CLIENT, OnionNet, relay_address

SECRET = b"the-inbox-key-of-alice-0123456789"


def _ready_net(relays: list[int] | None = None, **kwargs: object) -> OnionNet:
    net = OnionNet(**kwargs)  # type: ignore[arg-type]
    chosen = [net.info(i) for i in relays] if relays is not None else None
    net.client.build_path(net.now, chosen)
    net.run(2.0)
    assert net.client_events(PathReady), net.events[CLIENT]
    return net


def test_request_and_reply_through_three_hops() -> None:
    net = _ready_net([0, 1, 2])
    assert len(net.log) == 12  # building 3 hops: 12 cells of 1200 bytes (docs 42.7)
    ready = net.client_events(PathReady)
    assert ready[0].relays == tuple(net.info(i).node_id for i in (0, 1, 2))
    request_id = net.client.request(SECRET, net.now)
    net.run(1.0)
    assert len(net.log) == 12 + 6  # a round trip: one cell per leg each way
    replies = net.client_events(OnionReply)
    assert [(r.request_id, r.data) for r in replies] == [
        (request_id, b"re:" + SECRET)]
    exits = [e for e in net.events[relay_address(2)] if isinstance(e, ExitRequest)]
    assert [e.data for e in exits] == [SECRET]
    assert not [e for e in net.events[relay_address(1)] if isinstance(e, ExitRequest)]
    assert net.relay(0).stats["cells_forwarded"] >= 2  # the second Extend and the request
    assert net.relay(1).stats["cells_forwarded"] == 1


def test_cells_are_fixed_size() -> None:
    net = _ready_net([0, 1, 2])
    net.client.request(b"x", net.now)
    net.client.request(bytes(1021), net.now)
    net.run(1.0)
    assert len(net.client_events(OnionReply)) == 2
    assert {len(data) for _, _, data in net.log} == {CELL_BYTES}
    # layered bodies look random on every leg: no zero run tells a hop's position
    relay_bodies = [cell.body for cell in map(decode_cell, (d for _, _, d in net.log))
                    if isinstance(cell, Relay)]
    assert len(relay_bodies) >= 12
    assert all(bytes(16) not in body for body in relay_bodies)


def test_what_each_hop_sees() -> None:
    net = _ready_net([0, 1, 2])
    net.client.request(SECRET, net.now)
    net.run(1.0)
    assert net.client_events(OnionReply)
    entry, middle, exit_ = (relay_address(i) for i in range(3))
    # each relay exchanges cells with its two neighbours only
    assert net.peers_of(entry) == {CLIENT, middle}
    assert net.peers_of(middle) == {entry, exit_}
    assert net.peers_of(exit_) == {middle}
    assert net.peers_of(CLIENT) == {entry}
    # the exit learns the request, never the client's address; nobody else learns either
    client_ip = pack_ip(CLIENT[0])
    for src, dst, data in net.log:
        assert SECRET not in data and b"re:" + SECRET not in data
        if exit_ in (src, dst) or middle in (src, dst):
            assert client_ip not in data and CLIENT[0].encode() not in data
    exits = [e for e in net.events[exit_] if isinstance(e, ExitRequest)]
    assert exits and all(CLIENT[0] not in repr(e) for e in exits)


def test_path_is_chosen_on_distinct_slash16s_without_excluded_ids() -> None:
    net = OnionNet(relays_count=6)
    banned = {net.info(0).node_id, net.info(1).node_id}
    net.client.exclude(banned)
    net.client.request(b"q", net.now)
    net.run(3.0)
    ready = net.client_events(PathReady)
    assert ready and not banned & set(ready[0].relays)
    assert net.client_events(OnionReply)

    rng = random.Random(3)
    same16 = [RelayInfo(bytes([i]) * 32, (f"10.9.{i}.1", 1), bytes(32)) for i in range(5)]
    assert choose_path(same16, 3, rng) is None
    mixed = [*same16, RelayInfo(b"a" * 32, ("10.10.0.1", 1), bytes(32)),
             RelayInfo(b"b" * 32, ("10.11.0.1", 1), bytes(32))]
    for _ in range(20):
        path = choose_path(mixed, 3, rng)
        assert path is not None
        assert len({r.address[0].split(".")[1] for r in path}) == 3
    assert choose_path(mixed, 3, rng, exclude=[b"a" * 32]) is None


def test_paths_rotate_on_schedule() -> None:
    config = OnionConfig(path_lifetime=60.0)
    net = _ready_net([0, 1, 2], config=config)
    net.client.request(b"one", net.now)
    net.run(1.0)
    first = net.client.path_relays()
    net.run(61.0)
    assert len(net.client_events(PathReady)) == 2
    assert net.client.stats["paths_rotated"] == 1
    net.client.request(b"two", net.now)
    net.run(1.0)
    assert [r.data for r in net.client_events(OnionReply)] == [b"re:one", b"re:two"]
    # the old path's circuits are torn down at the relays it used; its exit is told
    held = sum(relay.circuit_count for relay in net.relays.values())
    assert held == 3, (first, net.client.path_relays())
    exit_events = net.events[relay_address(2)]
    (used,) = [e.circuit for e in exit_events if isinstance(e, ExitRequest) and e.data == b"one"]
    assert [e.circuit for e in exit_events if isinstance(e, CircuitClosed)] == [used]
    assert not [e for a in (relay_address(0), relay_address(1)) for e in net.events[a]
                if isinstance(e, CircuitClosed)]  # only an exit hears of it


def test_a_dead_hop_fails_the_build_and_another_path_is_used() -> None:
    net = OnionNet(relays_count=6)
    dead = relay_address(1)
    net.down.add(dead)
    net.client.build_path(net.now, [net.info(0), net.info(1), net.info(2)])
    net.client.request(b"q", net.now)
    net.run(30.0)
    failed = net.client_events(PathFailed)
    assert failed and failed[0].relay == net.info(1).node_id
    assert failed[0].reason == "truncated:1"
    assert [r.data for r in net.client_events(OnionReply)] == [b"re:q"]
    assert net.info(1).node_id not in (net.client.path_relays() or ())


def test_a_hop_dying_under_an_established_path_rotates_it() -> None:
    config = OnionConfig(max_request_timeouts=2, request_timeout=2.0)
    net = _ready_net([0, 1, 2], config=config)
    net.down.add(relay_address(2))
    net.client.request(b"a", net.now)
    net.client.request(b"b", net.now)
    net.run(3.0)
    assert [r.reason for r in net.client_events(RequestFailed)] == ["timeout", "timeout"]
    assert [f.reason for f in net.client_events(PathFailed)] == ["request_timeouts"]
    net.client.set_relays([net.info(i) for i in (0, 1, 3, 4, 5)])
    net.client.request(b"c", net.now)
    net.run(3.0)
    assert [r.data for r in net.client_events(OnionReply)] == [b"re:c"]


def test_replayed_cells_are_dropped() -> None:
    net = _ready_net([0, 1, 2])
    net.client.request(b"once", net.now)
    net.run(1.0)
    forward = [data for src, dst, data in net.log
               if src == CLIENT and isinstance(decode_cell(data), Relay)][-1]
    backward = [data for src, dst, data in net.log
                if dst == CLIENT and isinstance(decode_cell(data), Relay)][-1]
    net.inject(forward, CLIENT, relay_address(0))
    net.inject(backward, relay_address(0), CLIENT)
    net.run(1.0)
    assert net.relay(0).stats["replayed_cells"] == 1
    assert net.client.stats["replayed_cells"] == 1
    exits = [e for e in net.events[relay_address(2)] if isinstance(e, ExitRequest)]
    assert len(exits) == 1 and len(net.client_events(OnionReply)) == 1
    # a Create replayed from another address is refused by the handshake cache
    create = next(data for src, dst, data in net.log if src == CLIENT)
    before = net.relay(0).circuit_count
    net.inject(create, ("172.16.0.9", 1), relay_address(0))
    net.inject(create, CLIENT, relay_address(0))
    net.run(0.5)
    assert net.relay(0).stats["replayed_handshake"] == 1
    assert net.relay(0).stats["duplicate_create"] == 1
    assert net.relay(0).circuit_count == before


def test_malformed_cells_are_counted_and_dropped() -> None:
    net = _ready_net([0, 1, 2])
    relay = net.relay(1)
    circ_ids = {decode_cell(d).circ_id for s, dst, d in net.log if dst == relay_address(1)}
    src = relay_address(0)
    good_frame = encode_cell(Relay(bytes(8), bytes(8), bytes(BODY_BYTES)))
    bad = [b"", b"junk", bytes(CELL_BYTES), b"dc\x01" + good_frame[3:],
           ONION_MAGIC + b"\x94\x09" + good_frame[5:], good_frame[:-1], good_frame + b"\x00"]
    for data in bad:
        relay.receive_datagram(data, src, net.now)
    assert relay.stats["malformed_cells"] == len(bad)
    relay.receive_datagram(good_frame, src, net.now)
    assert relay.stats["unknown_circuit"] == 1
    ahead = b"\x7f" + bytes(7)  # a seq ahead of the replay window
    for circ_id in circ_ids:  # a well-formed cell on a real circuit that fails the AEAD
        relay.receive_datagram(encode_cell(Relay(circ_id, ahead, bytes(BODY_BYTES))), src,
                               net.now)
    assert relay.stats["bad_layer"] == 1
    assert relay.stats["unknown_circuit"] == 2  # the other leg is keyed by the exit's address
    prev_leg = next(decode_cell(d).circ_id for s, dst, d in net.log
                    if s == relay_address(0) and dst == relay_address(1))
    relay.receive_datagram(encode_cell(Created(prev_leg, bytes(8), bytes(BODY_BYTES))), src,
                           net.now)
    assert relay.stats["unexpected_created"] == 1
    assert net.client.receive_datagram(b"junk", src, net.now) is False
    net.client.request(b"still works", net.now)
    net.run(1.0)
    assert net.client_events(OnionReply)


def test_a_path_looping_back_is_refused() -> None:
    net = OnionNet()
    net.client.build_path(net.now, [net.info(0), net.info(1), net.info(0)])
    net.run(2.0)
    failed = net.client_events(PathFailed)
    assert [f.reason for f in failed] == ["truncated:2"]
    assert net.relay(1).stats["loops_refused"] == 1
    net.client.build_path(net.now, [net.info(3), net.info(3)])
    net.run(2.0)
    assert net.relay(3).stats["loops_refused"] == 1
    assert not net.client_events(PathReady)


def test_a_relay_with_a_wrong_onion_key_fails_the_handshake() -> None:
    net = OnionNet()
    wrong_key = x25519_public(bytes(31) + b"\x07")
    impostor = RelayInfo(net.info(0).node_id, net.info(0).address, wrong_key)
    net.client.build_path(net.now, [impostor, net.info(1)])
    net.run(2.0)
    assert [f.reason for f in net.client_events(PathFailed)] == ["bad_handshake"]
    assert net.client.stats["bad_handshakes"] == 1


def test_state_stays_bounded_under_a_flood_of_creates() -> None:
    config = OnionConfig(max_circuits=200, max_circuits_per_subnet=16,
                         create_rate_per_subnet=1000.0, create_burst_per_subnet=1000.0,
                         circuit_idle_timeout=30.0)
    relay = OnionRelay(bytes(31) + b"\x01", b"n" * 32, rng=random.Random(1), now=0.0,
                       config=config)
    rng = random.Random(2)

    def create(src: tuple[str, int], now: float) -> None:
        cell = Create(rng.randbytes(8), bytes(8), pad_body(x25519_public(rng.randbytes(32))))
        relay.receive_datagram(encode_cell(cell), src, now)

    for i in range(100):  # one /24
        create(("203.0.113.7", 1000 + i), 0.0)
    assert relay.circuit_count == 16
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(184):  # up to the cap, each from its own /24
        create((f"10.0.{i}.1", 1), 0.0)
    relay.datagrams_to_send(0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_circuit = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / 184
    print(f"bytes per circuit: {per_circuit:.0f}")
    assert per_circuit < 3072  # docs/protocol.md 42.7
    for i in range(2000):  # a flood from many /24s finds the relay full
        create((f"10.{1 + i // 250}.{i % 250}.1", 1), 0.0)
    assert relay.circuit_count == 200
    assert relay.stats["creates_refused_full"] == 84 + 2000
    relay.handle_timer(31.0)
    assert relay.circuit_count == 0
    assert relay.stats["circuits_expired"] == 200


def test_per_subnet_budgets_limit_creates_and_cells() -> None:
    config = OnionConfig(create_rate_per_subnet=5.0, create_burst_per_subnet=10.0,
                         cell_rate_per_subnet=50.0, cell_burst_per_subnet=100.0)
    relay = OnionRelay(bytes(31) + b"\x01", b"n" * 32, rng=random.Random(1), now=0.0,
                       config=config)
    rng = random.Random(2)
    for i in range(40):
        cell = Create(rng.randbytes(8), bytes(8), pad_body(x25519_public(rng.randbytes(32))))
        relay.receive_datagram(encode_cell(cell), ("198.51.100.1", 1000 + i), 0.0)
    assert relay.circuit_count == 10
    assert relay.stats["creates_over_budget"] == 30
    junk = encode_cell(Relay(bytes(8), bytes(8), bytes(BODY_BYTES)))
    for _ in range(200):
        relay.receive_datagram(junk, ("198.51.100.2", 1), 0.0)
    assert relay.stats["cells_over_budget"] == 200 - (100 - 40)
    relay.receive_datagram(junk, ("192.0.2.1", 1), 0.0)  # another /24 has its own budget
    assert relay.stats["unknown_circuit"] == 61


def test_respond_checks_its_circuit_and_size() -> None:
    replies: list[ExitRequest] = []
    net = OnionNet(on_exit=lambda relay, event, now: replies.append(event))
    net.client.build_path(net.now, [net.info(0), net.info(1), net.info(2)])
    net.run(2.0)
    net.client.request(b"q", net.now)
    net.run(1.0)
    (event,) = replies
    exit_relay = net.relay(2)
    with pytest.raises(LocalProtocolError):
        exit_relay.respond(event.circuit, event.request_id, bytes(MAX_REPLY_BYTES + 1), net.now)
    assert exit_relay.respond(event.circuit + 99, event.request_id, b"x", net.now) is False
    assert net.relay(1).respond(1, event.request_id, b"x", net.now) is False  # not the end
    assert exit_relay.respond(event.circuit, event.request_id, b"late", net.now)
    net.run(1.0)
    assert [r.data for r in net.client_events(OnionReply)] == [b"late"]
    with pytest.raises(LocalProtocolError):
        net.client.request(bytes(1025), net.now)


def test_requests_wait_for_a_path_and_fail_without_relays() -> None:
    net = OnionNet(relays_count=2)
    request_id = net.client.request(b"q", net.now)
    assert [r.request_id for r in net.client_events(RequestFailed)] == []
    net.run(0.1)
    assert [(r.request_id, r.reason) for r in net.client_events(RequestFailed)] == [
        (request_id, "no_path")]


def test_a_stream_request_receives_every_push_until_its_path_rotates() -> None:
    pushes: list[ExitRequest] = []
    config = OnionConfig(path_lifetime=60.0)
    net = OnionNet(config=config, on_exit=lambda relay, event, now: pushes.append(event))
    net.client.build_path(net.now, [net.info(0), net.info(1), net.info(2)])
    net.run(2.0)
    stream = net.client.request(b"listen", net.now, stream=True)
    single = net.client.request(b"get", net.now)
    net.run(1.0)
    exit_relay = net.relay(2)
    by_id = {event.request_id: event for event in pushes}
    for n in range(3):
        assert exit_relay.respond(by_id[stream].circuit, stream, b"push %d" % n, net.now)
        assert exit_relay.respond(by_id[single].circuit, single, b"answer %d" % n, net.now)
        net.run(1.0)
    replies = [(r.request_id, r.data) for r in net.client_events(OnionReply)]
    assert replies == [(stream, b"push 0"), (single, b"answer 0"), (stream, b"push 1"),
                       (stream, b"push 2")]
    assert net.client.stats["unexpected_messages"] == 2  # a plain request is answered once
    net.run(20.0)  # an answered stream has no deadline
    assert not net.client_events(RequestFailed)
    net.run(45.0)  # rotation ends the stream: the caller listens again on the new path
    assert [(f.request_id, f.reason) for f in net.client_events(RequestFailed)] == [
        (stream, "rotated")]
    net.client.cancel(stream)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([Create, Created, Relay, Destroy]),
                          st.integers(min_value=0, max_value=5), st.booleans(),
                          st.binary(min_size=8, max_size=8),
                          st.binary(min_size=BODY_BYTES, max_size=BODY_BYTES)),
                min_size=1, max_size=25))
def test_random_cells_from_neighbours_never_raise_nor_break_the_path(
        cells: list[tuple[type[Relay], int, bool, bytes, bytes]]) -> None:
    net = _ready_net([0, 1, 2])
    legs = sorted({(src, dst, decode_cell(data).circ_id) for src, dst, data in net.log})
    for kind, leg, known, seq, body in cells:
        src, dst, circ_id = legs[leg % len(legs)]
        if not known:
            circ_id = bytes(8)
        elif kind is Destroy:  # a Destroy from a neighbour is honoured (docs 42.6)
            continue
        # as from either end of a real leg, with a real or an unknown circuit id
        net.inject(encode_cell(kind(circ_id, seq, body)), src, dst)
        net.inject(encode_cell(kind(circ_id, seq, body)), dst, src)
    net.run(1.0)
    before = len(net.client_events(OnionReply))
    net.client.request(b"still there", net.now)
    net.run(1.0)
    assert len(net.client_events(OnionReply)) == before + 1


def test_the_old_path_serves_while_its_replacement_is_built_and_when_that_fails() -> None:
    config = OnionConfig(path_lifetime=60.0)
    net = _ready_net([0, 1, 2], config=config)
    first = net.client.path_relays()
    net.client.set_relays([net.info(i) for i in (3, 4, 5)])
    net.down.add(relay_address(4))  # the replacement cannot be built
    net.run(60.0)
    assert net.client.stats["paths_started"] == 2
    net.client.request(b"during", net.now)  # goes over the old path meanwhile
    net.run(1.0)
    assert [r.data for r in net.client_events(OnionReply)] == [b"re:during"]
    net.run(5.0)
    failed = net.client_events(PathFailed)
    assert [f.relay for f in failed] == [net.info(4).node_id]
    assert net.client.path_relays() == first  # still serving, replaced a little later
    net.down.clear()  # relay 4 is avoided now: the next try picks among the others
    net.client.set_relays([net.info(i) for i in (2, 3, 4, 5)])
    net.run(10.0)
    ids = {net.info(i).node_id for i in (2, 3, 5)}
    assert set(net.client.path_relays() or ()) == ids
    net.client.request(b"after", net.now)
    net.run(1.0)
    assert [r.data for r in net.client_events(OnionReply)] == [b"re:during", b"re:after"]
    assert net.relay(0).circuit_count == net.relay(1).circuit_count == 0  # the old path is gone


def test_an_idle_path_is_not_reused_after_relays_may_have_dropped_it() -> None:
    config = OnionConfig(circuit_idle_timeout=100.0, path_lifetime=1000.0)
    net = _ready_net([0, 1, 2], config=config)
    net.client.request(b"a", net.now)
    net.run(1.0)
    net.run(95.0)  # past 0.9 x the relays' idle timeout, not yet past it
    assert net.relay(0).circuit_count == 1
    net.client.request(b"b", net.now)  # goes over a fresh path
    net.run(3.0)
    assert net.client.stats["paths_idle"] == 1
    assert len(net.client_events(PathReady)) == 2
    assert [r.data for r in net.client_events(OnionReply)] == [b"re:a", b"re:b"]
    net.run(200.0)  # relays expire the fresh path too: a Destroy blames nobody
    failed = net.client_events(PathFailed)
    assert failed and all(f.reason == "destroyed" and f.relay is None for f in failed)
