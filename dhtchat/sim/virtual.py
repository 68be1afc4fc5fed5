"""asyncio on virtual time: an event loop whose clock jumps to the next timer, and a
simulated datagram network, for running unmodified asyncio protocols (the ``kademlia``
baseline, :mod:`dhtchat.sim.baseline`) as fast as the CPU allows and deterministically.

Theory of operation
-------------------

* **Virtual time.** :class:`VirtualTimeLoop` is an ``asyncio.BaseEventLoop`` whose clock is a
  number. Its "selector" does no I/O: when the loop would block for ``timeout`` seconds it
  adds ``timeout`` to the clock instead, so the next timer is due at once. ``asyncio.sleep(5)``
  and ``loop.call_later`` cost no wall time, the loop never touches a socket or a pipe, and
  callbacks run in the usual FIFO/heap order, so a run is a pure function of its inputs.
  :func:`run_virtual` runs a coroutine on a fresh loop.
* **Datagrams.** Every node has a virtual address (``10.a.b.c``, port 4000) and a
  :class:`SimDatagramTransport`. ``sendto`` hands the datagram to :class:`SimDatagramNetwork`,
  which drops it if either end is offline or the loss draw says so, and otherwise schedules
  ``protocol.datagram_received(data, src_addr)`` on the destination after a delay from the
  latency model. Loss and delay are drawn from one ``random.Random`` per sending node, seeded
  from ``(seed, index)``.
* **Traffic per activity.** :func:`trace_traffic` makes every datagram the current task sends,
  and every datagram sent by what it causes (replies, the pings they provoke), count in one
  :class:`Traffic`: a context variable, which asyncio carries through ``call_later`` and
  tasks. Bytes are UDP payload bytes (no IP/UDP headers).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from dhtchat.sim.models import LatencyModel

__all__ = [
    "PORT",
    "Address",
    "SimDatagramNetwork",
    "SimDatagramTransport",
    "Traffic",
    "VirtualDeadlockError",
    "VirtualTimeExceededError",
    "VirtualTimeLoop",
    "address_for",
    "run_virtual",
    "trace_traffic",
]

T = TypeVar("T")
Address = tuple[str, int]

PORT = 4000


# ------------------------------------------------------------------------ virtual-time loop


class VirtualTimeExceededError(RuntimeError):
    """The virtual clock passed the loop's deadline."""


class VirtualDeadlockError(RuntimeError):
    """Nothing is ready and no timer is scheduled, yet the loop was asked to go on."""


class _CountingDeque(deque[asyncio.Handle]):
    """The loop's ready queue; counts the callbacks the loop takes out to run."""

    def __init__(self) -> None:
        super().__init__()
        self.ran = 0

    def popleft(self) -> asyncio.Handle:
        handle = super().popleft()
        if not handle.cancelled():
            self.ran += 1
        return handle


class _VirtualSelector:
    """Stands in for the selector: "waiting" ``timeout`` seconds advances the clock."""

    def __init__(self, advance: Callable[[float | None], None]) -> None:
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[Any]:
        self._advance(timeout)
        return []

    def close(self) -> None:
        return None


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio event loop on a virtual clock that jumps to the next timer.

    ``time()`` starts at ``start`` and only moves when the loop has nothing ready: then it
    jumps to the earliest scheduled timer. No file descriptors are created or polled (there is
    no self-pipe: ``call_soon_threadsafe`` from another thread is not supported while the loop
    idles, which it never does in wall time). ``deadline``: virtual time past which the loop
    raises :class:`VirtualTimeExceededError`. ``events`` counts callbacks run. Exceptions
    that reach the loop's exception handler are kept in ``errors`` (and logged at debug).
    """

    def __init__(self, *, start: float = 0.0, deadline: float | None = None) -> None:
        super().__init__()
        self._now = float(start)
        self._deadline = deadline
        self._selector = _VirtualSelector(self._advance)
        self._ready = _CountingDeque()
        self._clock_resolution = 1e-9
        self.errors: list[str] = []
        self.set_exception_handler(_record_loop_error)

    def time(self) -> float:
        return self._now

    @property
    def events(self) -> int:
        """Callbacks run so far (cancelled handles excluded)."""
        return self._ready.ran

    def _advance(self, timeout: float | None) -> None:
        if timeout is None:
            raise VirtualDeadlockError("virtual loop: nothing ready and no timer scheduled")
        if timeout > 0:
            self._now += timeout
            if self._deadline is not None and self._now > self._deadline:
                raise VirtualTimeExceededError(
                    f"virtual time {self._now:.3f} s passed the deadline {self._deadline:.3f} s"
                )

    def _process_events(self, event_list: list[Any]) -> None:
        return None

    def _write_to_self(self) -> None:
        return None


def _record_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    message = str(context.get("message", ""))
    exc = context.get("exception")
    text = f"{message}: {type(exc).__name__}: {exc}" if exc is not None else message
    if isinstance(loop, VirtualTimeLoop):
        loop.errors.append(text)
    logging.getLogger(__name__).debug("virtual loop error: %s", text)


def run_virtual(main: Coroutine[Any, Any, T], *, loop: VirtualTimeLoop | None = None) -> T:
    """Run ``main`` to completion on ``loop`` (default: a new :class:`VirtualTimeLoop`).

    Like ``asyncio.run``: tasks still pending when ``main`` returns are cancelled and the loop
    is closed; its ``time()``, ``events`` and ``errors`` stay readable afterwards.
    """
    vloop = loop if loop is not None else VirtualTimeLoop()
    with asyncio.Runner(loop_factory=lambda: vloop) as runner:
        return runner.run(main)


# ------------------------------------------------------------------------- datagram network


def address_for(index: int) -> Address:
    """The virtual address of node ``index``: ``("10.a.b.c", 4000)``."""
    n = index + 1
    if not 0 < n < 1 << 24:
        raise ValueError(f"node index {index} out of range")
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", PORT


@dataclass
class Traffic:
    """Datagrams put on the wire on behalf of one activity (a join, a lookup)."""

    messages: int = 0
    bytes: int = 0


_TRAFFIC: contextvars.ContextVar[Traffic | None] = contextvars.ContextVar(
    "dhtchat_sim_virtual_traffic", default=None
)


def trace_traffic(traffic: Traffic) -> None:
    """Count in ``traffic`` every datagram the current context sends from now on, and those
    of the callbacks and tasks it schedules (replies included: delivery runs in the sender's
    context). Call it first thing in a task of its own."""
    _TRAFFIC.set(traffic)


class SimDatagramTransport(asyncio.DatagramTransport):
    """The datagram endpoint of one node on a :class:`SimDatagramNetwork`."""

    def __init__(self, network: SimDatagramNetwork, index: int) -> None:
        super().__init__(extra={"sockname": network.addresses[index]})
        self._network = network
        self._index = index
        self._closing = False

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:  # like a closed asyncio transport: silently nothing
            return
        if addr is None:
            raise ValueError("simulated transports are unconnected: sendto needs an address")
        self._network.send(self._index, bytes(data), addr)

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return 0


class SimDatagramNetwork:
    """Delivers datagrams between nodes on a :class:`VirtualTimeLoop`.

    ``attach(index, protocol)`` connects a protocol (``asyncio.DatagramProtocol``) and returns
    its transport; ``set_online(index, flag)`` cuts a node off (datagrams to or from it are
    dropped, including those already in flight to it) or reconnects it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        size: int,
        *,
        seed: int,
        latency: LatencyModel,
        loss: float = 0.0,
    ) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss must be within [0, 1]")
        self.loop = loop
        self.latency = latency
        self.loss = loss
        self.addresses = [address_for(i) for i in range(size)]
        self.index_of = {addr: i for i, addr in enumerate(self.addresses)}
        self.protocols: list[asyncio.DatagramProtocol | None] = [None] * size
        self.online = [False] * size
        self.last_change = [0.0] * size
        self.rngs = [random.Random(f"{seed}/link/{i}") for i in range(size)]
        self.messages = 0
        self.bytes = 0
        self.dropped = 0

    def attach(self, index: int, protocol: asyncio.DatagramProtocol) -> SimDatagramTransport:
        """Connect ``protocol`` as node ``index`` (online) and return its transport."""
        transport = SimDatagramTransport(self, index)
        self.protocols[index] = protocol
        self.set_online(index, True)
        protocol.connection_made(transport)
        return transport

    def set_online(self, index: int, online: bool) -> None:
        """Take node ``index`` off the network or put it back."""
        if self.online[index] != online:
            self.online[index] = online
            self.last_change[index] = self.loop.time()

    def send(self, src: int, data: bytes, addr: Any) -> None:
        """Put a datagram from node ``src`` on the wire to ``addr``."""
        self.messages += 1
        self.bytes += len(data)
        traffic = _TRAFFIC.get()
        if traffic is not None:
            traffic.messages += 1
            traffic.bytes += len(data)
        dst = self.index_of.get((str(addr[0]), int(addr[1])))
        if dst is None or not self.online[src] or not self.online[dst]:
            self.dropped += 1
            return
        rng = self.rngs[src]
        if self.loss and rng.random() < self.loss:
            self.dropped += 1
            return
        delay = self.latency.delay(src, dst, rng)
        # call_later copies the current context, so the reply is traced to the same activity
        self.loop.call_later(delay, self._deliver, dst, data, self.addresses[src])

    def _deliver(self, dst: int, data: bytes, src_addr: Address) -> None:
        protocol = self.protocols[dst]
        if protocol is None or not self.online[dst]:
            self.dropped += 1
            return
        protocol.datagram_received(data, src_addr)
