"""Deterministic discrete-event loop: a heap of ``(time, seq, callback, argument)``.

Ties in time are broken by insertion order (``seq``), so a run is a pure function of its
inputs. The loop is deliberately minimal (~0.5 us per event): the simulator's cost must be in
the DHT code it studies, not in the scheduler (DESIGN.md sec. 3 on why not trio/asyncio).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class EventLoop:
    """Virtual clock plus a priority queue of callbacks."""

    __slots__ = ("_heap", "_seq", "events", "now")

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.events = 0
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = 0

    def schedule(self, at: float, callback: Callable[[Any], None], argument: Any = None) -> None:
        """Run ``callback(argument)`` at virtual time ``at`` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(at, self.now), self._seq, callback, argument))

    def run(self, until: float, *, stop: Callable[[], bool] | None = None,
            max_events: int | None = None) -> None:
        """Process events up to time ``until`` (or until ``stop()`` / ``max_events``)."""
        heap = self._heap
        pop = heapq.heappop
        if stop is None and max_events is None:
            events = self.events
            try:
                while heap and heap[0][0] <= until:
                    at, _, callback, argument = pop(heap)
                    self.now = at
                    events += 1
                    callback(argument)
            finally:
                self.events = events
            self.now = max(self.now, until)
            return
        budget = max_events if max_events is not None else -1
        while heap and heap[0][0] <= until:
            at, _, callback, argument = pop(heap)
            self.now = at
            self.events += 1
            callback(argument)
            if budget > 0:
                budget -= 1
                if budget == 0:
                    return
            if stop is not None and stop():
                return
        if self.now < until and (stop is None or not stop()):
            self.now = until

    @property
    def pending(self) -> int:
        """Scheduled events not yet run."""
        return len(self._heap)
