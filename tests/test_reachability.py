"""Client or server (dhtchat.core.reachability): a node behind a NAT stays a read-only DHT
client, so lookups never wait out a node nobody can reach; a reachable one serves."""

from __future__ import annotations

import asyncio

import pytest

from dhtchat.core.events import AddressObserved
from dhtchat.core.node import DhtConfig
from dhtchat.core.reachability import Reachability
from dhtchat.core.wire import FLAG_READ_ONLY, decode
from dhtchat.net.udp import UdpDhtNode
from tests.support import MemoryNetwork

LOCAL = ("192.168.1.20", 4000)


def test_the_verdict_starts_unknown_and_follows_what_peers_see() -> None:
    reach = Reachability()
    assert reach.verdict == "unknown"
    assert reach.observe(("203.0.113.1", 4000), LOCAL, LOCAL) == "reachable"
    assert reach.observe(("203.0.113.2", 4000), ("198.51.100.7", 61000), LOCAL) == "behind-nat"


def test_a_nat_rewriting_only_the_port_is_seen() -> None:
    reach = Reachability()
    assert reach.observe(("203.0.113.1", 4000), ("192.168.1.20", 4001), LOCAL) == "behind-nat"


def test_one_lying_peer_cannot_outvote_the_others() -> None:
    reach = Reachability()
    for i in range(5):
        reach.observe((f"203.0.113.{i}", 4000), LOCAL, LOCAL)
    assert reach.observe(("198.51.100.66", 4000), ("10.9.9.9", 1), LOCAL) == "reachable"
    # ... and one peer answering again and again counts once
    for _ in range(20):
        reach.observe(("198.51.100.66", 4000), ("10.9.9.9", 1), LOCAL)
    assert reach.verdict == "reachable" and reach.observations == 6


def test_only_the_last_window_of_peers_counts() -> None:
    reach = Reachability(window=3)
    for i in range(3):
        reach.observe((f"203.0.113.{i}", 4000), LOCAL, LOCAL)
    for i in range(3):  # the network changed: a NAT now
        reach.observe((f"198.51.100.{i}", 4000), ("198.51.100.200", 5000), LOCAL)
    assert reach.verdict == "behind-nat" and reach.observations == 3


def test_ipv4_mapped_addresses_compare_as_ipv4() -> None:
    reach = Reachability()
    assert reach.observe(("::ffff:203.0.113.1", 4000), ("::ffff:192.168.1.20", 4000),
                         LOCAL) == "reachable"


def test_the_core_reports_where_peers_saw_its_pings_and_switches_its_flag() -> None:
    net = MemoryNetwork()
    server = net.add_node(("10.0.0.1", 4000), 1)
    client = net.add_node(("10.0.1.1", 4000), 2,
                          DhtConfig(read_only=True, report_observed_addresses=True))
    sent: list[int] = []

    def tap(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        envelope = decode(data).envelope
        if src == ("10.0.1.1", 4000) and envelope.body.__class__.__name__ in (
                "Ping", "FindNode"):
            sent.append(envelope.flags)
    net.tap = tap
    net.command(("10.0.1.1", 4000), lambda n, now: n.bootstrap([("10.0.0.1", 4000)], now))
    seen = net.wait_for(("10.0.1.1", 4000), lambda e: isinstance(e, AddressObserved))
    assert isinstance(seen, AddressObserved)
    assert seen.peer == ("10.0.0.1", 4000) and seen.observed == ("10.0.1.1", 4000)
    net.run(duration=5)
    assert sent and all(flags & FLAG_READ_ONLY for flags in sent)
    assert server.table.get(client.node_id) is None
    client.set_read_only(False)
    sent.clear()
    net.command(("10.0.1.1", 4000), lambda n, now: n.find_node(n.node_id, now))
    net.run(duration=5)
    assert sent and not any(flags & FLAG_READ_ONLY for flags in sent)
    assert server.table.get(client.node_id) is not None


def test_without_the_option_the_core_reports_nothing() -> None:
    net = MemoryNetwork()
    net.add_node(("10.0.0.1", 4000), 1)
    net.add_node(("10.0.1.1", 4000), 2)
    net.command(("10.0.1.1", 4000), lambda n, now: n.bootstrap([("10.0.0.1", 4000)], now))
    net.run(duration=5)
    assert not any(isinstance(e, AddressObserved) for e in net.events[("10.0.1.1", 4000)])


def test_a_node_in_auto_mode_on_loopback_starts_as_a_client_and_serves_once_seen() -> None:
    async def main() -> None:
        server = await UdpDhtNode.create("127.0.0.1", 0)
        node = await UdpDhtNode.create("127.0.0.1", 0, auto_mode=True)
        try:
            assert node.core.config.read_only and node.reachability is not None
            await node.bootstrap([server.address], timeout=10)
            assert node.reachability.verdict == "reachable"
            assert not node.core.config.read_only
        finally:
            await node.close()
            await server.close()
    asyncio.run(main())


@pytest.mark.parametrize("observed", [("198.51.100.7", 61000), ("127.0.0.1", 1)])
def test_a_node_in_auto_mode_that_peers_see_elsewhere_stays_a_client(
        observed: tuple[str, int]) -> None:
    async def main() -> None:
        node = await UdpDhtNode.create("127.0.0.1", 0, auto_mode=True)
        try:
            for i in range(3):
                node._dispatch(AddressObserved(peer=(f"127.0.0.{i + 2}", 4000),
                                               observed=observed))
            assert node.reachability is not None
            assert node.reachability.verdict == "behind-nat"
            assert node.core.config.read_only
        finally:
            await node.close()
    asyncio.run(main())
