"""The per-contact message streams and their batched commit (group commit) to the history.

Theory of operation (design sec. 6, "Sequencing"): each contact has one
:class:`ContactState`: the ratchet :class:`Conversation`, the sending :class:`Outbox` and the
receiving :class:`Inbox` (sans-IO machines of :mod:`dhtchat.messaging.outbox`), all loaded
lazily from the history. A send gets its sequence number at once and waits, with every send
of the same turn of the event loop, for one transaction (:meth:`Streams.transaction`): that
transaction writes the queued outbox rows first, so no row ever commits before an earlier one
of the same contact. After the commit the outboxes count the rows as committed and the
contacts written are flushed; after a failure the outboxes forget them and the senders get
the error. :meth:`Streams.enqueue_in` queues a payload inside a caller's transaction instead
(group fan-out, relays): flushed after that commit too. The receiving side commits here as
well: received messages with the ratchet state that decrypted them
(:meth:`Streams.store_received`), and cumulative acks and read receipts
(:meth:`Streams.acknowledge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from dhtchat.app import faults
from dhtchat.app.services import Spawner
from dhtchat.core.errors import LocalProtocolError
from dhtchat.messaging.outbox import Inbox, Outbox, Queued
from dhtchat.messaging.payload import GROUP_KINDS, Frame, Payload, encoder
from dhtchat.messaging.session import Conversation, PrekeyStore, SessionError
from dhtchat.store.history import (
    History,
    MailboxSlot,
    NewOutboxRow,
    NewOutgoingRow,
    StoredMessage,
    Transaction,
)

log = logging.getLogger("dhtchat.messages")

RESET_INTERVAL: Final = 60.0  # at most one session reset request per contact per minute
# A batch commit waits this long for a contact's lock to frame its sends in the same
# transaction (else the flush after the commit frames them, in a second one).
BATCH_LOCK_WAIT: Final = 0.05

RowWriter = Callable[[Transaction, bytes, Payload], None]
"""Stores one received message's history row inside the open transaction."""

Flusher = Callable[[bytes], Coroutine[Any, Any, None]]
"""Sends what a contact's outbox holds (:meth:`dhtchat.app.messenger.Messenger.flush`)."""


@dataclass
class ContactState:
    """What the messenger keeps per contact while it runs."""

    lock: asyncio.Lock
    conversation: Conversation | None = None
    outbox: Outbox | None = None  # the sending half of the stream (dhtchat.messaging.outbox)
    inbox: Inbox | None = None  # ... and the receiving half; both loaded from the history
    read_seen: int = 0  # the contact's read receipts are applied up to this (this run)
    ack_task: asyncio.Task[None] | None = None
    mailbox_polled: float = 0.0
    read_sent: int = 0
    typing_until: float = 0.0
    inbound: asyncio.Queue[bytes] | None = None
    inbound_task: asyncio.Task[None] | None = None
    reset_asked: float = -RESET_INTERVAL  # when we last asked the contact for a new session
    retransmit_task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class QueuedSend:
    """A send waiting for the next transaction (group commit): its outbox payload is in the
    contact's :class:`Outbox`, uncommitted; this is its history row."""

    contact: bytes
    seq: int
    message_id: bytes
    now: float
    text: str
    timer: int
    kind: str
    history_row: bool
    conversation_timer: int | None


class Streams:
    """Every contact's stream state, and the transactions that persist it."""

    def __init__(self, history: History, prekeys: PrekeyStore, me: bytes, *,
                 tasks: Spawner, flush: Flusher) -> None:
        """``prekeys`` and ``me`` build new conversations; ``tasks`` runs the batch commits
        and the flushes after a commit; ``flush`` sends a contact's outbox."""
        self.history = history
        self.prekeys = prekeys
        self.me = me
        self._tasks = tasks
        self._flush = flush
        self.states: dict[bytes, ContactState] = {}
        self._flush_after_commit: set[bytes] = set()  # outboxes a transaction filled
        # Group commit: sends queued since the last transaction, written by the next one.
        self._batch: list[QueuedSend] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._batch_ids: dict[bytes, tuple[bytes, asyncio.Future[None]]] = {}
        self._txn_outboxes: set[bytes] = set()  # outboxes the open transaction writes

    def state(self, contact: bytes) -> ContactState:
        """The contact's state (created empty on first use)."""
        state = self.states.get(contact)
        if state is None:
            state = ContactState(asyncio.Lock())
            self.states[contact] = state
        return state

    def conversation(self, contact: bytes) -> Conversation:
        """The contact's ratchet session (restored from the history, else a new one)."""
        state = self.state(contact)
        if state.conversation is None:
            saved = self.history.conversation(contact).session
            if saved:
                state.conversation = Conversation.from_json(self.prekeys, saved)
            else:
                state.conversation = Conversation(self.prekeys, self.me, contact)
        return state.conversation

    def outbox(self, contact: bytes) -> Outbox:
        """The contact's outbox machine (rebuilt from the history after a restart)."""
        state = self.state(contact)
        if state.outbox is None:
            conversation = self.history.conversation(contact)
            state.outbox = Outbox.restore(
                conversation.next_out_seq, conversation.acked_out_seq,
                [Queued(e.seq, e.payload, e.frame) for e in self.history.outbox(contact)])
        return state.outbox

    def inbox(self, contact: bytes) -> Inbox:
        """The contact's receive window (rebuilt from the history after a restart)."""
        state = self.state(contact)
        if state.inbox is None:
            next_in = self.history.conversation(contact).next_in_seq
            ahead = self.history.incoming_ahead(contact, next_in)
            state.inbox = Inbox(next_in, ahead)
        return state.inbox

    async def enqueue(self, contact: bytes, template: Payload, text: str,
                       message_id: bytes | None, *, conversation_timer: int | None = None,
                       history_row: bool = True, kind: str = "text") -> StoredMessage:
        """Queue a payload for the contact (idempotent per ``message_id``) and return once
        the transaction that holds it committed."""
        now = time.time()
        if message_id is None:  # a fresh random id: nothing to look up
            message_id = secrets.token_bytes(16)
        else:
            existing = self.history.message(message_id)
            if existing is not None:  # a retried send: idempotent
                if existing.contact != contact or not existing.outgoing:
                    raise LocalProtocolError("that message id is already used")
                return existing
            queued = self._batch_ids.get(message_id)
            if queued is not None:  # retried while the first one waits for its commit
                if queued[0] != contact:
                    raise LocalProtocolError("that message id is already used")
                await asyncio.shield(queued[1])
                return await self.enqueue(contact, template, text, message_id)
        # The payload gets its sequence number now and waits (with every send of this turn of
        # the event loop) for one transaction: one commit for a burst of sends, and ``send``
        # still returns only once its message is durable.
        seq = self.outbox(contact).queue(lambda seq: encoder.encode(msgspec.structs.replace(
            template, seq=seq, id=message_id, sent_at=now)))
        timer = template.timer if template.kind == "text" else 0
        self._batch.append(QueuedSend(contact, seq, message_id, now, text, timer, kind,
                                   history_row and template.kind not in GROUP_KINDS,
                                   conversation_timer))
        done = self._batch_done
        if done is None:
            done = self._batch_done = asyncio.get_running_loop().create_future()
            self._tasks.spawn(self._commit_batch())
        self._batch_ids[message_id] = (contact, done)
        try:
            await asyncio.shield(done)
        finally:
            self._batch_ids.pop(message_id, None)
        await self.history.durable()  # returned means on disk (one fsync for the batch)
        # The row as this transaction wrote it (a group fan-out copy has none of its own).
        return StoredMessage(message_id, contact, True, seq, now, None, text, False, False,
                             kind=kind)

    async def _commit_batch(self) -> None:
        """Commit the queued sends (if no other transaction took them meanwhile), with the
        frames of those whose contact has a session and is not busy: one transaction for
        the payloads, their frames and the ratchet state, and they can go out at once."""
        held: list[asyncio.Lock] = []
        frames: dict[bytes, tuple[Conversation, list[tuple[Queued, bytes]]]] = {}
        try:
            for contact in sorted({q.contact for q in self._batch}):
                state, conversation = self.state(contact), self.conversation(contact)
                if not conversation.established:
                    continue  # flush() encrypts them (it may need the bundle)
                if not state.lock.locked():
                    await state.lock.acquire()  # (free: no wait)
                else:
                    try:  # the contact's frames being handled (acks) end in a moment
                        await asyncio.wait_for(state.lock.acquire(), BATCH_LOCK_WAIT)
                    except TimeoutError:
                        continue  # busy for longer: flush() encrypts them after the commit
                held.append(state.lock)
                done: list[tuple[Queued, bytes]] = []
                for entry in self.outbox(contact).to_encrypt(uncommitted=True):
                    try:
                        body = await conversation.encrypt(entry.payload, None)
                    except SessionError:
                        break
                    done.append((entry, encoder.encode(Frame(entry.seq, body))))
                frames[contact] = (conversation, done)
            if not self._batch and not any(done for _, done in frames.values()):
                return  # another transaction took the sends, and nothing was encrypted
            ready = {(contact, e.seq): frame for contact, (_, done) in frames.items()
                     for e, frame in done if self.outbox(contact).holds(e)}
            try:
                with self.transaction(frames=ready) as db:
                    # (the rows this transaction inserts took their frames from ``ready``)
                    db.set_frames_of(ready)
                    for contact, (conversation, _) in frames.items():
                        self.history.update_conversation(db, contact,
                                                         session=conversation.to_json())
            except Exception:  # the senders get it through their future
                return  # (and no frame counts: none of them is durable)
            for contact, (_, done) in frames.items():
                outbox = self.outbox(contact)
                for entry, frame in done:
                    if outbox.holds(entry):
                        outbox.framed(entry.seq, frame)
        finally:
            for lock in held:
                lock.release()

    @contextlib.contextmanager
    def transaction(self, *, frames: dict[tuple[bytes, int], bytes] | None = None,
                    ) -> Iterator[Transaction]:
        """A history transaction that first writes the queued sends (so no outbox row ever
        commits before an earlier one of the same contact); after the commit the outboxes
        count them as committed and are flushed, after a failure they forget them."""
        batch, done = self._batch, self._batch_done
        self._batch, self._batch_done = [], None
        self._txn_outboxes = {q.contact for q in batch}
        try:
            with self.history.transaction() as db:
                self._write_queued(db, batch, {} if frames is None else frames)
                yield db
        except BaseException as exc:
            for contact in self._txn_outboxes:
                self.outbox(contact).rollback()
            self._txn_outboxes = set()
            if done is not None:
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                    done.exception()  # retrieved: the senders raise it, or nobody waits
                else:
                    done.cancel()
            raise
        written, self._txn_outboxes = self._txn_outboxes, set()
        for contact in written:
            self.outbox(contact).committed()
        if done is not None:
            done.set_result(None)
        if batch:
            faults.reached("outbox-commit")
        self._flush_after_commit.update(written)
        self.flush_queued()

    def _write_queued(self, db: Transaction, batch: list[QueuedSend],
                      frames: dict[tuple[bytes, int], bytes]) -> None:
        """The queued sends' outbox and history rows, and per contact the next sequence
        number (and the last timer set): a few statements for the whole batch. A row whose
        frame is in ``frames`` is written with it (and taken out of ``frames``)."""
        if not batch:
            return
        counters: dict[bytes, tuple[int, int | None]] = {}  # next_out_seq, timer
        for queued in batch:
            next_out, timer = counters.get(queued.contact, (0, None))
            counters[queued.contact] = (
                max(next_out, queued.seq + 1),
                queued.conversation_timer if queued.conversation_timer is not None else timer)
        db.add_outbox_rows(
            [NewOutboxRow(q.contact, q.seq, self.outbox(q.contact).payload(q.seq),
                          frames.pop((q.contact, q.seq), None), q.now) for q in batch])
        db.add_outgoing_rows(
            [NewOutgoingRow(q.message_id, q.contact, q.seq, q.now, q.text, q.timer, q.kind)
             for q in batch if q.history_row])  # (a group: one row)
        for contact, (next_out, timer) in counters.items():
            self.history.update_conversation(db, contact, next_out_seq=next_out, timer=timer)

    def enqueue_in(self, db: Transaction, contact: bytes, template: Payload, message_id: bytes,
                    now: float) -> int:
        """Put a payload in the contact's outbox inside the caller's transaction (one of
        :meth:`transaction`: it is flushed after the commit); returns its sequence number."""
        outbox = self.outbox(contact)
        seq = outbox.queue(lambda seq: encoder.encode(msgspec.structs.replace(
            template, seq=seq, id=message_id, sent_at=now)))
        payload = outbox.payload(seq)
        db.add_outbox(contact, seq, payload, now)
        self.history.update_conversation(db, contact, next_out_seq=seq + 1)
        self._txn_outboxes.add(contact)
        return seq

    def flush_after_commit(self, contact: bytes) -> None:
        """Flush the contact's outbox once the open transaction commits."""
        self._flush_after_commit.add(contact)

    def flush_queued(self) -> None:
        """Flush every outbox the last transactions filled."""
        for contact in sorted(self._flush_after_commit):
            self._tasks.spawn(self._flush(contact))
        self._flush_after_commit.clear()

    def acknowledge(self, contact: bytes, ack: int, read: int,
                    save: Callable[[Transaction], None] | None,
                    ) -> tuple[list[MailboxSlot], bool]:
        """Apply a cumulative ack and read receipt (``save`` writes the ratchet state that
        decrypted them, in the same transaction): the acknowledged outbox rows go, their
        messages are marked delivered (a group row once every copy is). Returns the mailbox
        slots (index, frame length) to overwrite and whether anything changed."""
        tombstones: list[MailboxSlot] = []
        # The outbox forgets first: if the commit fails the rows stay and are sent again
        # after a restart, which the contact recognises as duplicates.
        outbox = self.outbox(contact)
        floor = outbox.acked  # rows up to it are marked delivered already
        acked = outbox.on_ack(ack) if ack else None
        state = self.state(contact)
        read_floor, state.read_seen = state.read_seen, max(state.read_seen, read)
        with self.transaction() as db:
            if save is not None:
                save(db)
            if acked is not None:
                tombstones = db.acknowledge(contact, floor, acked.through, time.time())
            if read > read_floor:
                db.mark_read(contact, read_floor, read)
        return tombstones, acked is not None or read > read_floor

    def store_received(self, contact: bytes, batch: list[tuple[Payload, bool]],
                       convo: Conversation, write_row: RowWriter) -> None:
        """Commit received messages in one transaction with the ratchet state that decrypted
        them and the new in-order position (``write_row`` stores each one); then the inbox
        counts them as stored."""
        inbox = self.inbox(contact)
        seqs = [payload.seq for payload, _ in batch]
        try:
            with self.transaction() as db:
                for payload, _ in batch:
                    write_row(db, contact, payload)
                self.history.update_conversation(db, contact,
                                                 next_in_seq=inbox.next_after(seqs),
                                                 session=convo.to_json())
                if any(initial for _, initial in batch):
                    self.history.set_meta(db, "prekeys", self.prekeys.to_json().encode())
        except BaseException:
            for seq in seqs:
                inbox.abandon(seq)
            raise
        inbox.stored(seqs, time.monotonic())

    def forget_frames(self, contact: bytes) -> list[MailboxSlot]:
        """The contact asked for a reset: forget the frames of every unacknowledged message
        (the next flush encrypts them again, on the session the request came on) and return
        the mailbox slots they held, to be overwritten."""
        with self.history.transaction() as db:
            old = db.forget_frames(contact)
        log.info("%s asked for a new session: %d queued messages encrypted again",
                 contact.hex()[:12], len(self.history.outbox(contact)))
        return old
