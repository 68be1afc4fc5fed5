"""asyncio UDP driver for the sans-IO :class:`~dhtchat.core.node.DhtNode`.

The driver is deliberately thin: it feeds received datagrams and timer expiries into the core
with ``now = time.time()`` (records carry absolute UNIX expiry times), sends what the core
queues, arms one ``call_at`` timer at the core's deadline, and turns the core's events into
future results and subscription items. Commands return when their completion event arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from dhtchat.core.addresses import Address
from dhtchat.core.events import (
    AddressObserved,
    BootstrapCompleted,
    Event,
    GetCompleted,
    ListenStarted,
    LookupCompleted,
    PutCompleted,
    ValueFound,
)
from dhtchat.core.identity import SEED_BYTES, SigningIdentity
from dhtchat.core.node import DhtConfig, DhtNode
from dhtchat.core.reachability import Reachability
from dhtchat.core.records import Record
from dhtchat.core.stun import looks_like_stun

log = logging.getLogger("dhtchat.net")

_E = TypeVar("_E", bound=Event)

_SOCKET_BUFFER = 4 * 1024 * 1024
_MAX_TIMER_DELAY = 5.0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) surface here; the core sees them as timeouts.
        log.debug("socket error: %s", exc)


class Subscription:
    """Records pushed for one ``listen``; iterate with ``async for``; ``close()`` to stop."""

    def __init__(self, query_id: int, cancel: Callable[[int], None]) -> None:
        self._cancel = cancel
        self.query_id = query_id
        self.queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=1024)
        self.started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # Called with each pushed record and the storer that pushed it; False drops it
        # before it is queued (a per-storer rate limit: one storer cannot evict the rest).
        self.admit: Callable[[Record, Address | None], bool] | None = None

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        """Cancel the subscription."""
        self._cancel(self.query_id)


class UdpDhtNode:
    """A DHT node on a real UDP socket."""

    def __init__(self, core: DhtNode, on_event: Callable[[Event], None] | None) -> None:
        self.core = core
        self._on_event = on_event
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, asyncio.Future[Event]] = {}
        self._subscriptions: dict[int, Subscription] = {}
        self._loop = asyncio.get_running_loop()
        self.address: Address = ("", 0)
        self.internal_errors = 0
        self.stun_answered = 0
        # Decides client or server from what peers see (create(..., auto_mode=True)).
        self.reachability: Reachability | None = None
        self._local_ips: dict[str, str] = {}  # peer host -> our address towards it

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        node_key: SigningIdentity | None = None,
        seed: int | None = None,
        config: DhtConfig | None = None,
        on_event: Callable[[Event], None] | None = None,
        auto_mode: bool = False,
    ) -> UdpDhtNode:
        """Bind a UDP socket on ``host:port`` (0: any free port) and start the node.

        ``seed`` makes the node key and the node's randomness reproducible (tests and
        benchmarks); otherwise both come from the OS's CSPRNG. ``auto_mode``: start as a
        read-only DHT client and serve once peers see us at our own address
        (dhtchat.core.reachability); ``config.read_only`` is then where it starts.
        """
        if auto_mode:
            config = dataclasses.replace(config or DhtConfig(), read_only=True,
                                         report_observed_addresses=True)
        if seed is not None:
            rng = random.Random(seed)
            key = node_key or SigningIdentity.from_seed(rng.randbytes(SEED_BYTES))
        else:
            rng = random.Random(secrets.token_bytes(32))
            key = node_key or SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
        core = DhtNode(key, rng=rng, now=time.time(), config=config)
        node = cls(core, on_event)
        if auto_mode:
            node.reachability = Reachability()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(node._on_datagram), local_addr=(host, port)
        )
        node._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # the kernel may cap it; that is fine
                    sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        sockname = transport.get_extra_info("sockname")
        node.address = (str(sockname[0]), int(sockname[1]))
        node._flush()
        return node

    @property
    def node_id(self) -> bytes:
        """This node's id."""
        return self.core.node_id

    # ---------------------------------------------------------------- commands

    async def bootstrap(self, addresses: list[Address], timeout: float = 15.0) -> int:
        """Join through ``addresses``; returns the routing table size afterwards."""
        event = await self._run(lambda now: self.core.bootstrap(addresses, now),
                                BootstrapCompleted, timeout)
        return event.contacts

    def add_known_peers(self, peers: list[tuple[bytes, Address]]) -> None:
        """Re-verify DHT peers (routing-table entries) saved by an earlier run."""
        self.core.add_known_contacts(peers, time.time())
        self._flush()

    async def find_node(self, target: bytes, timeout: float = 15.0) -> LookupCompleted:
        """Iterative lookup of the k closest nodes to ``target``."""
        return await self._run(lambda now: self.core.find_node(target, now), LookupCompleted,
                               timeout)

    async def put(self, record: Record, *, republish: bool = False,
                  timeout: float = 15.0) -> PutCompleted:
        """Store a signed record on the k closest nodes."""
        return await self._run(lambda now: self.core.put(record, now, republish=republish),
                               PutCompleted, timeout)

    async def get(self, key: bytes, *, owner: bytes | None = None,
                  timeout: float = 15.0) -> list[Record]:
        """Newest valid record per owner under ``key`` (empty when none)."""
        event = await self._run(lambda now: self.core.get(key, now, owner=owner), GetCompleted,
                                timeout)
        return list(event.records)

    async def listen(self, key: bytes, timeout: float = 15.0) -> Subscription:
        """Subscribe to records stored under ``key`` from now on."""
        query_id = self.core.listen(key, time.time())
        sub = Subscription(query_id, self._cancel)
        self._subscriptions[query_id] = sub
        self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(sub.started), timeout)
        except TimeoutError:
            sub.close()
            raise
        return sub

    def peers(self) -> list[tuple[bytes, Address, float]]:
        """The routing table's DHT peers, ``(node id, address, last seen)`` (for
        persistence; Kademlia's "contacts", not the person's contact list)."""
        return [(c.node_id, c.address, c.last_seen) for c in self.core.table.contacts()]

    async def close(self) -> None:
        """Close the socket and cancel the timer; pending commands fail."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("node closed"))
        self._waiters.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        await asyncio.sleep(0)

    # ---------------------------------------------------------------- plumbing

    async def _run(self, start: Callable[[float], int], kind: type[_E], timeout: float) -> _E:
        if self._transport is None:
            raise ConnectionError("node is closed")
        query_id = start(time.time())
        fut: asyncio.Future[Event] = self._loop.create_future()
        self._waiters[query_id] = fut
        self._flush()
        try:
            event = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._cancel(query_id)
            raise
        finally:
            self._waiters.pop(query_id, None)
        assert isinstance(event, kind)
        return event

    def _cancel(self, query_id: int) -> None:
        self.core.cancel(query_id)
        self._subscriptions.pop(query_id, None)

    def _on_datagram(self, data: bytes, address: Address) -> None:
        if looks_like_stun(data):
            self._answer_stun(data, address)
            return
        try:
            self.core.receive_datagram(data, address, time.time())
        except Exception:  # a bug must not take the node down; it is logged with context
            self.internal_errors += 1
            log.exception("internal error handling a datagram from %s", address)
        self._flush()

    def _answer_stun(self, data: bytes, address: Address) -> None:
        """Answer a STUN Binding request (RFC 5389) so peers learn their reflexive address;
        the core's :class:`~dhtchat.core.stun.StunResponder` decides whether (no amplification
        towards an IP that has not shown it receives, per-IP and per-/24 limits)."""
        response = self.core.stun.answer(data, address, time.time())
        if response is None or self._transport is None:
            return
        try:
            self._transport.sendto(response, address)
            self.stun_answered += 1
        except (OSError, ValueError) as exc:
            log.debug("STUN answer to %s failed: %s", address, exc)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.core.handle_timer(time.time())
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in timer handling")
        self._flush()

    def _flush(self) -> None:
        now = time.time()
        transport = self._transport
        if transport is None:
            return
        for data, address in self.core.datagrams_to_send(now):
            try:
                transport.sendto(data, address)
            except (OSError, ValueError) as exc:
                log.debug("send to %s failed: %s", address, exc)
        try:
            while (event := self.core.next_event()) is not None:
                self._dispatch(event)
        finally:  # a failing on_event callback must not leave the core without a timer
            self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        deadline = self.core.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            # Capped so that a wall-clock step backwards delays timers by seconds, not hours;
            # an early call is harmless (the core only acts on what is due).
            delay = min(max(0.0, deadline - now), _MAX_TIMER_DELAY)
            self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)

    def _local_ip_towards(self, host: str) -> str:
        """The address our socket uses towards ``host`` (bound to a wildcard: the route's)."""
        bound = self.address[0]
        if bound not in ("0.0.0.0", "::", ""):
            return bound
        cached = self._local_ips.get(host)
        if cached is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((host, 9))  # no packet is sent: only the route is chosen
                    cached = str(probe.getsockname()[0])
            except OSError:
                cached = bound
            if len(self._local_ips) >= 256:
                self._local_ips.clear()
            self._local_ips[host] = cached
        return cached

    def _observed(self, event: AddressObserved) -> None:
        if self.reachability is None:
            return
        before = self.reachability.verdict
        local = (self._local_ip_towards(event.peer[0]), self.address[1])
        verdict = self.reachability.observe(event.peer, event.observed, local)
        if verdict in (before, "unknown"):
            return
        serving = verdict == "reachable"
        if serving == self.core.config.read_only:
            self.core.set_read_only(not serving)
        log.info("DHT %s: a peer sees us at %s:%d, we send from %s:%d",
                 "server" if serving else "client (behind a NAT)", *event.observed, *local)

    def _dispatch(self, event: Event) -> None:
        query_id = getattr(event, "query_id", None)
        if isinstance(event, AddressObserved):
            self._observed(event)
        elif isinstance(event, ValueFound):
            sub = self._subscriptions.get(event.query_id)
            if sub is not None and (sub.admit is None or sub.admit(event.record, event.source)):
                if sub.queue.full():
                    sub.queue.get_nowait()
                sub.queue.put_nowait(event.record)
        elif isinstance(event, ListenStarted):
            sub = self._subscriptions.get(event.query_id)
            if sub is not None and not sub.started.done():
                sub.started.set_result(event.storers)
        elif query_id is not None and query_id in self._waiters:
            fut = self._waiters[query_id]
            if not fut.done():
                fut.set_result(event)
        if self._on_event is not None:
            self._on_event(event)
