"""``dhtchat daemon``: a person's node (DHT + contacts + connections) behind a local API.

Theory of operation (design sec. 5; protocol in docs/protocol.md, API in docs/api.md):

* One daemon per profile, enforced with an exclusive ``flock`` on ``daemon.lock``.
* The DHT node (its own node key, never the identity key) answers STUN Binding requests on
  its UDP port, so ICE needs no STUN server of ours.
* Contact requests arrive in the identity's public inbox (``listen`` + a periodic ``get``);
  a request is shown only after its proof of work, seal and signature check out; blocked ids
  are dropped before anything is stored.
* For every accepted contact the daemon publishes sealed presence and listens for the
  contact's presence and signalling (:mod:`dhtchat.app.rendezvous`), and keeps a WebRTC
  connection with glare, backoff and keepalives (:mod:`dhtchat.app.links`, the driver of the
  sans-IO :mod:`dhtchat.core.link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from aiortc import RTCConfiguration

from dhtchat.app import faults
from dhtchat.app.api import Api
from dhtchat.app.calls import CallManager, CallStore
from dhtchat.app.events import EventLog
from dhtchat.app.inbox import ContactInbox
from dhtchat.app.links import Link, Links
from dhtchat.app.messenger import Messenger
from dhtchat.app.profile import NodeState, Profile, make_private
from dhtchat.app.rendezvous import Rendezvous
from dhtchat.app.rpc import (
    NOT_READY,
    RpcError,
    RpcServer,
)
from dhtchat.core.addresses import Address, format_address
from dhtchat.core.contacts import (
    OpenedSignal,
    epoch_of,
)
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.node import DhtConfig
from dhtchat.core.records import Record
from dhtchat.net.udp import Subscription, UdpDhtNode
from dhtchat.net.webrtc import (
    TurnServer,
    configuration,
    restrict_host_addresses,
)
from dhtchat.store.contacts import ContactEntry, ContactStore, contacts_key
from dhtchat.store.history import History, HistoryLocked, history_key

log = logging.getLogger("dhtchat.daemon")
_T = TypeVar("_T")

MAINTENANCE_PERIOD: Final = 5.0

Status = Literal["offline", "online", "connecting", "connected"]


class DaemonAlreadyRunning(Exception):
    """Another daemon holds the profile's lock."""


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
    dht_client: bool = False  # a read-only DHT node: behind a NAT others cannot reach it


class Daemon:
    """A running daemon; :meth:`start` it, then :meth:`serve_forever` or :meth:`stop`."""

    def __init__(self, profile: Profile, identity: SigningIdentity,
                 options: DaemonOptions) -> None:
        self.profile = profile
        self.identity = identity
        self.options = options
        self.node: UdpDhtNode | None = None
        make_private(profile.root)
        self.contacts = ContactStore(profile.root / "contacts.sqlite",
                                     contacts_key(identity.seed))
        self.run_id = secrets.token_bytes(16)  # this daemon run, as our presence says
        self.started = time.time()
        self._lock_file: Any = None
        self._rpc: RpcServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.events = EventLog()
        self.connections = Links(
            identity, self.contacts, node=self._node_or_fail, spawn=self._spawn,
            next_seq=self._next_seq, stopping=self._stopping, stun=options.stun,
            turn=options.turn, relay_only=options.relay_only,
            connect_timeout=options.connect_timeout, auto_connect=options.auto_connect,
            events=self.events)
        self.links: dict[bytes, Link] = self.connections.by_key
        self.rendezvous = Rendezvous(
            identity, self.run_id, self.connections, node=self._node_or_fail,
            spawn=self._spawn, next_seq=self._next_seq, stopping=self._stopping,
            relay_only=options.relay_only, clock=time.time)
        self.history: History | None = None
        self._stop_task: asyncio.Future[None] | None = None
        self.messenger: Messenger | None = None
        self.calls: CallManager | None = None
        self._seq = 0
        self.joined = False
        self.inbox = ContactInbox(identity, self.contacts, display_name=options.display_name,
                                  on_accepted=self._link, spawn=self._spawn, events=self.events)
        self.api = Api(self)
        if options.relay_only and options.turn is None:
            raise LocalProtocolError("--relay-only needs a TURN server (--turn URL)")
        restrict_host_addresses(options.ice_addresses)

    # ------------------------------------------------------------------ lifecycle

    @property
    def socket_path(self) -> Path:
        """The JSON-RPC Unix socket."""
        return self.profile.root / "daemon.sock"

    def _acquire_lock(self) -> None:
        path = self.profile.root / "daemon.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        self._lock_file = os.fdopen(fd, "a+")  # held for the daemon's lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            pid = self._lock_file.read().strip() or "?"
            self._lock_file.close()
            raise DaemonAlreadyRunning(
                f"a daemon is already running on profile {self.profile.root} (pid {pid})"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    async def start(self) -> None:
        """Take the profile lock, start the DHT node, join, and open the API socket."""
        try:
            faults.arm_from_environment()  # crash tests only (DHTCHAT_CRASH_AFTER)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        make_private(self.profile.root)
        self._acquire_lock()
        try:
            self.history = History(self.profile.root / "messages.db",
                                   history_key(self.identity.seed))
        except HistoryLocked as exc:
            raise LocalProtocolError(str(exc)) from None
        self.events.open(self.history)
        self.messenger = Messenger(self, self.history)
        self.connections.channel_user = self.messenger
        self.calls = CallManager(CallStore(self.history), self, self.messenger, tasks=self,
                                 names=self.name_of, events=self.events)
        state = NodeState(self.profile.node_db_path)
        try:
            self.node = await UdpDhtNode.create(
                self.options.host, self.options.port, node_key=state.node_key(),
                config=DhtConfig(read_only=True) if self.options.dht_client else None)
        except OSError as exc:
            raise LocalProtocolError(
                f"cannot listen on {self.options.host}:{self.options.port}: {exc.strerror}"
            ) from None
        remembered = state.peers()
        state.close()
        if remembered:
            self.node.add_known_peers(remembered)
        log.info("user %s; DHT node on %s", self.identity.user_id,
                 format_address(self.node.address))
        self._rpc = RpcServer(self.socket_path, self.api.handlers())
        await self._rpc.start()
        self._spawn(self._join_and_run())

    async def _join_and_run(self) -> None:
        node = self._node_or_fail()
        if self.options.bootstrap:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await node.bootstrap(self.options.bootstrap)
                if len(node.core.table):
                    break
                log.warning("no DHT node answered; retrying in 10 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 10.0)
        log.info("joined the DHT: %d contacts in the routing table", len(node.core.table))
        self.joined = True
        for entry in self.contacts.all("accepted"):
            self._link(entry.public_key)
        self._spawn(self.inbox.run(node, self._stopping))
        self._spawn(self._maintenance_loop())
        self._spawn(self._message_loop())

    async def serve_forever(self) -> None:
        """Run until :meth:`stop` (or SIGINT/SIGTERM in the CLI)."""
        await self._stopping.wait()

    async def stop(self) -> None:
        """Say goodbye (signed bye to connected contacts, offline presence to all), close
        connections, the API socket and the node; release the lock. Idempotent: concurrent
        callers wait for the same shutdown."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._stopping.set()
        if self.calls is not None:
            await self.calls.close()
        if self.joined:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._goodbye(), 5.0)
        for link in self.links.values():
            await self.connections.close_connection(link, "daemon stopped", status="offline")
            for sub in link.subscriptions.values():
                sub.close()
        self.inbox.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._rpc is not None:
            await self._rpc.close()
        if self.node is not None:
            state = NodeState(self.profile.node_db_path)
            state.save_peers(self.node.peers())
            state.close()
            await self.node.close()
        self.contacts.close()
        if self.messenger is not None:
            self.messenger.files.close()
        await self.events.close()
        if self.history is not None:
            self.history.close()
        if self._lock_file is not None:
            self._lock_file.close()

    async def _goodbye(self) -> None:
        """Tell contacts we leave, so they show us offline at once instead of in 30 min."""
        now = time.time()
        jobs: list[Awaitable[Any]] = []
        for link in self.links.values():
            if link.channel is not None and self.messenger is not None:
                # Over the open connection first: instant, whatever the DHT's state.
                jobs.append(self.messenger.say_goodbye(link.public_key))
            if link.pc is not None and link.session:
                jobs.append(self.connections.send_bye(link, link.session, "daemon stopped"))
            jobs.append(self.rendezvous.publish_presence(link, epoch_of(now), now,
                                                         online=False))
        if any(link.channel is not None for link in self.links.values()):
            # Let the goodbye frames leave before the connections close (the DHT jobs
            # below take longer anyway).
            jobs.append(asyncio.sleep(0.3))
        await asyncio.gather(*jobs, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None and not isinstance(exc, RpcError):  # RpcErrors were logged
                log.error("background task failed: %r", exc)
                self.events.emit("error", message=f"background task failed: {exc!r}")

        task.add_done_callback(done)
        return task

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[_T]:
        """Run ``coro`` as a background task of the daemon (cancelled by :meth:`stop`; a
        failure is logged): the :class:`dhtchat.app.services.Spawner` of its services."""
        return self._spawn(coro)

    # ------------------------------------------------------------------ contacts

    def _link(self, public_key: bytes) -> Link:
        link = self.links.get(public_key)
        if link is None:
            link = self.connections.new_link(public_key)
            self._spawn(self.rendezvous.refresh(link))
            if self.messenger is not None:
                self._spawn(self.messenger.publish_prekeys(public_key))
        return link

    def _contact_json(self, entry: ContactEntry) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": encode_user_id(entry.public_key),
            "name": entry.name,
            "state": entry.state,
        }
        if entry.state in ("incoming", "outgoing"):
            out["message"] = entry.message
            out["since"] = entry.created
            posing_as = self.contacts.verified_impersonated(entry.public_key, entry.name)
            if posing_as is not None:
                out["warning"] = (f"uses the name of your verified contact {posing_as!r} but "
                                  "is a different identity")
        verified = self.contacts.verified_at(entry.public_key)
        if verified is not None:
            out["verified"] = verified
        link = self.links.get(entry.public_key)
        if entry.state == "accepted" and link is not None:
            if link.unreachable:
                out["status"] = "unreachable"
                out["last_seen"] = round(link.last_seen, 1)
            else:
                out["status"] = link.status if link.status != "offline" or not link.online \
                    else "online"
            if link.presence is not None and link.presence.relay_only:
                out["relay_only"] = True  # the contact hides its IP: expect relayed paths
            if self.messenger is not None and self.messenger.is_typing(entry.public_key):
                out["typing"] = True
            if link.status == "connected" and link.selected is not None:
                out["path"] = link.selected.path
                out["local"] = link.selected.local.as_dict()
                out["remote"] = link.selected.remote.as_dict()
            if link.reason:
                out["reason"] = link.reason
        elif entry.state == "accepted":
            out["status"] = "offline"
        return out

    async def _consume(self, sub: Subscription,
                       handler: Callable[[Record], Awaitable[None]]) -> None:
        async for record in sub:
            try:
                await handler(record)
            except Exception:
                log.exception("error handling a pushed record")

    # ------------------------------------------------------------------ links

    def _node_or_fail(self) -> UdpDhtNode:
        if self.node is None:
            raise RpcError(NOT_READY, "the DHT node is not running")
        return self.node

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    def _name(self, public_key: bytes) -> str:
        return self.connections.name(public_key)

    def name_of(self, public_key: bytes) -> str:
        """The name to show for ``public_key``: the contact's, else the start of its user id
        (:data:`dhtchat.app.services.Names`)."""
        return self._name(public_key)

    def link_of(self, public_key: bytes) -> Link | None:
        """The live state of an accepted contact (connection, presence), if it has one."""
        return self.links.get(public_key)

    @property
    def dropped_signals(self) -> int:
        """Signalling messages refused (bad seal or signature, replay, non-contact)."""
        return self.connections.dropped_signals

    @property
    def stun_server(self) -> Address | None:
        """The STUN server the last connection attempt used."""
        return self.connections.stun_server

    async def rtc_configuration(self) -> RTCConfiguration:
        """ICE servers for a new peer connection (a call's media): a STUN server found as
        for the data connections, the configured TURN server, relay-only if asked."""
        return configuration(await self.connections.pick_stun(), self.options.turn,
                             self.options.relay_only)

    async def handle_signal(self, sender: bytes, opened: OpenedSignal) -> None:
        """Act on a verified offer/answer/bye from ``sender`` (dropped unless a contact)."""
        await self.connections.handle_signal(sender, opened)

    async def contact_said_goodbye(self, public_key: bytes) -> None:
        """The contact's daemon said over the connection that it stops."""
        await self.connections.contact_said_goodbye(public_key)

    async def connect(self, public_key: bytes, timeout: float) -> dict[str, Any]:
        """Open (or report) the connection to an accepted contact."""
        return await self.connections.connect(self._link(public_key), timeout)

    async def _maintenance_loop(self) -> None:
        """Epoch rollover, presence republishing and reconnection of wanted contacts.

        Nothing slow is awaited here: channel refreshes and presence polls run as their own
        tasks (one per link at a time) and messages have their own loop, so a DHT timeout on
        one contact never delays a connection attempt to another. A fresh presence record
        wakes the loop at once."""
        def accepted(public_key: bytes) -> bool:
            entry = self.contacts.get(public_key)
            return entry is not None and entry.state == "accepted"

        wake = self.connections.wake
        while not self._stopping.is_set():
            wake.clear()
            now = time.time()
            for link in list(self.links.values()):
                if accepted(link.public_key) and not link.refreshing:
                    self._spawn(self.rendezvous.refresh(link))
            for link in self.connections.maintain(now, accepted):
                self._spawn(self.rendezvous.poll_presence(link, now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), MAINTENANCE_PERIOD)

    async def _message_loop(self) -> None:
        """Prekeys, retransmissions and mailbox reads, every MAINTENANCE_PERIOD."""
        while not self._stopping.is_set():
            if self.messenger is not None:
                accepted = [e.public_key for e in self.contacts.all("accepted")
                            if e.public_key in self.links]
                try:
                    await self.messenger.maintenance(accepted)
                except (ConnectionError, TimeoutError) as exc:
                    log.debug("message maintenance: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), MAINTENANCE_PERIOD)

    # ------------------------------------------------------------------ for the API

    def contact_json(self, entry: ContactEntry) -> dict[str, Any]:
        """The API's contact object (docs/api.md §2.2), with the connection status."""
        return self._contact_json(entry)

    def start_link(self, public_key: bytes) -> None:
        """Start presence and rendezvous for a newly accepted contact."""
        self._link(public_key)

    async def send_contact_request(self, recipient: bytes, kind: Literal["request", "accept"],
                                   name: str, message: str) -> int:
        """Seal and store a contact request or acceptance; the number of storers."""
        return await self.inbox.send(self._node_or_fail(), recipient, kind, name, message)

    async def put_contact_request(self, record: Record) -> int:
        """Store an already sealed contact request; the number of storers."""
        return await self.inbox.put(self._node_or_fail(), record)

    async def drop_link(self, public_key: bytes) -> None:
        """Stop everything for a contact (it was blocked): connection, presence, listens."""
        link = self.links.pop(public_key, None)
        if link is not None:
            link.wanted = False
            await self.connections.close_connection(link, "blocked", status="offline")
            for sub in link.subscriptions.values():
                sub.close()

    def forget_seen_requests(self) -> None:
        """Read the whole inbox again (after an unblock: their requests show up again)."""
        self.inbox.forget_seen()

    def request_stop(self) -> None:
        """Stop the daemon soon (after the current reply is written)."""
        asyncio.get_running_loop().call_soon(self._stopping.set)
