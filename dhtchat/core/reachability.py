"""Whether this node can serve the DHT: are others able to reach it at the address it uses?

Theory of operation
-------------------
A node behind a NAT that others cannot reach unsolicited still gets into routing tables (its
own requests open the mapping the first answer comes through), and then every lookup that
meets it waits out its timeouts. BEP 43 (BitTorrent's read-only DHT nodes) and libp2p's
AutoNAT answer the same way: such a node should be a *client*, asking without being asked.
Each Pong (:class:`dhtchat.core.wire.Pong`) echoes the address our ping came from; the driver
adds the address its socket used towards that peer. If they are equal no NAT rewrote it: the
node is reachable where it says it is. :class:`Reachability` keeps the last
``window`` such observations, one per peer, and answers *server* when most of them were
direct (at least one), else *client* -- a node starts as a client and becomes a server on
its first direct answer, so one lying peer cannot move it far from what the others see.
Sans-IO: observations come in, a verdict goes out.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Literal

from dhtchat.core.addresses import Address

OBSERVATION_WINDOW: Final = 8  # the last answers from this many distinct peers count
Verdict = Literal["unknown", "reachable", "behind-nat"]


class Reachability:
    """The reachability verdict from the addresses peers saw our pings come from."""

    def __init__(self, window: int = OBSERVATION_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._direct: OrderedDict[Address, bool] = OrderedDict()  # peer -> seen unchanged

    def observe(self, peer: Address, observed: Address, local: Address) -> Verdict:
        """A peer at ``peer`` saw our packet come from ``observed``; we sent it from
        ``local``. Returns the verdict after it."""
        self._direct.pop(peer, None)
        self._direct[peer] = _same(observed, local)
        while len(self._direct) > self.window:
            self._direct.popitem(last=False)
        return self.verdict

    @property
    def verdict(self) -> Verdict:
        """``reachable`` when most recent peers (at least one) saw our address unchanged."""
        if not self._direct:
            return "unknown"
        direct = sum(self._direct.values())
        return "reachable" if direct * 2 > len(self._direct) else "behind-nat"

    @property
    def observations(self) -> int:
        """How many peers' answers the verdict rests on."""
        return len(self._direct)


def _same(a: Address, b: Address) -> bool:
    host_a, host_b = a[0].lower(), b[0].lower()
    if host_a.startswith("::ffff:"):
        host_a = host_a[7:]
    if host_b.startswith("::ffff:"):
        host_b = host_b[7:]
    return host_a == host_b and a[1] == b[1]
