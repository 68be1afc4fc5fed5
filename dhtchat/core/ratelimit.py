"""Token-bucket request rate limits per source IP and per subnet, with bounded memory."""

from __future__ import annotations


class TokenBuckets:
    """One token bucket per key (refill ``rate`` per second up to ``burst``).

    At most ``max_keys`` buckets are kept. When a new key overflows that, the least recently
    active eighth is forgotten: those buckets have refilled the longest, so forgetting them
    (a forgotten bucket starts full) gives nobody tokens they would not have had. Nothing is
    re-ordered on use, so a check is one dict lookup and one store.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 16384) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last activity)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False when it is empty."""
        buckets = self._buckets
        entry = buckets.get(key)
        if entry is None:
            tokens, stamp = self.burst, now
        else:
            tokens, stamp = entry
            if now > stamp:
                tokens = min(self.burst, tokens + (now - stamp) * self.rate)
                stamp = now
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        buckets[key] = (tokens, stamp)
        if entry is None and len(buckets) > self.max_keys:
            self._evict()
        return allowed

    def _evict(self) -> None:
        buckets = self._buckets
        ranked = sorted(buckets.items(), key=lambda item: item[1][1])  # stable: ties oldest
        for key, _ in ranked[: max(1, len(buckets) // 8)]:
            del buckets[key]
