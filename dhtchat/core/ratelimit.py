"""Token-bucket request rate limits per source IP and per subnet, with bounded memory."""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    """One token bucket per key (refill ``rate`` per second up to ``burst``)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 16384) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False when it is empty."""
        tokens, stamp = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate) if now > stamp else tokens
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, max(now, stamp))
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # least recently active: it would be full again
        return allowed
