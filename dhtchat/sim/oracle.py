"""Global knowledge for checking lookups: the true k closest live nodes to a target.

Ids are kept sorted as integers. All ids sharing the target's top ``256 - s`` bits form one
contiguous range of the sorted list and are closer to the target (XOR distance ``< 2**s``)
than any id outside it; the oracle widens ``s`` until the range holds ``k`` acceptable nodes,
then sorts only that range. Cost: a few bisections and a sort of about ``2k`` ids.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from dhtchat.core.ids import ID_BITS


class ClosestOracle:
    """Sorted view of node ids (by index) for exact closest-k queries."""

    def __init__(self, ids: list[bytes]) -> None:
        pairs = sorted((int.from_bytes(node_id, "big"), index) for index, node_id in
                       enumerate(ids))
        self._keys = [key for key, _ in pairs]
        self._indices = [index for _, index in pairs]
        self._start_shift = max(0, ID_BITS - int(math.log2(max(2, len(ids)))) - 1)

    def closest(self, target: bytes, k: int, accept: Callable[[int], bool]) -> list[int]:
        """Indices of the ``k`` accepted nodes closest to ``target``, nearest first."""
        t = int.from_bytes(target, "big")
        keys = self._keys
        shift = self._start_shift
        while True:
            lo = bisect.bisect_left(keys, (t >> shift) << shift)
            hi = bisect.bisect_left(keys, ((t >> shift) + 1) << shift)
            members = [(keys[j] ^ t, self._indices[j]) for j in range(lo, hi)
                       if accept(self._indices[j])]
            if len(members) >= k or shift >= ID_BITS:
                members.sort()
                return [index for _, index in members[:k]]
            shift += 1
