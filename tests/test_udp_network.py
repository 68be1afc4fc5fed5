"""Integration over real loopback UDP sockets: 64 nodes, 200 put/get pairs, all succeed."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest

from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import make_app_record
from dhtchat.net.udp import UdpDhtNode
from tests.support import async_wait_until


async def _network(count: int, host_of: object = None) -> list[UdpDhtNode]:
    nodes = [await UdpDhtNode.create(f"127.0.{i + 1}.1", 0, seed=i) for i in range(count)]
    first = nodes[0].address
    await asyncio.gather(*(n.bootstrap([first]) for n in nodes[1:]))
    return nodes


def test_64_nodes_200_put_get_pairs_all_succeed() -> None:
    async def scenario() -> tuple[int, list[float]]:
        nodes = await _network(64)
        try:
            # The scenario, not an event wait: let the first maintenance round (bucket refresh
            # lookups) run on a real clock before the workload, as a deployed network would.
            await asyncio.sleep(6.0)
            rng = random.Random(64)
            successes = 0
            latencies: list[float] = []
            for i in range(200):
                signer = SigningIdentity.from_seed(rng.randbytes(32))
                record = make_app_record(signer, f"key-{i}", f"value-{i}".encode(), seq=1,
                                         expires=int(time.time()) + 600)
                writer, reader = rng.sample(nodes, 2)
                start = time.perf_counter()
                put = await writer.put(record)
                found = await reader.get(record.key)
                latencies.append(time.perf_counter() - start)
                if put.stored >= 1 and [r.value for r in found] == [record.value]:
                    successes += 1
            assert sum(n.internal_errors for n in nodes) == 0
            sizes = [len(n.core.table) for n in nodes]
            assert min(sizes) >= 8, sizes
            return successes, latencies
        finally:
            for node in nodes:
                await node.close()

    successes, latencies = asyncio.run(scenario())
    latencies.sort()
    print(f"200 put+get pairs: p50 {latencies[100] * 1000:.1f} ms, "
          f"p95 {latencies[190] * 1000:.1f} ms")
    assert successes == 200


def test_listen_push_over_udp() -> None:
    async def scenario() -> bytes:
        nodes = await _network(12)
        try:
            signer = SigningIdentity.from_seed(b"L" * 32)
            first = make_app_record(signer, "status", b"away", seq=1,
                                    expires=int(time.time()) + 600)
            sub = await nodes[5].listen(first.key)
            await nodes[9].put(first)
            second = make_app_record(signer, "status", b"online", seq=2,
                                     expires=int(time.time()) + 600)
            await nodes[2].put(second)
            seen = []
            async for record in sub:
                seen.append(record.value)
                if record.seq == 2:
                    break
            sub.close()
            return seen[-1]
        finally:
            for node in nodes:
                await node.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == b"online"


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback on this host")
def test_ipv6_loopback_network() -> None:
    async def scenario() -> bool:
        nodes = [await UdpDhtNode.create("::1", 0, seed=100 + i) for i in range(5)]
        try:
            await asyncio.gather(*(n.bootstrap([nodes[0].address]) for n in nodes[1:]))
            record = make_app_record(SigningIdentity.from_seed(b"6" * 32), "v6", b"ok", seq=1,
                                     expires=int(time.time()) + 600)
            put = await nodes[1].put(record)
            found = await nodes[4].get(record.key)
            return put.stored >= 1 and [r.value for r in found] == [b"ok"]
        finally:
            for node in nodes:
                await node.close()

    assert asyncio.run(scenario())


def test_garbage_over_udp_does_not_hurt_the_node() -> None:
    async def scenario() -> int:
        nodes = await _network(4)
        try:
            rng = random.Random(1)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.200.1", 0))
                for _ in range(2000):
                    sock.sendto(rng.randbytes(rng.randint(0, 1500)), nodes[0].address)
            # The flood is being read: the put below runs while the rest is still arriving.
            await async_wait_until(lambda: nodes[0].core.stats["misbehaved"] > 0, 10,
                                   "the flood reached the node")
            record = make_app_record(SigningIdentity.from_seed(b"g" * 32), "g", b"fine", seq=1,
                                     expires=int(time.time()) + 600)
            put = await nodes[0].put(record)
            assert nodes[0].internal_errors == 0
            assert nodes[0].core.stats["misbehaved"] > 0
            return put.stored
        finally:
            for node in nodes:
                await node.close()

    assert asyncio.run(scenario()) >= 1
