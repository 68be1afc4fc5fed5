"""A GET does not wait for slow candidates once a quorum of the closest answered; a PUT does.

All on the virtual clock of :class:`tests.support.MemoryNetwork` (the core is sans-IO).
"""

from __future__ import annotations

import random

import pytest

from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.events import GetCompleted, PutCompleted
from dhtchat.core.ids import distance
from dhtchat.core.lookup import Lookup
from dhtchat.core.node import DhtConfig
from dhtchat.core.records import Record, make_app_record
from tests.support import MemoryNetwork, build_network, node_key

Address = tuple[str, int]


def _lookup_with_answers(quorum: float | None, slow: int) -> tuple[Lookup, list[bytes]]:
    """k=4 over 8 candidates; the ``slow`` closest go slow, every other one answers."""
    rng = random.Random(7)
    target = rng.randbytes(32)
    ids = sorted((rng.randbytes(32) for _ in range(8)), key=lambda n: distance(n, target))
    lookup = Lookup(target, k=4, alpha=8, quorum=quorum)
    for i, node_id in enumerate(ids):
        lookup.add(node_id, (f"10.0.{i}.1", 4000))
    sent = lookup.next_queries()
    assert [c.node_id for c in sent] == ids[:4]
    for node_id in ids[:slow]:
        lookup.on_slow(node_id)
    pending = [c.node_id for c in sent if c.node_id not in ids[:slow]]
    for _ in range(10):  # bounded: each round answers every query in flight
        pending += [c.node_id for c in lookup.next_queries()]
        if not pending:
            break
        for node_id in pending:
            lookup.on_response(node_id, [])
        pending = []
    return lookup, ids


def test_quorum_lookup_ends_with_a_slow_candidate_among_the_k_closest() -> None:
    lookup, ids = _lookup_with_answers(0.5, slow=1)
    assert lookup.finished
    # the answered k closest that are not slow: the slow one was replaced by the next
    assert [c.node_id for c in lookup.closest_answered()] == ids[1:5]


def test_patient_lookup_waits_for_a_slow_candidate_among_the_k_closest() -> None:
    lookup, ids = _lookup_with_answers(None, slow=1)
    assert not lookup.finished
    lookup.on_failure(ids[0])  # the hard timeout
    assert lookup.finished


def test_quorum_lookup_waits_when_most_of_the_closest_are_slow() -> None:
    lookup, ids = _lookup_with_answers(0.5, slow=3)  # 3 of the 4 closest: over half slow
    assert not lookup.finished
    lookup.on_response(ids[0], [])  # one slow answer arrives late: 2 of 4 slow is enough
    assert lookup.finished


def test_full_quorum_is_the_patient_rule() -> None:
    lookup, ids = _lookup_with_answers(1.0, slow=1)
    assert not lookup.finished
    lookup.on_failure(ids[0])
    assert lookup.finished


def test_get_quorum_is_validated() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(LocalProtocolError):
            DhtConfig(get_quorum=bad)


def _network_with_a_dead_storer(config: DhtConfig | None = None
                                ) -> tuple[MemoryNetwork, Record, Address, Address]:
    """20 nodes; a record put; its closest storer then stops answering.

    Returns the network, the record, a node that is not a storer (the reader) and the dead one.
    """
    net = build_network(20, config=config)
    addresses = list(net.nodes)
    rec = make_app_record(node_key(900), "mailbox", b"slot", seq=1, expires=int(net.now) + 600)
    qid = net.command(addresses[3], lambda n, now: n.put(rec, now))
    put = net.wait_for(addresses[3], lambda e: getattr(e, "query_id", None) == qid)
    assert isinstance(put, PutCompleted) and put.stored >= 8
    by_distance = sorted(addresses, key=lambda a: distance(net.nodes[a].node_id, rec.key))
    dead = by_distance[0]
    reader = next(a for a in by_distance[12:] if a != addresses[3])
    assert any(c.address == dead for c in net.nodes[reader].table.contacts())
    net.dropped_to.add(dead)  # it receives nothing any more, so it answers nothing
    return net, rec, reader, dead


def _timed(net: MemoryNetwork, address: Address, command: str, rec: Record
           ) -> tuple[float, object]:
    started = net.now
    if command == "get":
        qid = net.command(address, lambda n, now: n.get(rec.key, now))
    else:
        qid = net.command(address, lambda n, now: n.put(rec, now))
    event = net.wait_for(address, lambda e: getattr(e, "query_id", None) == qid, 30.0)
    return net.now - started, event


def test_get_with_a_dead_node_among_the_closest_ends_at_the_soft_timeout() -> None:
    net, rec, reader, _dead = _network_with_a_dead_storer()
    node = net.nodes[reader]
    soft = node.config.min_rto  # RTT 0.02 s on this network: the RTO is the 0.2 s floor
    for _ in range(5):  # the dead node's backoff grows with every timeout it causes
        elapsed, event = _timed(net, reader, "get", rec)
        assert isinstance(event, GetCompleted) and event.records == (rec,)
        # about one soft timeout, plus a few round trips: never the hard timeout
        assert elapsed < soft + 0.15, elapsed
        net.run(duration=node.config.max_rto + 0.5)  # let the dead query hard-fail


def test_get_with_full_quorum_waits_for_the_dead_node() -> None:
    net, rec, reader, _dead = _network_with_a_dead_storer(DhtConfig(get_quorum=1.0))
    elapsed, event = _timed(net, reader, "get", rec)
    assert isinstance(event, GetCompleted) and event.records == (rec,)
    assert elapsed >= 3 * net.nodes[reader].config.min_rto - 1e-3  # the hard timeout: 3 RTOs


def test_put_with_a_dead_node_among_the_closest_still_waits_for_it() -> None:
    net, rec, reader, _dead = _network_with_a_dead_storer()
    node = net.nodes[reader]
    elapsed, event = _timed(net, reader, "put", rec)
    assert isinstance(event, PutCompleted)
    # the lookup waited for the dead node's hard timeout (3 RTOs) before storing on the
    # true k closest that are alive
    assert elapsed >= 3 * node.config.min_rto - 1e-3
    # stored on the k closest that answered, the dead node not among them
    assert event.stored == event.attempted >= node.config.k
