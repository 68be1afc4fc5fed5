"""Baseline: the ``kademlia`` PyPI package's own classes on the simulated network.

The simulator reports dhtchat's numbers next to those of the unmodified ``kademlia`` package
(2.2.x, on ``rpcudp``) measured on the same latency, loss and churn models, so one run gives
both and their ratio. The library's known faults (lockstep lookup rounds, a 5 s RPC timeout
that stalls a whole round, one missed reply evicting a contact, ``find_neighbors`` returning
the first ``k`` contacts of a table walk rather than the ``k`` closest) are what dhtchat is
measured against, so the library runs as shipped: only its environment is simulated.

Theory of operation
-------------------

* **Virtual time and datagrams** (:mod:`dhtchat.sim.virtual`). The library runs on a
  :class:`~dhtchat.sim.virtual.VirtualTimeLoop`, an asyncio loop whose clock jumps to the next
  timer, and sends through a :class:`~dhtchat.sim.virtual.SimDatagramNetwork`, which drops or
  delays each datagram by the loss and latency models; every node has a virtual address
  (``10.a.b.c``, port 4000). A run is a pure function of its inputs and costs no wall time
  waiting.
* **Nodes.** ``kademlia.network.Server(ksize=k, alpha=alpha, node_id=...)`` with ids
  ``sha1(seed, index)``. ``Server.listen`` would open a UDP socket, so :func:`_start_server`
  does what it does with the fake transport instead: a ``server.protocol_class`` instance,
  ``protocol.connection_made(transport)`` and ``server.refresh_table()`` (whose hourly timer
  runs on virtual time and dies with the run).
* **Library clock and randomness.** For the duration of a run ``kademlia.routing.time`` is
  replaced by the virtual clock (bucket ages drive the hourly refresh) and
  ``kademlia.protocol.random`` by a seeded ``random.Random`` (refresh targets). rpcudp's
  message ids come from ``os.urandom``; they are opaque tokens and do not affect results.
  Runs patch module globals: do not run two baselines at once in different threads.
* **Run.** Nodes join one after the other, each bootstrapping (``Server.bootstrap``: ping,
  then a lookup of its own id) through ``bootstrap_peers`` random nodes that joined before
  (a join that finds nobody is tried again with fresh picks, ``join_attempts`` tries in all).
  Then churn starts (optional) and, after ``churn_warmup`` seconds, one lookup begins every
  ``lookup_interval`` virtual seconds (open-loop arrivals, so lookups overlap as in a live
  network and meet each other's side effects on the routing tables). A lookup is what
  ``Server.set`` does before storing: ``router.find_neighbors(target)`` then
  ``NodeSpiderCrawl(protocol, target, nearest, ksize, alpha).find()``, from a random online
  node to a random 160-bit target.
* **Measurement.** Latency is virtual time from start to the crawl's return. Success: the
  result holds the node closest to the target among all nodes other than the searcher that
  were online for the whole lookup (an oracle sorting every id by XOR distance); ``exact_k``:
  it holds all ``k`` closest; ``k_recall``: the fraction of those it holds. ``rounds`` counts
  the crawler's lockstep iterations (calls to ``find``); ``hops`` uses dhtchat's definition
  (``core/lookup.py``): sequential requests needed to learn the closest returned node, 1 for
  the searcher's own contacts, one more than the node that named it otherwise (minimum over
  the nodes that named it). ``rpcs`` are the crawl's FIND_NODE requests; per-lookup
  ``messages``/``bytes`` count every datagram causally descended from the lookup (requests,
  replies and the pings they provoke), traced with
  :func:`~dhtchat.sim.virtual.trace_traffic`. Bytes are UDP payload bytes (no IP/UDP
  headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import math
import random
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import kademlia.protocol
import kademlia.routing
from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from dhtchat.sim.models import ChurnModel, LatencyModel
from dhtchat.sim.virtual import (
    Address,
    SimDatagramNetwork,
    Traffic,
    VirtualTimeLoop,
    run_virtual,
    trace_traffic,
)

__all__ = ["ChurnMode", "node_id_for", "run_kademlia_baseline"]

ChurnMode = Literal["reconnect", "restart"]

ID_BYTES = 20  # kademlia: SHA-1 sized ids
_FAR = 1 << (8 * ID_BYTES + 1)  # farther than any XOR distance


def node_id_for(seed: int, index: int) -> bytes:
    """The 160-bit kademlia id of node ``index`` in the run seeded with ``seed``."""
    return hashlib.sha1(f"dhtchat-sim/kademlia/{seed}/node/{index}".encode()).digest()


# --------------------------------------------------------------------------- kademlia glue


class _VirtualMonotonic:
    """Replaces the ``time`` module inside ``kademlia.routing`` (only ``monotonic`` is used)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def monotonic(self) -> float:
        return self._loop.time()


@contextlib.contextmanager
def _kademlia_on_virtual_time(loop: asyncio.AbstractEventLoop, seed: int) -> Iterator[None]:
    """Point the library's clock and RNG at the run; silence its per-message logging."""
    saved_time = kademlia.routing.time
    saved_random = kademlia.protocol.random
    loggers = [logging.getLogger(name) for name in ("kademlia", "rpcudp")]
    saved_levels = [lg.level for lg in loggers]
    kademlia.routing.time = _VirtualMonotonic(loop)
    kademlia.protocol.random = random.Random(f"{seed}/kademlia-library")
    for lg in loggers:  # rpcudp logs every timeout at ERROR
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        kademlia.routing.time = saved_time
        kademlia.protocol.random = saved_random
        for lg, level in zip(loggers, saved_levels, strict=True):
            lg.setLevel(level)


def _start_server(server: Any, network: SimDatagramNetwork, index: int) -> None:
    """What ``Server.listen`` does, on the simulated network instead of a UDP socket."""
    # Server._create_protocol, from the public attributes it reads
    protocol = cast(asyncio.DatagramProtocol,
                    server.protocol_class(server.node, server.storage, server.ksize))
    server.protocol = protocol
    server.transport = network.attach(index, protocol)
    server.refresh_table()


def _table_size(server: Any) -> int:
    return sum(len(bucket) for bucket in server.protocol.router.buckets)


class _CrawlProbe:
    """Passed to ``NodeSpiderCrawl`` as its protocol: forwards ``call_find_node`` unchanged
    (the real protocol still updates its routing table) and records requests, failures and
    how many sequential requests it took to learn each node."""

    def __init__(self, protocol: Any, initial: Sequence[Any]) -> None:
        self._protocol = protocol
        self.hops: dict[bytes, int] = {cast(bytes, n.id): 1 for n in initial}
        self.rpcs = 0
        self.failures = 0

    async def call_find_node(self, node_to_ask: Any, node_to_find: Any) -> Any:
        self.rpcs += 1
        result = await self._protocol.call_find_node(node_to_ask, node_to_find)
        if not result[0]:
            self.failures += 1
            return result
        via = self.hops.get(cast(bytes, node_to_ask.id), 1) + 1
        for entry in result[1] or []:
            node_id = cast(bytes, entry[0])
            if via < self.hops.get(node_id, via + 1):
                self.hops[node_id] = via
        return result


class _RoundCountingCrawl(NodeSpiderCrawl):  # type: ignore[misc]
    """``NodeSpiderCrawl`` unchanged but for counting its rounds (each round calls find())."""

    rounds = 0

    async def find(self) -> Any:
        self.rounds += 1
        return await super().find()


# ------------------------------------------------------------------------------- the run


@dataclass
class _LookupRecord:
    source: int
    target: int
    start: float
    end: float = 0.0
    abandoned: bool = False
    no_contacts: bool = False
    success: bool = False
    exact_k: bool = False
    k_recall: float = 0.0
    rounds: int = 0
    hops: int = 0
    rpcs: int = 0
    rpc_failures: int = 0
    traffic: Traffic = field(default_factory=Traffic)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    return {
        "p50": round(_percentile(ordered, 50), digits),
        "p95": round(_percentile(ordered, 95), digits),
        "p99": round(_percentile(ordered, 99), digits),
        "mean": round(mean, digits),
        "max": round(ordered[-1] if ordered else 0.0, digits),
    }


class _Baseline:
    """State of one run; see :func:`run_kademlia_baseline`."""

    def __init__(
        self,
        loop: VirtualTimeLoop,
        *,
        nodes: int,
        lookups: int,
        seed: int,
        k: int,
        alpha: int,
        latency: LatencyModel,
        loss: float,
        lookup_interval: float,
        bootstrap_peers: int,
        join_attempts: int,
        churn: ChurnModel | None,
        churn_mode: ChurnMode,
        churn_warmup: float,
        churn_events: Sequence[tuple[float, int, bool]],
    ) -> None:
        self.loop = loop
        self.n = nodes
        self.lookups = lookups
        self.seed = seed
        self.k = k
        self.alpha = alpha
        self.lookup_interval = lookup_interval
        self.bootstrap_peers = bootstrap_peers
        self.join_attempts = join_attempts
        self.churn = churn
        self.churn_mode = churn_mode
        self.churn_warmup = churn_warmup
        self.churn_events = churn_events
        self.network = SimDatagramNetwork(loop, nodes, seed=seed, latency=latency, loss=loss)
        self.ids = [node_id_for(seed, i) for i in range(nodes)]
        self.long_ids = [int.from_bytes(b, "big") for b in self.ids]
        self.servers: list[Any] = [None] * nodes
        self.saved_neighbors: list[list[Address]] = [[] for _ in range(nodes)]
        self.scenario = random.Random(f"{seed}/scenario")
        self.background: set[asyncio.Task[Any]] = set()
        self.records: list[_LookupRecord] = []
        self.join = Traffic()
        self.join_failures = 0
        self.join_retries = 0
        self.join_seconds = 0.0
        self.table_sizes: list[int] = []
        self.transitions = 0
        self.online_at_lookup_start: list[int] = []
        self.end_time = 0.0
        self.end_events = 0
        self.end_errors = 0

    # -- nodes -------------------------------------------------------------------------

    def _new_server(self, index: int) -> Any:
        server = Server(ksize=self.k, alpha=self.alpha, node_id=self.ids[index])
        _start_server(server, self.network, index)
        self.servers[index] = server
        return server

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def set_online(self, index: int, online: bool) -> None:
        """Churn transition of node ``index`` (see ``churn_mode``)."""
        if self.network.online[index] == online or self.servers[index] is None:
            return
        self.transitions += 1
        if self.churn_mode == "restart":
            if not online:  # Server.save_state, then the process stops
                server = self.servers[index]
                self.saved_neighbors[index] = [
                    (str(a[0]), int(a[1])) for a in server.bootstrappable_neighbors()
                ]
                server.stop()
                self.network.set_online(index, False)
            else:  # Server.load_state: same id, fresh tables, bootstrap via saved neighbours
                server = self._new_server(index)
                if self.saved_neighbors[index]:
                    self._spawn(server.bootstrap(self.saved_neighbors[index]))
        else:
            self.network.set_online(index, online)

    def _churn_off(self, index: int, rng: random.Random, model: ChurnModel) -> None:
        self.set_online(index, False)
        self.loop.call_later(model.downtime.sample(rng), self._churn_on, index, rng, model)

    def _churn_on(self, index: int, rng: random.Random, model: ChurnModel) -> None:
        self.set_online(index, True)
        self.loop.call_later(model.session.sample(rng), self._churn_off, index, rng, model)

    # -- phases ------------------------------------------------------------------------

    async def _bootstrap(self, server: Any, peers: list[Address]) -> bool:
        trace_traffic(self.join)
        found = await server.bootstrap(peers)
        return bool(found)

    async def _join_all(self) -> None:
        t0 = self.loop.time()
        self._new_server(0)
        for i in range(1, self.n):
            server = self._new_server(i)
            ok = False
            for _ in range(self.join_attempts):
                count = min(self.bootstrap_peers, i)
                picks = self.scenario.sample(range(i), count)
                peers = [self.network.addresses[p] for p in picks]
                ok = await self.loop.create_task(self._bootstrap(server, peers))
                if ok:
                    break
                self.join_retries += 1
            self.join_failures += 0 if ok else 1
        self.join_seconds = self.loop.time() - t0
        self.table_sizes = [_table_size(s) for s in self.servers]

    def _start_churn(self) -> None:
        now = self.loop.time()
        if self.churn is not None:
            for i in range(self.n):
                rng = random.Random(f"{self.seed}/churn/{i}")
                first = self.churn.session.sample(rng)
                self.loop.call_at(now + first, self._churn_off, i, rng, self.churn)
        for at, index, online in self.churn_events:
            if not 0 <= index < self.n:
                raise ValueError(f"churn event for node {index} out of range")
            self.loop.call_at(now + at, self.set_online, index, online)

    def _pick_source(self) -> int | None:
        online = self.network.online
        if self.churn is None and not self.churn_events:
            return self.scenario.randrange(self.n)
        candidates = [i for i in range(self.n) if online[i]]
        return self.scenario.choice(candidates) if candidates else None

    async def _lookup(self, record: _LookupRecord) -> None:
        trace_traffic(record.traffic)
        server = self.servers[record.source]
        protocol = server.protocol
        node = Node(record.target.to_bytes(ID_BYTES, "big"))
        nearest = protocol.router.find_neighbors(node)  # as Server.set_digest does
        probe = _CrawlProbe(protocol, nearest)
        crawl = _RoundCountingCrawl(probe, node, nearest, self.k, self.alpha)
        found = cast(list[Any], await crawl.find()) if nearest else []
        record.end = self.loop.time()
        record.no_contacts = not nearest
        record.rpcs = probe.rpcs
        record.rpc_failures = probe.failures
        record.rounds = crawl.rounds if probe.rpcs else 0
        self._score(record, found, probe)

    def _score(self, record: _LookupRecord, found: list[Any], probe: _CrawlProbe) -> None:
        net = self.network
        src = record.source
        if not net.online[src] or net.last_change[src] > record.start:
            record.abandoned = True  # the searcher left during its lookup
            return
        target = record.target
        if self.churn is None and not self.churn_events:
            distances = [x ^ target for x in self.long_ids]
        else:  # only nodes online for the whole lookup count
            distances = [
                x ^ target if net.online[j] and net.last_change[j] <= record.start else _FAR
                for j, x in enumerate(self.long_ids)
            ]
        distances[src] = _FAR
        truth = [d for d in heapq.nsmallest(self.k, distances) if d < _FAR]
        got = {cast(int, n.long_id) ^ target for n in found}
        if truth:
            hits = sum(1 for d in truth if d in got)
            record.success = truth[0] in got
            record.exact_k = hits == len(truth)
            record.k_recall = hits / len(truth)
        if found:
            record.hops = probe.hops.get(cast(bytes, found[0].id), 0)

    async def _run_lookups(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        start = self.loop.time()
        for i in range(self.lookups):
            wait = start + i * self.lookup_interval - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.online_at_lookup_start.append(sum(self.network.online))
            source = self._pick_source()
            target = self.scenario.getrandbits(8 * ID_BYTES)
            if source is None:  # nobody online: counted as a failed lookup
                self.records.append(_LookupRecord(-1, target, self.loop.time(),
                                                  end=self.loop.time(), no_contacts=True))
                continue
            record = _LookupRecord(source, target, self.loop.time())
            self.records.append(record)
            tasks.append(self.loop.create_task(self._lookup(record)))
        await asyncio.gather(*tasks)

    async def main(self) -> None:
        await self._join_all()
        self._start_churn()
        if self.churn is not None or self.churn_events:
            await asyncio.sleep(self.churn_warmup)
        await self._run_lookups()
        self.end_time = self.loop.time()
        self.end_events = self.loop.events
        self.end_errors = len(self.loop.errors)
        for server in self.servers:
            if server is not None:
                server.stop()

    # -- report ------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        scored = [r for r in self.records if not r.abandoned]
        ran = [r for r in scored if not r.no_contacts]
        count = len(scored)

        def rate(flag: str) -> float:
            return round(sum(1 for r in scored if getattr(r, flag)) / count, 6) if count else 0.0

        lookups: dict[str, Any] = {
            "count": len(self.records),
            "scored": count,
            "abandoned": len(self.records) - count,
            "no_contacts": sum(1 for r in scored if r.no_contacts),
            "success_rate": rate("success"),
            "exact_k_rate": rate("exact_k"),
            "k_recall_mean": round(sum(r.k_recall for r in scored) / count, 6) if count else 0.0,
            "latency_ms": _summary([(r.end - r.start) * 1000.0 for r in ran]),
            "hops": _summary([float(r.hops) for r in ran if r.hops]),
            "rounds": _summary([float(r.rounds) for r in ran]),
            "rpcs": _summary([float(r.rpcs) for r in ran]),
            "rpc_timeouts": sum(r.rpc_failures for r in ran),
            "messages": _summary([float(r.traffic.messages) for r in ran]),
            "bytes": _summary([float(r.traffic.bytes) for r in ran]),
        }
        tables = self.table_sizes
        result: dict[str, Any] = {
            "implementation": "kademlia",
            "nodes": self.n,
            "k": self.k,
            "alpha": self.alpha,
            "seed": self.seed,
            "lookups": lookups,
            "join": {
                "virtual_seconds": round(self.join_seconds, 6),
                "failures": self.join_failures,
                "retries": self.join_retries,
                "messages": self.join.messages,
                "bytes": self.join.bytes,
                "routing_table": _summary([float(t) for t in tables], 1) if tables else {},
            },
            "messages_total": self.network.messages,
            "bytes_total": self.network.bytes,
            "datagrams_dropped": self.network.dropped,
            "events": self.end_events,
            "virtual_seconds": round(self.end_time, 6),
            "loop_errors": self.end_errors,
        }
        if self.churn is not None or self.churn_events:
            online = self.online_at_lookup_start
            result["churn"] = {
                "mode": self.churn_mode,
                "warmup_seconds": self.churn_warmup,
                "transitions": self.transitions,
                "online_fraction_at_lookups": round(
                    sum(online) / (len(online) * self.n), 6) if online else 0.0,
                "online_at_end": sum(self.network.online),
            }
        return result


def run_kademlia_baseline(
    *,
    nodes: int,
    lookups: int,
    seed: int,
    latency: LatencyModel,
    k: int = 20,
    alpha: int = 3,
    loss: float = 0.0,
    lookup_interval: float = 0.1,
    bootstrap_peers: int = 1,
    join_attempts: int = 1,
    churn: ChurnModel | None = None,
    churn_mode: ChurnMode = "reconnect",
    churn_warmup: float = 0.0,
    churn_events: Sequence[tuple[float, int, bool]] = (),
    max_virtual_seconds: float | None = None,
) -> dict[str, Any]:
    """Run the ``kademlia`` package on the simulated network and report its lookups.

    ``nodes`` servers join one after the other, each through ``bootstrap_peers`` random
    earlier nodes (``Server.bootstrap``; an application-level retry with other peers, up to
    ``join_attempts`` tries in all, when it returns no node); then ``lookups`` lookups
    start, one every ``lookup_interval`` virtual seconds (0: all at once), each from a random
    online node to a random 160-bit target.
    ``latency`` gives one-way delays (``dhtchat.sim.models``); ``loss`` is the probability
    that a datagram is lost.

    Churn starts when the last node has joined, and lookups start ``churn_warmup`` virtual
    seconds later:

    * ``churn``: every node alternates online sessions and offline periods drawn from the
      model's ``session`` and ``downtime`` distributions (all nodes start a session when
      churn starts).
    * ``churn_events``: explicit ``(seconds after the join phase, node index, online)``
      transitions, for scripted scenarios (e.g. a third of the nodes leaving at once).
    * ``churn_mode``: ``"reconnect"`` (default) — an offline node keeps its process and all
      its state but its network link is cut: datagrams to and from it are dropped (its own
      timers still run, so its hourly refresh may evict contacts it cannot reach, as the
      library would on a disconnected host); back online it simply answers again.
      ``"restart"`` — the process stops (``Server.save_state`` then ``stop``) and restarts
      like ``Server.load_state``: same id and address, empty routing table and storage,
      ``bootstrap`` through the neighbours saved when it stopped.

    Lookups whose searcher goes offline before they finish are reported as ``abandoned`` and
    left out of the rates and distributions. ``max_virtual_seconds`` bounds the run's
    virtual time (:class:`~dhtchat.sim.virtual.VirtualTimeExceededError`).

    Returns a JSON-ready dict that depends only on the arguments: ``nodes``, ``k``,
    ``alpha``, ``seed``; ``lookups`` with ``count``, ``scored`` (not abandoned),
    ``abandoned``, ``no_contacts`` (``find_neighbors`` gave the searcher nobody to ask, so the
    lookup failed at once: an empty table, or the library's table walk stopping at an empty
    bucket), ``success_rate`` (closest node found), ``exact_k_rate`` (all ``k`` closest
    found), ``k_recall_mean`` (rates over the scored lookups), distributions
    (``p50``/``p95``/``p99``/``mean``/``max``) of ``latency_ms``, ``hops``, ``rounds``,
    ``rpcs``, ``messages`` and ``bytes`` per lookup and ``rpc_timeouts`` (over the lookups
    that sent requests); ``join`` (virtual seconds, failures after all attempts, retries,
    traffic, routing-table sizes after joining); ``messages_total``,
    ``bytes_total`` (every datagram of the run, UDP payload bytes), ``datagrams_dropped``,
    ``events`` (loop callbacks run), ``virtual_seconds``, ``loop_errors`` (exceptions that
    reached the event loop; 0 expected); and ``churn`` when churn was simulated.
    """
    if nodes < 1 or lookups < 0 or k < 1 or alpha < 1:
        raise ValueError("need nodes >= 1, lookups >= 0, k >= 1 and alpha >= 1")
    if bootstrap_peers < 1 or join_attempts < 1:
        raise ValueError("bootstrap_peers and join_attempts must be at least 1")
    if lookup_interval < 0 or churn_warmup < 0:
        raise ValueError("lookup_interval and churn_warmup must be non-negative")
    if churn_mode not in ("reconnect", "restart"):
        raise ValueError(f"unknown churn_mode {churn_mode!r}")
    loop = VirtualTimeLoop(deadline=max_virtual_seconds)
    run = _Baseline(
        loop, nodes=nodes, lookups=lookups, seed=seed, k=k, alpha=alpha, latency=latency,
        loss=loss, lookup_interval=lookup_interval, bootstrap_peers=bootstrap_peers,
        join_attempts=join_attempts,
        churn=churn, churn_mode=churn_mode, churn_warmup=churn_warmup,
        churn_events=churn_events,
    )
    with _kademlia_on_virtual_time(loop, seed):
        run_virtual(run.main(), loop=loop)
    return run.report()
