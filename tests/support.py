"""Test support: a deterministic in-memory network of sans-IO nodes on a manual clock."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dhtchat.core.addresses import Address
from dhtchat.core.events import Event
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.node import DhtConfig, DhtNode


def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "",
               interval: float = 0.1) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` real seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], bool], timeout: float, what: str = "",
                           interval: float = 0.05) -> None:
    """:func:`wait_until` inside an event loop (the loop keeps running while we wait)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate}")
        await asyncio.sleep(interval)


def node_key(seed: int) -> SigningIdentity:
    """A deterministic node key."""
    return SigningIdentity.from_seed(random.Random(seed).randbytes(32))


@dataclass
class MemoryNetwork:
    """Delivers datagrams between core nodes with a fixed latency on a virtual clock."""

    latency: float = 0.01
    now: float = 1_700_000_000.0
    nodes: dict[Address, DhtNode] = field(default_factory=dict)
    events: dict[Address, list[Event]] = field(default_factory=dict)
    dropped_to: set[Address] = field(default_factory=set)
    tap: Callable[[bytes, Address, Address], None] | None = None
    _heap: list[tuple[float, int, Address, Address | None, bytes]] = field(default_factory=list)
    _seq: int = 0

    def add_node(self, address: Address, seed: int, config: DhtConfig | None = None) -> DhtNode:
        node = DhtNode(node_key(seed), rng=random.Random(seed), now=self.now, config=config)
        self.nodes[address] = node
        self.events[address] = []
        self._schedule_timer(address)
        return node

    def _push(self, at: float, dst: Address, src: Address | None, data: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, dst, src, data))

    def _schedule_timer(self, address: Address) -> None:
        deadline = self.nodes[address].get_timer()
        if deadline is not None:
            self._push(max(deadline, self.now), address, None, b"")

    def flush(self, address: Address) -> None:
        """Move a node's outgoing datagrams into the network and collect its events."""
        node = self.nodes[address]
        for data, dst in node.datagrams_to_send(self.now):
            if self.tap is not None:
                self.tap(data, address, dst)
            if dst in self.nodes and dst not in self.dropped_to:
                self._push(self.now + self.latency, dst, address, data)
        while (event := node.next_event()) is not None:
            self.events[address].append(event)
        self._schedule_timer(address)

    def inject(self, data: bytes, src: Address, dst: Address) -> None:
        """Deliver a raw datagram now (from outside the set of nodes)."""
        self.nodes[dst].receive_datagram(data, src, self.now)
        self.flush(dst)

    def run(self, until: float | None = None, duration: float | None = None,
            stop: Callable[[], bool] | None = None, max_steps: int = 2_000_000) -> None:
        """Process scheduled deliveries and timers in time order."""
        end = until if until is not None else self.now + (duration or 3600.0)
        for _ in range(max_steps):
            if stop is not None and stop():
                return
            if not self._heap or self._heap[0][0] > end:
                self.now = max(self.now, end) if stop is None else self.now
                return
            at, _, dst, src, data = heapq.heappop(self._heap)
            self.now = max(self.now, at)
            node = self.nodes[dst]
            if src is None:
                deadline = node.get_timer()
                if deadline is None or deadline > self.now:
                    continue
                node.handle_timer(self.now)
            else:
                node.receive_datagram(data, src, self.now)
            self.flush(dst)
        raise AssertionError("simulation did not settle")

    def command(self, address: Address, fn: Callable[[DhtNode, float], int]) -> int:
        """Issue a command on a node and flush its output."""
        qid = fn(self.nodes[address], self.now)
        self.flush(address)
        return qid

    def wait_for(self, address: Address, predicate: Callable[[Event], bool],
                 timeout: float = 60.0) -> Event:
        """Run until ``address`` has an event matching ``predicate``; return it."""
        found: list[Event] = []

        def check() -> bool:
            found[:] = [e for e in self.events[address] if predicate(e)]
            return bool(found)

        self.run(duration=timeout, stop=check)
        if not check():
            raise AssertionError(f"no matching event at {address} within {timeout}s")
        return found[0]


def build_network(count: int, *, config: DhtConfig | None = None, seed: int = 1,
                  latency: float = 0.01) -> MemoryNetwork:
    """``count`` nodes on distinct /24s, bootstrapped from the first, fully settled."""
    net = MemoryNetwork(latency=latency)
    addresses = [(f"10.{i // 250}.{i % 250}.1", 4000) for i in range(count)]
    for i, address in enumerate(addresses):
        net.add_node(address, seed * 100_000 + i, config)
    for address in addresses[1:]:
        net.command(address, lambda n, now: n.bootstrap([addresses[0]], now))
        net.run(duration=2.0)
    net.run(duration=30.0)
    return net


def deterministic_bytes(seed: int) -> Callable[[int], bytes]:
    """A reproducible ``random_bytes`` for the core's injected randomness (a SHA-256 chain)."""
    state = hashlib.sha256(seed.to_bytes(8, "big")).digest()

    def draw(n: int) -> bytes:
        nonlocal state
        out = b""
        while len(out) < n:
            state = hashlib.sha256(state).digest()
            out += state
        return out[:n]
    return draw
