"""WebRTC links to accepted contacts: the driver of :mod:`dhtchat.core.link`.

Theory of operation (design sec. 5; protocol in docs/protocol.md, Part II):

* One :class:`Link` per accepted contact: its :class:`~dhtchat.core.link.LinkMachine` (status,
  glare, backoff, keepalive and presence rules, no I/O) plus what only a driver can hold: the
  aiortc peer connection and data channel, the pending answer, the attempt task.
* ``connect``: a fresh peer connection, an offer sealed and signed over the DTLS fingerprint
  and ICE credentials, put on the pair's signalling key (:mod:`dhtchat.app.rendezvous`
  listens for the contact's); the contact's daemon answers the same way, and ICE + DTLS + SCTP
  bring up a data channel. aiortc itself checks the peer's DTLS certificate against the
  (signed) fingerprint.
* Lifecycle: a keepalive side channel (and ICE consent freshness, RFC 7675, in aioice) detects
  a dead path; a wanted contact is reconnected with backoff by :meth:`Links.maintain`; an
  offer from a contact that restarted replaces the old connection; glare keeps one offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError

from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.rpc import CONNECTION_FAILED, TIMEOUT, RpcError
from dhtchat.core.addresses import Address, format_address
from dhtchat.core.contacts import (
    SIGNAL_MAX_AGE,
    OpenedSignal,
    Pair,
    Presence,
    Purpose,
    ReplayGuard,
    epoch_of,
    make_signal,
)
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.ids import blake2b_256
from dhtchat.core.link import KEEPALIVE_TIMEOUT, LinkMachine, Status
from dhtchat.core.records import Record
from dhtchat.net.stun import first_stun_responder
from dhtchat.net.udp import Subscription, UdpDhtNode
from dhtchat.net.webrtc import (
    CandidateInfo,
    SelectedPair,
    TurnServer,
    configuration,
    enlarge_ice_socket_buffers,
    selected_pair,
)

if TYPE_CHECKING:
    from dhtchat.store.contacts import ContactStore

log = logging.getLogger("dhtchat.daemon")

KEEPALIVE_INTERVAL: Final = 1.0  # a keepalive frame each way this often on a connection
KEEPALIVE_CHANNEL_ID: Final = 1000  # SCTP stream of the (pre-negotiated) keepalive channel
REPLACEMENT_WAIT: Final = 5.0  # connect() waits this long for the attempt that replaced its own

_T = TypeVar("_T")


@dataclass
class Link:
    """One accepted contact: the state machine plus the live peer connection."""

    public_key: bytes
    pair: Pair
    machine: LinkMachine
    pc: RTCPeerConnection | None = None
    channel: RTCDataChannel | None = None
    selected: SelectedPair | None = None
    answer: asyncio.Future[OpenedSignal] | None = None
    connect_ms: float | None = None
    presence_published: dict[int, float] = field(default_factory=dict)
    subscriptions: dict[tuple[Purpose, int], Subscription] = field(default_factory=dict)
    attempt: asyncio.Task[JsonObject] | None = None
    refreshing: bool = False
    processed: dict[tuple[bytes, int], None] = field(default_factory=dict)

    # The machine's state, read by the messenger, calls and the contact list.
    @property
    def status(self) -> Status:
        """offline, connecting or connected (``online`` is derived, see :attr:`online`)."""
        return self.machine.status

    @property
    def reason(self) -> str:
        """Why the last attempt failed or the connection closed."""
        return self.machine.reason

    @reason.setter
    def reason(self, value: str) -> None:
        self.machine.reason = value

    @property
    def session(self) -> bytes:
        """The offer/answer exchange under way or connected."""
        return self.machine.session

    @property
    def wanted(self) -> bool:
        """Keep this contact connected (reconnect automatically)."""
        return self.machine.wanted

    @wanted.setter
    def wanted(self, value: bool) -> None:
        self.machine.wanted = value

    @property
    def presence(self) -> Presence | None:
        """The newest presence record of the contact seen."""
        return self.machine.presence

    @property
    def connected_at(self) -> float:
        """When the connection opened (UNIX time)."""
        return self.machine.connected_at

    @property
    def last_seen(self) -> float:
        """When a connection lost without a goodbye last carried anything (UNIX time)."""
        return self.machine.last_seen

    @property
    def online(self) -> bool:
        """A fresh presence record says "online" (and that run did not say goodbye)."""
        return self.machine.online(time.time())

    @property
    def unreachable(self) -> bool:
        """The connection to the contact's current run was lost without a goodbye."""
        return self.machine.unreachable(time.time())

    def hear(self, *, keepalive: bool = False) -> None:
        """Something arrived from the contact over the connection."""
        self.machine.hear(time.monotonic(), keepalive=keepalive)

    def first_time(self, record: Record) -> bool:
        """False for a record already handled (``get`` and ``listen`` both deliver it)."""
        ident = (record.owner + blake2b_256(record.value, record.signature), record.seq)
        if ident in self.processed:
            return False
        self.processed[ident] = None
        if len(self.processed) > 256:
            del self.processed[next(iter(self.processed))]
        return True


class EventSink(Protocol):
    """Where the links report presence and connection changes (the daemon's event log)."""

    def emit(self, kind: str, /, **data: object) -> None:
        """Record an event of type ``kind``."""


class SpawnFunction(Protocol):
    """Runs a background task for the links (the daemon cancels it when it stops)."""

    def __call__(self, coro: Awaitable[_T], /) -> asyncio.Task[_T]:
        """Run ``coro`` as a background task (a failure is logged, not raised)."""
        ...


class ChannelUser(Protocol):
    """What the links tell the messenger about data channels."""

    def listen(self, link: Link, channel: RTCDataChannel) -> None:
        """A data channel of ``link`` exists: handle its frames (before any can arrive)."""

    def attach(self, link: Link, channel: RTCDataChannel) -> None:
        """The data channel of ``link`` is open: send over it."""


class Links:
    """The peer connections to accepted contacts, their signalling and their reconnection."""

    def __init__(self, identity: SigningIdentity, contacts: ContactStore, *,
                 node: Callable[[], UdpDhtNode],
                 spawn: SpawnFunction,
                 next_seq: Callable[[], int], stopping: asyncio.Event,
                 stun: list[Address], turn: TurnServer | None, relay_only: bool,
                 connect_timeout: float, auto_connect: bool, events: EventSink) -> None:
        self.identity = identity
        self.contacts = contacts
        self._node = node
        self._spawn = spawn
        self._next_seq = next_seq
        self._stopping = stopping
        self.stun = stun
        self.turn = turn
        self.relay_only = relay_only
        self.connect_timeout = connect_timeout
        self.auto_connect = auto_connect
        self.by_key: dict[bytes, Link] = {}
        self.replay_guard = ReplayGuard()
        self.stun_server: Address | None = None
        self.dropped_signals = 0
        self.channel_user: ChannelUser | None = None
        self.events = events
        self.wake = asyncio.Event()  # something changed: run the reconnection check now

    def name(self, public_key: bytes) -> str:
        """The contact's name, or the start of its user id."""
        entry = self.contacts.get(public_key)
        return entry.name if entry is not None else encode_user_id(public_key)[:12]

    def new_link(self, public_key: bytes) -> Link:
        """A link for a newly accepted contact (the caller registers it)."""
        machine = LinkMachine(public_key, self.identity.public_key, wanted=self.auto_connect)
        link = Link(public_key, Pair.derive(self.identity, public_key), machine)
        self.by_key[public_key] = link
        return link

    # ------------------------------------------------------------------ signals

    async def handle_signal(self, sender: bytes, opened: OpenedSignal) -> None:
        """Act on a verified offer/answer/bye from ``sender`` (dropped unless a contact)."""
        entry = self.contacts.get(sender)
        if entry is None or entry.state != "accepted" or sender not in self.by_key:
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
        link = self.by_key[sender]
        if opened.kind == "done":
            return  # the offerer superseded its finished offer; nothing to answer
        if opened.kind == "answer":
            if link.answer is not None and not link.answer.done() \
                    and link.machine.on_answer(opened.session, opened.created_ms):
                link.answer.set_result(opened)
            return
        if opened.kind == "bye":
            if link.session == opened.session and link.pc is not None:
                why = f": {opened.sdp}" if opened.sdp else ""
                await self.close_connection(
                    link, f"{entry.name} ended the connection{why}", status="offline")
            return
        decision = link.machine.on_offer(opened.created_ms)
        if decision == "keep_ours":
            log.info("glare with %s: keeping our own offer", entry.name)
            return
        if decision == "stale":
            log.info("ignored an offer from %s older than its answer", entry.name)
            return
        if link.attempt is not None and not link.attempt.done():
            link.attempt.cancel()
        # Answer at once; the replaced peer connection closes in the background (closing
        # one with a TURN allocation waits for the server to delete it).
        self.close_later(link, "replaced by a new offer", status="connecting")
        link.machine.begin_answer(opened.session, opened.created_ms)
        link.attempt = self._spawn(self._answer(link, opened))

    def abort_offer(self, link: Link, why: str) -> None:
        """Fail our pending offer to ``link`` now (the contact went offline or stops)."""
        if link.machine.offering and link.answer is not None and not link.answer.done():
            link.answer.set_exception(ConnectionError(f"{self.name(link.public_key)} {why}"))

    async def contact_said_goodbye(self, public_key: bytes) -> None:
        """The contact's daemon is stopping (said so over the connection): show it offline
        now and do not offer to that run again; a restart publishes a new presence."""
        link = self.by_key.get(public_key)
        if link is None:
            return
        why = link.machine.said_goodbye()
        if why:
            self.abort_offer(link, why)
        await self.close_connection(
            link, f"{self.name(public_key)} ended the connection: daemon stopped",
            status="offline")

    async def send_signal(self, link: Link, kind: Literal["offer", "answer", "bye", "done"],
                          session: bytes, sdp: str = "", epoch: int | None = None) -> int:
        """Seal, sign and put a signalling message; returns the epoch it went to."""
        now = time.time()
        epoch = epoch_of(now) if epoch is None else epoch
        plaintext = make_signal(self.identity, link.public_key, kind, session, int(now * 1000),
                                sdp)
        record = link.pair.seal_record(Purpose.SIGNAL, epoch, plaintext,
                                       seq=self._next_seq(), expires=int(now) + SIGNAL_MAX_AGE,
                                       random_bytes=secrets.token_bytes)
        result = await self._node().put(record)
        if not result.stored:
            raise ConnectionError("no DHT node stored the signalling message")
        return epoch

    async def send_bye(self, link: Link, session: bytes, reason: str) -> None:
        """Tell the contact why the exchange ``session`` ends (best effort)."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.send_signal(link, "bye", session, reason)

    async def _send_done(self, link: Link, session: bytes, epoch: int) -> None:
        """Supersede the offer in its own epoch's slot (the key it was stored under)."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.send_signal(link, "done", session, epoch=epoch)

    # ------------------------------------------------------------------ peer connections

    async def _new_peer_connection(self, link: Link) -> RTCPeerConnection:
        stun = await self.pick_stun()
        pc = RTCPeerConnection(configuration(stun, self.turn, self.relay_only))

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
        link.machine.new_connection()

        @channel.on("open")
        def on_open() -> None:  # the first one at once: a contact may die a second later
            with contextlib.suppress(Exception):
                channel.send(b"k")

        @channel.on("message")
        def on_keepalive(_message: object) -> None:
            if link.pc is pc:
                link.hear(keepalive=True)

        self._spawn(self._keepalive(link, pc, channel))

    async def _keepalive(self, link: Link, pc: RTCPeerConnection,
                         channel: RTCDataChannel) -> None:
        while link.pc is pc and not self._stopping.is_set():
            if channel.readyState == "open":
                with contextlib.suppress(Exception):  # a closing transport: the check ends it
                    channel.send(b"k")
            if link.machine.silent_too_long(time.monotonic()):
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
        link.machine.lost(why, time.time(), time.monotonic())
        seen = time.strftime("%H:%M:%S", time.localtime(link.last_seen))
        link.reason = f"{why}; last seen {seen}"
        log.info("connection to %s lost: %s", self.name(link.public_key), why)
        self._emit_connection(link)
        await self._close_pc(link)

    async def pick_stun(self) -> Address | None:
        """The first DHT peer (or configured server) answering a STUN Binding request."""
        candidates = list(self.stun)
        if not candidates:
            seen_hosts: set[str] = set()
            for contact in self._node().core.table.contacts():
                if contact.address[0] not in seen_hosts:
                    seen_hosts.add(contact.address[0])
                    candidates.append(contact.address)
                if len(candidates) >= 6:
                    break
        answer = await first_stun_responder(candidates) if candidates else None
        self.stun_server = answer[0] if answer else None
        return self.stun_server

    # ------------------------------------------------------------------ connect

    async def connect(self, link: Link, timeout: float) -> JsonObject:
        """Open (or report) the connection to an accepted contact."""
        link.wanted = True
        if link.status == "connected" and link.selected is not None:
            return self.connection_json(link)
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
            except RpcError:
                if link.attempt is attempt or link.attempt is None:
                    raise
                # Our attempt failed because a newer one replaced it (their offer after a
                # glare, or a restarted peer's): follow that one.
                continue
            # Our offer lost to theirs; the replacement attempt is set up in the same step
            # as the cancel, so it is normally there already.
            wait_until = min(deadline, time.monotonic() + REPLACEMENT_WAIT)
            while (link.attempt is attempt or link.attempt is None) \
                    and time.monotonic() < wait_until:
                if link.status == "connected" and link.selected is not None:
                    return self.connection_json(link)
                await asyncio.sleep(0.05)
            if link.attempt is attempt or link.attempt is None:
                break
        if link.status == "connected" and link.selected is not None:
            return self.connection_json(link)
        raise RpcError(CONNECTION_FAILED, link.reason or "connection attempt replaced",
                       {"reason": link.reason})

    def connection_json(self, link: Link) -> JsonObject:
        """The ``connect`` result for a connected link."""
        assert link.selected is not None
        return {
            "id": encode_user_id(link.public_key),
            "name": self.name(link.public_key),
            "status": "connected",
            "path": link.selected.path,
            "local": link.selected.local.as_dict(),
            "remote": link.selected.remote.as_dict(),
            "connect_ms": link.connect_ms,
            "stun": format_address(self.stun_server) if self.stun_server else None,
        }

    async def _offer(self, link: Link, timeout: float) -> JsonObject:
        started = time.monotonic()
        link.machine.begin_offer(secrets.token_bytes(16), time.time())
        session = link.session
        link.answer = asyncio.get_running_loop().create_future()
        self._emit_connection(link)
        await self._close_pc(link)
        pc = await self._new_peer_connection(link)
        link.pc = pc
        channel = pc.createDataChannel("dhtchat")
        if self.channel_user is not None:
            self.channel_user.listen(link, channel)  # before any frame can arrive
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", lambda _message: link.hear())
        link.channel = channel
        self._start_keepalive(link, pc)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            enlarge_ice_socket_buffers(pc)
            offer_epoch = await self.send_signal(link, "offer", session,
                                                 pc.localDescription.sdp)
            remaining = timeout - (time.monotonic() - started)
            try:
                answer = await asyncio.wait_for(link.answer, max(0.1, remaining))
            except TimeoutError:
                raise ConnectionError(
                    f"no answer from {self.name(link.public_key)} within {timeout:.0f} s "
                    "(offline, or not running a daemon)") from None
            link.machine.answered()
            if link.pc is not pc:  # closed while the answer came (their offer won the glare)
                raise ConnectionError(link.reason or "connection attempt replaced")
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            await self._await_open(link, pc, opened, timeout - (time.monotonic() - started),
                                   timeout)
        except (ConnectionError, ValueError, LocalProtocolError, TimeoutError, OSError,
                InvalidStateError) as exc:  # InvalidStateError: the pc closed meanwhile
            link.machine.answered()
            reason = str(exc) or "the DHT did not store the offer in time"
            await self._fail(link, reason)
            raise RpcError(CONNECTION_FAILED, reason, {"reason": reason}) from None
        # Replace the offer in the DHT, so a daemon of the contact that starts within the
        # offer's lifetime does not answer a finished attempt.
        self._spawn(self._send_done(link, session, offer_epoch))
        return self._connected(link, pc, started)

    async def _answer(self, link: Link, offer: OpenedSignal) -> JsonObject:
        started = time.monotonic()
        link.machine.begin_answer(offer.session, offer.created_ms)
        self._emit_connection(link)
        pc = await self._new_peer_connection(link)
        link.pc = pc
        opened = asyncio.Event()

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            link.channel = channel
            channel.on("message", lambda _message: link.hear())
            if self.channel_user is not None:
                self.channel_user.listen(link, channel)  # before any frame can arrive
            if channel.readyState == "open":
                opened.set()
            channel.on("open", opened.set)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            self._start_keepalive(link, pc)
            await pc.setLocalDescription(await pc.createAnswer())
            enlarge_ice_socket_buffers(pc)
            await self.send_signal(link, "answer", offer.session, pc.localDescription.sdp)
            await self._await_open(link, pc, opened, self.connect_timeout,
                                   self.connect_timeout)
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
            hint = "" if self.turn else " (both behind symmetric NATs? configure TURN)"
            return f"ICE found no working candidate pair within {timeout:.0f} s{hint}"
        return f"connection did not open within {timeout:.0f} s (ICE {ice}, DTLS {dtls_state})"

    def _connected(self, link: Link, pc: RTCPeerConnection, started: float) -> JsonObject:
        link.selected = selected_pair(pc)
        link.machine.connected(time.time(), time.monotonic())
        self._emit_connection(link)
        link.connect_ms = round((time.monotonic() - started) * 1000, 1)
        if link.selected is None:  # pragma: no cover - aioice always nominates before open
            link.selected = SelectedPair(CandidateInfo("unknown", ("", 0)),
                                         CandidateInfo("unknown", ("", 0)))
        if self.channel_user is not None and link.channel is not None:
            self.channel_user.attach(link, link.channel)
        log.info("connected to %s: %s (%s %s -> %s %s) in %.0f ms",
                 self.name(link.public_key), link.selected.path, link.selected.local.type,
                 format_address(link.selected.local.address), link.selected.remote.type,
                 format_address(link.selected.remote.address), link.connect_ms)
        return self.connection_json(link)

    async def _fail(self, link: Link, reason: str) -> None:
        log.warning("connection to %s failed: %s", self.name(link.public_key), reason)
        if link.pc is not None and link.session:
            # Tell the other side why, so it does not wait for its own timeout.
            self._spawn(self.send_bye(link, link.session, reason))
        link.machine.failed(reason, time.time())
        self._emit_connection(link)
        await self._close_pc(link)

    async def _close_pc(self, link: Link) -> None:
        pc, link.pc, link.channel, link.selected = link.pc, None, None, None
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()

    async def close_connection(self, link: Link, reason: str, *, status: Status) -> None:
        """Close the link's peer connection (if any) and show ``status`` with ``reason``."""
        link.machine.closed(reason, status)
        self._emit_connection(link)
        await self._close_pc(link)

    def _emit_connection(self, link: Link) -> None:
        self.events.emit("connection", contact=encode_user_id(link.public_key),
                         status=link.status, reason=link.reason)

    def close_later(self, link: Link, reason: str, *, status: Status) -> None:
        """Like :meth:`close_connection`, but the peer connection closes in the background:
        the link is free for a new one at once."""
        link.machine.closed(reason, status)
        self._emit_connection(link)
        pc, link.pc, link.channel, link.selected = link.pc, None, None, None
        if pc is not None:
            self._spawn(_close_quietly(pc))

    # ------------------------------------------------------------------ reconnection

    def maintain(self, now: float, accepted: Callable[[bytes], bool]) -> list[Link]:
        """One pass of the reconnection check: start automatic offers that are due (glare
        kept rare by the larger key's deferral); returns the links that want a presence
        poll (a missed push must not hide a contact)."""
        polls: list[Link] = []
        for link in list(self.by_key.values()):
            if not accepted(link.public_key):
                continue
            idle = link.attempt is None or link.attempt.done()
            if link.machine.should_poll_presence(now, idle):
                polls.append(link)
            if link.machine.should_offer(now, idle):
                link.attempt = self._spawn(self._offer(link, self.connect_timeout))
        return polls

    # ------------------------------------------------------------------ stopping links

    async def drop(self, public_key: bytes, reason: str) -> None:
        """Stop everything for a contact (it was blocked): connection, presence, listens."""
        link = self.by_key.pop(public_key, None)
        if link is not None:
            link.wanted = False
            await self._close_link(link, reason)

    async def close_all(self, reason: str) -> None:
        """Close every connection and listen (the daemon stops)."""
        for link in self.by_key.values():
            await self._close_link(link, reason)

    async def _close_link(self, link: Link, reason: str) -> None:
        await self.close_connection(link, reason, status="offline")
        for sub in link.subscriptions.values():
            sub.close()


async def _close_quietly(pc: RTCPeerConnection) -> None:
    with contextlib.suppress(Exception):
        await pc.close()
