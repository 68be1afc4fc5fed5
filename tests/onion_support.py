"""Test support for the onion machines: relays and a client on a manual clock, in memory."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dhtchat.core.addresses import Address
from dhtchat.core.events import Event
from dhtchat.core.onion import ExitRequest, OnionConfig, OnionRelay
from dhtchat.core.onion_cells import onion_secret_key, x25519_public
from dhtchat.core.onion_client import OnionClient, RelayInfo

CLIENT: Address = ("192.168.7.2", 5000)
E = TypeVar("E", bound=Event)


def relay_address(i: int) -> Address:
    """Relay ``i`` on its own /16."""
    return (f"10.{i + 1}.0.1", 4000 + i)


def exit_echo(relay: OnionRelay, event: ExitRequest, now: float) -> None:
    """An exit that answers every request with ``b"re:" + data``."""
    relay.respond(event.circuit, event.request_id, b"re:" + event.data, now)


@dataclass
class OnionNet:
    """Delivers cells between onion machines with a fixed latency on a virtual clock."""

    relays_count: int = 6
    seed: int = 1
    config: OnionConfig = field(default_factory=OnionConfig)
    latency: float = 0.01
    now: float = 1_700_000_000.0
    on_exit: Callable[[OnionRelay, ExitRequest, float], None] | None = exit_echo
    relays: dict[Address, OnionRelay] = field(default_factory=dict)
    infos: list[RelayInfo] = field(default_factory=list)
    events: dict[Address, list[Event]] = field(default_factory=dict)
    log: list[tuple[Address, Address, bytes]] = field(default_factory=list)
    down: set[Address] = field(default_factory=set)
    _heap: list[tuple[float, int, Address, Address, bytes]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        for i in range(self.relays_count):
            address = relay_address(i)
            secret = onion_secret_key(rng.randbytes(32))
            node_id = rng.randbytes(32)
            self.relays[address] = OnionRelay(secret, node_id, rng=random.Random(rng.random()),
                                              now=self.now, config=self.config)
            self.infos.append(RelayInfo(node_id, address, x25519_public(secret)))
            self.events[address] = []
        self.client = OnionClient(rng=random.Random(self.seed + 1000), now=self.now,
                                  config=self.config)
        self.client.set_relays(self.infos)
        self.events[CLIENT] = []

    def info(self, i: int) -> RelayInfo:
        return self.infos[i]

    def relay(self, i: int) -> OnionRelay:
        return self.relays[relay_address(i)]

    def inject(self, data: bytes, src: Address, dst: Address) -> None:
        """Deliver ``data`` to ``dst`` as if ``src`` sent it, after the latency."""
        self._seq += 1
        heapq.heappush(self._heap, (self.now + self.latency, self._seq, dst, src, data))

    def _flush(self) -> None:
        sources: list[tuple[Address, OnionRelay | OnionClient]] = [(CLIENT, self.client)]
        sources += list(self.relays.items())
        for address, machine in sources:
            while (event := machine.next_event()) is not None:  # answers go out below
                self.events[address].append(event)
                if isinstance(event, ExitRequest) and isinstance(machine, OnionRelay) \
                        and self.on_exit is not None:
                    self.on_exit(machine, event, self.now)
            for data, dst in machine.datagrams_to_send(self.now):
                self.log.append((address, dst, data))
                if dst not in self.down:
                    self.inject(data, address, dst)

    def _next_timer(self) -> float | None:
        machines: list[OnionRelay | OnionClient] = [self.client, *self.relays.values()]
        timers = [t for t in (m.get_timer() for m in machines) if t is not None]
        return min(timers) if timers else None

    def run(self, duration: float, max_steps: int = 100_000) -> None:
        """Advance the clock by ``duration``, delivering cells and firing timers."""
        until = self.now + duration
        for _ in range(max_steps):
            self._flush()
            timer = self._next_timer()
            delivery = self._heap[0][0] if self._heap else None
            candidates = [t for t in (timer, delivery) if t is not None and t <= until]
            if not candidates:
                self.now = until
                self._flush()
                return
            self.now = max(self.now, min(candidates))
            if delivery is not None and delivery <= self.now:
                _, _, dst, src, data = heapq.heappop(self._heap)
                if dst == CLIENT:
                    self.client.receive_datagram(data, src, self.now)
                elif dst in self.relays and dst not in self.down:
                    self.relays[dst].receive_datagram(data, src, self.now)
            else:
                self.client.handle_timer(self.now)
                for relay in self.relays.values():
                    relay.handle_timer(self.now)
        raise AssertionError(f"network did not settle within {max_steps} steps")

    def client_events(self, kind: type[E]) -> list[E]:
        return [e for e in self.events[CLIENT] if isinstance(e, kind)]

    def peers_of(self, address: Address) -> set[Address]:
        """Every address ``address`` exchanged a cell with."""
        seen = {dst for src, dst, _ in self.log if src == address}
        return seen | {src for src, dst, _ in self.log if dst == address}
