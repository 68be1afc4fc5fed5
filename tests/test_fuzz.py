"""Fuzzed and mutated datagrams never raise out of ``receive_datagram``; the node survives."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtchat.core.events import GetCompleted, PutCompleted
from dhtchat.core.records import make_app_record
from dhtchat.core.wire import (
    MAGIC,
    Envelope,
    Ping,
    Pong,
    decode,
    encode_envelope,
    encode_request,
    pack,
)
from tests.support import MemoryNetwork, build_network, node_key
from tests.test_wire import bodies

FUZZ_COUNT = 12_000


def _mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(rng.choice(corpus))
    op = rng.randrange(8)
    if op == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == 1 and data:  # overwrite bytes with interesting values
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice([0, 0x7F, 0x80, 0xC0, 0xC1, 0xCC,
                                                         0xDC, 0xDD, 0xFF])
    elif op == 2:  # truncate
        del data[rng.randrange(len(data) + 1):]
    elif op == 3:  # extend with junk
        data += rng.randbytes(rng.randint(1, 200))
    elif op == 4:  # splice two datagrams
        other = rng.choice(corpus)
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + other[rng.randrange(len(other) + 1):]
    elif op == 5:  # random bytes behind a valid magic
        data = bytearray(MAGIC + rng.randbytes(rng.randint(0, 1500)))
    elif op == 6:  # duplicate a slice
        if data:
            a = rng.randrange(len(data))
            data[a:a] = data[a : a + rng.randint(1, 64)]
    else:  # pure noise
        data = bytearray(rng.randbytes(rng.randint(0, 1600)))
    return bytes(data)


def _capture_corpus() -> tuple[MemoryNetwork, list[bytes]]:
    corpus: list[bytes] = []
    net = build_network(12, seed=7)
    net.tap = lambda data, src, dst: corpus.append(data)
    addresses = list(net.nodes)
    newcomer = ("10.77.0.1", 4000)  # a join: pings and pongs
    net.add_node(newcomer, 555)
    net.command(newcomer, lambda n, now: n.bootstrap([addresses[0]], now))
    net.run(duration=5.0)
    signer = node_key(4242)
    for i in range(6):
        rec = make_app_record(signer, f"k{i}", b"x" * (i * 150), seq=1,
                              expires=int(net.now) + 600)
        net.command(addresses[-1 - i], lambda n, now, r=rec: n.listen(r.key, now))
        net.run(duration=2.0)
        net.command(addresses[i], lambda n, now, r=rec: n.put(r, now))
        net.run(duration=2.0)
        net.command(addresses[-1 - i], lambda n, now, r=rec: n.get(r.key, now))
        net.run(duration=2.0)
    net.tap = None
    return net, corpus


def test_mutated_datagrams_never_raise_and_the_node_keeps_working() -> None:
    net, corpus = _capture_corpus()
    kinds = {type(decode(d).envelope.body).__name__ for d in corpus}
    assert {"Ping", "FindNode", "GetValues", "Store", "Listen", "Pong", "Nodes", "Values",
            "Stored", "Listening", "Push"} <= kinds, kinds
    victim_address = list(net.nodes)[3]
    victim = net.nodes[victim_address]
    rng = random.Random(2024)
    for i in range(FUZZ_COUNT):
        data = _mutate(rng, corpus)
        source = (f"100.64.{rng.randrange(256)}.{rng.randrange(1, 255)}", 1024 + i % 60000)
        victim.receive_datagram(data, source, net.now)  # must not raise
        victim.datagrams_to_send(net.now)
        while victim.next_event() is not None:
            pass
        if i % 1000 == 0:
            victim.handle_timer(net.now)
            net.now += 0.5
    assert victim.stats["datagrams_received"] >= FUZZ_COUNT
    assert victim.stats["misbehaved"] > FUZZ_COUNT // 2
    # Still answers a ping from a new peer...
    probe = node_key(77)
    ping = encode_request(b"p" * 8, probe.public_key, 0, b"", Ping(), 400)
    victim.receive_datagram(ping, ("192.0.2.77", 7777), net.now)
    replies = [decode(d).envelope for d, dst in victim.datagrams_to_send(net.now)
               if dst == ("192.0.2.77", 7777)]
    pongs = [e for e in replies if e.tid == b"p" * 8]
    assert len(pongs) == 1 and isinstance(pongs[0].body, Pong)
    # ...and still takes part in puts and gets.
    net.flush(victim_address)
    rec = make_app_record(node_key(5), "after-fuzz", b"alive", seq=1, expires=int(net.now) + 600)
    qid = net.command(victim_address, lambda n, now: n.put(rec, now))
    put = net.wait_for(victim_address, lambda e: getattr(e, "query_id", None) == qid)
    assert isinstance(put, PutCompleted) and put.stored >= 1
    reader = list(net.nodes)[8]
    qid = net.command(reader, lambda n, now: n.get(rec.key, now))
    got = net.wait_for(reader, lambda e: getattr(e, "query_id", None) == qid)
    assert isinstance(got, GetCompleted) and [r.value for r in got.records] == [b"alive"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, tid=st.binary(min_size=8, max_size=8), flags=st.integers(0, 255),
       token=st.binary(max_size=16), signature=st.sampled_from([b"", b"\x05" * 64]),
       port=st.integers(1, 65535))
def test_structured_random_datagrams_never_raise(body: object, tid: bytes, flags: int,
                                                 token: bytes, signature: bytes,
                                                 port: int) -> None:
    net = _shared_network()
    node = net.nodes[next(iter(net.nodes))]
    sender = node_key(port).public_key
    data = pack(encode_envelope(Envelope(tid, sender, flags, token, body)), signature)  # type: ignore[arg-type]
    node.receive_datagram(data, ("100.64.1.1", port), net.now)
    node.datagrams_to_send(net.now)
    while node.next_event() is not None:
        pass


_NETWORK: list[MemoryNetwork] = []


def _shared_network() -> MemoryNetwork:
    if not _NETWORK:
        _NETWORK.append(build_network(6, seed=3))
    return _NETWORK[0]
