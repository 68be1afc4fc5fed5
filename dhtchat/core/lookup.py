"""Asynchronous iterative lookup (Kademlia sec. 2.3, made truly asynchronous as recommended by
Jimenez, Osmani & Knutsson, "Sub-second lookups on a large-scale Kademlia-based overlay",
IEEE P2P 2011).

Theory of operation
-------------------
The lookup keeps a shortlist of candidates sorted by XOR distance to the target. Up to
``alpha`` queries are in flight at any time; whenever one answers or times out, the next
unqueried candidate among the ``k`` closest live ones is queried at once (no lockstep rounds,
so one slow node never stalls the others). A query past its RTO becomes *slow*: its slot goes
to the next candidate, but its answer is still used if it arrives before the hard timeout.
The shortlist is bounded and the number of queries is capped so a hostile network cannot make
a lookup run forever.

When a lookup ends depends on what it is for:

* *Patient* (``quorum=None``: FIND_NODE, PUT, LISTEN): when the ``k`` closest
  candidates that have not failed have all answered. A slow one among them is waited for
  until it answers or hits the hard timeout: the caller needs the true ``k`` closest (a PUT
  stores on them, a LISTEN subscribes on them), and skipping a slow one would name a farther
  node instead.
* *Quorum* (``quorum=q``: a GET, and the bootstrap's self-lookup, which only fills the
  routing table): a value lookup only needs *some* replicas, not the exact replica set.
  It ends when (a) the ``k`` closest candidates that are neither failed nor slow have all
  answered, and (b) of the ``k`` closest candidates that have not failed (slow ones
  included), at least the fraction ``q`` has answered. A dead node among the closest -- a
  peer that just went offline, still in everyone's table -- then costs one soft timeout
  (one RTO; the node does not stretch it by the address's backoff), not the hard timeout.
  (b) keeps the lookup from ending on farther nodes alone when most of the true closest are
  slow (a congested path, or many replicas gone): then it still waits for them. With
  ``q = 1`` it is the patient rule. This follows deployed value lookups: OpenDHT's ``get``
  is done once its closest nodes that are not expired have replied (an unresponsive node
  does not hold it), and Jimenez et al. argue that a node past its soft timeout must not
  dictate the lookup's latency. A record lives on the ``k`` closest nodes, so the answered
  majority of them (plus the next closest non-slow ones, which a churned replica set moves
  to) holds it; reading the newest ``seq`` from several storers is also why (b) asks for a
  fraction of them rather than stopping at the first value found.

This class only decides *whom* to ask; the node sends the requests and feeds results back.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import Final

from dhtchat.core.addresses import Address


class CandidateState(Enum):
    """Progress of one candidate within a lookup."""

    NEW = 0
    IN_FLIGHT = 1
    ANSWERED = 2
    FAILED = 3
    SLOW = 4  # past its RTO: its slot is given to another query, a late answer still counts


@dataclass(slots=True)
class Candidate:
    """A node the lookup knows of."""

    node_id: bytes
    address: Address
    distance: int
    hops: int
    state: CandidateState = CandidateState.NEW


_by_distance = attrgetter("distance")
_NEW: Final = CandidateState.NEW
_IN_FLIGHT: Final = CandidateState.IN_FLIGHT
_ANSWERED: Final = CandidateState.ANSWERED
_FAILED: Final = CandidateState.FAILED
_SLOW: Final = CandidateState.SLOW


class Lookup:
    """The shortlist and scheduling decisions of one iterative lookup."""

    def __init__(
        self,
        target: bytes,
        *,
        k: int,
        alpha: int,
        max_queries: int = 128,
        max_candidates: int | None = None,
        max_per_ip: int = 10,
        quorum: float | None = None,
    ) -> None:
        self.target = target
        self.quorum = quorum  # None: patient; else the quorum rule (module docstring)
        self._target_key = int.from_bytes(target, "big")
        self.k = k
        self.alpha = alpha
        self.max_queries = max_queries
        self.max_candidates = max_candidates if max_candidates is not None else 8 * k
        self.max_per_ip = max_per_ip
        self._candidates: dict[bytes, Candidate] = {}
        # owns(node_id): whether node_id is a candidate of this lookup (the dict's own
        # membership test: the node asks it for every contact of every reply)
        self.owns: Callable[[bytes], bool] = self._candidates.__contains__
        # One candidate per address and a few per IP: a hostile reply naming many "nodes" at
        # one victim address must not turn our lookup into a flood towards it.
        self._addresses: set[Address] = set()
        self._per_ip: dict[str, int] = {}
        self._sorted: list[Candidate] = []
        self.in_flight = 0
        self.queries_sent = 0
        self.responses = 0
        self.failures = 0

    def add(self, node_id: bytes, address: Address, hops: int = 1) -> bool:
        """Offer a candidate (ignored if known, or farther than a full shortlist).

        ``hops`` is the number of sequential requests needed to reach it: 1 for contacts from
        our own table, one more than the node that named it otherwise. Returns whether it
        was taken.
        """
        candidates = self._candidates
        if node_id in candidates or address in self._addresses:
            return False
        per_ip = self._per_ip
        host = address[0]
        on_ip = per_ip.get(host, 0)
        if on_ip >= self.max_per_ip:
            return False
        dist = int.from_bytes(node_id, "big") ^ self._target_key
        shortlist = self._sorted
        if len(shortlist) >= self.max_candidates:
            worst = shortlist[-1]
            if worst.distance <= dist or worst.state is _IN_FLIGHT:
                return False
            shortlist.pop()
            del candidates[worst.node_id]
            self._forget_address(worst.address)
            on_ip = per_ip.get(host, 0)
        cand = Candidate(node_id, address, dist, hops)
        candidates[node_id] = cand
        self._addresses.add(address)
        per_ip[host] = on_ip + 1
        bisect.insort(shortlist, cand, key=_by_distance)
        return True

    def _forget_address(self, address: Address) -> None:
        self._addresses.discard(address)
        left = self._per_ip.get(address[0], 1) - 1
        if left > 0:
            self._per_ip[address[0]] = left
        else:
            self._per_ip.pop(address[0], None)

    def next_queries(self) -> list[Candidate]:
        """Candidates to query now (marked in flight); empty when waiting or finished."""
        out: list[Candidate] = []
        if self.queries_sent >= self.max_queries:
            return out
        live = 0
        alpha, k = self.alpha, self.k
        for cand in self._sorted:
            if self.in_flight >= alpha or live >= k:
                break
            state = cand.state
            if state is _FAILED or state is _SLOW:
                continue
            live += 1
            if state is _NEW:
                cand.state = _IN_FLIGHT
                self.in_flight += 1
                self.queries_sent += 1
                out.append(cand)
                if self.queries_sent >= self.max_queries:
                    break
        return out

    def on_response(self, node_id: bytes, closer: list[tuple[bytes, Address]]) -> None:
        """Record an answer and the contacts it returned."""
        cand = self._settle(node_id, _ANSWERED)
        if cand is None:
            return
        self.responses += 1
        for other_id, address in closer:
            self.add(other_id, address, cand.hops + 1)

    def on_slow(self, node_id: bytes) -> None:
        """The query passed its RTO: free its slot, keep accepting a late answer."""
        cand = self._candidates.get(node_id)
        if cand is None or cand.state is not CandidateState.IN_FLIGHT:
            return
        cand.state = CandidateState.SLOW
        self.in_flight -= 1

    def on_failure(self, node_id: bytes) -> None:
        """Record a hard timeout or refusal."""
        if self._settle(node_id, _FAILED) is not None:
            self.failures += 1

    def _settle(self, node_id: bytes, outcome: CandidateState) -> Candidate | None:
        """Move a queried (in flight or slow) candidate to ``outcome``; None if it was not."""
        cand = self._candidates.get(node_id)
        if cand is None:
            return None
        state = cand.state
        if state is _IN_FLIGHT:
            self.in_flight -= 1
        elif state is not _SLOW:
            return None
        cand.state = outcome
        return cand

    @property
    def finished(self) -> bool:
        """True when the lookup has converged (see the module docstring) or the budget is spent.

        Patient: the k closest live candidates have all answered; a slow one among them is
        waited for (skipping it would return a wrong k closest; meanwhile its slot serves
        others). Quorum: the k closest that are not slow have answered, and slow ones are at
        most the fraction ``1 - quorum`` of the k closest that have not failed.
        """
        if self.queries_sent >= self.max_queries:
            return self.in_flight == 0
        quorum = self.quorum
        k = self.k
        live = 0  # candidates neither failed nor slow (all answered so far)
        seen = 0  # candidates that have not failed, slow included
        slow = 0  # slow ones among the first k of those
        for cand in self._sorted:
            state = cand.state
            if state is _FAILED:
                continue
            seen += 1
            if state is _SLOW:
                if quorum is None:
                    return False
                if seen <= k:
                    slow += 1
                continue
            if state is not _ANSWERED:
                return False
            live += 1
            if live >= k:
                break
        if quorum is None:
            return True
        closest = min(seen, k)
        return closest - slow >= quorum * closest

    def closest_answered(self, count: int | None = None) -> list[Candidate]:
        """The closest candidates that answered, nearest first."""
        n = self.k if count is None else count
        return [c for c in self._sorted if c.state is CandidateState.ANSWERED][:n]

    def hops(self) -> int:
        """Sequential requests it took to reach the closest node that answered (0: none)."""
        closest = self.closest_answered(1)
        return closest[0].hops if closest else 0


class DisjointLookup:
    """``d`` lookups over disjoint sets of nodes (S/Kademlia, Baumgart & Mies 2007, sec. 4.4).

    Our own closest contacts are dealt round-robin to the paths; a contact a path learns joins
    that path only if no other path has it, so a node (honest or not) influences one path at
    most. The lookup ends when every path has ended; the result is the union of the paths'
    answers, closest first. ``alpha`` applies per path.
    """

    def __init__(self, target: bytes, *, k: int, alpha: int, paths: int,
                 max_queries: int = 128, max_per_ip: int = 10,
                 quorum: float | None = None) -> None:
        self.target = target
        self.k = k
        self.paths = [Lookup(target, k=k, alpha=alpha, max_queries=max_queries,
                             max_per_ip=max_per_ip, quorum=quorum) for _ in range(paths)]
        self._path_of: dict[bytes, Lookup] = {}
        self._next_seed = 0

    def add(self, node_id: bytes, address: Address, hops: int = 1) -> bool:
        """Deal a seed contact to the next path."""
        if node_id in self._path_of:
            return False
        path = self.paths[self._next_seed % len(self.paths)]
        if not path.add(node_id, address, hops):
            return False
        self._next_seed += 1
        self._path_of[node_id] = path
        return True

    def next_queries(self) -> list[Candidate]:
        """Queries to send now, over all paths."""
        return [cand for path in self.paths for cand in path.next_queries()]

    def on_response(self, node_id: bytes, closer: list[tuple[bytes, Address]]) -> None:
        """Route an answer to its path; unclaimed contacts join that path."""
        path = self._path_of.get(node_id)
        if path is None:
            return
        fresh = [(n, a) for n, a in closer if self._path_of.get(n, path) is path]
        path.on_response(node_id, fresh)
        for other_id, _ in fresh:  # claimed only by the path that actually took it
            if path.owns(other_id):
                self._path_of.setdefault(other_id, path)

    def on_slow(self, node_id: bytes) -> None:
        """Route a soft timeout to its path."""
        path = self._path_of.get(node_id)
        if path is not None:
            path.on_slow(node_id)

    def owns(self, node_id: bytes) -> bool:
        """Whether ``node_id`` is a candidate of one of the paths."""
        path = self._path_of.get(node_id)
        return path is not None and path.owns(node_id)

    def on_failure(self, node_id: bytes) -> None:
        """Route a failure to its path."""
        path = self._path_of.get(node_id)
        if path is not None:
            path.on_failure(node_id)

    @property
    def finished(self) -> bool:
        """True when every path has finished."""
        return all(path.finished for path in self.paths)

    @property
    def queries_sent(self) -> int:
        """Requests sent over all paths."""
        return sum(path.queries_sent for path in self.paths)

    def closest_answered(self, count: int | None = None) -> list[Candidate]:
        """Union of the paths' answers, nearest first."""
        n = self.k if count is None else count
        merged = sorted((c for path in self.paths for c in path.closest_answered()),
                        key=lambda c: c.distance)
        return merged[:n]

    def hops(self) -> int:
        """Hops to the closest node any path reached."""
        closest = self.closest_answered(1)
        return closest[0].hops if closest else 0
