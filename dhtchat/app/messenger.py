"""1:1 messaging on top of the daemon: outbox, delivery, receipts, DHT mailboxes.

Theory of operation (design sec. 6; protocol in docs/protocol.md, "Messaging"):

* **Sequencing.** Every outgoing message gets the next per-contact sequence number and is
  stored in the outbox (SQLCipher, :mod:`dhtchat.store.history`) before ``send`` returns. It
  leaves the outbox only when the contact acknowledges it (cumulative ``ack``: "I have every
  message up to N"). The receiver shows messages strictly in sequence order and stores each
  ``(contact, seq)`` once, so retransmissions are harmless: exactly once, in order
  (the TCP/SCTP idea, end to end across restarts).
* **Encryption.** Each payload is encrypted once with the contact's Double Ratchet
  (:mod:`dhtchat.messaging.session`, X3DH from the prekey bundle the contact publishes on the
  pair's prekey channel); the ciphertext is stored with the ratchet state that produced it in
  one transaction, and every retransmission resends those same bytes.
* **Online delivery** is over the authenticated aiortc data channel. **Offline delivery**:
  when the contact is not connected, each frame also goes into the pair's DHT mailbox, slot
  by slot (slot ``i`` is a record signed by the pair's mailbox channel key, sealed to the
  contact, 7-day TTL, republished by our node while it runs, replicated on ``k`` storers).
  The contact reads its slots in order when it comes back, acknowledges, and we overwrite the
  slots with tombstones.
* **Receipts**: the cumulative ack is the delivery receipt; ``read`` reports what ``receive``
  has shown; ``typing`` notices go over the data channel only and are never stored.

This module drives the network side (flush, receive, control signals, maintenance); the
rest lives beside it: the wire structs in :mod:`dhtchat.messaging.payload`, the per-contact
state and the batched commits in :mod:`dhtchat.app.stream`, groups in
:mod:`dhtchat.app.groupchat`, prekey bundles in :mod:`dhtchat.app.bundles` and what the API
clients read in :mod:`dhtchat.app.reading`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
from aiortc import RTCDataChannel

from dhtchat.app import faults
from dhtchat.app.bundles import Bundles
from dhtchat.app.files import CHUNK_MARK, FileTransfers
from dhtchat.app.groupchat import GroupChat, file_text
from dhtchat.app.groups import FileOrigin, GroupState, GroupStore
from dhtchat.app.mailbox import Mailboxes
from dhtchat.app.reading import Reader, message_json
from dhtchat.app.stream import RESET_INTERVAL, ContactState, Streams
from dhtchat.core.contacts import Pair
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.identity import encode_user_id
from dhtchat.core.ids import blake2b_256
from dhtchat.core.sas import SAS_VERSION
from dhtchat.messaging.mailbox import HOLE_GRACE
from dhtchat.messaging.outbox import Offer
from dhtchat.messaging.payload import (
    GROUP_KINDS,
    MAX_TEXT_BYTES,
    MAX_TIMER,
    SEQUENCED,
    Frame,
    Payload,
    batch_frames,
    encoder,
    frame_decoder,
    pack_frames,
    payload_decoder,
    unpack_frames,
)
from dhtchat.messaging.session import (
    Conversation,
    SessionError,
    is_initial_message,
)
from dhtchat.store.files import FileEntry
from dhtchat.store.history import ConversationRef, History, StoredMessage, Transaction

if TYPE_CHECKING:
    from dhtchat.app.daemon import Daemon
    from dhtchat.app.links import Link

__all__ = [
    "HOLE_GRACE",
    "MAX_TEXT_BYTES",
    "MAX_TIMER",
    "Frame",
    "Messenger",
    "Payload",
    "message_json",
]

log = logging.getLogger("dhtchat.messages")

TYPING_SHOWN: Final = 6.0  # seconds a typing notice is shown (clients resend every ~3 s)
MAILBOX_POLL: Final = 15.0
CONTROL_PUT_ATTEMPTS: Final = 4
MAINTENANCE_PARALLEL: Final = 8  # contacts served at once by the maintenance pass
INBOUND_QUEUE: Final = 4096  # data-channel frames waiting per contact
RECEIVE_BATCH: Final = 256  # frames handled (and their messages committed) together
COLLECT_TURNS: Final = 4  # ... collected until none arrived for this many turns of the loop


class Messenger:
    """Messages with every accepted contact of one daemon."""

    def __init__(self, daemon: Daemon, history: History) -> None:
        self.daemon = daemon
        self.history = history
        self.identity = daemon.identity
        self.bundles = Bundles(history, self.identity, lambda: daemon.node, self._pair)
        self.prekeys = self.bundles.prekeys
        self.stream = Streams(history, self.prekeys, self.identity.public_key, tasks=daemon,
                              flush=self.flush)
        self.files = FileTransfers(self, daemon.profile.root / "files", tasks=daemon,
                                   channel=self._channel, events=daemon.events)
        self.groups = GroupStore(history)
        self.group_chat = GroupChat(self.identity, history, self.groups, self.stream, self.files)
        self.reader = Reader(history, self._read_up_to)
        self._delivered = asyncio.Condition()
        self.undecryptable = 0
        self.dropped_frames = 0
        self.mailbox = Mailboxes(history, lambda: daemon.node, self._pair, self._on_frames)

    # ------------------------------------------------------------------ plumbing

    def _link(self, contact: bytes) -> Link | None:
        return self.daemon.links.get(contact)

    def _pair(self, contact: bytes) -> Pair | None:
        link = self._link(contact)
        return None if link is None else link.pair

    def _channel(self, contact: bytes) -> RTCDataChannel | None:
        link = self._link(contact)
        if link is None or link.status != "connected" or link.channel is None:
            return None
        return link.channel if link.channel.readyState == "open" else None

    # ------------------------------------------------------------------ sending

    async def send_text(self, contact: bytes, text: str,
                        message_id: bytes | None = None) -> StoredMessage:
        """Persist a message in the outbox (idempotent per ``message_id``) and start delivery."""
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise LocalProtocolError(f"a message holds at most {MAX_TEXT_BYTES} bytes")
        timer = self.history.conversation(contact).timer
        return await self.stream.enqueue(contact, Payload("text", text=text, timer=timer), text,
                                   message_id)

    async def set_timer(self, contact: bytes, seconds: int) -> StoredMessage:
        """Set the conversation's disappearing-message timer on both sides (0: off)."""
        if not 0 <= seconds <= MAX_TIMER:
            raise LocalProtocolError("the timer is 0 (off) to one year, in seconds")
        return await self.stream.enqueue(contact, Payload("timer", timer=seconds),
                                   _timer_text(seconds), None, conversation_timer=seconds,
                                   kind="notice")

    async def send_file_offer(self, contact: bytes, file_id: bytes, name: str, size: int,
                              digest: bytes, key: bytes, *, group_id: bytes = b"",
                              origin: FileOrigin | None = None) -> StoredMessage:
        """Queue the offer of a file (see :mod:`dhtchat.app.files`); a group file's copies
        have no history row of their own (the group's row is written once) and carry its
        author's signed ``origin``."""
        payload = Payload("file", file_id=file_id, name=name, size=size, sha256=digest,
                          key=key, group_id=group_id)
        if origin is not None:
            payload = msgspec.structs.replace(
                payload, name=origin.name, author=origin.author, origin_id=origin.origin_id,
                origin_time=origin.origin_time, signature=origin.signature)
        return await self.stream.enqueue(contact, payload, file_text(name, size), file_id,
                                   history_row=not group_id, kind="file")

    async def wait_delivered(self, message_id: bytes, timeout: float) -> bool:
        """Wait until the contact acknowledged the message."""
        async def delivered() -> None:
            async with self._delivered:
                while True:
                    message = self.history.message(message_id)
                    if message is not None and message.delivered:
                        return
                    await self._delivered.wait()
        try:
            await asyncio.wait_for(delivered(), timeout)
        except TimeoutError:
            return False
        return True

    async def _encrypt_pending(self, contact: bytes, bundle: bytes | None) -> None:
        """Give every committed outbox entry its frame (once); the frames of a burst are
        committed in one transaction with the ratchet state that produced them, before any
        of them is sent."""
        outbox = self.stream.outbox(contact)
        entries = outbox.to_encrypt()
        if not entries:
            return
        conversation = self.stream.conversation(contact)
        if not conversation.established and bundle is None:
            log.info("no prekey bundle from %s yet; messages stay queued", contact.hex()[:12])
            return
        frames: list[tuple[int, bytes]] = []
        for entry in entries:
            try:
                body = await conversation.encrypt(entry.payload, bundle)
            except SessionError as exc:
                log.warning("cannot encrypt for %s: %s", contact.hex()[:12], exc)
                break
            frames.append((entry.seq, encoder.encode(Frame(entry.seq, body))))
        if not frames:
            return
        with self.stream.transaction() as db:
            db.set_frames(contact, frames)
            self.history.update_conversation(db, contact, session=conversation.to_json())
        for seq, frame in frames:
            outbox.framed(seq, frame)

    async def flush(self, contact: bytes, *, force: bool = False) -> None:
        """Send what the outbox holds: over the data channel if connected, else to the DHT
        mailbox. ``force`` retransmits frames sent recently too."""
        state = self.stream.state(contact)
        outbox = self.stream.outbox(contact)
        bundle = None
        if not self.stream.conversation(contact).established and outbox.needs_frames():
            bundle = await self.bundles.fetch(contact)  # network I/O before taking the lock
        async with state.lock:
            await self._encrypt_pending(contact, bundle)
            if not outbox.has_frames():
                return  # nothing framed
            # No frame leaves before its ratchet state is on disk (the history's barrier).
            await self.history.durable()
            channel = self._channel(contact)
            now = time.monotonic()
            if channel is not None:
                frames: list[bytes] = []
                for send in outbox.transmit(now, force=force):
                    if send.attempt:
                        (log.info if send.attempt == 3 else log.debug)(
                            "frame %d to %s sent %d times without an acknowledgement",
                            send.seq, contact.hex()[:12], send.attempt + 1)
                    frames.append(send.frame)
                for group in batch_frames(frames):  # a burst: a few large messages
                    channel.send(pack_frames(group))
                self._schedule_retransmit(contact)
                return
            # Reserve mailbox slots under the lock (so slot order = sequence order); the DHT
            # puts happen outside it, so sending and receiving never wait for the network.
            due = set(outbox.due(now, force=force))
            jobs: list[tuple[int, int, bytes]] = []
            for entry in self.history.outbox(contact):
                if entry.frame is None:
                    continue
                frame = entry.frame
                if entry.mailbox_index is None:
                    jobs.append((entry.seq, self._reserve_slots(contact, entry.seq, frame),
                                 frame))
                elif not entry.mailbox_stored and entry.seq in due:
                    jobs.append((entry.seq, entry.mailbox_index, frame))
            for seq, _index, _frame in jobs:
                if outbox.frame(seq) is not None:
                    outbox.sent(seq, now)
        for seq, index, frame in jobs:
            if await self._to_mailbox(contact, seq, frame, index=index):
                with self.history.transaction() as db:
                    db.mark_mailbox_stored(contact, seq)

    def _schedule_retransmit(self, contact: bytes) -> None:
        """Unacknowledged frames go again when the outbox says they are due, whatever the
        maintenance loop is busy with (one timer task per contact, while frames are out)."""
        state = self.stream.state(contact)
        if state.retransmit_task is not None and not state.retransmit_task.done():
            return

        async def later() -> None:
            outbox = self.stream.outbox(contact)
            while (deadline := outbox.next_deadline()) is not None:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.5)
                if self._channel(contact) is None:
                    return  # the maintenance loop flushes to the mailbox
                await self.flush(contact)
        state.retransmit_task = self.daemon.spawn(later())

    def _reserve_slots(self, contact: bytes, seq: int, frame: bytes) -> int:
        """Assign the next mailbox slots to a frame (recorded on its outbox entry)."""
        return self.mailbox.reserve(contact, seq, frame)

    async def _to_mailbox(self, contact: bytes, seq: int, frame: bytes,
                          index: int | None = None) -> bool:
        """Put a frame in its mailbox slots (:meth:`Mailboxes.store`)."""
        return await self.mailbox.store(contact, seq, frame, index=index)

    async def _tombstone(self, contact: bytes, index: int, frame_bytes: int) -> None:
        await self.mailbox.tombstone(contact, index, frame_bytes)

    # ------------------------------------------------------------------ receiving

    def listen(self, link: Link, channel: RTCDataChannel) -> None:
        """Route a data channel's messages here (called as soon as the channel exists)."""
        contact = link.public_key

        @channel.on("message")
        def on_message(data: object) -> None:
            if not isinstance(data, bytes) or not data:
                return
            if data[:1] == CHUNK_MARK:
                self.files.on_chunk(contact, data)
                return
            try:
                frames = unpack_frames(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.info("dropped a malformed frame batch from %s", contact.hex()[:12])
                return
            for frame in frames:
                self._queue_frame(contact, frame)

    def _queue_frame(self, contact: bytes, data: bytes) -> None:
        """One consumer per contact and a bounded queue: a flooding peer costs at most
        INBOUND_QUEUE frames of memory (dropped ones are retransmitted if they mattered)."""
        state = self.stream.state(contact)
        if state.inbound is None:
            state.inbound = asyncio.Queue(maxsize=INBOUND_QUEUE)
        try:
            state.inbound.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped_frames += 1
            return
        if state.inbound_task is None or state.inbound_task.done():
            state.inbound_task = self.daemon.spawn(self._drain(contact, state.inbound))

    async def _drain(self, contact: bytes, queue: asyncio.Queue[bytes]) -> None:
        # The frames that came after a quiet spell (this task was just started for them)
        # are handled at once: a message typed by a person waits for nothing. Frames that
        # keep coming meanwhile are handled (and their messages committed) in batches:
        # while a commit blocks the loop the next frames wait in the socket, and the
        # transport hands them over one per turn of the loop, so a batch is collected until
        # none arrived for COLLECT_TURNS turns.
        collect = 0
        while not queue.empty():
            batch: list[bytes] = []
            idle = 0
            while len(batch) < RECEIVE_BATCH:
                if not queue.empty():
                    idle = 0
                    batch.append(queue.get_nowait())
                    continue
                if idle >= collect:
                    break
                idle += 1
                await asyncio.sleep(0)
            try:
                await self._on_frames(contact, batch)
            except Exception:  # bad frames must not stop the contact's others
                log.exception("error handling frames from %s", contact.hex()[:12])
            collect = COLLECT_TURNS

    def attach(self, link: Link, channel: RTCDataChannel) -> None:
        """The connection is up: resend the outbox and resume incoming files."""
        contact = link.public_key
        self.daemon.spawn(self.flush(contact, force=True))
        self.daemon.spawn(self.files.resume(contact))
        self.daemon.spawn(self._send_control(contact, self._ack_payload(contact)))

    async def on_frame(self, contact: bytes, data: bytes) -> None:
        """Handle one frame from the data channel or the mailbox."""
        await self._on_frames(contact, [data])

    async def _on_frames(self, contact: bytes, frames: list[bytes]) -> None:
        """Handle a contact's frames in arrival order. The contact's :class:`Inbox` admits
        each sequence number once; the messages among them are committed in one transaction
        (before a control frame after them is acted on: the ratchet state it saves covers
        them) and acknowledged ACK_DELAY later."""
        state = self.stream.state(contact)
        arrived = False
        async with state.lock:
            inbox = self.stream.inbox(contact)
            batch: list[tuple[Payload, bool]] = []
            for data in frames:
                try:
                    frame = frame_decoder.decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                    log.info("dropped a malformed frame from %s", contact.hex()[:12])
                    continue
                verdict = inbox.offer(frame.seq, time.monotonic())
                if verdict is Offer.DUPLICATE:
                    continue  # a retransmission: our ack was lost (one is due again)
                if verdict is Offer.TOO_FAR:
                    log.info("dropped a frame %d ahead of the next expected one", frame.seq)
                    continue  # the sender retransmits it once the gap is filled
                initial = is_initial_message(frame.body)
                payload = await self._open(contact, state, frame)
                if payload is not None and payload.kind in SEQUENCED and payload.seq > 0:
                    if not self._is_contact(contact) and payload.kind not in GROUP_KINDS:
                        log.warning("dropped a 1:1 %s from a group peer who is not a contact",
                                    payload.kind)
                        payload = msgspec.structs.replace(payload, kind="text", text="",
                                                          file_id=b"")
                    batch.append((payload, initial))
                    continue
                inbox.abandon(frame.seq)  # not stored (a sequenced number on a control, too)
                if payload is None:
                    continue
                if batch:
                    arrived = self._store_received(contact, batch) or arrived
                    batch = []
                await self._on_control(contact, state, payload, initial)
            if batch:
                arrived = self._store_received(contact, batch) or arrived
        if inbox.ack_deadline() is not None:
            self._schedule_ack(contact)
        if arrived:
            await self.reader.arrived()

    async def _open(self, contact: bytes, state: ContactState, frame: Frame) -> Payload | None:
        """Decrypt and decode a frame's payload (None if it cannot be: counted and logged;
        a frame that does not decrypt asks the contact for a new session)."""
        try:
            plaintext = await self.stream.conversation(contact).decrypt(frame.body)
            payload = payload_decoder.decode(plaintext)
        except SessionError as exc:
            self.undecryptable += 1
            log.warning("cannot decrypt a message from %s: %s", contact.hex()[:12], exc)
            if time.monotonic() - state.reset_asked >= RESET_INTERVAL:
                state.reset_asked = time.monotonic()
                self.daemon.spawn(self._ask_reset(contact))
            return None
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            self.undecryptable += 1
            log.warning("malformed payload from %s", contact.hex()[:12])
            return None
        if payload.seq != frame.seq:
            log.warning("dropped a frame whose inner and outer sequence differ")
            return None
        return payload

    def _store_received(self, contact: bytes, batch: list[tuple[Payload, bool]]) -> bool:
        """Commit received messages (then they may be acknowledged); True if any."""
        self.stream.store_received(contact, batch, self.stream.conversation(contact),
                                   self._store_row)
        for payload, _ in batch:
            self.daemon.events.emit("group.changed" if payload.kind in ("group_update", "group_leave") else "message", contact=encode_user_id(contact), seq=payload.seq, kind=payload.kind)  # noqa: E501
        faults.reached("receive-commit")
        if any(p.kind == "file" for p, _ in batch) and self._channel(contact) is not None:
            self.daemon.spawn(self.files.resume(contact))
        return True

    async def _on_control(self, contact: bytes, state: ContactState, payload: Payload,
                          initial: bool) -> None:
        """An unsequenced payload: save the ratchet state that decrypted it, and act on it."""
        convo = self.stream.conversation(contact)

        def save(db: Transaction) -> None:
            self.history.update_conversation(db, contact, session=convo.to_json())
            if initial:  # a one-time prekey was used up: never accept it twice
                self.history.set_meta(db, "prekeys", self.prekeys.to_json().encode())
        if payload.kind == "ack" or payload.read:
            await self._on_ack(contact, payload.ack, payload.read, save=save)
            return
        with self.stream.transaction() as db:
            save(db)
        if payload.kind == "file_request":
            self.files.on_request(contact, payload.file_id, payload.offset)
        elif payload.kind == "file_done":
            self.files.on_done(contact, payload.file_id)
        elif payload.kind == "file_end":
            self.daemon.spawn(self.files.on_end(contact, payload.file_id,
                                                 payload.text[:16]))
        elif payload.kind == "typing":
            state.typing_until = time.time() + TYPING_SHOWN
            self.daemon.events.emit("typing", contact=encode_user_id(contact))
        elif payload.kind == "call" and len(payload.call_id) == 16 and \
                self._is_contact(contact) and self.daemon.calls is not None:
            self.daemon.spawn(self.daemon.calls.on_signal(
                contact, payload.call_action, payload.call_id, sdp=payload.text,
                video=payload.video, committed=payload.commitment,
                nonce=payload.nonce, conference=payload.conference,
                participants=tuple(payload.participants),
                signature=payload.signature, sas_version=payload.sas_version))
        elif payload.kind == "goodbye" and self._is_contact(contact):
            self.daemon.spawn(self.daemon.contact_said_goodbye(contact))
        elif payload.kind == "reset":
            tombstones = self.stream.forget_frames(contact)
            self.stream.outbox(contact).reset()
            for index, length in tombstones:
                self.daemon.spawn(self._tombstone(contact, index, length))
            self.daemon.spawn(self.flush(contact, force=True))

    def _store_incoming(self, contact: bytes, payload: Payload, convo: Conversation,
                        initial: bool) -> None:
        """Commit one received message (see :meth:`Streams.store_received`)."""
        self.stream.store_received(contact, [(payload, initial)], convo, self._store_row)

    def _store_row(self, db: Transaction, contact: bytes, payload: Payload) -> None:
        text = payload.text
        group_id: bytes | None = None
        author: bytes | None = None
        # Only what the contact typed is "text"; what the software says is a "notice".
        kind = "notice" if payload.kind in ("timer", "group_update", "group_leave") \
            else "text"
        if payload.kind in GROUP_KINDS:
            group_id, text, author = self.group_chat.on_payload(db, contact, payload)
        if payload.kind == "file":
            text = ""  # a malformed offer is stored hidden: its text is never shown
        if payload.kind == "file" and len(payload.file_id) == 16 \
                and len(payload.key) == 32 and len(payload.sha256) == 32:
            kind = "file"  # only a well-formed offer is one (its text is ours)
            text = file_text(payload.name, payload.size)
            if payload.group_id:
                group_id, author = self.group_chat.file_offer(db, contact, payload)
                if group_id is None:
                    text = ""  # not acceptable for that group: stored hidden, not offered
            if text:
                self.files.on_offer(db, contact, payload.file_id, payload.name,
                                    payload.size, payload.sha256, payload.key,
                                    group_id=group_id, author=author)
        timer = payload.timer if payload.kind == "text" else 0
        if payload.kind == "timer":
            text = _timer_text(payload.timer)
            self.history.update_conversation(db, contact, timer=payload.timer)
        # Incoming ids are namespaced by the sender: a peer cannot collide with our ids.
        local_id = blake2b_256(b"dhtchat/incoming-id/v1", contact, payload.id)[:16]
        db.add_incoming(local_id, contact, payload.seq, payload.origin_time or payload.sent_at,
                        time.time(), text, timer, group_id, author, kind)

    async def _on_ack(self, contact: bytes, ack: int, read: int,
                      save: Callable[[Transaction], None] | None = None) -> None:
        """A cumulative ack (and read receipt) arrived; ``save`` writes the ratchet state
        that decrypted it in the same transaction."""
        tombstones, changed = self.stream.acknowledge(contact, ack, read, save)
        if ack:
            self.daemon.events.emit("receipt", contact=encode_user_id(contact), delivered=ack, read=read)  # noqa: E501
        for index, frame_bytes in tombstones:
            self.daemon.spawn(self._tombstone(contact, index, frame_bytes or 0))
        if changed:
            async with self._delivered:
                self._delivered.notify_all()

    def _ack_payload(self, contact: bytes) -> Payload:
        read = self.stream.state(contact).read_sent
        return Payload("ack", ack=self.stream.inbox(contact).ack, read=read)

    def _schedule_ack(self, contact: bytes) -> None:
        """Send the cumulative ack when the inbox says it is due (one per burst)."""
        state = self.stream.state(contact)
        if state.ack_task is not None and not state.ack_task.done():
            return

        async def later() -> None:
            inbox = self.stream.inbox(contact)
            while (deadline := inbox.ack_deadline()) is not None:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                if inbox.poll_ack(time.monotonic()) is not None:
                    await self._send_control(contact, self._ack_payload(contact))
        state.ack_task = self.daemon.spawn(later())

    async def _send_control(self, contact: bytes, payload: Payload, *,
                            new_session_from: bytes | None = None,
                            restart: bool = False) -> None:
        """Encrypt and send an unsequenced payload (ack, read, typing, call). Without a
        session, one is started from the bundle ``new_session_from``; ``restart`` (reset)
        starts a new one even if a session exists."""
        state = self.stream.state(contact)
        async with state.lock:
            if payload.kind == "ack":
                # As of now, not as of when it was scheduled: frames stored while this ack
                # waited for the lock are covered (else they wait for a retransmission).
                self.stream.inbox(contact).acked_now()
                payload = self._ack_payload(contact)
            conversation = self.stream.conversation(contact)
            if restart and new_session_from is not None:
                conversation.restart()
            elif not conversation.established and new_session_from is None:
                return  # nothing to acknowledge before a session exists
            # (A session started meanwhile by another sender is used as is: two initial
            # messages from one bundle would spend its one-time prekey twice.)
            channel = self._channel(contact)
            if channel is None and payload.kind in ("typing", "call", "goodbye"):
                return
            body = await conversation.encrypt(encoder.encode(payload), new_session_from)
            with self.stream.transaction() as db:
                self.history.update_conversation(db, contact, session=conversation.to_json())
            # On disk before it leaves: its ratchet state, and what an ack covers.
            await self.history.durable()
            channel = self._channel(contact)  # (it may have closed meanwhile)
            if channel is None and payload.kind in ("typing", "call", "goodbye"):
                return
            frame = encoder.encode(Frame(0, body))
            if channel is not None:
                channel.send(frame)
                return
            index = self._reserve_slots(contact, 0, frame)
        for attempt in range(CONTROL_PUT_ATTEMPTS):
            if await self._to_mailbox(contact, 0, frame, index=index):
                return
            await asyncio.sleep(2.0 * (attempt + 1))
        log.info("could not store a receipt for %s in the DHT", contact.hex()[:12])

    async def say_goodbye(self, contact: bytes) -> None:
        """Tell a connected contact we are stopping (over the data channel only)."""
        if self._channel(contact) is not None and self.stream.conversation(contact).established:
            await self._send_control(contact, Payload("goodbye"))

    async def send_call(self, contact: bytes, action: str, call_id: bytes, *, sdp: str = "",
                        video: bool = False, commitment: bytes = b"", nonce: bytes = b"",
                        conference: bytes = b"", participants: tuple[bytes, ...] = (),
                        signature: bytes = b"") -> bool:
        """Send a call signal over the live data channel (calls need one); False if the
        contact is not connected or has no session yet."""
        if self._channel(contact) is None:
            return False
        bundle = None
        if not self.stream.conversation(contact).established:  # nothing exchanged yet
            bundle = await self.bundles.fetch(contact)
            if bundle is None:
                return False
        await self._send_control(contact, Payload(
            "call", call_id=call_id, call_action=action, text=sdp, video=video,
            commitment=commitment, nonce=nonce, conference=conference,
            participants=list(participants), signature=signature, sas_version=SAS_VERSION),
            new_session_from=bundle)
        return self._channel(contact) is not None

    # ------------------------------------------------------------------ session reset

    async def _ask_reset(self, contact: bytes) -> None:
        """The contact's frames do not decrypt (our ratchet state was lost or restored, or
        its initial message used a one-time prekey we no longer have): start a new session
        from its bundle and ask it, on that session, to encrypt its pending frames again."""
        bundle = await self.bundles.fetch(contact)
        if bundle is None:
            log.info("cannot ask %s for a new session: no prekey bundle", contact.hex()[:12])
            # Try again at the next failure.
            self.stream.state(contact).reset_asked = -RESET_INTERVAL
            return
        try:
            await self._send_control(contact, Payload("reset"), new_session_from=bundle,
                                     restart=True)
        except SessionError as exc:
            log.warning("cannot start a new session with %s: %s", contact.hex()[:12], exc)
            return
        log.info("asked %s to resend on a new session", contact.hex()[:12])

    # ------------------------------------------------------------------ mailbox reading

    async def poll_mailbox(self, contact: bytes) -> int:
        """Read the contact's mailbox slots from where we stopped; returns frames handled."""
        return await self.mailbox.poll(contact, hole_grace=HOLE_GRACE)

    # ------------------------------------------------------------------ background

    async def publish_prekeys(self, contact: bytes) -> None:
        """Publish our prekey bundle, sealed, on the pair's prekey channel."""
        await self.bundles.publish(contact)

    async def maintenance(self, contacts: list[bytes]) -> None:
        """Republish prekeys when they changed, retransmit, read mailboxes: contacts are
        served concurrently (at most MAINTENANCE_PARALLEL at a time), so one slow contact or
        a large group does not hold up the others."""
        gate = asyncio.Semaphore(MAINTENANCE_PARALLEL)
        async def publish(contact: bytes) -> None:
            async with gate:
                await self.publish_prekeys(contact)
        # Also every bundle whose last put failed: without it the contact cannot start a
        # session with us and its messages wait. Alongside the rest, not before it.
        publishing = asyncio.gather(*(publish(c) for c in self.bundles.to_publish(contacts)))
        now = time.time()
        self.history.delete_expired(now)

        async def serve(contact: bytes) -> None:
            async with gate:
                state = self.stream.state(contact)
                if self.history.has_outbox(contact):
                    await self.flush(contact)
                if self._channel(contact) is None and \
                        now - state.mailbox_polled >= MAILBOX_POLL:
                    state.mailbox_polled = now
                    await self.poll_mailbox(contact)
        await asyncio.gather(publishing, *(serve(c) for c in contacts))

    # ------------------------------------------------------------------ API helpers

    async def receive(self, wait: float, limit: int,
                      only: ConversationRef | None = None) -> list[StoredMessage]:
        """Messages not yet shown (of the conversation ``only``, else of all), reserved for
        this caller (:meth:`Reader.receive`)."""
        return await self.reader.receive(wait, limit, only)

    def release(self, messages: list[StoredMessage]) -> None:
        """The reply with these messages did not reach the client: offer them again."""
        self.reader.release(messages)

    def shown(self, messages: list[StoredMessage]) -> None:
        """The client has these messages (:meth:`Reader.shown`): read receipts follow."""
        self.reader.shown(messages)

    def _read_up_to(self, contact: bytes, seq: int) -> None:
        state = self.stream.state(contact)
        state.read_sent = max(state.read_sent, seq)
        # The read receipt rides on the next cumulative ack (one per burst of reads).
        self.stream.inbox(contact).request_ack(time.monotonic())
        self._schedule_ack(contact)

    # ------------------------------------------------------------------ groups

    def _is_contact(self, contact: bytes) -> bool:
        entry = self.daemon.contacts.get(contact)
        return entry is not None and entry.state == "accepted"

    async def create_group(self, name: str, members: list[bytes]) -> GroupState:
        """Create a group we administer (:meth:`GroupChat.create_group`)."""
        return await self.group_chat.create_group(name, members)

    async def change_group(self, group_id: bytes, *, add: list[bytes] | None = None,
                           remove: list[bytes] | None = None) -> GroupState:
        """Admin: invite or remove members (:meth:`GroupChat.change_group`)."""
        return await self.group_chat.change_group(group_id, add=add, remove=remove)

    async def send_group_text(self, group_id: bytes, text: str) -> StoredMessage:
        """Send a message to a group (:meth:`GroupChat.send_group_text`)."""
        return await self.group_chat.send_group_text(group_id, text)

    async def send_group_file(self, group_id: bytes, path: Path) -> StoredMessage:
        """Offer a file to a group (:meth:`GroupChat.send_group_file`)."""
        return await self.group_chat.send_group_file(group_id, path)

    async def relay_group_file(self, entry: FileEntry, path: Path) -> None:
        """As the admin, offer a member's file to the others (:meth:`GroupChat`)."""
        await self.group_chat.relay_group_file(entry, path)

    async def leave_group(self, group_id: bytes) -> None:
        """Leave a group (:meth:`GroupChat.leave_group`)."""
        await self.group_chat.leave_group(group_id)

    async def request_file(self, contact: bytes, file_id: bytes, offset: int) -> None:
        """Ask the contact to stream a file from ``offset`` (only over a live connection)."""
        if self._channel(contact) is not None:
            await self._send_control(contact, Payload("file_request", file_id=file_id,
                                                      offset=offset))

    async def confirm_file(self, contact: bytes, file_id: bytes) -> None:
        """Tell the contact the file arrived whole (hash checked)."""
        await self._send_control(contact, Payload("file_done", file_id=file_id))

    async def end_file(self, contact: bytes, file_id: bytes, reason: str) -> None:
        """Tell the contact a transfer ended here (``reason``: declined, cancelled, refused);
        sent like an ack, through the mailbox when not connected."""
        await self._send_control(contact, Payload("file_end", file_id=file_id, text=reason))

    def is_typing(self, contact: bytes) -> bool:
        """Whether the contact sent a typing notice in the last few seconds."""
        state = self.stream.states.get(contact)
        return state is not None and state.typing_until > time.time()

    async def typing(self, contact: bytes) -> bool:
        """Send a typing notice (only over a live connection); True if sent."""
        if self._channel(contact) is None:
            return False
        await self._send_control(contact, Payload("typing"))
        return True


def _timer_text(seconds: int) -> str:
    return (f"[timer] messages disappear {seconds} s after they are read" if seconds
            else "[timer] disappearing messages off")
