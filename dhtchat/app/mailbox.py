"""The DHT mailboxes of one daemon's contacts: the I/O around :mod:`dhtchat.messaging.mailbox`.

Theory of operation: the machines decide which slots to write, read and tombstone and when a
hole is skipped or forgotten; this driver seals and opens the slot records with the contact
pair's keys, puts and gets them through the daemon's DHT node (bounded: at most
MAX_CONCURRENT_PUTS slot puts in flight), persists what the reader hands out to be saved (the
read index on the conversation, the holes in the history's meta table) and hands the frames
read to the messenger. What is stored, and where, is what the messenger stored before this
module existed, so existing histories and other nodes' mailboxes read as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final

from dhtchat.core.contacts import Pair, Purpose
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.messaging.mailbox import (
    HOLE_GRACE,
    MAILBOX_EPOCH,
    POLL_STEP_BOUND,
    Deliver,
    Fetch,
    MailboxReader,
    MailboxWriter,
    PollDone,
    PutSlot,
    SaveHoles,
    SaveIndex,
    Slot,
    SlotContent,
    decode_holes,
    encode_holes,
    reserve,
    slot_salt,
    slot_stored,
)
from dhtchat.net.udp import UdpDhtNode
from dhtchat.store.history import History

log = logging.getLogger("dhtchat.messages")

MAX_CONCURRENT_PUTS: Final = 8  # mailbox slot puts in flight per daemon
DELIVER_BATCH: Final = 64  # frames read handed to the messenger at once at most


def _holes_meta(contact: bytes) -> str:
    return "holes:" + contact.hex()


class Mailboxes:
    """Writes frames to contacts' mailboxes and reads theirs, through the daemon's node.

    ``node`` and ``pair`` are looked up at each use (the node exists once the daemon runs;
    None means the contact cannot be reached now); ``deliver`` takes the frames read, in
    order, a run of them at a time (up to DELIVER_BATCH: the messenger commits the messages
    among them in one transaction)."""

    def __init__(self, history: History, node: Callable[[], UdpDhtNode | None],
                 pair: Callable[[bytes], Pair | None],
                 deliver: Callable[[bytes, list[bytes]], Awaitable[None]]) -> None:
        self._history = history
        self._node = node
        self._pair = pair
        self._deliver = deliver
        self._writer = MailboxWriter()
        self._readers: dict[bytes, MailboxReader] = {}
        self._polling: dict[bytes, asyncio.Lock] = {}
        self._puts = asyncio.Semaphore(MAX_CONCURRENT_PUTS)

    # ------------------------------------------------------------------ writing

    def reserve(self, contact: bytes, seq: int, frame: bytes) -> int:
        """Assign the next mailbox slots to a frame (recorded on its outbox entry when
        ``seq``, i.e. sequenced); returns its first slot."""
        start, after = reserve(self._history.conversation(contact).mailbox_out_index, frame)
        with self._history.transaction() as db:
            if seq:
                db.set_mailbox_slot(contact, seq, start)
            self._history.update_conversation(db, contact, mailbox_out_index=after)
        return start

    async def store(self, contact: bytes, seq: int, frame: bytes,
                    index: int | None = None) -> bool:
        """Put a frame in the next mailbox slots (or at slot ``index`` again); frames larger
        than one record are split over consecutive slots. True when every slot was stored."""
        if self._pair(contact) is None or self._node() is None:
            return False
        if index is None:
            index = self.reserve(contact, seq, frame)
        puts = self._writer.frame_puts(index, frame, time.time())
        return all(await asyncio.gather(*(self._put(contact, put) for put in puts)))

    async def tombstone(self, contact: bytes, index: int, frame_bytes: int) -> None:
        """Overwrite the slots of an acknowledged (or abandoned) frame from slot ``index``."""
        puts = self._writer.tombstone_puts(index, frame_bytes, time.time())
        await asyncio.gather(*(self._put(contact, put) for put in puts))

    async def _put(self, contact: bytes, put: PutSlot) -> bool:
        pair, node = self._pair(contact), self._node()
        if pair is None or node is None:
            return False
        record = pair.seal_record(Purpose.MAILBOX, MAILBOX_EPOCH, put.value, seq=put.seq,
                                  expires=put.expires, random_bytes=secrets.token_bytes,
                                  salt=put.salt)
        async with self._puts:  # bounded: a big fan-out must not swamp the node
            with contextlib.suppress(TimeoutError, ConnectionError):
                result = await node.put(record, republish=True)
                return slot_stored(result.stored, result.attempted)
        return False

    # ------------------------------------------------------------------ reading

    def _reader(self, contact: bytes) -> MailboxReader:
        reader = self._readers.get(contact)
        if reader is None:
            reader = MailboxReader(self._history.conversation(contact).mailbox_in_index,
                                   decode_holes(self._history.get_meta(_holes_meta(contact))))
            self._readers[contact] = reader
        return reader

    async def poll(self, contact: bytes, *, hole_grace: float = HOLE_GRACE) -> int:
        """Read the contact's mailbox slots from where we stopped, and the holes skipped
        before; returns the frames handed to ``deliver``. One poll per contact at a time;
        the lookups of a window run while the frames of the window before are delivered."""
        pair, node = self._pair(contact), self._node()
        if pair is None or node is None:
            return 0
        lock = self._polling.setdefault(contact, asyncio.Lock())
        async with lock:
            owner = pair.channel_signer(Purpose.MAILBOX, contact, MAILBOX_EPOCH).public_key
            reader = self._reader(contact)
            reader.poll(time.time(), hole_grace=hole_grace)
            # The slot lookups asked for, running while the frames before them are delivered;
            # answers are reported when the reader cannot go on without them.
            lookups: dict[int, asyncio.Future[SlotContent]] = {}
            try:
                return await self._run_poll(reader, contact, lookups, hole_grace, lambda slot:
                                            self._fetch(pair, node, contact, owner, slot))
            finally:
                for task in lookups.values():  # the poll failed: nobody waits for them
                    if not task.done():
                        task.cancel()
                    elif not task.cancelled():
                        task.exception()  # retrieved: no "never retrieved" warning

    async def _run_poll(self, reader: MailboxReader, contact: bytes,
                        lookups: dict[int, asyncio.Future[SlotContent]], hole_grace: float,
                        fetch: Callable[[int], Awaitable[SlotContent]]) -> int:
        # Frames handed out in a row are delivered together, and the read index they move is
        # saved after them (never before a frame it passes was delivered), before the poll
        # waits for a lookup, saves holes or ends.
        frames: list[bytes] = []
        index: int | None = None

        async def deliver() -> None:
            nonlocal index
            if frames:
                await self._deliver(contact, frames.copy())
                frames.clear()
            if index is not None:
                with self._history.transaction() as db:
                    self._history.update_conversation(db, contact, mailbox_in_index=index)
                index = None

        for _ in range(POLL_STEP_BOUND):
            if reader.needs_answers():
                await deliver()
                if not lookups:
                    raise LocalProtocolError("the mailbox reader waits for no lookup")
                await asyncio.wait(lookups.values(), return_when=asyncio.FIRST_COMPLETED)
                for slot in [s for s, task in lookups.items() if task.done()]:
                    reader.fetched(slot, lookups.pop(slot).result())
                continue
            match reader.next_action():
                case Fetch(slots):
                    for slot in slots:
                        lookups[slot] = asyncio.ensure_future(fetch(slot))
                case Deliver(frame, slot, recovered):
                    if recovered:
                        log.info("mailbox slot %d of %s was filled after it was skipped",
                                 slot, contact.hex()[:12])
                    frames.append(frame)
                    if len(frames) >= DELIVER_BATCH:
                        await deliver()
                case SaveHoles(holes, skipped):
                    await deliver()
                    if skipped is not None:
                        log.info("skipping mailbox slot %d of %s: still empty %.0f s later "
                                 "while later slots are filled", skipped,
                                 contact.hex()[:12], hole_grace)
                    with self._history.transaction() as db:
                        self._history.set_meta(db, _holes_meta(contact),
                                               encode_holes(holes))
                case SaveIndex(after):
                    index = after
                case PollDone(handled, empty):
                    await deliver()
                    if empty is not None:
                        log.debug("mailbox of %s: %d frames read, slot %d empty",
                                  contact.hex()[:12], handled, empty)
                    return handled
        raise LocalProtocolError("a mailbox poll did not finish")  # the machine's bound

    async def _fetch(self, pair: Pair, node: UdpDhtNode, contact: bytes, owner: bytes,
                     slot: int) -> SlotContent:
        key = pair.slot_key(Purpose.MAILBOX, contact, MAILBOX_EPOCH, slot_salt(slot))
        try:
            records = await node.get(key, owner=owner)
        except TimeoutError:
            return Slot.EMPTY
        if not records:
            return Slot.EMPTY
        try:
            return pair.open_record(Purpose.MAILBOX, MAILBOX_EPOCH, records[0])
        except RemoteProtocolError as exc:
            log.info("skipped a bad mailbox slot from %s: %s", contact.hex()[:12], exc)
            return Slot.UNREADABLE
