"""What a daemon run holds besides its services: its options, the profile lock, its
background tasks and its DHT node.

Theory of operation:

* :class:`ProfileLock` is an exclusive ``flock`` on ``daemon.lock``, held (the file stays open)
  for the daemon's lifetime, with the owner's pid written in it for the message a second
  daemon gets. The kernel drops the lock when the process dies, so a crashed daemon leaves
  nothing stale behind.
* :class:`TaskSet` runs the background tasks of every service (the
  :class:`~dhtchat.app.services.Spawner` they are built with); a failure is logged and
  reported on the event stream instead of vanishing, and :meth:`TaskSet.cancel_all` ends them
  all when the daemon stops.
* :func:`open_node` binds the DHT node with the node key and the peers remembered from the last
  run, :func:`join` bootstraps it (retrying until a node answers), :func:`close_node`
  remembers its peers for the next run. The node has its own node key, never the identity
  key, and answers STUN Binding requests on its UDP port, so ICE needs no STUN server of ours.
* :func:`every` runs a maintenance job periodically until the daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal, TypeVar

from dhtchat.app.profile import NodeState, Profile
from dhtchat.app.rpc import RpcError
from dhtchat.core.addresses import Address
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.node import DhtConfig
from dhtchat.net.udp import UdpDhtNode
from dhtchat.net.webrtc import TurnServer

log = logging.getLogger("dhtchat.daemon")
_T = TypeVar("_T")

JOIN_RETRY: Final = 10.0


@dataclass
class DaemonOptions:
    """Configuration of a daemon (the ``dhtchat daemon`` flags)."""

    port: int = 0
    host: str = "0.0.0.0"
    bootstrap: list[Address] = field(default_factory=list)
    stun: list[Address] = field(default_factory=list)
    turn: TurnServer | None = None
    relay_only: bool = False
    ice_addresses: list[str] | None = None
    connect_timeout: float = 30.0
    display_name: str = ""
    auto_connect: bool = True  # keep a connection to every online contact (like Tox, Jami)
    # DHT role: "client" read-only (behind a NAT others cannot reach), "server", or "auto":
    # a client until peers see us at our own address (dhtchat.core.reachability)
    dht_mode: Literal["auto", "server", "client"] = "auto"


class DaemonAlreadyRunning(Exception):
    """Another daemon holds the profile's lock."""


class ProfileLock:
    """The exclusive lock on a profile: one daemon per profile."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    @classmethod
    def acquire(cls, root: Path) -> ProfileLock:
        """Take the lock of the profile in ``root`` (:class:`DaemonAlreadyRunning` when
        another process holds it)."""
        fd = os.open(root / "daemon.lock",
                     os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        file = os.fdopen(fd, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid = file.read().strip() or "?"
            file.close()
            raise DaemonAlreadyRunning(
                f"a daemon is already running on profile {root} (pid {pid})") from None
        file.seek(0)
        file.truncate()
        file.write(str(os.getpid()))
        file.flush()
        return cls(file)

    def release(self) -> None:
        """Let another daemon take the profile."""
        self._file.close()


class TaskSet:
    """The background tasks of one daemon run (a :class:`~dhtchat.app.services.Spawner`).

    ``on_failure(message)`` hears of a task that failed (RpcErrors excepted: whoever raised
    one has reported it)."""

    def __init__(self, on_failure: Callable[[str], None]) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._on_failure = on_failure

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[_T]:
        """Run ``coro`` in the background until it ends or :meth:`cancel_all`."""
        task: asyncio.Task[_T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[_T]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, RpcError):
            log.error("background task failed: %r", exc)
            self._on_failure(f"background task failed: {exc!r}")

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def every(period: float, stopping: asyncio.Event,
                job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` every ``period`` seconds until ``stopping``; a network error (connection
    or timeout) is logged and the next round runs all the same."""
    while not stopping.is_set():
        try:
            await job()
        except (ConnectionError, TimeoutError) as exc:
            log.debug("maintenance: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), period)


async def open_node(profile: Profile, options: DaemonOptions) -> UdpDhtNode:
    """The profile's DHT node, listening on ``options.host:port``, knowing last run's peers,
    in the ``options.dht_mode`` role. In ``auto`` a node with nobody to ask (no bootstrap
    address, no peer remembered) is the first of its network and serves from the start:
    whoever joins through it must get answers, and no peer could tell it where it is."""
    state = NodeState(profile.node_db_path)
    try:
        remembered = state.peers()
        mode = options.dht_mode
        if mode == "auto" and not options.bootstrap and not remembered:
            mode = "server"
        node = await UdpDhtNode.create(options.host, options.port, node_key=state.node_key(),
                                       config=DhtConfig(read_only=mode == "client"),
                                       auto_mode=mode == "auto")
    except OSError as exc:
        raise LocalProtocolError(f"cannot listen on {options.host}:{options.port}: "
                                 f"{exc.strerror}") from None
    finally:
        state.close()
    if remembered:
        node.add_known_peers(remembered)
    return node


JOIN_POLL: Final = 0.05  # how often join() looks at the routing table while bootstrapping
_background_bootstraps: set[asyncio.Future[int]] = set()  # self-lookups that outlived join()


def _bootstrap_done(attempt: asyncio.Future[int]) -> None:
    _background_bootstraps.discard(attempt)
    if not attempt.cancelled() and attempt.exception() is not None:
        log.debug("the bootstrap's self-lookup ended: %r", attempt.exception())


async def join(node: UdpDhtNode, bootstrap: list[Address], stopping: asyncio.Event) -> None:
    """Join the DHT through ``bootstrap`` (none: wait to be found), retrying every
    JOIN_RETRY seconds until a node answers or ``stopping``."""
    while bootstrap and not stopping.is_set():
        # Joined once the bootstrap ends, or as soon as the routing table holds k contacts
        # that answered: the self-lookup then finishes in the background rather than hold
        # everything up while it waits out a node that went away (a restart's usual case).
        attempt = asyncio.ensure_future(node.bootstrap(bootstrap))
        while not attempt.done() and len(node.core.table) < node.core.config.k:
            await asyncio.wait({attempt}, timeout=JOIN_POLL)
        if attempt.done():
            with contextlib.suppress(TimeoutError):
                attempt.result()
        else:
            _background_bootstraps.add(attempt)
            attempt.add_done_callback(_bootstrap_done)
        if len(node.core.table):
            break
        log.warning("no DHT node answered; retrying in %g s", JOIN_RETRY)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), JOIN_RETRY)
    log.info("joined the DHT: %d contacts in the routing table", len(node.core.table))


async def close_node(profile: Profile, node: UdpDhtNode) -> None:
    """Remember the node's peers for the next run, then close it."""
    state = NodeState(profile.node_db_path)
    state.save_peers(node.peers())
    state.close()
    await node.close()
