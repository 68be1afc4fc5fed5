"""Message history, outbox and ratchet state in one SQLCipher database (``messages.db``).

The key is derived from the identity seed, which is itself stored encrypted under the
passphrase (Argon2id, see keystore): without the passphrase the file is unreadable
(SQLCipher 4: AES-256-CBC pages with HMAC-SHA512, a per-file salt).

Everything that must change together changes in one transaction: a message is in the outbox
before ``send`` returns; a frame's ciphertext is stored with the ratchet state that produced
it; a received message is stored with the ratchet state that decrypted it and the new
in-order position. A crash or ``kill -9`` between any two statements therefore loses nothing
and duplicates nothing (the transport layer re-sends unacknowledged frames and the receiver
drops sequence numbers it already has).

Durability against power loss is a barrier, not a cost of every commit: the database runs
``journal_mode = WAL`` with ``synchronous = NORMAL`` (a commit is in the log in the OS cache:
safe against a crash of the process, not yet of the machine), and :meth:`History.durable`
waits for one ``fsync`` of the log in a worker thread that covers every commit before it,
shared by all who wait meanwhile. Whatever leaves the machine on the strength of a commit
waits for it: ``send`` returns, a frame is transmitted, an ack is sent only after the
barrier (the messenger and streams call it), so after a power loss no peer holds a frame
whose ratchet state or an ack whose messages this side lost. The event loop never blocks on
the disk (one fsync here takes ~1.5 ms), so a burst of commits costs one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import sqlcipher3  # type: ignore[import-untyped]  # no stubs; the sqlite3 API

from dhtchat.core.ids import blake2b_256
from dhtchat.store.db import Connection, Row
from dhtchat.store.private import write_private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    contact BLOB PRIMARY KEY,
    next_out_seq INTEGER NOT NULL DEFAULT 1,
    next_in_seq INTEGER NOT NULL DEFAULT 1,
    acked_out_seq INTEGER NOT NULL DEFAULT 0,
    mailbox_out_index INTEGER NOT NULL DEFAULT 0,
    mailbox_in_index INTEGER NOT NULL DEFAULT 0,
    timer INTEGER NOT NULL DEFAULT 0,
    session TEXT);
CREATE TABLE IF NOT EXISTS messages (
    id BLOB PRIMARY KEY,
    contact BLOB NOT NULL,
    outgoing INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    sent_at REAL NOT NULL,
    received_at REAL,
    text TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    read INTEGER NOT NULL DEFAULT 0,
    fetched INTEGER NOT NULL DEFAULT 0,
    timer INTEGER NOT NULL DEFAULT 0,
    expire_at REAL,
    group_id BLOB,
    author BLOB,
    kind TEXT NOT NULL DEFAULT 'text',
    UNIQUE (contact, outgoing, seq));
CREATE INDEX IF NOT EXISTS messages_by_contact ON messages (contact, outgoing, seq);
CREATE INDEX IF NOT EXISTS messages_unfetched ON messages (contact, seq)
    WHERE outgoing = 0 AND fetched = 0;
CREATE INDEX IF NOT EXISTS messages_expiring ON messages (expire_at)
    WHERE expire_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox (
    contact BLOB NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    frame BLOB,
    mailbox_index INTEGER,
    mailbox_stored INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    PRIMARY KEY (contact, seq));
CREATE TABLE IF NOT EXISTS group_copies (
    contact BLOB NOT NULL,
    seq INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    PRIMARY KEY (contact, seq));
CREATE INDEX IF NOT EXISTS group_copies_by_message ON group_copies (message_id);
"""


# What a history row is: a message someone typed, a notice the software wrote (a timer
# change, a group's new member list) or a file offer. Only "text" rows hold what a contact
# typed, so only they can be mistaken for nothing else (see the CLI's printing).
MESSAGE_KINDS: Final = ("text", "notice", "file")

MailboxSlot = tuple[int, int]
"""A frame's first mailbox slot and the frame's length (to overwrite it with a tombstone)."""


class HistoryLocked(Exception):
    """The database cannot be opened with this key (wrong passphrase or not a history)."""


@dataclass(frozen=True)
class StoredMessage:
    """One message of the history."""

    id: bytes
    contact: bytes
    outgoing: bool
    seq: int
    sent_at: float
    received_at: float | None
    text: str
    delivered: bool
    read: bool
    group_id: bytes | None = None
    author: bytes | None = None  # a group message relayed by the admin: who wrote it
    kind: str = "text"  # one of MESSAGE_KINDS


@dataclass(frozen=True)
class ConversationRow:
    """The per-contact counters and ratchet session (a row of ``conversations``)."""

    next_out_seq: int  # the sequence number of our next message to the contact
    next_in_seq: int  # the contact's next message in order (all before it are stored)
    acked_out_seq: int  # the contact acknowledged our messages up to this one
    mailbox_out_index: int  # the next free slot of our mailbox for the contact
    mailbox_in_index: int  # the contact's mailbox is read up to this slot
    timer: int  # the disappearing-message timer of the conversation (seconds, 0: off)
    session: str | None  # the ratchet state (JSON), None before the first message


class NewOutboxRow(NamedTuple):
    """An outbox entry to insert (:meth:`Transaction.add_outbox_rows`)."""

    contact: bytes
    seq: int
    payload: bytes
    frame: bytes | None  # None: encrypted later
    created: float


class NewOutgoingRow(NamedTuple):
    """A history row of our message to a contact (:meth:`Transaction.add_outgoing_rows`)."""

    id: bytes
    contact: bytes
    seq: int
    sent_at: float
    text: str
    timer: int
    kind: str


@dataclass(frozen=True)
class OutboxEntry:
    """A sequenced payload not yet acknowledged by the contact."""

    contact: bytes
    seq: int
    payload: bytes
    frame: bytes | None
    mailbox_index: int | None
    mailbox_stored: bool = False


def history_key(identity_seed: bytes) -> bytes:
    """The 32-byte SQLCipher key for an identity."""
    return blake2b_256(b"dhtchat/history-key/v1", identity_seed)


class Transaction:
    """The writes of one open ``BEGIN IMMEDIATE`` transaction on the history database
    (yielded by :meth:`History.transaction`): everything written through it commits
    together, or nothing does."""

    def __init__(self, connection: Connection,
                 conversations: dict[bytes, ConversationRow]) -> None:
        """``conversations``: the history's cached rows, dropped here when written."""
        self.connection = connection
        """The connection, for the store's table modules (files, groups, calls, events)."""
        self._conversations = conversations

    # ------------------------------------------------------------------ meta

    def set_meta(self, name: str, value: bytes) -> None:
        """Store a named blob (prekey store, mailbox holes, file limits...)."""
        self.connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # ------------------------------------------------------------------ conversations

    def update_conversation(self, contact: bytes, *, next_out_seq: int | None = None,
                            next_in_seq: int | None = None, acked_out_seq: int | None = None,
                            mailbox_out_index: int | None = None,
                            mailbox_in_index: int | None = None, timer: int | None = None,
                            session: str | None = None) -> None:
        """Set some counters and/or the session of a conversation (None: unchanged)."""
        values = {"next_out_seq": next_out_seq, "next_in_seq": next_in_seq,
                  "acked_out_seq": acked_out_seq, "mailbox_out_index": mailbox_out_index,
                  "mailbox_in_index": mailbox_in_index, "timer": timer, "session": session}
        changed = {name: value for name, value in values.items() if value is not None}
        if not changed:
            return
        self._conversations.pop(contact, None)
        assignments = ", ".join(f"{name} = ?" for name in changed)
        self.connection.execute(f"UPDATE conversations SET {assignments} WHERE contact = ?",
                                (*changed.values(), contact))

    def clear_session(self, contact: bytes) -> None:
        """Forget the ratchet session with a contact (the next message starts a new one)."""
        self._conversations.pop(contact, None)
        self.connection.execute("UPDATE conversations SET session = NULL WHERE contact = ?",
                                (contact,))

    # ------------------------------------------------------------------ messages

    def add_outgoing_rows(self, rows: list[NewOutgoingRow]) -> None:
        """Our messages to contacts (one statement for a batch)."""
        self.connection.executemany(
            "INSERT INTO messages (id, contact, outgoing, seq, sent_at, text, timer, "
            "expire_at, kind) VALUES (?, ?, 1, ?, ?, ?, ?, NULL, ?)", rows)

    def add_group_outgoing(self, message_id: bytes, group_id: bytes, sent_at: float,
                           text: str, kind: str = "text") -> None:
        """Our message (or file offer) to a group: one row, fetched already, its copies to
        the members in the outbox (:meth:`add_group_copy`)."""
        self.connection.execute(
            "INSERT INTO messages (id, contact, outgoing, seq, sent_at, text, group_id, "
            "fetched, kind) VALUES (?, ?, 1, ?, ?, ?, ?, 1, ?)",
            (message_id, group_id, int(sent_at * 1e6), sent_at, text, group_id, kind))

    def add_group_copy(self, contact: bytes, seq: int, message_id: bytes) -> None:
        """The copy of group message ``message_id`` queued to ``contact`` as ``seq`` (the
        group row is delivered once every copy is acknowledged)."""
        self.connection.execute("INSERT INTO group_copies VALUES (?, ?, ?)",
                                (contact, seq, message_id))

    def add_incoming(self, message_id: bytes, contact: bytes, seq: int, sent_at: float,
                     received_at: float, text: str, timer: int, group_id: bytes | None,
                     author: bytes | None, kind: str) -> None:
        """A contact's message (ignored when that id is stored already); a message without
        text is stored as fetched (``receive`` never returns it)."""
        self.connection.execute(
            "INSERT OR IGNORE INTO messages (id, contact, outgoing, seq, sent_at, "
            "received_at, text, timer, group_id, fetched, author, kind) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, contact, seq, sent_at, received_at, text, timer, group_id,
             int(text == ""), author, kind))

    def mark_read(self, contact: bytes, after: int, through: int) -> None:
        """The contact read our messages ``after < seq <= through``."""
        self.connection.execute(
            "UPDATE messages SET read = 1 WHERE contact = ? AND outgoing = 1 "
            "AND seq > ? AND seq <= ?", (contact, after, through))

    # ------------------------------------------------------------------ outbox

    def add_outbox(self, contact: bytes, seq: int, payload: bytes, created: float) -> None:
        """A sequenced payload for the contact, not yet encrypted."""
        self.connection.execute(
            "INSERT INTO outbox (contact, seq, payload, created) VALUES (?, ?, ?, ?)",
            (contact, seq, payload, created))

    def add_outbox_rows(self, rows: list[NewOutboxRow]) -> None:
        """Sequenced payloads (some with their frame already) for contacts, in one
        statement for a batch."""
        self.connection.executemany(
            "INSERT INTO outbox (contact, seq, payload, frame, created) VALUES (?, ?, ?, ?, ?)",
            rows)

    def set_frames_of(self, frames: Mapping[tuple[bytes, int], bytes]) -> None:
        """The encrypted frames of outbox entries of several contacts, by (contact, seq)."""
        self.connection.executemany(
            "UPDATE outbox SET frame = ? WHERE contact = ? AND seq = ?",
            [(frame, contact, seq) for (contact, seq), frame in frames.items()])

    def set_frames(self, contact: bytes, frames: Iterable[tuple[int, bytes]]) -> None:
        """The encrypted frames of outbox entries, as (seq, frame)."""
        self.connection.executemany(
            "UPDATE outbox SET frame = ? WHERE contact = ? AND seq = ?",
            [(frame, contact, seq) for seq, frame in frames])

    def set_mailbox_slot(self, contact: bytes, seq: int, index: int) -> None:
        """The first mailbox slot reserved for an outbox entry's frame."""
        self.connection.execute(
            "UPDATE outbox SET mailbox_index = ? WHERE contact = ? AND seq = ?",
            (index, contact, seq))

    def mark_mailbox_stored(self, contact: bytes, seq: int) -> None:
        """An outbox entry's frame is in the mailbox."""
        self.connection.execute(
            "UPDATE outbox SET mailbox_stored = 1 WHERE contact = ? AND seq = ?",
            (contact, seq))

    def acknowledge(self, contact: bytes, after: int, through: int,
                    now: float) -> list[MailboxSlot]:
        """The contact acknowledged our messages up to ``through`` (those up to ``after``
        are marked delivered already): their outbox entries go, their messages (and group
        messages whose every copy is acknowledged) are delivered. Returns the mailbox slots
        the entries held."""
        db = self.connection
        tombstones = [(int(row[0]), int(row[1])) for row in db.execute(
            "SELECT mailbox_index, length(frame) FROM outbox WHERE contact = ? AND "
            "seq <= ? AND mailbox_index IS NOT NULL", (contact, through))]
        db.execute("DELETE FROM outbox WHERE contact = ? AND seq <= ?", (contact, through))
        # A disappearing message's clock starts on our side once it is delivered
        # (it must not vanish, with its delivery mark, while still queued).
        db.execute("UPDATE messages SET delivered = 1, expire_at = CASE WHEN timer > 0 "
                   "THEN ? + timer ELSE expire_at END WHERE contact = ? AND "
                   "outgoing = 1 AND seq > ? AND seq <= ? AND delivered = 0",
                   (now, contact, after, through))
        self._conversations.pop(contact, None)
        db.execute("UPDATE conversations SET acked_out_seq = max(acked_out_seq, ?) "
                   "WHERE contact = ?", (through, contact))
        groups = [bytes(row[0]) for row in db.execute(
            "SELECT DISTINCT message_id FROM group_copies WHERE contact = ? AND "
            "seq <= ?", (contact, through))]
        db.execute("DELETE FROM group_copies WHERE contact = ? AND seq <= ?",
                   (contact, through))
        for message_id in groups:
            if db.execute("SELECT 1 FROM group_copies WHERE message_id = ?",
                          (message_id,)).fetchone() is None:
                db.execute("UPDATE messages SET delivered = 1 WHERE id = ?", (message_id,))
        return tombstones

    def forget_frames(self, contact: bytes) -> list[MailboxSlot]:
        """Forget the frames (and mailbox slots) of every outbox entry of the contact;
        returns the slots they held."""
        old = [(int(row[0]), int(row[1])) for row in self.connection.execute(
            "SELECT mailbox_index, length(frame) FROM outbox WHERE contact = ? AND "
            "mailbox_index IS NOT NULL", (contact,))]
        self.connection.execute("UPDATE outbox SET frame = NULL, mailbox_index = NULL, "
                                "mailbox_stored = 0 WHERE contact = ?", (contact,))
        return old


class History:
    """The encrypted message database of one profile."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            write_private_file(path, b"")
        self._db: Connection = sqlcipher3.connect(str(path), isolation_level=None,
                                                  check_same_thread=False)
        # Conversation rows as last read or written through this connection (cleared on a
        # rollback); every write to the table goes through a Transaction, which drops the
        # row it changes.
        self._conversations: dict[bytes, ConversationRow] = {}
        self._log_path = f"{path}-wal"
        self._log_fd: int | None = None  # the write-ahead log, opened for the barrier
        self._commits = 0  # transactions committed through this object...
        self._synced = 0  # ... and how many of them the last fsync covered
        self._syncing: asyncio.Future[None] | None = None
        self._db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        try:
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as exc:
            self._db.close()
            raise HistoryLocked(f"{path} cannot be opened with this identity's key") from exc
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # + durable(): see the module doc
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if "author" not in columns:  # a history from before group relaying
            self._db.execute("ALTER TABLE messages ADD COLUMN author BLOB")
        if "kind" not in columns:  # a history from before typed notices: rows stay "text"
            # (an old notice cannot be told from a contact's text that imitates one)
            self._db.execute("ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL "
                             "DEFAULT 'text'")

    @property
    def connection(self) -> Connection:
        """The connection, for reads by the store's modules that keep their tables here
        (files, groups, calls, events); writes go through :meth:`transaction`."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield Transaction(self._db, self._conversations)
        except BaseException:
            self._db.execute("ROLLBACK")
            self._conversations.clear()  # they may hold what was rolled back
            raise
        self._db.execute("COMMIT")
        self._commits += 1

    async def durable(self) -> None:
        """Return once every transaction committed before the call is on disk: one fsync
        of the write-ahead log off the event loop, shared by every caller meanwhile."""
        target = self._commits
        while self._synced < target:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        covered = self._commits  # what is in the log now (in the OS cache)
        try:
            if self._log_fd is None:
                self._log_fd = os.open(self._log_path, os.O_RDONLY | os.O_CLOEXEC)
            await asyncio.to_thread(os.fsync, self._log_fd)
        except OSError:
            # No log to sync or a failed fsync: the slow way, in the loop (a checkpoint
            # syncs the log, copies it into the database and syncs that).
            with contextlib.suppress(sqlcipher3.ProgrammingError):  # closed: closing did it
                self._db.execute("PRAGMA wal_checkpoint(FULL)")
        finally:
            self._syncing = None
        self._synced = max(self._synced, covered)

    # ------------------------------------------------------------------ meta

    def get_meta(self, name: str) -> bytes | None:
        """A stored blob (prekey store...)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def set_meta(self, db: Transaction, name: str, value: bytes) -> None:
        """Store a blob inside a transaction (:meth:`Transaction.set_meta`)."""
        db.set_meta(name, value)

    # ------------------------------------------------------------------ conversations

    def conversation(self, contact: bytes) -> ConversationRow:
        """The per-contact counters and session (created on first use)."""
        cached = self._conversations.get(contact)
        if cached is not None:
            return cached
        self._db.execute("INSERT OR IGNORE INTO conversations (contact) VALUES (?)", (contact,))
        row = self._db.execute(
            "SELECT next_out_seq, next_in_seq, acked_out_seq, mailbox_out_index, "
            "mailbox_in_index, timer, session FROM conversations WHERE contact = ?", (contact,)
        ).fetchone()
        assert row is not None  # inserted just before
        next_out, next_in, acked, mailbox_out, mailbox_in, timer, session = row
        values = ConversationRow(int(next_out), int(next_in), int(acked), int(mailbox_out),
                                 int(mailbox_in), int(timer),
                                 str(session) if session is not None else None)
        self._conversations[bytes(contact)] = values
        return values

    def update_conversation(self, db: Transaction, contact: bytes, *,
                            next_out_seq: int | None = None, next_in_seq: int | None = None,
                            acked_out_seq: int | None = None,
                            mailbox_out_index: int | None = None,
                            mailbox_in_index: int | None = None, timer: int | None = None,
                            session: str | None = None) -> None:
        """Set counters/session of a conversation inside a transaction (None: unchanged;
        :meth:`Transaction.update_conversation`)."""
        db.update_conversation(contact, next_out_seq=next_out_seq, next_in_seq=next_in_seq,
                               acked_out_seq=acked_out_seq,
                               mailbox_out_index=mailbox_out_index,
                               mailbox_in_index=mailbox_in_index, timer=timer, session=session)

    def incoming_ahead(self, contact: bytes, next_in_seq: int) -> list[int]:
        """The sequence numbers of the contact's stored messages from ``next_in_seq`` on
        (received out of order, waiting for a gap to fill)."""
        return [int(row[0]) for row in self._db.execute(
            "SELECT seq FROM messages WHERE contact = ? AND outgoing = 0 AND seq >= ?",
            (contact, next_in_seq))]

    def forget_contact(self, contact: bytes, *, history: bool) -> int:
        """A removed contact: forget the pair's ratchet session and the frames encrypted
        under it (queued messages stay, to go out on a new session should they be added
        again); with ``history`` also the conversation's messages. Returns how many messages
        were deleted."""
        with self.transaction() as db:
            db.clear_session(contact)
            db.forget_frames(contact)
            if not history:
                return 0
            cursor = self._db.execute("DELETE FROM messages WHERE contact = ?", (contact,))
            return int(cursor.rowcount)

    # ------------------------------------------------------------------ messages

    def message(self, message_id: bytes) -> StoredMessage | None:
        """A message by id."""
        row = self._db.execute(_SELECT + " WHERE id = ?", (message_id,)).fetchone()
        return _message(row) if row else None

    def has_incoming(self, contact: bytes, seq: int) -> bool:
        """Whether the contact's message ``seq`` is stored."""
        return self._db.execute(
            "SELECT 1 FROM messages WHERE contact = ? AND outgoing = 0 AND seq = ?",
            (contact, seq)).fetchone() is not None

    def history(self, contact: bytes, limit: int,
                before: bytes | None = None) -> list[StoredMessage]:
        """The last ``limit`` messages with a contact, oldest first (incoming ones only once
        they are in order); with ``before`` (a message id), the last ones older than it."""
        older, args = self._older_than(before)
        rows = self._db.execute(
            _SELECT + " WHERE contact = ? AND (outgoing = 1 OR seq < (SELECT next_in_seq FROM "
            "conversations WHERE contact = ?)) AND (expire_at IS NULL OR expire_at > ?) "
            "AND text != '' AND group_id IS NULL" + older +
            " ORDER BY coalesce(received_at, sent_at) DESC, seq DESC LIMIT ?",
            (contact, contact, time.time(), *args, limit)).fetchall()
        return [_message(r) for r in reversed(rows)]

    def search(self, only: ConversationRef, text: str, limit: int) -> list[StoredMessage]:
        """The last ``limit`` messages of one conversation whose text contains ``text``
        (case-insensitive for ASCII letters), newest first; what ``history`` would show."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = "group_id = ?" if only.group is not None \
            else "m.contact = ? AND group_id IS NULL"
        key = only.group if only.group is not None else only.contact
        rows = self._db.execute(
            _SELECT + " WHERE " + where + " AND text LIKE ? ESCAPE '\\' AND text != '' "
            "AND kind != 'notice' AND (expire_at IS NULL OR expire_at > ?) AND (outgoing = 1 OR "
            "seq < (SELECT next_in_seq FROM conversations c WHERE c.contact = m.contact)) "
            "ORDER BY coalesce(received_at, sent_at) DESC, seq DESC LIMIT ?",
            (key, pattern, time.time(), limit)).fetchall()
        return [_message(r) for r in rows]

    def _older_than(self, before: bytes | None) -> tuple[str, tuple[float, int] | tuple[()]]:
        """The SQL condition (and its arguments) for "shown above message ``before``" in
        the history's order (local time, then seq); none without ``before``."""
        if before is None:
            return "", ()
        row = self._db.execute("SELECT coalesce(received_at, sent_at), seq FROM messages "
                               "WHERE id = ?", (before,)).fetchone()
        if row is None:
            return "", ()
        return " AND (coalesce(received_at, sent_at), seq) < (?, ?)", (row[0], row[1])

    def group_history(self, group_id: bytes, limit: int,
                      before: bytes | None = None) -> list[StoredMessage]:
        """The last ``limit`` messages of a group, oldest first (with ``before``, the last
        ones older than that message)."""
        older, args = self._older_than(before)
        rows = self._db.execute(
            _SELECT + " WHERE group_id = ? AND text != '' AND (outgoing = 1 OR seq < "
            "(SELECT next_in_seq FROM conversations c WHERE c.contact = m.contact))" + older +
            " ORDER BY coalesce(received_at, sent_at) DESC, seq DESC LIMIT ?",
            (group_id, *args, limit)).fetchall()
        return [_message(r) for r in reversed(rows)]

    def unfetched(self, limit: int = 1000,
                  only: ConversationRef | None = None) -> list[StoredMessage]:
        """Incoming messages in order that ``receive`` has not returned yet (of the
        conversation ``only``, else of every one)."""
        where = ""
        args: tuple[bytes | None, ...] = ()
        if only is not None and only.group is not None:
            where, args = " AND m.group_id = ?", (only.group,)
        elif only is not None:
            where, args = " AND m.contact = ? AND m.group_id IS NULL", (only.contact,)
        rows = self._db.execute(
            _SELECT + " JOIN conversations c ON c.contact = m.contact WHERE m.outgoing = 0 "
            "AND m.fetched = 0 AND m.seq < c.next_in_seq" + where +
            " ORDER BY m.contact, m.seq LIMIT ?", (*args, limit)).fetchall()
        return [_message(r) for r in rows]

    def mark_fetched(self, ids: list[bytes]) -> None:
        """Remember that ``receive`` returned these messages; a disappearing message's timer
        starts now (as in Signal: when it is read)."""
        stamp = time.time()
        with self.transaction() as db:
            db.connection.executemany(
                "UPDATE messages SET fetched = 1, read = 1, expire_at = CASE WHEN "
                "timer > 0 THEN ? + timer ELSE NULL END WHERE id = ?",
                [(stamp, i) for i in ids])

    def delete_expired(self, now: float) -> int:
        """Delete disappearing messages whose time is up; returns how many."""
        with self.transaction() as db:
            cursor = db.connection.execute(
                "DELETE FROM messages WHERE expire_at IS NOT NULL AND expire_at <= ?", (now,))
            return int(cursor.rowcount)

    # ------------------------------------------------------------------ outbox

    def has_outbox(self, contact: bytes) -> bool:
        """Whether ``contact`` has an unacknowledged entry (without reading the entries)."""
        return self._db.execute("SELECT 1 FROM outbox WHERE contact = ? LIMIT 1",
                                (contact,)).fetchone() is not None

    def outbox(self, contact: bytes | None = None) -> list[OutboxEntry]:
        """Unacknowledged entries, in sequence order."""
        query = "SELECT contact, seq, payload, frame, mailbox_index, mailbox_stored FROM outbox"
        params: tuple[bytes, ...] = ()
        if contact is not None:
            query += " WHERE contact = ?"
            params = (contact,)
        rows = self._db.execute(query + " ORDER BY contact, seq", params).fetchall()
        return [OutboxEntry(bytes(c), s, bytes(p), bytes(f) if f is not None else None, m,
                            bool(st))
                for c, s, p, f, m, st in rows]

    def close(self) -> None:
        """Close the database (closing checkpoints the log and syncs it)."""
        self._db.close()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


@dataclass(frozen=True)
class ConversationRef:
    """One conversation: with a contact (1:1 messages only) or of a group."""

    contact: bytes | None = None
    group: bytes | None = None


_SELECT = ("SELECT m.id, m.contact, m.outgoing, m.seq, m.sent_at, m.received_at, m.text, "
           "m.delivered, m.read, m.group_id, m.author, m.kind FROM messages m")


def _message(row: Row) -> StoredMessage:
    mid, contact, outgoing, seq, sent_at, received_at, text, delivered, read, group, author, \
        kind = row
    return StoredMessage(bytes(mid), bytes(contact), bool(outgoing), seq, sent_at, received_at,
                         text, bool(delivered), bool(read),
                         bytes(group) if group is not None else None,
                         bytes(author) if author is not None else None, kind)


def now() -> float:
    """Wall-clock time for message timestamps."""
    return time.time()
