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
* :func:`open_node` binds the DHT node with the node key, on the port of the last run when no
  port is given (a free one the first time, or when that one is taken), and with the peers
  remembered from the last run; :func:`join` bootstraps it (retrying until a node answers);
  :func:`start_upkeep` saves the peers that answered every PEER_SAVE_PERIOD (a crash loses
  little) and runs LAN discovery (:class:`LanJoin`); :func:`close_node` saves them a last
  time. A run in which nobody answered keeps the peers of the run before. The node has its
  own node key, never the identity key, and answers STUN Binding requests on its UDP port, so
  ICE needs no STUN server of ours.
* :func:`every` runs a maintenance job periodically until the daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal, TypeVar

from dhtchat.app.profile import NodeState, Profile
from dhtchat.app.rpc import RpcError
from dhtchat.core.addresses import Address, format_address
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.lan import LAN_GROUP, LAN_PORT, Found
from dhtchat.core.node import DhtConfig
from dhtchat.net.lan import LanAnnouncer
from dhtchat.net.udp import UdpDhtNode
from dhtchat.net.webrtc import TurnServer

if TYPE_CHECKING:
    from dhtchat.app.calls import CallManager
    from dhtchat.app.messenger import Messenger
    from dhtchat.app.rpc import RpcServer
    from dhtchat.store.history import History

log = logging.getLogger("dhtchat.daemon")
_T = TypeVar("_T")

JOIN_RETRY: Final = 10.0
PEER_SAVE_PERIOD: Final = 120.0


@dataclass
class DaemonOptions:
    """Configuration of a daemon (the ``dhtchat daemon`` flags)."""

    port: int | None = None  # None: the profile's port of the last run, else a free one
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
    lan_discovery: bool = True  # announce on, and listen to, the local links (core/lan.py)
    lan_port: int = LAN_PORT  # the group's UDP port (tests)


@dataclass
class Running:
    """What a started daemon runs on, built whole by :meth:`Daemon.start` before the API
    socket opens: the profile lock, the history, the DHT node and the services over them."""

    lock: ProfileLock
    history: History
    node: UdpDhtNode
    lan: LanJoin  # LAN discovery and what it found
    messenger: Messenger
    calls: CallManager
    rpc: RpcServer


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
    """The profile's DHT node, listening on ``options.host:port`` (no port: the last run's,
    else a free one; the port bound is kept for the next run), knowing last run's peers, in
    the ``options.dht_mode`` role. In ``auto`` a node with nobody to ask (no bootstrap
    address, no peer remembered) is the first of its network and serves from the start:
    whoever joins through it must get answers, and no peer could tell it where it is."""
    state = NodeState(profile.node_db_path)
    try:
        remembered = state.peers()
        mode = options.dht_mode
        if mode == "auto" and not options.bootstrap and not remembered:
            mode = "server"
        stored = state.port()
        port = options.port if options.port is not None else stored or 0

        async def create(port: int) -> UdpDhtNode:
            return await UdpDhtNode.create(
                options.host, port, node_key=state.node_key(),
                config=DhtConfig(read_only=mode == "client"), auto_mode=mode == "auto")
        try:
            node = await create(port)
        except OSError as exc:
            if options.port is not None or not port:
                raise LocalProtocolError(f"cannot listen on {options.host}:{port}: "
                                         f"{exc.strerror}") from None
            log.warning("port %d of the last run is not free (%s); using another", port,
                        exc.strerror)
            try:
                node = await create(0)
            except OSError as again:
                raise LocalProtocolError(f"cannot listen on {options.host}: "
                                         f"{again.strerror}") from None
        if node.address[1] != stored:
            state.save_port(node.address[1])
    finally:
        state.close()
    if remembered:
        log.info("re-verifying %d DHT peers of the last run", len(remembered))
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


def remember_peers(profile: Profile, node: UdpDhtNode) -> int:
    """Save the routing table's peers (nodes that answered) for the next run; a table that is
    empty leaves the saved ones alone. Returns how many were saved."""
    peers = node.peers()
    if peers:
        state = NodeState(profile.node_db_path)
        try:
            state.save_peers(peers)
        finally:
            state.close()
    return len(peers)


class LanJoin:
    """What the daemon does with a node heard on the local link (:mod:`dhtchat.core.lan`).

    A serving node not in the routing table yet is asked: through a bootstrap (ping and a
    lookup of our own id, which also brings in the nodes it knows) while the table is short,
    else a ping that checks the announced node id. A DHT client in ``auto`` mode that no peer
    has observed yet (after a restart every node of a LAN is one, each waiting for the
    others) starts serving: a node on its own link reaches it directly. Its reachability
    verdict then decides as usual, from the peers' answers."""

    def __init__(self, node: UdpDhtNode, spawn: Callable[[Awaitable[object]], object]) -> None:
        self.node = node
        self._spawn = spawn
        self._bootstrapping = False
        self.announcer: LanAnnouncer | None = None
        self.error: str | None = None  # why LAN discovery is off, when it was asked for

    def serving(self) -> bool:
        """Whether our DHT node answers requests (what our announce says)."""
        return not self.node.core.config.read_only

    def found(self, found: Found) -> None:
        """Act on a node heard on the link."""
        node = self.node
        if node.reachability is not None and node.reachability.verdict == "unknown" \
                and node.core.config.read_only:
            log.info("DHT server: a node on the local link (%s) reaches this one directly",
                     found.address[0])
            node.core.set_read_only(False)
        if not found.serving:
            return
        if any(c.address == found.address for c in node.core.table.contacts()):
            return
        if len(node.core.table) < node.core.config.k and not self._bootstrapping:
            self._bootstrapping = True
            self._spawn(self._bootstrap(found.address))
        else:
            node.add_known_peers([(found.node_id, found.address)])

    async def _bootstrap(self, address: Address) -> None:
        try:
            contacts = await self.node.bootstrap([address])
            log.info("joined through %s, found on the LAN: %d DHT contacts",
                     format_address(address), contacts)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("bootstrap through %s (LAN): %r", format_address(address), exc)
        finally:
            self._bootstrapping = False

    def status(self) -> dict[str, object]:
        """The ``lan_discovery`` field of ``status``."""
        announcer = self.announcer
        if announcer is None:
            return {"enabled": False, **({"reason": self.error} if self.error else {})}
        stats = announcer.core.stats
        refused = sum(stats[k] for k in ("oversized", "non_local", "rate_limited", "malformed",
                                         "own_node_id"))
        return {"enabled": True, "group": f"{LAN_GROUP}:{announcer.port}",
                "interfaces": announcer.announcing,
                "sent": stats["sent"], "heard": stats["found"], "refused": refused}


async def start_upkeep(profile: Profile, node: UdpDhtNode, options: DaemonOptions,
                       spawn: Callable[[Awaitable[object]], object],
                       stopping: asyncio.Event) -> LanJoin:
    """Start saving the node's peers every PEER_SAVE_PERIOD and, unless switched off, LAN
    discovery (off too for a node on a loopback address: nothing on a link could reach it)."""
    spawn(every(PEER_SAVE_PERIOD, stopping, _saver(profile, node)))
    lan = LanJoin(node, spawn)
    if not options.lan_discovery:
        lan.error = "switched off (--no-lan-discovery)"
        return lan
    if _is_loopback(options.host):
        lan.error = f"the DHT node listens on {options.host} only"
        return lan
    try:
        announcer = await LanAnnouncer.open(node.node_id, node.address[1], lan.found,
                                            serving=lan.serving(), port=options.lan_port,
                                            role=lan.serving, bind_host=options.host)
    except OSError as exc:
        lan.error = f"cannot listen on {LAN_GROUP}:{options.lan_port}: {exc.strerror}"
        log.warning("no LAN discovery: %s", lan.error)
        return lan
    lan.announcer = announcer
    spawn(_announce(announcer, stopping))
    log.info("LAN discovery on %s:%d", LAN_GROUP, options.lan_port)
    return lan


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _saver(profile: Profile, node: UdpDhtNode) -> Callable[[], Awaitable[None]]:
    async def save() -> None:
        remember_peers(profile, node)
    return save


async def _announce(announcer: LanAnnouncer, stopping: asyncio.Event) -> None:
    try:
        await announcer.run(stopping)
    finally:
        announcer.close()


async def close_node(profile: Profile, node: UdpDhtNode, lan: LanJoin | None = None) -> None:
    """Stop LAN discovery, remember the node's peers for the next run, then close it."""
    if lan is not None and lan.announcer is not None:
        lan.announcer.close()
    remember_peers(profile, node)
    await node.close()
