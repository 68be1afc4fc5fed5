"""Token-bucket request rate limits per source IP and per subnet, with bounded memory."""

from __future__ import annotations


class TokenBuckets:
    """One token bucket per key (refill ``rate`` per second up to ``burst``)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 16384) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # insertion-ordered: popping and re-inserting a key keeps the least recently active
        # one first
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False when it is empty."""
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens, stamp = self.burst, now
        else:
            tokens, stamp = entry
            if now > stamp:
                tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        buckets[key] = (tokens, now if now > stamp else stamp)
        if len(buckets) > self.max_keys:
            del buckets[next(iter(buckets))]  # least recently active: it would be full again
        return allowed
