"""The simulated network: real :class:`~dhtchat.core.node.DhtNode` cores on virtual time.

Theory of operation
-------------------
Each simulated node wraps an unmodified sans-IO core. After every call into a core (a
datagram, a timer, a command) the network collects its outgoing datagrams, schedules their
delivery after a delay drawn from the latency model (or drops them: loss, offline or NAT'ed
destination), hands its events to the workload, and re-arms its timer. Datagrams are the real
encoded bytes, so message and byte counts are those of the real protocol.

Determinism: every node owns a ``random.Random`` seeded from ``(seed, index)`` for its core
and another for its link draws, so adding a node does not perturb the streams of the others.

NAT: a NAT'ed node accepts a datagram only from an address it sent to within
``nat_timeout`` seconds (endpoint-dependent filtering, RFC 4787 sec. 5), so it can query
others but is never reached unsolicited.

Adversaries (``kind``): ``drop`` nodes answer nothing; ``misroute`` nodes answer lookups
with the adversaries closest to the target (fake "closer" contacts) and hold no values; a
Sybil cluster is a set of misrouting nodes whose ids are placed next to a target key (the
simulation assumes the attacker could grind node keys for such ids; their ids are set
through :attr:`DhtConfig.node_id_function`, which maps their public keys to the chosen ids).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dhtchat.core.addresses import Address, pack_ip
from dhtchat.core.events import Event
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.ids import ID_BITS, ID_BYTES, distance, node_id_from_public_key
from dhtchat.core.node import DhtConfig, DhtNode
from dhtchat.core.records import Record
from dhtchat.core.wire import GetValues, NodeInfo, StoreStatus, Values
from dhtchat.sim.engine import EventLoop
from dhtchat.sim.models import LatencyModel

SIM_EPOCH = 1_700_000_000.0  # virtual time 0 (records carry absolute UNIX expiry times)
_INF = math.inf


def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed for one stream, independent of every other ``parts``."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def sim_address(index: int) -> Address:
    """A distinct /24 per node (only a label: nothing touches a real network)."""
    return (f"{10 + (index >> 16)}.{(index >> 8) & 255}.{index & 255}.1", 4000)


class MisroutingNode(DhtNode):
    """An adversary that answers lookups with its accomplices and never with values."""

    accomplices: list[tuple[bytes, Address]]

    def _nodes_for(self, target: bytes, requester_id: bytes) -> list[NodeInfo]:
        ranked = sorted(self.accomplices, key=lambda a: distance(a[0], target))
        return [NodeInfo(node_id, pack_ip(address[0]), address[1])
                for node_id, address in ranked[: self.config.k]]

    def _values_for(self, body: GetValues, requester_id: bytes, now: float) -> Values:
        return Values([], 0, False, self._nodes_for(body.key, requester_id))

    def _store_record(self, record: Record, source: Address | None, now: float) -> StoreStatus:
        return StoreStatus.OK  # pretends to store, keeps nothing


class DroppingNode(DhtNode):
    """An adversary that is online (it is in tables) but answers nothing."""

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        self.stats["dropped_on_purpose"] += 1


@dataclass(slots=True)
class SimNode:
    """One node of the simulated network."""

    index: int
    address: Address
    core: DhtNode
    link_rng: random.Random
    kind: str = "honest"
    online: bool = True
    nat: bool = False
    joined: bool = False
    timer_at: float = _INF
    pinholes: dict[Address, float] = field(default_factory=dict)


class SimNetwork:
    """Nodes, links and the event loop that connects them."""

    def __init__(
        self,
        *,
        seed: int,
        latency: LatencyModel,
        loss: float = 0.0,
        nat_timeout: float = 120.0,
        config: DhtConfig | None = None,
    ) -> None:
        self.seed = seed
        self.latency = latency
        self.loss = loss
        self.nat_timeout = nat_timeout
        base = config if config is not None else DhtConfig(verify_signatures=False)
        self.config = dataclasses.replace(base, node_id_function=self._node_id_of)
        self.loop = EventLoop(SIM_EPOCH)
        self.nodes: list[SimNode] = []
        self.chosen_ids: dict[bytes, bytes] = {}  # public key -> id, for Sybils
        self._ids: dict[bytes, bytes] = {}  # public key -> id of every node (a cache)
        self.by_address: dict[Address, SimNode] = {}
        self.on_event: Callable[[SimNode, Event], None] | None = None
        self.messages = 0
        self.bytes = 0
        self.dropped = 0
        # A parallel run (dhtchat.sim.runner): this process runs the nodes whose index is
        # ``part`` modulo ``parts``; datagrams for the others are exported, with their
        # delivery time, for the process that runs them.
        self.part = 0
        self.parts = 1
        self.exported: list[tuple[float, int, bytes, Address]] = []

    # ---------------------------------------------------------------- building

    def add_node(self, *, kind: str = "honest", nat: bool = False,
                 node_id: bytes | None = None, address: Address | None = None) -> SimNode:
        """Create a node (not yet joined). ``node_id`` overrides the key-derived id (Sybils);
        ``address`` overrides the default one-/24-per-node address."""
        index = len(self.nodes)
        rng, key = self._key_stream(index)
        cls: type[DhtNode] = DhtNode
        if kind == "misroute":
            cls = MisroutingNode
        elif kind == "drop":
            cls = DroppingNode
        if node_id is not None:
            self.chosen_ids[key.public_key] = node_id
        self._ids[key.public_key] = node_id if node_id is not None else \
            node_id_from_public_key(key.public_key)
        core = cls(key, rng=rng, now=self.loop.now, config=self.config)
        node = SimNode(index, address or sim_address(index), core,
                       random.Random(derive_seed(self.seed, "link", index)), kind, nat=nat)
        self.nodes.append(node)
        self.by_address[node.address] = node
        return node

    def _key_stream(self, index: int) -> tuple[random.Random, SigningIdentity]:
        rng = random.Random(derive_seed(self.seed, "node", index))
        return rng, SigningIdentity.from_seed(rng.randbytes(32))

    def future_node_id(self, index: int) -> bytes:
        """The id the node with this index will get (if its id is not chosen)."""
        return node_id_from_public_key(self._key_stream(index)[1].public_key)

    def _node_id_of(self, public_key: bytes) -> bytes:
        known = self._ids.get(public_key)
        if known is not None:
            return known
        chosen = self.chosen_ids.get(public_key)
        return chosen if chosen is not None else node_id_from_public_key(public_key)

    # ---------------------------------------------------------------- driving

    def command(self, node: SimNode, action: Callable[[DhtNode, float], int]) -> int:
        """Run a command on a node's core now and process its output."""
        query_id = action(node.core, self.loop.now)
        self.process(node)
        return query_id

    def process(self, node: SimNode) -> None:
        """Send what the core queued, deliver its events, re-arm its timer."""
        loop = self.loop
        now = loop.now
        core = node.core
        outgoing = core.datagrams_to_send(now)
        if outgoing:
            by_address = self.by_address
            loss = self.loss
            rng = node.link_rng
            delay_of = self.latency.delay
            deliver = self._deliver
            source = node.address
            index = node.index
            parts = self.parts
            for data, dst in outgoing:
                self.messages += 1
                self.bytes += len(data)
                if node.nat:
                    node.pinholes[dst] = now
                target = by_address.get(dst)
                if target is None or not target.online or (loss and rng.random() < loss):
                    self.dropped += 1
                    continue
                at = now + delay_of(index, target.index, rng)
                if parts > 1 and target.index % parts != self.part:
                    self.exported.append((at, target.index, data, source))
                else:
                    loop.schedule(at, deliver, (target, data, source))
        handler = self.on_event
        while (event := core.next_event()) is not None:
            if handler is not None:
                handler(node, event)
        deadline = core.get_timer()
        if deadline is not None and deadline < node.timer_at:
            node.timer_at = deadline
            loop.schedule(deadline, self._timer, (node, deadline))

    def owns(self, node: SimNode) -> bool:
        """Whether this process runs ``node`` (always, unless the run is parallel)."""
        return node.index % self.parts == self.part

    def take_exported(self) -> list[tuple[float, int, bytes, Address]]:
        """Datagrams for nodes of other processes, sent since the last call."""
        out, self.exported = self.exported, []
        return out

    def import_datagrams(self, items: list[tuple[float, int, bytes, Address]]) -> None:
        """Schedule datagrams another process sent to our nodes (in the order given)."""
        deliver = self._deliver
        nodes = self.nodes
        for at, index, data, source in items:
            self.loop.schedule(at, deliver, (nodes[index], data, source))

    def _deliver(self, item: tuple[SimNode, bytes, Address]) -> None:
        target, data, source = item
        if not target.online:
            self.dropped += 1
            return
        if target.nat:
            opened = target.pinholes.get(source)
            if opened is None or self.loop.now - opened > self.nat_timeout:
                self.dropped += 1
                return
        target.core.receive_datagram(data, source, self.loop.now)
        self.process(target)

    def _timer(self, item: tuple[SimNode, float]) -> None:
        node, at = item
        if node.timer_at != at:
            return  # superseded by an earlier deadline
        node.timer_at = _INF
        if not node.online:
            return
        node.core.handle_timer(self.loop.now)
        self.process(node)

    def set_online(self, node: SimNode, online: bool) -> None:
        """Take a node off the network (it keeps its state, like a sleeping laptop) or back."""
        node.online = online
        if online:
            node.timer_at = _INF
            self.process(node)

    # ---------------------------------------------------------------- joins

    def join_realistic(self, node: SimNode, via: SimNode) -> int:
        """Bootstrap through ``via`` (ping, self-lookup, refresh of farther buckets)."""
        node.joined = True
        return self.command(node, lambda core, now: core.bootstrap([via.address], now))

    def warm_start(self, nodes: list[SimNode]) -> None:
        """Oracle join: fill every routing table from global knowledge at once.

        Bucket ``i`` of a node gets up to ``k`` nodes drawn at random (from the node's own
        stream) among all nodes sharing exactly ``i`` prefix bits with it: the table a node
        would converge to in a static network, without spending simulated time on joins.
        """
        ids = sorted((int.from_bytes(n.core.node_id, "big"), n.index) for n in nodes)
        keys = [v for v, _ in ids]
        k = self.config.k
        now = self.loop.now
        for node in nodes:
            node.joined = True
            if not self.owns(node):
                continue  # another process fills its table
            own = int.from_bytes(node.core.node_id, "big")
            pick = random.Random(derive_seed(self.seed, "warm", node.index))
            table = node.core.table
            for i in range(ID_BITS):
                same = own >> (ID_BITS - i)  # nodes sharing our first i bits
                if bisect.bisect_left(keys, (same + 1) << (ID_BITS - i)) - \
                        bisect.bisect_left(keys, same << (ID_BITS - i)) <= 1:
                    break  # we are alone in this subtree: deeper buckets are empty
                shift = ID_BITS - 1 - i
                prefix = ((own >> shift) ^ 1) << shift
                lo = bisect.bisect_left(keys, prefix)
                hi = bisect.bisect_left(keys, prefix + (1 << shift))
                if hi <= lo:
                    continue
                count = hi - lo
                chosen = range(lo, hi) if count <= k else sorted(pick.sample(range(lo, hi), k))
                for j in chosen:
                    other = self.nodes[ids[j][1]]
                    table.add(other.core.node_id, other.address, now)
        for node in nodes:
            if self.owns(node):
                self.process(node)

    # ---------------------------------------------------------------- running

    def run(self, until: float) -> None:
        """Advance virtual time to ``until`` (absolute, see :data:`SIM_EPOCH`)."""
        self.loop.run(until)


def id_near(target: bytes, common_bits: int, rng: random.Random) -> bytes:
    """A random id sharing exactly ``common_bits`` leading bits with ``target``."""
    value = int.from_bytes(target, "big")
    flip = 1 << (ID_BITS - 1 - common_bits)
    low = flip - 1
    result = ((value ^ flip) & ~low) | (rng.getrandbits(ID_BITS) & low)
    return result.to_bytes(ID_BYTES, "big")

