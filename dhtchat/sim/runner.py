"""Scenarios: build a network, join it, run a workload, measure.

A :class:`Scenario` is plain data (loaded from TOML, see ``simulations/``); :func:`run` turns
it into a :class:`RunResult` with deterministic metrics (a pure function of the scenario,
including its seed) and a separate wall-clock timing.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from dhtchat.core.events import Event, GetCompleted, LookupCompleted, PutCompleted
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.node import DhtConfig
from dhtchat.core.records import make_app_record
from dhtchat.sim.models import CHURN_PRESETS, ChurnModel, Distribution, latency_from_spec
from dhtchat.sim.network import (
    SIM_EPOCH,
    MisroutingNode,
    SimNetwork,
    SimNode,
    derive_seed,
    id_near,
)
from dhtchat.sim.oracle import ClosestOracle


@dataclass
class Scenario:
    """Everything a run depends on. Field names match the TOML keys (see simulations/)."""

    name: str = "default"
    nodes: int = 1000
    seed: int = 1
    join: str = "realistic"  # "realistic" (bootstrap + self-lookup + refresh) or "oracle"
    join_interval: float = 0.05  # seconds between realistic joins
    settle: float = 30.0  # seconds between the last join and the workload
    workload: str = "lookup"  # "lookup" or "putget"
    lookups: int = 1000  # lookups, or put/get pairs for "putget"
    rate: float = 100.0  # operations started per second
    k: int = 8
    alpha: int = 3
    disjoint_paths: int = 1
    verify_signatures: bool = False
    latency: dict[str, Any] = field(default_factory=lambda: {"model": "lognormal",
                                                              "median_ms": 50, "sigma": 0.6})
    loss: float = 0.0
    nat_fraction: float = 0.0
    churn: str = ""  # preset name from CHURN_PRESETS, or "" for none
    churn_session: dict[str, Any] = field(default_factory=dict)  # custom {kind, mean|scale...}
    churn_downtime: dict[str, Any] = field(default_factory=dict)
    adversary: str = ""  # "", "drop", "misroute" or "sybil"
    adversary_fraction: float = 0.0
    sybil_subnets: int = 16  # /24 networks the Sybil cluster's addresses come from
    baseline: str = ""  # "" or "kademlia"
    baseline_k: int = 20
    # Processes the nodes are spread over (a conservative parallel run, see run()); a run's
    # results depend on this number, not on the machine.
    workers: int = 1

    @classmethod
    def from_toml(cls, path: Path) -> Scenario:
        """Load a scenario file; unknown keys are an error (typos must not pass silently)."""
        data = tomllib.loads(path.read_text("utf-8"))
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict) and key not in ("latency", "churn_session",
                                                       "churn_downtime"):
                flat.update(value)  # [sections] are only for readability
            else:
                flat[key] = value
        flat.setdefault("name", path.stem)
        return cls.from_dict(flat)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Build from a flat dict, checking names and types."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown scenario keys: {', '.join(unknown)}")
        scenario = cls(**data)
        scenario.validate()
        return scenario

    def validate(self) -> None:
        """Raise ValueError with a clear message on out-of-range parameters."""
        if not 2 <= self.nodes <= 2_000_000:
            raise ValueError("nodes must be 2..2,000,000")
        if self.join not in ("realistic", "oracle"):
            raise ValueError("join must be 'realistic' or 'oracle'")
        if self.workload not in ("lookup", "putget"):
            raise ValueError("workload must be 'lookup' or 'putget'")
        if self.lookups < 0 or self.rate <= 0:
            raise ValueError("lookups must be >= 0 and rate > 0")
        if not 0 <= self.loss < 1 or not 0 <= self.nat_fraction < 1:
            raise ValueError("loss and nat_fraction must be in [0, 1)")
        if self.adversary not in ("", "drop", "misroute", "sybil"):
            raise ValueError("adversary must be '', 'drop', 'misroute' or 'sybil'")
        if not 0 <= self.adversary_fraction < 1:
            raise ValueError("adversary_fraction must be in [0, 1)")
        if self.churn and self.churn not in CHURN_PRESETS:
            raise ValueError(f"unknown churn preset {self.churn!r}; "
                             f"known: {', '.join(sorted(CHURN_PRESETS))}")
        if self.baseline not in ("", "kademlia"):
            raise ValueError("baseline must be '' or 'kademlia'")
        latency = latency_from_spec(self.latency, self.seed)  # ValueError on a bad model
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be 1..64")
        if self.workers > 1:
            if latency.min_delay() <= 0:
                raise ValueError("workers > 1 needs a latency model with a minimum delay "
                                 "(the lookahead): e.g. pairwise with floor_ms, constant, "
                                 "uniform or a matrix without zeros")
            if self.workload != "lookup" or self.churn or self.churn_session:
                raise ValueError("workers > 1 supports the lookup workload without churn")
        try:
            model = self.churn_model()
            if model is not None:
                model.session.sample(random.Random(0))
                model.downtime.sample(random.Random(0))
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"bad churn distribution: {exc}") from None
        DhtConfig(k=self.k, alpha=self.alpha, disjoint_paths=self.disjoint_paths)

    def churn_model(self) -> ChurnModel | None:
        """The churn model, if any."""
        if self.churn:
            return CHURN_PRESETS[self.churn]
        if self.churn_session:
            return ChurnModel(Distribution(**self.churn_session),
                              Distribution(**(self.churn_downtime or self.churn_session)),
                              "custom")
        return None


@dataclass
class LookupRecord:
    """One measured operation."""

    index: int
    kind: str
    source: int
    start_s: float
    latency_ms: float
    hops: int
    queries: int
    requests: int
    bytes: int
    success: bool
    exact: bool


@dataclass
class RunResult:
    """Deterministic metrics, per-operation rows and the wall-clock time taken."""

    metrics: dict[str, Any]
    lookups: list[LookupRecord]
    wall_seconds: float
    timeline: list[tuple[float, float]]  # (minute, success rate) under churn


class _Progress:
    """A one-line progress bar on stderr, shown only for runs longer than a few seconds."""

    def __init__(self, total: float, label: str) -> None:
        self.total = total
        self.label = label
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, done: float) -> None:
        now = time.monotonic()
        if now - self.start < 3.0 or now - self.last < 0.5:
            return
        self.last = now
        self.shown = True
        frac = min(1.0, done / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        print(f"\r{self.label} [{bar:<30}] {frac:6.1%} {now - self.start:6.1f}s",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _r(value: float) -> float:
    return round(value, 6)


_GC_THRESHOLDS = (100_000, 50, 100)  # young-generation allocations, then collection ratios
_FREEZE_EVERY = 1000  # realistic joins between two gc.freeze() calls


def run(scenario: Scenario, *, progress: bool = True, last_in_process: bool = False) -> RunResult:
    """Run one scenario.

    ``last_in_process``: the process exits after this run (``dhtchat simulate``), so the
    simulated network is left frozen out of the collector's sight when the run ends: it is
    garbage held by reference cycles, and collecting it would walk the whole heap once
    more (2.4 s at 3,000 nodes) just before the operating system reclaims it anyway.
    """
    wall_start = time.monotonic()
    # A run allocates millions of small, mostly acyclic objects (datagrams, transactions,
    # candidates) next to a large long-lived heap (the nodes). With the default thresholds
    # the cyclic collector runs every 700 allocations and keeps re-walking that heap; the
    # objects are freed by reference counting anyway. Collect far less often during the
    # run (it changes no result: nothing in the simulation depends on collection timing).
    # The nodes' state only grows during a run and is long-lived: it is moved out of the
    # collector's sight (gc.freeze) after the build and every _FREEZE_EVERY joins, so full
    # collections walk only what was allocated since. Frozen objects are still freed by
    # reference counting; only a reference cycle among them would wait for the unfreeze at
    # the end. (Not done when the caller froze objects itself: we could not undo only ours.)
    if scenario.workers > 1:
        parts = _run_parallel(scenario, progress)
    else:
        thresholds = gc.get_threshold()
        gc.set_threshold(*_GC_THRESHOLDS)
        freeze = gc.freeze if gc.get_freeze_count() == 0 else None
        try:
            parts = [_execute(_Simulation(scenario, freeze), progress)]
        finally:
            if freeze is not None:
                if last_in_process:
                    freeze()
                else:
                    gc.unfreeze()
            gc.set_threshold(*thresholds)
    records = [r for part in parts for r in part.records]
    return RunResult(_metrics(scenario, parts), records, time.monotonic() - wall_start,
                     _timeline(records))


def _execute(sim: _Simulation, progress: bool) -> _Part:
    """Run the simulation's phases and return what the metrics need."""
    sim.build()
    sim.join(progress)
    sim.start_churn()
    sim.settle()
    sim.run_workload(progress)
    return sim.partial()


# A parallel run (Scenario.workers > 1): conservative synchronisation with lookahead
# (Chandy & Misra 1979; Fujimoto, "Parallel and Distributed Simulation Systems", ch. 3).
# Every worker process builds the same network and runs the same driver code (joins,
# workload), but only its own nodes (index modulo workers) process datagrams and timers.
# No datagram takes less than L = the latency model's minimum delay, so a worker can run a
# window of L virtual seconds alone: whatever another worker sends it during the window
# arrives after it. At each window's end every pair of workers swaps the datagrams for each
# other's nodes over a pipe, pairs taken in one global order (no two workers can wait on
# each other), and each schedules what it received in worker order: a run is deterministic
# for a given number of workers. The finished-lookup count that ends the workload travels
# with every swap. This process only starts the workers and gathers their results.

_Datagram = tuple[float, int, bytes, tuple[str, int]]  # delivery time, node, data, source


def _run_parallel(scenario: Scenario, progress: bool) -> list[_Part]:
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError("workers > 1 needs the 'fork' start method (Linux)")
    context = multiprocessing.get_context("fork")
    count = scenario.workers
    links: dict[tuple[int, int], tuple[Connection, Connection]] = {
        (i, j): context.Pipe() for i in range(count) for j in range(i + 1, count)}
    results = [context.Pipe(duplex=False) for _ in range(count)]
    everything = [end for pair in links.values() for end in pair] + \
        [end for pair in results for end in pair]
    workers = []
    for w in range(count):
        peers = {j if i == w else i: (end_i if i == w else end_j)
                 for (i, j), (end_i, end_j) in links.items() if w in (i, j)}
        mine = [*peers.values(), results[w][1]]
        # A worker closes every inherited end but its own: when a worker dies, its peers
        # and this process then see the end of its pipes instead of waiting forever.
        others = [end for end in everything if all(end is not m for m in mine)]
        workers.append(context.Process(
            target=_worker,
            args=(scenario, w, peers, results[w][1], others, progress and w == 0),
            daemon=True))
    for process in workers:
        process.start()
    for end_i, end_j in links.values():  # the workers hold their ends
        end_i.close()
        end_j.close()
    for _, sender in results:
        sender.close()
    receivers = {results[w][0]: w for w in range(count)}
    parts: dict[int, _Part] = {}
    try:
        while len(parts) < count:
            for ready in multiprocessing.connection.wait(list(receivers)):
                conn = cast(Connection, ready)
                w = receivers.pop(conn)
                try:
                    message: tuple[str, Any] = conn.recv()
                except EOFError:
                    raise RuntimeError(f"parallel simulation worker {w} died") from None
                if message[0] != "done":
                    raise RuntimeError(f"parallel simulation worker {w} failed: {message[1]}")
                parts[w] = message[1]
    finally:
        for process in workers:
            if len(parts) < count:
                process.kill()
            process.join(timeout=10)
    return [parts[w] for w in range(count)]


def _worker(scenario: Scenario, part: int, peers: dict[int, Connection], results: Connection,
            others: list[Connection], progress: bool) -> None:
    for end in others:
        end.close()
    gc.set_threshold(*_GC_THRESHOLDS)
    gc.freeze()  # what the parent process holds is not ours to walk
    order = sorted(peers, key=lambda p: (min(p, part), max(p, part)))

    def exchange(exported: list[_Datagram], done: int) -> tuple[list[_Datagram], int]:
        outgoing: dict[int, list[_Datagram]] = {p: [] for p in peers}
        for item in exported:
            outgoing[item[1] % scenario.workers].append(item)
        incoming: dict[int, list[_Datagram]] = {}
        total = done
        for peer in order:
            conn = peers[peer]
            if part < peer:
                conn.send((outgoing[peer], done))
                incoming[peer], their_done = conn.recv()
            else:
                incoming[peer], their_done = conn.recv()
                conn.send((outgoing[peer], done))
            total += their_done
        return [item for peer in sorted(incoming) for item in incoming[peer]], total

    try:
        sim = _Simulation(scenario, gc.freeze, part=part, exchange=exchange)
        results.send(("done", _execute(sim, progress)))
    except Exception as exc:  # reported to the parent, which raises it
        results.send(("error", f"{type(exc).__name__}: {exc}"))
    results.close()
    os._exit(0)  # the network is garbage now: no collection, no interpreter teardown


_Exchange = Callable[[list[_Datagram], int], tuple[list[_Datagram], int]]


@dataclass
class _Part:
    """What one process measured: its nodes' share of everything the metrics need."""

    records: list[LookupRecord]
    abandoned: int
    received: list[int]  # datagrams received per node of this process
    table_sizes: int
    fresh_total: int
    fresh_live: int
    messages: int
    bytes: int
    dropped: int
    events: int
    now: float
    online: int


class _Simulation:
    def __init__(self, scenario: Scenario,
                 freeze: Callable[[], None] | None = None, *, part: int = 0,
                 exchange: _Exchange | None = None) -> None:
        self.s = scenario
        self._freeze = freeze
        self._exchange = exchange
        self._done_everywhere = 0  # finished lookups in all processes (parallel runs)
        self._foreign_starts = 0  # workload events run here for another process's node
        self.rng = random.Random(derive_seed(scenario.seed, "workload"))
        config = DhtConfig(k=scenario.k, alpha=scenario.alpha,
                           disjoint_paths=scenario.disjoint_paths,
                           verify_signatures=scenario.verify_signatures,
                           # simulated addresses are one per /24: limits behave as deployed
                           refresh_on_join=True)
        latency = latency_from_spec(scenario.latency, scenario.seed)
        self.net = SimNetwork(seed=scenario.seed, latency=latency, loss=scenario.loss,
                              config=config)
        self.net.part, self.net.parts = part, scenario.workers
        self._lookahead = latency.min_delay()
        self.net.on_event = self._on_event
        self.records: list[LookupRecord] = []
        self._pending: dict[tuple[int, int], tuple[int, str, float, bytes]] = {}
        self.honest: list[SimNode] = []
        self.target_key: bytes | None = None
        self.victim: int | None = None  # the eclipsed node (sybil adversary)
        self.oracle: ClosestOracle | None = None
        self._main_done = 0  # finished lookups (or gets)
        self.abandoned = 0  # operations lost because their own node went offline
        self._stored: dict[int, tuple[bytes, bytes]] = {}  # op index -> (key, value)

    # ---------------------------------------------------------------- setup

    def build(self) -> None:
        s = self.s
        n_adv = round(s.nodes * s.adversary_fraction) if s.adversary else 0
        adversary_slots = set(self.rng.sample(range(1, s.nodes), n_adv)) if n_adv else set()
        if s.adversary == "sybil":
            # Eclipse of one node (S/Kademlia sec. 5): Sybils surround an honest victim's id;
            # a lookup succeeds when it still finds the victim.
            honest_slots = [i for i in range(1, s.nodes) if i not in adversary_slots]
            self.victim = honest_slots[self.rng.randrange(len(honest_slots))]
            self.target_key = self.net.future_node_id(self.victim)
        bits = max(1, int(math.log2(s.nodes)))
        for i in range(s.nodes):
            nat = i > 0 and self.rng.random() < s.nat_fraction and i != self.victim
            if i in adversary_slots:
                kind = "misroute" if s.adversary == "sybil" else s.adversary
                node_id = None
                address = None
                if s.adversary == "sybil" and self.target_key is not None:
                    # a cluster around the target, closer than any honest node is likely to
                    # be, from the few /24 networks the attacker controls
                    node_id = id_near(self.target_key, bits + 2 + self.rng.randrange(8),
                                      self.rng)
                    subnets = max(1, s.sybil_subnets)
                    sybil = len(self.net.nodes)
                    host = 1 + (sybil // subnets) % 254
                    address = (f"203.0.{sybil % subnets}.{host}",
                               4000 + sybil // (subnets * 254))
                self.net.add_node(kind=kind, node_id=node_id, address=address)
            else:
                node = self.net.add_node(nat=nat)
                self.honest.append(node)
        accomplices = [(n.core.node_id, n.address) for n in self.net.nodes
                       if n.kind == "misroute"]
        for node in self.net.nodes:
            if isinstance(node.core, MisroutingNode):
                node.core.accomplices = accomplices
        self.oracle = ClosestOracle([n.core.node_id for n in self.net.nodes])

    def join(self, progress: bool) -> None:
        s = self.s
        net = self.net
        nodes = net.nodes
        if s.join == "oracle":
            net.warm_start(nodes)
            if self._freeze is not None:
                self._freeze()
            self._run_to(net.loop.now + 1.0)
        else:
            bar = _Progress(len(nodes), "join") if progress else None
            if self._freeze is not None:
                self._freeze()
            nodes[0].joined = True
            if net.owns(nodes[0]):
                net.process(nodes[0])
            for i, node in enumerate(nodes[1:], start=1):
                # join through a random node that already joined (and is reachable)
                via = nodes[self.rng.randrange(i)]
                while via.nat or via.kind != "honest":
                    via = nodes[self.rng.randrange(i)]
                self._run_to(net.loop.now + s.join_interval)
                if net.owns(node):
                    net.join_realistic(node, via)
                else:
                    node.joined = True
                if bar is not None and i % 100 == 0:
                    bar.update(i)
                if self._freeze is not None and i % _FREEZE_EVERY == 0:
                    self._freeze()
            if bar is not None:
                bar.close()
            if self._freeze is not None:
                self._freeze()

    def settle(self) -> None:
        """Let the network run (under churn, if any) before the workload starts."""
        self._run_to(self.net.loop.now + self.s.settle)

    def _run_to(self, until: float) -> None:
        """Advance virtual time; in a parallel run, window by window (see _run_parallel)."""
        net = self.net
        if self._exchange is None:
            net.run(until)
            return
        while net.loop.now < until:
            net.run(min(until, net.loop.now + self._lookahead))
            imported, self._done_everywhere = self._exchange(net.take_exported(),
                                                             self._main_done)
            net.import_datagrams(imported)

    def start_churn(self) -> None:
        model = self.s.churn_model()
        if model is None:
            return
        self.churn = model
        for node in self.net.nodes:
            stream = random.Random(derive_seed(self.s.seed, "churn", node.index))
            node_rng = stream
            self.net.loop.schedule(self.net.loop.now + model.session.sample(node_rng),
                                   self._leave, (node, node_rng))

    def _leave(self, item: tuple[SimNode, random.Random]) -> None:
        node, rng = item
        self.net.set_online(node, False)
        # Operations this node had running are abandoned (as in the baseline): their outcome
        # says nothing about the DHT.
        for key in [key for key in self._pending if key[0] == node.index]:
            del self._pending[key]
            self.abandoned += 1
        self.net.loop.schedule(self.net.loop.now + self.churn.downtime.sample(rng),
                               self._return, item)

    def _return(self, item: tuple[SimNode, random.Random]) -> None:
        node, rng = item
        self.net.set_online(node, True)
        self.net.loop.schedule(self.net.loop.now + self.churn.session.sample(rng),
                               self._leave, item)

    # ---------------------------------------------------------------- workload

    def run_workload(self, progress: bool) -> None:
        s = self.s
        net = self.net
        start = net.loop.now
        self.workload_start = start
        interval = 1.0 / s.rate
        if s.workload == "lookup":
            for j in range(s.lookups):
                net.loop.schedule(start + j * interval, self._start_lookup, j)
        else:
            for j in range(s.lookups):
                net.loop.schedule(start + j * interval, self._start_put, j)
        end = start + s.lookups * interval
        bar = _Progress(end - start, "run") if progress else None
        step = max(1.0, (end - start) / 200)
        t = start
        while t < end + 120.0 and self._finished() < s.lookups:
            t += step
            self._run_to(t)
            if bar is not None:
                bar.update(min(t, end) - start)
        if bar is not None:
            bar.close()

    def _finished(self) -> int:
        """Operations finished or abandoned, in every process."""
        if self._exchange is None:
            return self._main_done + self.abandoned
        return self._done_everywhere  # (parallel runs have no churn: nothing is abandoned)

    def _pick_source(self) -> SimNode:
        while True:
            node = self.honest[self.rng.randrange(len(self.honest))]
            if node.online and node.joined and node.index != self.victim:
                return node

    def _start_lookup(self, j: int) -> None:
        node = self._pick_source()
        target = self.target_key if self.target_key is not None else self.rng.randbytes(32)
        if not self.net.owns(node):
            self._foreign_starts += 1  # every process draws the same choice; one runs it
            return
        qid = self.net.command(node, lambda core, now: core.find_node(target, now))
        self._pending[(node.index, qid)] = (j, "lookup", self.net.loop.now, target)

    def _start_put(self, j: int) -> None:
        node = self._pick_source()
        signer = SigningIdentity.from_seed(random.Random(derive_seed(self.s.seed, "signer", j))
                                           .randbytes(32))
        value = f"value-{j}".encode()
        record = make_app_record(signer, f"key-{j}", value, seq=1,
                                 expires=int(self.net.loop.now) + 24 * 3600)
        self._stored[j] = (record.key, value)
        qid = self.net.command(node, lambda core, now: core.put(record, now))
        self._pending[(node.index, qid)] = (j, "put", self.net.loop.now, record.key)

    def _start_get(self, j: int) -> None:
        node = self._pick_source()
        key, _ = self._stored[j]
        qid = self.net.command(node, lambda core, now: core.get(key, now))
        self._pending[(node.index, qid)] = (j, "get", self.net.loop.now, key)

    def _on_event(self, node: SimNode, event: Event) -> None:
        query_id = getattr(event, "query_id", None)
        if query_id is None:
            return
        entry = self._pending.pop((node.index, query_id), None)
        if entry is None:
            return
        j, kind, started, target = entry
        now = self.net.loop.now
        latency_ms = (now - started) * 1000
        if isinstance(event, LookupCompleted):
            found = [c[0] for c in event.contacts]
            truth = self._truth(target, node.index)
            success = bool(truth) and truth[0] in found
            exact = found == truth
            self._record(j, kind, node, started, latency_ms, event.hops, event.queries,
                         event.requests_sent, event.bytes_sent, success, exact)
        elif isinstance(event, PutCompleted):
            self._record(j, kind, node, started, latency_ms, 0, 0, 0, 0, event.stored > 0,
                         event.stored > 0)
            self.net.loop.schedule(now + 1.0, self._start_get, j)
        elif isinstance(event, GetCompleted):
            _, value = self._stored[j]
            ok = any(r.value == value for r in event.records)
            self._record(j, kind, node, started, latency_ms, event.hops, event.queries,
                         event.requests_sent, event.bytes_sent, ok, ok)

    def _truth(self, target: bytes, source: int) -> list[bytes]:
        assert self.oracle is not None
        nodes = self.net.nodes

        def accept(index: int) -> bool:
            other = nodes[index]
            # NAT'ed nodes cannot be reached unsolicited, so they never serve in the DHT
            return index != source and other.online and other.kind == "honest" and \
                other.joined and not other.nat

        return [nodes[i].core.node_id for i in self.oracle.closest(target, self.s.k, accept)]

    def _record(self, j: int, kind: str, node: SimNode, started: float, latency_ms: float,
                hops: int, queries: int, requests: int, size: int, success: bool,
                exact: bool) -> None:
        if kind in ("lookup", "get"):
            self._main_done += 1
        self.records.append(LookupRecord(j, kind, node.index,
                                         _r(started - self.workload_start),
                                         _r(latency_ms), hops, queries, requests, size,
                                         success, exact))

    # ---------------------------------------------------------------- metrics

    def partial(self) -> _Part:
        """This process's share of the metrics (its own nodes)."""
        net = self.net
        own = [n for n in net.nodes if net.owns(n)]
        fresh_total = fresh_live = 0
        for node in own:
            if node.kind != "honest" or not node.online:
                continue
            for contact in node.core.table.contacts():
                fresh_total += 1
                other = net.by_address.get(contact.address)
                fresh_live += 1 if other is not None and other.online else 0
        return _Part(
            records=self.records, abandoned=self.abandoned,
            received=[n.core.stats["datagrams_received"] for n in own],
            table_sizes=sum(len(n.core.table) for n in own),
            fresh_total=fresh_total, fresh_live=fresh_live, messages=net.messages,
            bytes=net.bytes, dropped=net.dropped,
            events=net.loop.events - self._foreign_starts, now=net.loop.now,
            online=sum(1 for n in own if n.online))


def _metrics(s: Scenario, parts: list[_Part]) -> dict[str, Any]:
    """The deterministic metrics of a run from what its process(es) measured."""
    records = [r for part in parts for r in part.records]
    main = [r for r in records if r.kind in ("lookup", "get")]
    main.sort(key=lambda r: (r.kind, r.index))
    latencies = sorted(r.latency_ms for r in main)
    hops = [r.hops for r in main]
    histogram: dict[str, int] = {}
    for h in hops:
        histogram[str(h)] = histogram.get(str(h), 0) + 1
    received = sorted(x for part in parts for x in part.received)
    fresh_total = sum(part.fresh_total for part in parts)
    fresh_live = sum(part.fresh_live for part in parts)
    abandoned = sum(part.abandoned for part in parts)
    expected_hops = math.log2(s.nodes) / (1.33 + math.log2(s.k))
    count = len(main)
    issued = s.lookups - abandoned
    puts = [r for r in records if r.kind == "put"]
    result: dict[str, Any] = {
        "scenario": asdict(s),
        "nodes": s.nodes,
        "seed": s.seed,
        "signatures_verified": s.verify_signatures,
        "lookups": {
            "kind": "get" if s.workload == "putget" else "find_node",
            "count": count,
            "issued": s.lookups,
            "abandoned": abandoned,
            "unfinished": issued - count,
            # over every operation whose node stayed online: one that never finished
            # counts as a failure
            "success_rate": _r(sum(r.success for r in main) / issued) if issued else 0.0,
            "exact_k_rate": _r(sum(r.exact for r in main) / issued) if issued else 0.0,
            "hops": {
                "mean": _r(sum(hops) / count) if count else 0.0,
                "expected_stutzbach_rejaie": _r(expected_hops),
                "histogram": histogram,
            },
            "latency_ms": {
                "p50": _r(_percentile(latencies, 0.5)),
                "p95": _r(_percentile(latencies, 0.95)),
                "p99": _r(_percentile(latencies, 0.99)),
                "mean": _r(sum(latencies) / count) if count else 0.0,
            },
            "requests_mean": _r(sum(r.requests for r in main) / count) if count else 0.0,
            "bytes_mean": _r(sum(r.bytes for r in main) / count) if count else 0.0,
        },
        "puts": {
            "count": len(puts),
            "success_rate": _r(sum(r.success for r in puts) / len(puts)) if puts else 0.0,
        },
        "messages_total": sum(part.messages for part in parts),
        "bytes_total": sum(part.bytes for part in parts),
        "datagrams_dropped": sum(part.dropped for part in parts),
        "events": sum(part.events for part in parts),
        "virtual_seconds": _r(parts[0].now - SIM_EPOCH),
        "node_load": {
            "received_p50": _r(_percentile([float(x) for x in received], 0.5)),
            "received_p99": _r(_percentile([float(x) for x in received], 0.99)),
            "received_max": received[-1] if received else 0,
        },
        "routing_table": {
            "mean_size": _r(sum(part.table_sizes for part in parts) / s.nodes),
            "live_fraction": _r(fresh_live / fresh_total) if fresh_total else 0.0,
        },
        "online_at_end": sum(part.online for part in parts),
    }
    return result


def _timeline(records: list[LookupRecord]) -> list[tuple[float, float]]:
    """Success rate per minute of the workload (for the churn plot)."""
    buckets: dict[int, list[bool]] = {}
    for r in records:
        if r.kind in ("lookup", "get"):
            buckets.setdefault(int(r.start_s // 60), []).append(r.success)
    return [(float(m), _r(sum(v) / len(v))) for m, v in sorted(buckets.items())]

