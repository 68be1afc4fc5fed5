"""A node that just went away costs one soft timeout per node, not one per lookup; a bootstrap
does not wait for it either.

All on the virtual clock of :class:`tests.support.MemoryNetwork` (the core is sans-IO).
"""

from __future__ import annotations

import pytest

from dhtchat.core.events import BootstrapCompleted, GetCompleted
from dhtchat.core.ids import distance
from dhtchat.core.node import DhtConfig
from dhtchat.core.records import Record, make_app_record
from tests.support import MemoryNetwork, build_network, node_key

Address = tuple[str, int]


def _network_with_a_dead_storer(config: DhtConfig | None = None
                                ) -> tuple[MemoryNetwork, list[Record], Address, Address]:
    """20 nodes; three records among whose 4 closest storers is one node, which then dies."""
    net = build_network(20, config=config)
    addresses = list(net.nodes)
    writer, dead = addresses[3], addresses[7]
    records: list[Record] = []
    for slot in range(500):  # bounded search for keys the dead node is a close storer of
        rec = make_app_record(node_key(900), f"mailbox {slot}", b"slot", seq=1,
                              expires=int(net.now) + 600)
        closest = sorted(addresses, key=lambda a: distance(net.nodes[a].node_id, rec.key))
        if dead in closest[:4] and writer not in closest[:8]:
            records.append(rec)
            if len(records) == 3:
                break
    assert len(records) == 3
    for rec in records:
        qid = net.command(writer, lambda n, now, r=rec: n.put(r, now))
        net.wait_for(writer, lambda e, q=qid: getattr(e, "query_id", None) == q)
    reader = writer  # it stored nothing of them itself, so its gets go out to the storers
    net.dropped_to.add(dead)  # it receives nothing any more, so it answers nothing
    return net, records, reader, dead


def _timed_get(net: MemoryNetwork, reader: Address, rec: Record) -> float:
    started = net.now
    qid = net.command(reader, lambda n, now: n.get(rec.key, now))
    event = net.wait_for(reader, lambda e: getattr(e, "query_id", None) == qid, 30.0)
    assert isinstance(event, GetCompleted) and event.records == (rec,)
    return net.now - started


def test_after_one_soft_timeout_later_gets_do_not_wait_for_the_dead_node() -> None:
    net, records, reader, dead = _network_with_a_dead_storer()
    node = net.nodes[reader]
    soft = node.config.min_rto  # RTT 0.02 s here: the RTO is the 0.2 s floor
    assert _timed_get(net, reader, records[0]) >= soft  # the first one finds out
    assert node.is_suspect(dead, net.now)
    for rec in records[1:]:
        # the dead node is still asked (it may be back), but nobody waits for it
        assert _timed_get(net, reader, rec) < soft / 2
    assert node.stats["suspects_started_slow"] >= 2


def test_without_suspect_memory_every_get_pays_the_soft_timeout() -> None:
    net, records, reader, _dead = _network_with_a_dead_storer(DhtConfig(suspect_memory=0))
    soft = net.nodes[reader].config.min_rto
    for rec in records:
        assert _timed_get(net, reader, rec) >= soft


def test_a_suspect_that_answers_again_is_trusted_again() -> None:
    net, records, reader, dead = _network_with_a_dead_storer()
    node = net.nodes[reader]
    _timed_get(net, reader, records[0])
    assert node.is_suspect(dead, net.now)
    net.dropped_to.discard(dead)  # back
    _timed_get(net, reader, records[1])  # asks it (slow from the start); it answers
    assert not node.is_suspect(dead, net.now)


def test_suspicion_is_forgotten_after_suspect_memory() -> None:
    net, records, reader, dead = _network_with_a_dead_storer(DhtConfig(suspect_memory=5.0))
    node = net.nodes[reader]
    _timed_get(net, reader, records[0])
    assert node.is_suspect(dead, net.now)
    assert not node.is_suspect(dead, net.now + 5.0)


def test_maintenance_drops_old_suspicions_without_being_asked() -> None:
    """Memory: a node under churn must not keep a suspicion per dead address it ever met
    (a simulated network holds thousands of nodes)."""
    net, records, reader, _dead = _network_with_a_dead_storer(DhtConfig(suspect_memory=5.0))
    node = net.nodes[reader]
    _timed_get(net, reader, records[0])
    assert node.suspect_count() >= 1
    net.run(duration=5.0 + 2 * node.config.maintenance_interval)  # nobody asks about it
    assert node.suspect_count() == 0


@pytest.mark.parametrize(("quorum", "patient"), [(0.5, False), (1.0, True)])
def test_a_bootstrap_with_a_dead_node_among_the_closest_ends_at_the_soft_timeout(
        quorum: float, patient: bool) -> None:
    net = build_network(20, config=DhtConfig(get_quorum=quorum))
    addresses = list(net.nodes)
    joiner_address = ("10.9.9.1", 4000)
    joiner = net.add_node(joiner_address, 777, DhtConfig(get_quorum=quorum))
    # the dead node is the one closest to the joiner's id (its self-lookup target)
    dead = min(addresses[1:], key=lambda a: distance(net.nodes[a].node_id, joiner.node_id))
    net.dropped_to.add(dead)
    started = net.now
    qid = net.command(joiner_address, lambda n, now: n.bootstrap([addresses[0]], now))
    event = net.wait_for(joiner_address, lambda e: getattr(e, "query_id", None) == qid)
    elapsed = net.now - started
    assert isinstance(event, BootstrapCompleted) and event.contacts >= 8
    if patient:  # waits out the unmeasured path's hard timeout: RFC 6298's 1 s
        assert elapsed >= joiner.config.initial_rto
    else:  # one soft timeout and a few round trips
        assert elapsed < joiner.config.min_rto + 0.3, elapsed
