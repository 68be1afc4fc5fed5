"""Asynchronous iterative lookup (Kademlia sec. 2.3, made truly asynchronous as recommended by
Jimenez, Osmani & Knutsson, "Sub-second lookups on a large-scale Kademlia-based overlay",
IEEE P2P 2011).

Theory of operation
-------------------
The lookup keeps a shortlist of candidates sorted by XOR distance to the target. Up to
``alpha`` queries are in flight at any time; whenever one answers or times out, the next
unqueried candidate among the ``k`` closest live ones is queried at once (no lockstep rounds,
so one slow node never stalls the others). The lookup ends when the ``k`` closest candidates
that have not failed have all answered. The shortlist is bounded and the number of queries is
capped so a hostile network cannot make a lookup run forever.

This class only decides *whom* to ask; the node sends the requests and feeds results back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dhtchat.core.addresses import Address
from dhtchat.core.ids import distance


class CandidateState(Enum):
    """Progress of one candidate within a lookup."""

    NEW = 0
    IN_FLIGHT = 1
    ANSWERED = 2
    FAILED = 3


@dataclass(slots=True)
class Candidate:
    """A node the lookup knows of."""

    node_id: bytes
    address: Address
    distance: int
    hops: int
    state: CandidateState = CandidateState.NEW


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
    ) -> None:
        self.target = target
        self.k = k
        self.alpha = alpha
        self.max_queries = max_queries
        self.max_candidates = max_candidates if max_candidates is not None else 8 * k
        self._candidates: dict[bytes, Candidate] = {}
        self._sorted: list[Candidate] = []
        self.in_flight = 0
        self.queries_sent = 0
        self.responses = 0
        self.failures = 0

    def add(self, node_id: bytes, address: Address, hops: int = 0) -> None:
        """Offer a candidate (ignored if known, or farther than a full shortlist)."""
        if node_id in self._candidates:
            return
        cand = Candidate(node_id, address, distance(node_id, self.target), hops)
        if len(self._sorted) >= self.max_candidates:
            worst = self._sorted[-1]
            if worst.distance <= cand.distance or worst.state is CandidateState.IN_FLIGHT:
                return
            self._sorted.pop()
            del self._candidates[worst.node_id]
        self._candidates[node_id] = cand
        lo, hi = 0, len(self._sorted)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._sorted[mid].distance < cand.distance:
                lo = mid + 1
            else:
                hi = mid
        self._sorted.insert(lo, cand)

    def next_queries(self) -> list[Candidate]:
        """Candidates to query now (marked in flight); empty when waiting or finished."""
        out: list[Candidate] = []
        if self.queries_sent >= self.max_queries:
            return out
        live = 0
        for cand in self._sorted:
            if self.in_flight >= self.alpha or live >= self.k:
                break
            if cand.state is CandidateState.FAILED:
                continue
            live += 1
            if cand.state is CandidateState.NEW:
                cand.state = CandidateState.IN_FLIGHT
                self.in_flight += 1
                self.queries_sent += 1
                out.append(cand)
                if self.queries_sent >= self.max_queries:
                    break
        return out

    def on_response(self, node_id: bytes, closer: list[tuple[bytes, Address]]) -> None:
        """Record an answer and the contacts it returned."""
        cand = self._candidates.get(node_id)
        if cand is None or cand.state is not CandidateState.IN_FLIGHT:
            return
        cand.state = CandidateState.ANSWERED
        self.in_flight -= 1
        self.responses += 1
        for other_id, address in closer:
            self.add(other_id, address, cand.hops + 1)

    def on_failure(self, node_id: bytes) -> None:
        """Record a timeout or refusal."""
        cand = self._candidates.get(node_id)
        if cand is None or cand.state is not CandidateState.IN_FLIGHT:
            return
        cand.state = CandidateState.FAILED
        self.in_flight -= 1
        self.failures += 1

    @property
    def finished(self) -> bool:
        """True when the k closest live candidates have all answered (or the budget is spent)."""
        if self.queries_sent >= self.max_queries:
            return self.in_flight == 0
        live = 0
        for cand in self._sorted:
            if cand.state is CandidateState.FAILED:
                continue
            if cand.state is not CandidateState.ANSWERED:
                return False
            live += 1
            if live >= self.k:
                break
        return True

    def closest_answered(self, count: int | None = None) -> list[Candidate]:
        """The closest candidates that answered, nearest first."""
        n = self.k if count is None else count
        return [c for c in self._sorted if c.state is CandidateState.ANSWERED][:n]

    def max_hops(self) -> int:
        """Deepest hop count among the k closest answered candidates."""
        return max((c.hops for c in self.closest_answered()), default=0)
