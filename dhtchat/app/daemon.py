"""``dhtchat daemon``: a person's node (DHT + contacts + connections) behind a local API.

Theory of operation (design sec. 5; protocol in docs/protocol.md, API in docs/api.md):

* One daemon per profile, enforced with an exclusive ``flock`` on ``daemon.lock``.
* The DHT node (its own node key, never the identity key) answers STUN Binding requests on
  its UDP port, so ICE needs no STUN server of ours.
* Contact requests arrive in the identity's public inbox (``listen`` + a periodic ``get``);
  a request is shown only after its proof of work, seal and signature check out; blocked ids
  are dropped before anything is stored.
* For every accepted contact the daemon publishes sealed presence on the pair's rendezvous key
  of the current epoch, republishing before expiry, and listens on the keys where the contact
  publishes presence and signalling to it (the current epoch, and the adjacent one near a
  boundary).
* ``connect``: a fresh aiortc peer connection, an offer sealed and signed over the DTLS
  fingerprint and ICE credentials, put on the pair's signalling key; the contact's daemon gets
  it by ``listen``, verifies it, answers the same way, and ICE + DTLS + SCTP bring up a data
  channel. aiortc itself checks the peer's DTLS certificate against the (signed) fingerprint.
* Lifecycle: ICE consent freshness (RFC 7675, in aioice) detects a dead path; a contact that
  was connected is reconnected with exponential backoff; an offer from a contact that restarted
  replaces the old connection. Simultaneous offers (glare) resolve by key order: the side with
  the larger public key keeps its offer.
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

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from dhtchat.app import faults
from dhtchat.app.api import Api
from dhtchat.app.calls import CallManager, CallStore
from dhtchat.app.contactstore import ContactEntry, ContactStore, contacts_key
from dhtchat.app.events import EventLog
from dhtchat.app.history import History, HistoryLocked, history_key
from dhtchat.app.inbox import ContactInbox
from dhtchat.app.messenger import Messenger
from dhtchat.app.profile import NodeState, Profile, make_private
from dhtchat.app.rpc import (
    CONNECTION_FAILED,
    TIMEOUT,
    RpcError,
    RpcServer,
)
from dhtchat.core.addresses import Address, format_address
from dhtchat.core.contacts import (
    EPOCH_SECONDS,
    SIGNAL_MAX_AGE,
    OpenedSignal,
    Pair,
    Presence,
    Purpose,
    ReplayGuard,
    epoch_of,
    make_presence,
    make_signal,
    open_presence,
    open_signal,
)
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.ids import blake2b_256
from dhtchat.core.records import Record
from dhtchat.net.stun import first_stun_responder
from dhtchat.net.udp import Subscription, UdpDhtNode
from dhtchat.net.webrtc import (
    CandidateInfo,
    SelectedPair,
    TurnServer,
    configuration,
    enlarge_ice_socket_buffers,
    restrict_host_addresses,
    selected_pair,
)

log = logging.getLogger("dhtchat.daemon")
_T = TypeVar("_T")

PRESENCE_TTL: Final = 1800
PRESENCE_REPUBLISH: Final = 1200
PRESENCE_FRESH: Final = PRESENCE_TTL + 120
MAINTENANCE_PERIOD: Final = 5.0
EPOCH_OVERLAP: Final = SIGNAL_MAX_AGE
MAX_BACKOFF: Final = 60.0
PRESENCE_POLL: Final = 30.0
RECONNECT_GRACE: Final = 3.0  # after a connection closed, before offering again
AUTO_OFFER_DEFER: Final = 20.0  # the larger key's head start for the smaller one
KEEPALIVE_INTERVAL: Final = 1.0  # a keepalive frame each way this often on a connection...
KEEPALIVE_TIMEOUT: Final = 5.0  # ...and none heard for this long: the contact is unreachable
KEEPALIVE_CHANNEL_ID: Final = 1000  # SCTP stream of the (pre-negotiated) keepalive channel

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


@dataclass
class Link:
    """The live state of one accepted contact."""

    public_key: bytes
    pair: Pair
    status: Status = "offline"
    reason: str = ""
    pc: RTCPeerConnection | None = None
    channel: RTCDataChannel | None = None
    selected: SelectedPair | None = None
    session: bytes = b""
    offering: bool = False
    answer: asyncio.Future[OpenedSignal] | None = None
    connected_at: float = 0.0
    connect_ms: float | None = None
    presence: Presence | None = None
    presence_seen: float = 0.0
    presence_published: dict[int, float] = field(default_factory=dict)
    subscriptions: dict[tuple[Purpose, int], Subscription] = field(default_factory=dict)
    wanted: bool = False
    next_attempt: float = 0.0
    backoff: float = 1.0
    attempt: asyncio.Task[dict[str, Any]] | None = None
    refreshing: bool = False
    presence_checked: float = 0.0
    gone_session: bytes = b""  # the contact's daemon run that said goodbye
    defer_until: float = 0.0  # automatic offers from the larger key wait until then
    processed: dict[tuple[bytes, int], None] = field(default_factory=dict)
    heard: float = 0.0  # monotonic time of the last frame from the contact on this connection
    keepalive_heard: bool = False  # the contact sends keepalives (so their absence counts)
    lost_session: bytes = b""  # the contact's daemon run whose connection died unannounced
    last_seen: float = 0.0  # when that connection last carried anything (UNIX time)

    def hear(self) -> None:
        """Something arrived from the contact over the connection."""
        self.heard = time.monotonic()

    @property
    def unreachable(self) -> bool:
        """Not connected, and the connection to the contact's current daemon run was lost
        without a goodbye (its presence record still says online)."""
        return self.status != "connected" and bool(self.lost_session) \
            and self.presence is not None and self.presence.session == self.lost_session \
            and self.online

    def first_time(self, record: Record) -> bool:
        """False for a record already handled (``get`` and ``listen`` both deliver it)."""
        ident = (record.owner + blake2b_256(record.value, record.signature), record.seq)
        if ident in self.processed:
            return False
        self.processed[ident] = None
        if len(self.processed) > 256:
            del self.processed[next(iter(self.processed))]
        return True

    @property
    def online(self) -> bool:
        """A fresh presence record saying "online" was seen (and that daemon run did not say
        goodbye over the connection since)."""
        return self.presence is not None and self.presence.online \
            and self.presence.session != self.gone_session \
            and time.time() - self.presence_seen < PRESENCE_FRESH


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
        self.links: dict[bytes, Link] = {}
        self.replay_guard = ReplayGuard()
        self.session = secrets.token_bytes(16)
        self.started = time.time()
        self.stun_server: Address | None = None
        self.dropped_signals = 0
        self._lock_file: Any = None
        self._rpc: RpcServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # something changed: run the maintenance loop now
        self.history: History | None = None
        self._stop_task: asyncio.Future[None] | None = None
        self.messenger: Messenger | None = None
        self.calls: CallManager | None = None
        self._seq = 0
        self.joined = False
        self.inbox = ContactInbox(identity, self.contacts, display_name=options.display_name,
                                  on_accepted=self._link, spawn=self._spawn)
        self.api = Api(self)
        self.events = EventLog()
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
        self.calls = CallManager(CallStore(self.history), self, self.messenger, tasks=self,
                                 names=self.name_of, events=self.events)
        state = NodeState(self.profile.node_db_path)
        try:
            self.node = await UdpDhtNode.create(self.options.host, self.options.port,
                                                node_key=state.node_key())
        except OSError as exc:
            raise LocalProtocolError(
                f"cannot listen on {self.options.host}:{self.options.port}: {exc.strerror}"
            ) from None
        remembered = state.contacts()
        state.close()
        if remembered:
            self.node.add_known_contacts(remembered)
        log.info("user %s; DHT node on %s", self.identity.user_id,
                 format_address(self.node.address))
        self._rpc = RpcServer(self.socket_path, self.api.handlers())
        await self._rpc.start()
        self._spawn(self._join_and_run())

    async def _join_and_run(self) -> None:
        assert self.node is not None
        if self.options.bootstrap:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await self.node.bootstrap(self.options.bootstrap)
                if len(self.node.core.table):
                    break
                log.warning("no DHT node answered; retrying in 10 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 10.0)
        log.info("joined the DHT: %d contacts in the routing table", len(self.node.core.table))
        self.joined = True
        for entry in self.contacts.all("accepted"):
            self._link(entry.public_key)
        self._spawn(self.inbox.run(self.node, self._stopping))
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
            await self._close_link_connection(link, "daemon stopped", status="offline")
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
            state.save_contacts(self.node.contacts())
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
                jobs.append(self._send_bye(link, link.session, "daemon stopped"))
            jobs.append(self._publish_presence(link, epoch_of(now), now, online=False))
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
            link = Link(public_key, Pair.derive(self.identity, public_key),
                        wanted=self.options.auto_connect)
            self.links[public_key] = link
            self._spawn(self._refresh_channels(link))
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

    # ------------------------------------------------------------------ rendezvous

    def _wanted_epochs(self, now: float) -> set[int]:
        epoch = epoch_of(now)
        epochs = {epoch}
        if now >= (epoch + 1) * EPOCH_SECONDS - EPOCH_OVERLAP:
            epochs.add(epoch + 1)
        if now < epoch * EPOCH_SECONDS + EPOCH_OVERLAP:
            epochs.add(epoch - 1)
        return epochs

    async def _refresh_channels(self, link: Link) -> None:
        """Listen on the contact's channels for the wanted epochs and publish presence."""
        if link.refreshing:
            return  # the maintenance loop and a new link may both ask: one at a time
        link.refreshing = True
        try:
            await self._refresh_channels_now(link)
        finally:
            link.refreshing = False

    async def _refresh_channels_now(self, link: Link) -> None:
        assert self.node is not None
        now = time.time()
        epochs = self._wanted_epochs(now)
        for (purpose, epoch), sub in list(link.subscriptions.items()):
            if epoch not in epochs:
                sub.close()
                del link.subscriptions[(purpose, epoch)]
        current = epoch_of(now)
        jobs: list[Awaitable[None]] = [
            self._publish_presence(link, epoch, now) for epoch in sorted(epochs)
            if epoch >= current and now - link.presence_published.get(epoch, 0.0)
            >= PRESENCE_REPUBLISH]
        jobs += [self._subscribe(link, purpose, epoch) for epoch in sorted(epochs)
                 for purpose in (Purpose.SIGNAL, Purpose.PRESENCE)
                 if (purpose, epoch) not in link.subscriptions]
        # All at once: each is a DHT lookup that may wait out a dead node's timeout, and the
        # contact is waiting for our presence.
        await asyncio.gather(*jobs)

    async def _subscribe(self, link: Link, purpose: Purpose, epoch: int) -> None:
        """Listen on one of the contact's channels, then read what is already there."""
        assert self.node is not None
        key = link.pair.channel_key(purpose, link.public_key, epoch)
        try:
            sub = await self.node.listen(key)
        except TimeoutError:
            return
        if self._stopping.is_set() or (purpose, epoch) in link.subscriptions:
            sub.close()
            return
        link.subscriptions[(purpose, epoch)] = sub
        handler = self._signal_handler(link, epoch) if purpose is Purpose.SIGNAL \
            else self._presence_handler(link, epoch)
        self._spawn(self._consume(sub, handler))
        with contextlib.suppress(TimeoutError):
            for record in await self.node.get(key):
                await handler(record)

    async def _publish_presence(self, link: Link, epoch: int, now: float, *,
                                online: bool = True) -> None:
        assert self.node is not None
        plaintext = make_presence(self.identity, link.pair, epoch, self.session, int(now),
                                  self.options.relay_only, online=online)
        record = link.pair.seal_record(Purpose.PRESENCE, epoch, plaintext, seq=self._next_seq(),
                                       expires=int(now) + PRESENCE_TTL,
                                       random_bytes=secrets.token_bytes)
        try:
            result = await self.node.put(record)
        except TimeoutError:
            return
        if result.stored:
            link.presence_published[epoch] = now
            for old in [e for e in link.presence_published if e < epoch - 1]:
                del link.presence_published[old]

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    def _presence_handler(self, link: Link,
                          epoch: int) -> Callable[[Record], Awaitable[None]]:
        async def handle(record: Record) -> None:
            if not link.first_time(record):
                return
            try:
                presence = open_presence(link.pair, epoch,
                                         link.pair.open_record(Purpose.PRESENCE, epoch, record))
            except RemoteProtocolError as exc:
                log.info("ignored a presence record: %s", exc)
                return
            if link.presence is not None and presence.published <= link.presence.published:
                return
            restarted = link.presence is not None and link.presence.session != presence.session
            link.presence, link.presence_seen = presence, time.time()
            self.events.emit("presence", contact=encode_user_id(link.public_key), online=presence.online)  # noqa: E501
            if restarted and link.wanted and link.status != "connected":
                link.next_attempt = 0.0  # the peer came back: try again now
            if link.wanted and link.status != "connected":
                self._wake.set()
            if not presence.online and link.offering and link.answer is not None \
                    and not link.answer.done():
                # Our offer waits for an answer that will not come: give up now.
                link.answer.set_exception(ConnectionError(
                    f"{self._name(link.public_key)} went offline"))
        return handle

    def _signal_handler(self, link: Link, epoch: int) -> Callable[[Record], Awaitable[None]]:
        async def handle(record: Record) -> None:
            if not link.first_time(record):
                return
            try:
                opened = open_signal(link.pair,
                                     link.pair.open_record(Purpose.SIGNAL, epoch, record))
            except RemoteProtocolError as exc:
                self.dropped_signals += 1
                link.reason = f"refused a signalling message: {exc}"
                log.warning("refused a signalling message from %s: %s",
                            self._name(link.public_key), exc)
                return
            await self.handle_signal(link.public_key, opened)
        return handle

    def _name(self, public_key: bytes) -> str:
        entry = self.contacts.get(public_key)
        return entry.name if entry is not None else encode_user_id(public_key)[:12]

    def name_of(self, public_key: bytes) -> str:
        """The name to show for ``public_key``: the contact's, else the start of its user id
        (:data:`dhtchat.app.services.Names`)."""
        return self._name(public_key)

    def link_of(self, public_key: bytes) -> Link | None:
        """The live state of an accepted contact (connection, presence), if it has one."""
        return self.links.get(public_key)

    # ------------------------------------------------------------------ connections

    async def handle_signal(self, sender: bytes, opened: OpenedSignal) -> None:
        """Act on a verified offer/answer/bye from ``sender`` (dropped unless a contact)."""
        entry = self.contacts.get(sender)
        if entry is None or entry.state != "accepted" or sender not in self.links:
            self.dropped_signals += 1
            log.warning("dropped a %s from a non-contact", opened.kind)
            return
        try:
            self.replay_guard.check(sender, opened.kind, opened.session, opened.created_ms,
                                    time.time())
        except RemoteProtocolError as exc:
            self.dropped_signals += 1
            log.warning("refused a %s from %s: %s", opened.kind, entry.name, exc)
            return
        link = self.links[sender]
        if opened.kind == "done":
            return  # the offerer superseded its finished offer; nothing to answer
        if opened.kind == "answer":
            if link.offering and link.session == opened.session and link.answer is not None \
                    and not link.answer.done():
                link.answer.set_result(opened)
            return
        if opened.kind == "bye":
            if link.session == opened.session and link.pc is not None:
                why = f": {opened.sdp}" if opened.sdp else ""
                await self._close_link_connection(
                    link, f"{entry.name} ended the connection{why}", status="offline")
            return
        # An offer.
        if link.offering and link.status == "connecting" and \
                self.identity.public_key > sender:
            log.info("glare with %s: keeping our own offer", entry.name)
            return
        if link.attempt is not None and not link.attempt.done():
            link.attempt.cancel()
        await self._close_link_connection(link, "replaced by a new offer", status="offline")
        link.attempt = self._spawn(self._answer(link, opened))

    async def contact_said_goodbye(self, public_key: bytes) -> None:
        """The contact's daemon is stopping (said so over the connection): show it offline
        now and do not offer to that run again; a restart publishes a new presence."""
        link = self.links.get(public_key)
        if link is None:
            return
        if link.presence is not None:
            link.gone_session = link.presence.session
        if link.offering and link.answer is not None and not link.answer.done():
            link.answer.set_exception(ConnectionError(
                f"{self._name(public_key)} is stopping"))
        await self._close_link_connection(
            link, f"{self._name(public_key)} ended the connection: daemon stopped",
            status="offline")

    async def _new_peer_connection(self, link: Link) -> RTCPeerConnection:
        stun = await self._pick_stun()
        pc = RTCPeerConnection(configuration(stun, self.options.turn, self.options.relay_only))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if link.pc is not pc:
                return
            if pc.connectionState in ("failed", "closed") and link.status == "connected":
                await self._connection_lost(
                    link, pc, f"connection {pc.connectionState} (consent lost or peer gone)")

        return pc

    def _start_keepalive(self, link: Link, pc: RTCPeerConnection) -> None:
        """A pre-negotiated side channel (no signalling needed) on which both sides send a
        byte every KEEPALIVE_INTERVAL: a contact whose daemon died, or whose path broke,
        shows as unreachable within KEEPALIVE_TIMEOUT instead of ICE consent's ~30 s. Any
        frame on the connection counts as heard. A contact that never sent a keepalive (an
        older version) is not timed out."""
        channel = pc.createDataChannel("keepalive", ordered=False, maxRetransmits=0,
                                       negotiated=True, id=KEEPALIVE_CHANNEL_ID)
        link.keepalive_heard = False

        @channel.on("open")
        def on_open() -> None:  # the first one at once: a contact may die a second later
            with contextlib.suppress(Exception):
                channel.send(b"k")

        @channel.on("message")
        def on_keepalive(_message: object) -> None:
            if link.pc is pc:
                link.keepalive_heard = True
                link.hear()

        self._spawn(self._keepalive(link, pc, channel))

    async def _keepalive(self, link: Link, pc: RTCPeerConnection,
                         channel: RTCDataChannel) -> None:
        while link.pc is pc and not self._stopping.is_set():
            if channel.readyState == "open":
                with contextlib.suppress(Exception):  # a closing transport: the check ends it
                    channel.send(b"k")
            if link.status == "connected" and link.keepalive_heard \
                    and time.monotonic() - link.heard > KEEPALIVE_TIMEOUT:
                await self._connection_lost(
                    link, pc, f"nothing heard for {KEEPALIVE_TIMEOUT:.0f} s (daemon gone or "
                    "path broken)")
                return
            await asyncio.sleep(KEEPALIVE_INTERVAL)

    async def _connection_lost(self, link: Link, pc: RTCPeerConnection, why: str) -> None:
        """The connection died without a goodbye: show the contact as unreachable now (its
        presence still says online) and reconnect with backoff."""
        if link.pc is not pc or link.status != "connected":
            return
        link.lost_session = link.presence.session if link.presence is not None else b""
        link.last_seen = time.time() - max(0.0, time.monotonic() - link.heard)
        seen = time.strftime("%H:%M:%S", time.localtime(link.last_seen))
        log.info("connection to %s lost: %s", self._name(link.public_key), why)
        await self._close_link_connection(link, f"{why}; last seen {seen}", status="offline")
        # Give the contact's goodbye (offline presence) time to arrive before we offer again
        # to a daemon that may have stopped.
        link.next_attempt = time.time() + max(link.backoff, RECONNECT_GRACE)

    async def rtc_configuration(self) -> RTCConfiguration:
        """ICE servers for a new peer connection (a call's media): a STUN server found as
        for the data connections, the configured TURN server, relay-only if asked."""
        return configuration(await self._pick_stun(), self.options.turn,
                             self.options.relay_only)

    async def _pick_stun(self) -> Address | None:
        """The first DHT peer (or configured server) answering a STUN Binding request."""
        candidates = list(self.options.stun)
        if not candidates and self.node is not None:
            seen_hosts: set[str] = set()
            for contact in self.node.core.table.contacts():
                if contact.address[0] not in seen_hosts:
                    seen_hosts.add(contact.address[0])
                    candidates.append(contact.address)
                if len(candidates) >= 6:
                    break
        answer = await first_stun_responder(candidates) if candidates else None
        self.stun_server = answer[0] if answer else None
        return self.stun_server

    async def _send_signal(self, link: Link, kind: Literal["offer", "answer", "bye", "done"],
                           session: bytes, sdp: str = "", epoch: int | None = None) -> int:
        """Seal, sign and put a signalling message; returns the epoch it went to."""
        assert self.node is not None
        now = time.time()
        epoch = epoch_of(now) if epoch is None else epoch
        plaintext = make_signal(self.identity, link.public_key, kind, session, int(now * 1000),
                                sdp)
        record = link.pair.seal_record(Purpose.SIGNAL, epoch, plaintext,
                                       seq=self._next_seq(), expires=int(now) + SIGNAL_MAX_AGE,
                                       random_bytes=secrets.token_bytes)
        result = await self.node.put(record)
        if not result.stored:
            raise ConnectionError("no DHT node stored the signalling message")
        return epoch

    async def connect(self, public_key: bytes, timeout: float) -> dict[str, Any]:
        """Open (or report) the connection to an accepted contact."""
        link = self._link(public_key)
        link.wanted = True
        if link.status == "connected" and link.selected is not None:
            return self._connection_json(link)
        if link.attempt is None or link.attempt.done():
            link.attempt = self._spawn(self._offer(link, timeout))
        deadline = time.monotonic() + timeout + 5
        for _ in range(4):  # follow replacements: glare or a restarted peer's new offer
            attempt = link.attempt
            assert attempt is not None
            try:
                return await asyncio.wait_for(asyncio.shield(attempt),
                                              max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                # Say why, as far as the attempt under way shows it (after a glare it is the
                # answer to their offer, which has its own, longer timeout).
                why = self._diagnose(link.pc, timeout) if link.pc is not None else ""
                if why and link.status != "connected":
                    link.reason = why
                raise RpcError(TIMEOUT, f"no connection within {timeout:.0f} s"
                               + (f": {why}" if why else ""), {"reason": link.reason}) from None
            except asyncio.CancelledError:
                if not attempt.cancelled():
                    raise  # we are being cancelled ourselves (daemon stopping)
            # Our offer lost to theirs; the replacement attempt is set up right after the
            # cancel (the old connection closes first): wait for it briefly.
            wait_until = min(deadline, time.monotonic() + 5)
            while (link.attempt is attempt or link.attempt is None) \
                    and time.monotonic() < wait_until:
                if link.status == "connected" and link.selected is not None:
                    return self._connection_json(link)
                await asyncio.sleep(0.05)
            if link.attempt is attempt or link.attempt is None:
                break
        if link.status == "connected" and link.selected is not None:
            return self._connection_json(link)
        raise RpcError(CONNECTION_FAILED, link.reason or "connection attempt replaced",
                       {"reason": link.reason})

    def _connection_json(self, link: Link) -> dict[str, Any]:
        assert link.selected is not None
        return {
            "id": encode_user_id(link.public_key),
            "name": self._name(link.public_key),
            "status": "connected",
            "path": link.selected.path,
            "local": link.selected.local.as_dict(),
            "remote": link.selected.remote.as_dict(),
            "connect_ms": link.connect_ms,
            "stun": format_address(self.stun_server) if self.stun_server else None,
        }

    async def _offer(self, link: Link, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        link.status, link.reason = "connecting", ""
        link.session = secrets.token_bytes(16)
        link.offering = True
        link.answer = asyncio.get_running_loop().create_future()
        await self._close_link_connection(link, "", status="connecting")
        pc = await self._new_peer_connection(link)
        link.pc = pc
        channel = pc.createDataChannel("dhtchat")
        if self.messenger is not None:
            self.messenger.listen(link, channel)  # before any frame can arrive
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", lambda _message: link.hear())
        link.channel = channel
        self._start_keepalive(link, pc)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            enlarge_ice_socket_buffers(pc)
            offer_epoch = await self._send_signal(link, "offer", link.session,
                                                  pc.localDescription.sdp)
            remaining = timeout - (time.monotonic() - started)
            try:
                answer = await asyncio.wait_for(link.answer, max(0.1, remaining))
            except TimeoutError:
                raise ConnectionError(
                    f"no answer from {self._name(link.public_key)} within {timeout:.0f} s "
                    "(offline, or not running a daemon)") from None
            link.offering = False
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            await self._await_open(link, pc, opened, timeout - (time.monotonic() - started),
                                   timeout)
        except (ConnectionError, ValueError, LocalProtocolError, TimeoutError, OSError) as exc:
            link.offering = False
            reason = str(exc) or "the DHT did not store the offer in time"
            await self._fail(link, reason)
            raise RpcError(CONNECTION_FAILED, reason, {"reason": reason}) from None
        link.offering = False
        # Replace the offer in the DHT, so a daemon of the contact that starts within the
        # offer's lifetime does not answer a finished attempt.
        self._spawn(self._send_done(link, link.session, offer_epoch))
        return self._connected(link, pc, started)

    async def _answer(self, link: Link, offer: OpenedSignal) -> dict[str, Any]:
        started = time.monotonic()
        link.status, link.reason = "connecting", ""
        link.session = offer.session
        link.offering = False
        await self._close_link_connection(link, "", status="connecting")
        pc = await self._new_peer_connection(link)
        link.pc = pc
        opened = asyncio.Event()

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            link.channel = channel
            channel.on("message", lambda _message: link.hear())
            if self.messenger is not None:
                self.messenger.listen(link, channel)  # before any frame can arrive
            if channel.readyState == "open":
                opened.set()
            channel.on("open", opened.set)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            self._start_keepalive(link, pc)
            await pc.setLocalDescription(await pc.createAnswer())
            enlarge_ice_socket_buffers(pc)
            await self._send_signal(link, "answer", offer.session, pc.localDescription.sdp)
            await self._await_open(link, pc, opened, self.options.connect_timeout,
                                   self.options.connect_timeout)
        except (ConnectionError, ValueError, LocalProtocolError, TimeoutError, OSError) as exc:
            reason = str(exc) or "the DHT did not store the answer in time"
            await self._fail(link, reason)
            raise RpcError(CONNECTION_FAILED, reason, {"reason": reason}) from None
        link.wanted = True
        return self._connected(link, pc, started)

    async def _await_open(self, link: Link, pc: RTCPeerConnection, opened: asyncio.Event,
                          remaining: float, timeout: float) -> None:
        deadline = time.monotonic() + max(0.1, remaining)
        while not opened.is_set():
            if link.pc is not pc:  # closed meanwhile (the peer said bye, or a newer offer)
                raise ConnectionError(link.reason or "connection attempt replaced")
            if pc.connectionState == "failed" or time.monotonic() >= deadline:
                raise ConnectionError(self._diagnose(pc, timeout))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(opened.wait(), 0.1)
        if link.channel is not None and link.channel.readyState != "open":
            raise ConnectionError("data channel did not open")

    def _diagnose(self, pc: RTCPeerConnection, timeout: float) -> str:
        ice = pc.iceConnectionState
        sctp = pc.sctp
        dtls_state = sctp.transport.state if sctp is not None else "new"
        if dtls_state == "failed":
            return ("DTLS handshake failed: the peer's certificate does not match the "
                    "fingerprint it signed (possible man in the middle)")
        if ice in ("checking", "new", "failed"):
            hint = "" if self.options.turn else " (both behind symmetric NATs? configure TURN)"
            return f"ICE found no working candidate pair within {timeout:.0f} s{hint}"
        return f"connection did not open within {timeout:.0f} s (ICE {ice}, DTLS {dtls_state})"

    def _connected(self, link: Link, pc: RTCPeerConnection, started: float) -> dict[str, Any]:
        link.selected = selected_pair(pc)
        link.status = "connected"
        self.events.emit("connection", contact=encode_user_id(link.public_key), status="connected", reason="")  # noqa: E501
        link.defer_until = 0.0
        link.reason = ""
        link.connected_at = time.time()
        link.lost_session = b""
        link.hear()
        link.connect_ms = round((time.monotonic() - started) * 1000, 1)
        link.backoff = 1.0
        if link.selected is None:  # pragma: no cover - aioice always nominates before open
            link.selected = SelectedPair(CandidateInfo("unknown", ("", 0)),
                                         CandidateInfo("unknown", ("", 0)))
        if self.messenger is not None and link.channel is not None:
            self.messenger.attach(link, link.channel)
        log.info("connected to %s: %s (%s %s -> %s %s) in %.0f ms",
                 self._name(link.public_key), link.selected.path, link.selected.local.type,
                 format_address(link.selected.local.address), link.selected.remote.type,
                 format_address(link.selected.remote.address), link.connect_ms)
        return self._connection_json(link)

    async def _fail(self, link: Link, reason: str) -> None:
        log.warning("connection to %s failed: %s", self._name(link.public_key), reason)
        if link.pc is not None and link.session:
            # Tell the other side why, so it does not wait for its own timeout.
            self._spawn(self._send_bye(link, link.session, reason))
        await self._close_link_connection(link, reason, status="offline")
        link.next_attempt = time.time() + link.backoff
        link.backoff = min(MAX_BACKOFF, link.backoff * 2)

    async def _send_done(self, link: Link, session: bytes, epoch: int) -> None:
        """Supersede the offer in its own epoch's slot (the key it was stored under)."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send_signal(link, "done", session, epoch=epoch)

    async def _send_bye(self, link: Link, session: bytes, reason: str) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send_signal(link, "bye", session, reason)

    async def _close_link_connection(self, link: Link, reason: str, *, status: Status) -> None:
        pc, link.pc, link.channel, link.selected = link.pc, None, None, None
        link.status = status
        link.reason = reason if status != "connected" else ""
        self.events.emit("connection", contact=encode_user_id(link.public_key), status=status, reason=link.reason)  # noqa: E501
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()

    async def _poll_presence(self, link: Link, now: float) -> None:
        assert self.node is not None
        epoch = epoch_of(now)
        key = link.pair.channel_key(Purpose.PRESENCE, link.public_key, epoch)
        with contextlib.suppress(TimeoutError):
            for record in await self.node.get(key):
                await self._presence_handler(link, epoch)(record)

    async def _maintenance_loop(self) -> None:
        """Epoch rollover, presence republishing and reconnection of wanted contacts.

        Nothing slow is awaited here: channel refreshes and presence polls run as their own
        tasks (one per link at a time) and messages have their own loop, so a DHT timeout on
        one contact never delays a connection attempt to another. A fresh presence record
        wakes the loop at once."""
        while not self._stopping.is_set():
            self._wake.clear()
            now = time.time()
            for link in list(self.links.values()):
                entry = self.contacts.get(link.public_key)
                if entry is None or entry.state != "accepted":
                    continue
                if not link.refreshing:
                    self._spawn(self._refresh_channels(link))
                idle = link.attempt is None or link.attempt.done()
                if link.wanted and link.status != "connected" and idle \
                        and now - link.presence_checked >= PRESENCE_POLL:
                    link.presence_checked = now  # a missed push must not hide a contact
                    self._spawn(self._poll_presence(link, now))
                if link.wanted and link.status != "connected" and idle \
                        and now >= link.next_attempt and link.online:
                    if self.identity.public_key > link.public_key:
                        # The contact (smaller key) offers first; we offer only if it has
                        # not connected within AUTO_OFFER_DEFER (its auto-connect may be
                        # off). Offers that cross in a slow DHT miss each other: each side
                        # has moved on to answering the other's when they arrive.
                        if not link.defer_until:
                            link.defer_until = now + AUTO_OFFER_DEFER
                        if now < link.defer_until:
                            continue
                    link.defer_until = 0.0
                    # Both sides may still try at once; the glare rule keeps one.
                    link.attempt = self._spawn(self._offer(link, self.options.connect_timeout))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), MAINTENANCE_PERIOD)

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
        assert self.node is not None
        return await self.inbox.send(self.node, recipient, kind, name, message)

    async def put_contact_request(self, record: Record) -> int:
        """Store an already sealed contact request; the number of storers."""
        assert self.node is not None
        return await self.inbox.put(self.node, record)

    async def drop_link(self, public_key: bytes) -> None:
        """Stop everything for a contact (it was blocked): connection, presence, listens."""
        link = self.links.pop(public_key, None)
        if link is not None:
            link.wanted = False
            await self._close_link_connection(link, "blocked", status="offline")
            for sub in link.subscriptions.values():
                sub.close()

    def forget_seen_requests(self) -> None:
        """Read the whole inbox again (after an unblock: their requests show up again)."""
        self.inbox.forget_seen()

    def request_stop(self) -> None:
        """Stop the daemon soon (after the current reply is written)."""
        asyncio.get_running_loop().call_soon(self._stopping.set)
