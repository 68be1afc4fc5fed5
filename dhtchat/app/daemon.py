"""``dhtchat daemon``: a person's node (DHT + contacts + connections) behind a local API.

Theory of operation (design sec. 5; protocol in docs/protocol.md, API in docs/api.md): this
module only wires the services and starts and stops them. Contact requests are the
:mod:`~dhtchat.app.inbox`'s; presence and signalling per accepted contact the
:mod:`~dhtchat.app.rendezvous`'s; the WebRTC connections, with glare, backoff and keepalives,
the :mod:`~dhtchat.app.links`' (the driver of the sans-IO :mod:`dhtchat.core.link`); the lock,
the node and the background tasks are in :mod:`~dhtchat.app.lifecycle`, the RPC methods in
:mod:`~dhtchat.app.api`. What needs the history or the node is built by :meth:`Daemon.start`,
in one piece, before the API socket opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Final, TypeVar

from aiortc import RTCConfiguration

from dhtchat.app import faults
from dhtchat.app.api import Api
from dhtchat.app.calls import CallManager, CallStore
from dhtchat.app.events import EventLog
from dhtchat.app.inbox import ContactInbox
from dhtchat.app.lifecycle import (
    DaemonAlreadyRunning,
    DaemonOptions,
    ProfileLock,
    Running,
    TaskSet,
    close_node,
    every,
    join,
    open_node,
    start_upkeep,
)
from dhtchat.app.links import Link, Links
from dhtchat.app.messenger import Messenger
from dhtchat.app.profile import Profile, make_private
from dhtchat.app.rendezvous import Rendezvous
from dhtchat.app.rpc import NOT_READY, RpcError, RpcServer
from dhtchat.core.addresses import format_address
from dhtchat.core.contacts import OpenedSignal
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.net.udp import UdpDhtNode
from dhtchat.net.webrtc import configuration, restrict_host_addresses
from dhtchat.store.contacts import ContactStore, contacts_key
from dhtchat.store.history import History, HistoryLocked, history_key

__all__ = ["Daemon", "DaemonAlreadyRunning", "DaemonOptions", "Running"]

log = logging.getLogger("dhtchat.daemon")
_T = TypeVar("_T")

MAINTENANCE_PERIOD: Final = 5.0


class Daemon:
    """A person's daemon: :meth:`start` it, then :meth:`serve_forever` or :meth:`stop`.

    Built, it holds what needs neither the node nor the history (contacts, inbox, links,
    rendezvous, the event log, the API's methods); :meth:`start` builds the rest
    (:class:`Running`) in one step and only then opens the API."""

    def __init__(self, profile: Profile, identity: SigningIdentity,
                 options: DaemonOptions) -> None:
        if options.relay_only and options.turn is None:
            raise LocalProtocolError("--relay-only needs a TURN server (--turn URL)")
        restrict_host_addresses(options.ice_addresses)
        self.profile = profile
        self.identity = identity
        self.options = options
        make_private(profile.root)
        self.contacts = ContactStore(profile.root / "contacts.sqlite",
                                     contacts_key(identity.seed))
        self.run_id = secrets.token_bytes(16)  # this daemon run, as our presence says
        self.started = time.time()
        self.joined = False
        self._seq = 0
        self._running: Running | None = None
        self._stop_task: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()
        self.events = EventLog()
        self.tasks = TaskSet(lambda message: self.events.emit("error", message=message))
        self.connections = Links(
            identity, self.contacts, node=lambda: self.node, spawn=self.spawn,
            next_seq=self._next_seq, stopping=self._stopping, stun=options.stun,
            turn=options.turn, relay_only=options.relay_only,
            connect_timeout=options.connect_timeout, auto_connect=options.auto_connect,
            events=self.events)
        self.links: dict[bytes, Link] = self.connections.by_key
        self.rendezvous = Rendezvous(
            identity, self.run_id, self.connections, node=lambda: self.node,
            spawn=self.spawn, next_seq=self._next_seq, stopping=self._stopping,
            relay_only=options.relay_only, clock=time.time)
        self.inbox = ContactInbox(identity, self.contacts, node=lambda: self.node,
                                  display_name=options.display_name, on_accepted=self.link_contact,
                                  spawn=self.spawn, events=self.events)
        self.api = Api(self)

    # ------------------------------------------------------------------ what start() built

    @property
    def running(self) -> Running:
        """The services of the started daemon (``NOT_READY`` before :meth:`start`)."""
        if self._running is None:
            raise RpcError(NOT_READY, "the daemon is not started")
        return self._running

    @property
    def node(self) -> UdpDhtNode:
        """The DHT node."""
        return self.running.node

    @property
    def history(self) -> History:
        """The message history (SQLCipher)."""
        return self.running.history

    @property
    def messenger(self) -> Messenger:
        """Messages, files and groups."""
        return self.running.messenger

    @property
    def calls(self) -> CallManager:
        """Audio and video calls."""
        return self.running.calls

    @property
    def socket_path(self) -> Path:
        """The JSON-RPC Unix socket."""
        return self.profile.root / "daemon.sock"

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        """Take the profile lock, open the history, start the DHT node and the services, and
        only then open the API socket; joining the DHT goes on in the background."""
        try:
            faults.arm_from_environment()  # crash tests only (DHTCHAT_CRASH_AFTER)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        make_private(self.profile.root)
        self._running = running = await self._build()
        log.info("user %s; DHT node on %s", self.identity.user_id,
                 format_address(running.node.address))
        await running.rpc.start()
        self.spawn(self._join_and_run())

    async def _build(self) -> Running:
        lock = ProfileLock.acquire(self.profile.root)
        try:
            history = History(self.profile.root / "messages.db",
                              history_key(self.identity.seed))
        except HistoryLocked as exc:
            lock.release()
            raise LocalProtocolError(str(exc)) from None
        try:
            node = await open_node(self.profile, self.options)
            lan = await start_upkeep(self.profile, node, self.options, self.spawn, self._stopping)
        except BaseException:
            history.close()
            lock.release()
            raise
        self.events.open(history)
        messenger = Messenger(self, history)
        self.connections.channel_user = messenger
        calls = CallManager(CallStore(history), self, messenger, tasks=self.tasks,
                            names=self.name_of, events=self.events)
        return Running(lock, history, node, lan, messenger, calls,
                       RpcServer(self.socket_path, self.api.handlers()))

    async def _join_and_run(self) -> None:
        await join(self.node, self.options.bootstrap, self._stopping)
        self.joined = True
        for entry in self.contacts.all("accepted"):
            self.link_contact(entry.public_key)
        self.spawn(self.inbox.run(self._stopping))
        self.spawn(self.rendezvous.run(self._accepted, MAINTENANCE_PERIOD))
        self.spawn(every(MAINTENANCE_PERIOD, self._stopping, self._maintain_messages))

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
        running = self._running
        if running is not None:
            await running.calls.close()
        if self.joined:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rendezvous.goodbye(self.messenger.say_goodbye), 5.0)
        await self.connections.close_all("daemon stopped")
        self.inbox.close()
        await self.tasks.cancel_all()
        if running is not None:
            await running.rpc.close()
            await close_node(self.profile, running.node, running.lan)
            running.messenger.files.close()
        self.contacts.close()
        await self.events.close()
        if running is not None:
            running.history.close()
            running.lock.release()

    def request_stop(self) -> None:
        """Stop the daemon soon (after the current reply is written)."""
        asyncio.get_running_loop().call_soon(self._stopping.set)

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[_T]:
        """Run ``coro`` as a background task of the daemon (cancelled by :meth:`stop`; a
        failure is logged): the :class:`dhtchat.app.services.Spawner` of its services."""
        return self.tasks.spawn(coro)

    async def _maintain_messages(self) -> None:
        """Prekeys, retransmissions and mailbox reads (every MAINTENANCE_PERIOD)."""
        await self.messenger.maintenance([e.public_key for e in self.contacts.all("accepted")
                                          if e.public_key in self.links])

    # ------------------------------------------------------------------ contacts and links

    def _accepted(self, public_key: bytes) -> bool:
        entry = self.contacts.get(public_key)
        return entry is not None and entry.state == "accepted"

    async def remove_contact(self, public_key: bytes, *, delete_history: bool) -> int:
        """Forget a contact (``contact.remove``): its connection, presence and listens stop,
        its entry and verified mark go, and so does the pair's ratchet session; returns the
        messages deleted (only with ``delete_history``)."""
        await self.connections.drop(public_key, "removed")
        self.contacts.delete(public_key)
        self.contacts.unverify(public_key)
        deleted = self.history.forget_contact(public_key, history=delete_history)
        self.messenger.stream.states.pop(public_key, None)  # rebuilt from the history
        return deleted

    def link_contact(self, public_key: bytes) -> Link:
        """The link of an accepted contact, started (presence, rendezvous, prekeys) if new."""
        link = self.links.get(public_key)
        if link is None:
            link = self.connections.new_link(public_key)
            self.spawn(self.rendezvous.refresh(link))
            if self._running is not None:
                self.spawn(self._running.messenger.publish_prekeys(public_key))
        return link

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    def set_display_name(self, name: str) -> None:
        """The name sent with my next requests and acceptances (``settings.set``)."""
        self.options.display_name = name
        self.inbox.display_name = name

    def name_of(self, public_key: bytes) -> str:
        """The name to show for ``public_key``: the contact's, else the start of its user id
        (:data:`dhtchat.app.services.Names`)."""
        return self.connections.name(public_key)

    def link_of(self, public_key: bytes) -> Link | None:
        """The live state of an accepted contact (connection, presence), if it has one."""
        return self.links.get(public_key)

    @property
    def dropped_signals(self) -> int:
        """Signalling messages refused (bad seal or signature, replay, non-contact)."""
        return self.connections.dropped_signals

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

    async def connect(self, public_key: bytes, timeout: float) -> dict[str, object]:
        """Open (or report) the connection to an accepted contact."""
        return await self.connections.connect(self.link_contact(public_key), timeout)

