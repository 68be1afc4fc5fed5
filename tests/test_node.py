"""Behaviour of the sans-IO node on a manual clock: lookups, timeouts, eviction, storage."""

from __future__ import annotations

import random

import pytest

from dhtchat.core import node_state as node_module
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.events import (
    BootstrapCompleted,
    ContactEvicted,
    Event,
    GetCompleted,
    ListenStarted,
    LookupCompleted,
    PutCompleted,
    ValueFound,
)
from dhtchat.core.ids import distance
from dhtchat.core.lookup import Lookup
from dhtchat.core.node import DhtConfig, DhtNode
from dhtchat.core.pow import REQUEST_POW_BITS, solve_pow
from dhtchat.core.records import RecordType, make_app_record, make_record
from dhtchat.core.wire import (
    Envelope,
    FindNode,
    GetValues,
    Ping,
    Values,
    decode,
    encode_envelope,
    encode_request,
    pack,
    response_signed_bytes,
)
from tests.support import MemoryNetwork, build_network, node_key

NOW = 1_700_000_000.0


def _by_query(net: MemoryNetwork, address: tuple[str, int], qid: int, timeout: float = 60.0
              ) -> Event:
    return net.wait_for(address, lambda e: getattr(e, "query_id", None) == qid, timeout)


def _star(count: int, config: DhtConfig | None = None) -> tuple[DhtNode, list[DhtNode],
                                                                 list[tuple[str, int]]]:
    """A node whose table holds ``count`` real peers (not connected to each other)."""
    center = DhtNode(node_key(1), rng=random.Random(1), now=NOW, config=config)
    peers, addresses = [], []
    for i in range(count):
        peer = DhtNode(node_key(100 + i), rng=random.Random(100 + i), now=NOW)
        address = (f"10.0.{i}.1", 4000)
        center.table.add(peer.node_id, address, NOW)
        peers.append(peer)
        addresses.append(address)
    return center, peers, addresses


def test_lookup_keeps_alpha_in_flight_and_replaces_each_answer_at_once() -> None:
    center, peers, addresses = _star(12, DhtConfig(alpha=3, k=8))
    target = random.Random(5).randbytes(32)
    center.find_node(target, NOW)
    sent = center.datagrams_to_send(NOW)
    assert len(sent) == 3
    assert all(isinstance(decode(d).envelope.body, FindNode) for d, _ in sent)
    # One of the three answers; the other two are still in flight.
    data, dst = sent[0]
    peer = peers[addresses.index(dst)]
    peer.receive_datagram(data, ("10.9.9.9", 4000), NOW + 0.01)
    # The peer's reply goes to the center's address; we deliver it by hand.
    reply = next(d for d, a in peer.datagrams_to_send(NOW + 0.01) if a == ("10.9.9.9", 4000))
    center.receive_datagram(reply, dst, NOW + 0.02)
    new = [d for d, _ in center.datagrams_to_send(NOW + 0.02)
           if isinstance(decode(d).envelope.body, FindNode)]
    assert len(new) == 1  # not waiting for the round: a 4th query goes out immediately


def test_lookup_state_machine_terminates_on_k_closest_answered() -> None:
    rng = random.Random(3)
    target = rng.randbytes(32)
    nodes = [rng.randbytes(32) for _ in range(40)]
    where = {n: (f"10.0.{i}.1", 4000) for i, n in enumerate(nodes)}
    lookup = Lookup(target, k=4, alpha=2)
    for n in nodes[:5]:
        lookup.add(n, where[n])
    # Each node knows a random third of the others and answers with its 4 closest to target.
    knows = {n: rng.sample(nodes, 13) for n in nodes}
    seen = set(nodes[:5])
    steps = 0
    while not lookup.finished:
        batch = lookup.next_queries()
        assert lookup.in_flight <= 2
        for cand in batch:
            closer = sorted(knows[cand.node_id], key=lambda n: distance(n, target))[:4]
            seen.update(closer)
            lookup.on_response(cand.node_id, [(n, where[n]) for n in closer])
        steps += 1
        assert steps < 100
    best_seen = sorted(seen, key=lambda n: distance(n, target))[:4]
    assert [c.node_id for c in lookup.closest_answered()] == best_seen
    assert lookup.queries_sent < len(nodes)


def test_timeouts_follow_measured_rtt() -> None:
    cfg = DhtConfig(initial_rto=1.0, min_rto=0.2)
    net = build_network(4, config=cfg, latency=0.02)
    a = list(net.nodes)[1]
    node = net.nodes[a]
    known = node.table.contacts()[0]
    assert node._rto(known.address) == 0.2  # measured RTT ~0.04 s: floor of 0.2 s
    # never measured: the RTT over all peers is the prior, not RFC 6298's generic 1 s
    assert node._rto(("10.200.0.1", 1)) == 0.2
    fresh = DhtNode(node_key(999), rng=random.Random(9), now=NOW, config=cfg)
    assert fresh._rto(("10.200.0.1", 1)) == 1.0  # nothing measured at all yet


def test_contact_evicted_after_repeated_failures_not_one() -> None:
    net = build_network(12, config=DhtConfig(max_failures=3))
    addresses = list(net.nodes)
    observer = addresses[1]
    node = net.nodes[observer]
    victim = node.table.contacts()[0]
    net.dropped_to.add(victim.address)
    failures_seen = []
    for i in range(6):
        qid = net.command(observer, lambda n, now, t=victim.node_id: n.find_node(t, now))
        _by_query(net, observer, qid)
        net.run(duration=node.config.max_rto + 1.0)  # past the hard timeout of the query
        failures_seen.append(victim.node_id in node.table)
        if victim.node_id not in node.table:
            break
        assert i < 5
    assert failures_seen[0] is True  # one lost reply does not evict
    assert failures_seen[-1] is False
    assert any(isinstance(e, ContactEvicted) and e.node_id == victim.node_id
               for e in net.events[observer])


def test_put_get_listen_and_expiry() -> None:
    net = build_network(20)
    addresses = list(net.nodes)
    signer = node_key(900)
    rec = make_app_record(signer, "topic", b"v1", seq=1, expires=int(net.now) + 120)
    lid = net.command(addresses[7], lambda n, now: n.listen(rec.key, now))
    started = _by_query(net, addresses[7], lid)
    assert isinstance(started, ListenStarted) and started.storers >= 1
    qid = net.command(addresses[3], lambda n, now: n.put(rec, now))
    put = _by_query(net, addresses[3], qid)
    assert isinstance(put, PutCompleted) and put.stored == put.attempted == 8
    pushed = net.wait_for(addresses[7], lambda e: isinstance(e, ValueFound))
    assert isinstance(pushed, ValueFound) and pushed.record == rec
    qid = net.command(addresses[15], lambda n, now: n.get(rec.key, now))
    got = _by_query(net, addresses[15], qid)
    assert isinstance(got, GetCompleted) and got.records == (rec,)
    holders = sum(1 for n in net.nodes.values() if n.store.records(rec.key, net.now))
    assert holders >= 8
    net.run(duration=200.0)  # past the record's expiry
    assert all(n.store.record_count == 0 for n in net.nodes.values())
    qid = net.command(addresses[15], lambda n, now: n.get(rec.key, now))
    got = _by_query(net, addresses[15], qid)
    assert isinstance(got, GetCompleted) and got.records == ()


def test_get_returns_newest_record_per_owner_and_filters_by_owner() -> None:
    net = build_network(16)
    addresses = list(net.nodes)
    alice, bob = node_key(1001), node_key(1002)
    inbox_owner = node_key(1003).public_key
    letters = []  # an inbox: the open-write type, each record with its proof of work
    for signer in (alice, bob):
        for i in (1, 2):
            sealed = f"{i}".encode()
            counter = solve_pow(inbox_owner + signer.public_key, sealed, REQUEST_POW_BITS)
            letters.append(make_record(signer, RecordType.CONTACT_REQUEST, b"",
                                       counter.to_bytes(8, "big") + sealed, seq=i,
                                       expires=int(net.now) + 600, namespace=inbox_owner))
    for i, letter in enumerate(letters):
        qid = net.command(addresses[i], lambda n, now, r=letter: n.put(r, now))
        _by_query(net, addresses[i], qid)
    key = letters[0].key
    qid = net.command(addresses[10], lambda n, now: n.get(key, now))
    got = _by_query(net, addresses[10], qid)
    assert isinstance(got, GetCompleted)
    assert sorted((r.owner, r.seq) for r in got.records) == sorted(
        [(alice.public_key, 2), (bob.public_key, 2)])
    qid = net.command(addresses[10], lambda n, now: n.get(key, now, owner=bob.public_key))
    got = _by_query(net, addresses[10], qid)
    assert isinstance(got, GetCompleted) and [r.owner for r in got.records] == [bob.public_key]


def test_owner_republishes_after_storers_lose_the_record() -> None:
    cfg = DhtConfig(republish_interval=60.0)
    net = build_network(12, config=cfg)
    addresses = list(net.nodes)
    rec = make_app_record(node_key(5), "persistent", b"still here", seq=1,
                          expires=int(net.now) + 3600)
    qid = net.command(addresses[2], lambda n, now: n.put(rec, now, republish=True))
    _by_query(net, addresses[2], qid)
    for address, node in net.nodes.items():  # every storer restarts with empty storage
        if address != addresses[2]:
            node.store.expire(net.now + 10**9)
    assert sum(1 for n in net.nodes.values() if n.store.records(rec.key, net.now)) <= 1
    net.run(duration=80.0)
    holders = sum(1 for n in net.nodes.values() if n.store.records(rec.key, net.now))
    assert holders >= 8
    assert net.nodes[addresses[2]].stats["republished"] >= 1


def test_records_are_handed_over_to_a_closer_node_that_joins() -> None:
    net = build_network(10)
    addresses = list(net.nodes)
    # Find a node key whose id is closer to the record key than every current node.
    rec = make_app_record(node_key(77), "handover", b"data", seq=1, expires=int(net.now) + 600)
    qid = net.command(addresses[1], lambda n, now: n.put(rec, now))
    _by_query(net, addresses[1], qid)
    best = min(distance(n.node_id, rec.key) for n in net.nodes.values())
    seed = next(s for s in range(10_000, 200_000)
                if distance(DhtNode(node_key(s), rng=random.Random(s), now=net.now).node_id,
                            rec.key) < best)
    newcomer = ("10.99.0.1", 4000)
    net.add_node(newcomer, seed)
    qid = net.command(newcomer, lambda n, now: n.bootstrap([addresses[0]], now))
    boot = _by_query(net, newcomer, qid)
    assert isinstance(boot, BootstrapCompleted) and boot.contacts > 0
    net.run(duration=10.0)
    assert net.nodes[newcomer].store.records(rec.key, net.now) == [rec]


def test_bootstrap_fills_the_table_and_lookup_finds_the_true_closest() -> None:
    net = build_network(40)
    addresses = list(net.nodes)
    target = random.Random(9).randbytes(32)
    qid = net.command(addresses[5], lambda n, now: n.find_node(target, now))
    done = _by_query(net, addresses[5], qid)
    assert isinstance(done, LookupCompleted)
    everyone = sorted((n.node_id for a, n in net.nodes.items() if a != addresses[5]),
                      key=lambda i: distance(i, target))
    assert [c[0] for c in done.contacts] == everyone[:8]


def test_spoofed_and_wrong_responses_are_ignored() -> None:
    center, peers, addresses = _star(3, DhtConfig(alpha=3))
    center.find_node(bytes(32), NOW)
    sent = center.datagrams_to_send(NOW)
    data, dst = sent[0]
    peer = peers[addresses.index(dst)]
    peer.receive_datagram(data, ("10.9.9.9", 4000), NOW)
    reply = next(d for d, a in peer.datagrams_to_send(NOW) if a == ("10.9.9.9", 4000))
    # Same reply from another address: unmatched, not accepted.
    center.receive_datagram(reply, ("10.66.0.1", 4000), NOW)
    assert center.stats["responses_unmatched"] == 1
    # Reply with one flipped signature bit: rejected as misbehaviour.
    bad = bytearray(reply)
    bad[-1] ^= 1
    center.receive_datagram(bytes(bad), dst, NOW)
    assert center.stats["misbehaved"] == 1
    center.receive_datagram(reply, dst, NOW)
    assert center.stats["responses_received"] == 1


def _signed_reply(peer_key_seed: int, requester_id: bytes, tid: bytes, body: object) -> bytes:
    key = node_key(peer_key_seed)
    envelope_bytes = encode_envelope(Envelope(tid, key.public_key, 0, b"t" * 16, body))  # type: ignore[arg-type]
    return pack(envelope_bytes, key.sign(response_signed_bytes(requester_id, envelope_bytes)))


def test_a_storer_that_never_delivers_pages_cannot_stall_a_get() -> None:
    center, _peers, addresses = _star(1)
    key = random.Random(1).randbytes(32)
    qid = center.get(key, NOW)
    requests = 0
    now = NOW
    for _ in range(50):
        out = [(d, a) for d, a in center.datagrams_to_send(now)
               if isinstance(decode(d).envelope.body, GetValues)]
        if not out:
            break
        for data, address in out:
            requests += 1
            tid = decode(data).envelope.tid
            # "there are 5 records, but you get none of them": truncated, empty, forever
            reply = _signed_reply(100, center.node_id, tid, Values([], 5, True, []))
            now += 0.01
            center.receive_datagram(reply, address, now)
    assert requests <= 2  # the first answer, then one retry with a token, then stop
    events = []
    while (event := center.next_event()) is not None:
        events.append(event)
    assert any(isinstance(e, GetCompleted) and e.query_id == qid for e in events)
    assert addresses


def test_spoofed_requests_naming_a_contact_do_not_get_it_evicted() -> None:
    center, peers, addresses = _star(3, DhtConfig(max_failures=2, maintenance_interval=1e9))
    victim = peers[0]
    for i in range(6):
        spoof = encode_request(bytes([i]) * 8, victim.public_key, 0, b"", Ping(), 600)
        center.receive_datagram(spoof, ("10.66.0.1", 9999), NOW + i)
        center.datagrams_to_send(NOW + i)  # the verification pings go to the spoofer
        center.handle_timer(NOW + i + 10.0)  # ...and time out
    assert victim.node_id in center.table
    assert center.table.get(victim.node_id).address == addresses[0]  # type: ignore[union-attr]


def test_config_rejects_a_k_whose_replies_would_not_fit() -> None:
    with pytest.raises(LocalProtocolError):
        DhtConfig(k=21)
    with pytest.raises(LocalProtocolError):
        DhtConfig(alpha=0)
    assert DhtConfig(k=20).request_pad <= 1400


def test_a_values_reply_to_a_find_node_neither_raises_nor_hangs_the_lookup() -> None:
    center, _peers, _addresses = _star(1)
    qid = center.find_node(random.Random(2).randbytes(32), NOW)
    data, address = center.datagrams_to_send(NOW)[0]
    tid = decode(data).envelope.tid
    reply = _signed_reply(100, center.node_id, tid, Values([], 0, False, []))
    center.receive_datagram(reply, address, NOW + 0.01)  # must not raise
    events = []
    while (event := center.next_event()) is not None:
        events.append(event)
    assert any(isinstance(e, LookupCompleted) and e.query_id == qid for e in events)


def test_spoofed_tiny_requests_trigger_no_verification_ping() -> None:
    center, _peers, _addresses = _star(2)
    victim = ("10.77.0.1", 5000)
    sent = received = 0
    for i in range(50):
        stranger = node_key(5000 + i).public_key
        data = encode_request(bytes([i]) * 8, stranger, 0, b"", Ping())  # 60 bytes, no token
        received += len(data)
        center.receive_datagram(data, victim, NOW + i)
        sent += sum(len(d) for d, a in center.datagrams_to_send(NOW + i) if a == victim)
    assert sent <= received  # nothing at all, in fact: the Pong does not fit either
    assert sent == 0
    # An honest newcomer pads its first request: it is answered and verified.
    honest = encode_request(b"h" * 8, node_key(6000).public_key, 0, b"", Ping(), 600)
    center.receive_datagram(honest, ("10.78.0.1", 5000), NOW + 100)
    out = [d for d, a in center.datagrams_to_send(NOW + 100) if a == ("10.78.0.1", 5000)]
    assert len(out) == 2  # the Pong, and a verification Ping padded only to Pong size
    assert min(len(d) for d in out) <= 600 and max(len(d) for d in out) <= 600


def test_rtt_table_stays_bounded_under_timeouts_to_many_addresses() -> None:
    center, _peers, _addresses = _star(1, DhtConfig(maintenance_interval=1e9))
    limit = node_module._MAX_TRACKED_ADDRESSES
    for i in range(limit + 500):
        center._send_request((f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1), Ping(),
                             NOW, purpose=node_module._Purpose.BOOTSTRAP_PING)
    center.datagrams_to_send(NOW)
    center.handle_timer(NOW + 100)
    center.handle_timer(NOW + 200)
    assert len(center._peers) <= limit


def test_lookup_takes_one_candidate_per_address_and_few_per_ip() -> None:
    lookup = Lookup(bytes(32), k=8, alpha=3, max_per_ip=3)
    rng = random.Random(1)
    taken = [lookup.add(rng.randbytes(32), ("10.0.0.1", 4000)) for _ in range(5)]
    assert taken == [True, False, False, False, False]
    taken = [lookup.add(rng.randbytes(32), ("10.0.0.2", 4000 + i)) for i in range(5)]
    assert taken == [True, True, True, False, False]


def test_no_verification_ping_to_a_node_whose_reply_we_await() -> None:
    # A's lookup queries B (learned from C); B answers and verifies A with a Ping, and the
    # Ping overtakes the answer. A must not ping B back: the answer it awaits is the same
    # signed challenge, and admits B.
    a, b, c = (DhtNode(node_key(i), rng=random.Random(i), now=NOW) for i in (1, 2, 3))
    a_addr, b_addr, c_addr = ("10.0.1.1", 4000), ("10.0.2.1", 4000), ("10.0.3.1", 4000)
    a.table.add(c.node_id, c_addr, NOW)
    c.table.add(b.node_id, b_addr, NOW)
    a.find_node(b.node_id, NOW)
    (to_c, _), = a.datagrams_to_send(NOW)
    c.receive_datagram(to_c, a_addr, NOW + 0.01)
    reply_c = next(d for d, _ in c.datagrams_to_send(NOW + 0.01)
                   if not isinstance(decode(d).envelope.body, Ping))
    a.receive_datagram(reply_c, c_addr, NOW + 0.02)
    (to_b, dst), = a.datagrams_to_send(NOW + 0.02)
    assert dst == b_addr and b.node_id not in a.table
    b.receive_datagram(to_b, a_addr, NOW + 0.03)
    out = b.datagrams_to_send(NOW + 0.03)
    reply_b = next(d for d, _ in out if not isinstance(decode(d).envelope.body, Ping))
    b_ping = next(d for d, _ in out if isinstance(decode(d).envelope.body, Ping))
    a.receive_datagram(b_ping, b_addr, NOW + 0.04)  # B's verification Ping arrives first
    assert all(not isinstance(decode(d).envelope.body, Ping)
               for d, _ in a.datagrams_to_send(NOW + 0.04))  # only the Pong
    assert a.stats["verifications_pending_reply"] == 1
    a.receive_datagram(reply_b, b_addr, NOW + 0.05)
    assert b.node_id in a.table
    # The same Ping from a node we await nothing from is verified as before.
    d = DhtNode(node_key(4), rng=random.Random(4), now=NOW)
    d.bootstrap([a_addr], NOW)
    (d_ping, _), = d.datagrams_to_send(NOW)
    a.receive_datagram(d_ping, ("10.0.4.1", 4000), NOW + 0.06)
    assert any(isinstance(decode(x).envelope.body, Ping)
               for x, _ in a.datagrams_to_send(NOW + 0.06))
