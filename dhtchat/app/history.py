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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlcipher3  # type: ignore[import-untyped]  # no stubs; the sqlite3 API

from dhtchat.app.keystore import write_private_file
from dhtchat.core.ids import blake2b_256

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

_CONVERSATION_COLUMNS: Final = frozenset({
    "next_out_seq", "next_in_seq", "acked_out_seq", "mailbox_out_index", "mailbox_in_index",
    "timer", "session"})


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


class History:
    """The encrypted message database of one profile."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            write_private_file(path, b"")
        self._db = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Conversation rows as last read or written through this connection (cleared on a
        # rollback); every write to the table goes through update_conversation/raise_acked.
        self._conversations: dict[bytes, dict[str, Any]] = {}
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
    def db(self) -> Any:
        """The connection, for reads by the modules that keep their tables here (files,
        groups); writes go through :meth:`transaction`."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
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

    def set_meta(self, db: Any, name: str, value: bytes) -> None:
        """Store a blob inside a transaction."""
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    # ------------------------------------------------------------------ conversations

    def conversation(self, contact: bytes) -> dict[str, Any]:
        """The per-contact counters and session (created on first use)."""
        cached = self._conversations.get(contact)
        if cached is not None:
            return dict(cached)
        self._db.execute("INSERT OR IGNORE INTO conversations (contact) VALUES (?)", (contact,))
        row = self._db.execute(
            "SELECT next_out_seq, next_in_seq, acked_out_seq, mailbox_out_index, "
            "mailbox_in_index, timer, session FROM conversations WHERE contact = ?", (contact,)
        ).fetchone()
        keys = ("next_out_seq", "next_in_seq", "acked_out_seq", "mailbox_out_index",
                "mailbox_in_index", "timer", "session")
        values = dict(zip(keys, row, strict=True))
        self._conversations[bytes(contact)] = values
        return dict(values)

    def update_conversation(self, db: Any, contact: bytes, **values: Any) -> None:
        """Set counters/session of a conversation inside a transaction."""
        unknown = set(values) - _CONVERSATION_COLUMNS
        if unknown:
            raise ValueError(f"unknown conversation columns {sorted(unknown)}")
        self._conversations.pop(contact, None)
        assignments = ", ".join(f"{name} = ?" for name in values)
        db.execute(f"UPDATE conversations SET {assignments} WHERE contact = ?",
                   (*values.values(), contact))

    def raise_acked(self, db: Any, contact: bytes, through: int) -> None:
        """Record inside a transaction that the contact acknowledged up to ``through``."""
        self._conversations.pop(contact, None)
        db.execute("UPDATE conversations SET acked_out_seq = max(acked_out_seq, ?) "
                   "WHERE contact = ?", (through, contact))

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

    def history(self, contact: bytes, limit: int) -> list[StoredMessage]:
        """The last ``limit`` messages with a contact, oldest first (incoming ones only once
        they are in order)."""
        rows = self._db.execute(
            _SELECT + " WHERE contact = ? AND (outgoing = 1 OR seq < (SELECT next_in_seq FROM "
            "conversations WHERE contact = ?)) AND (expire_at IS NULL OR expire_at > ?) "
            "AND text != '' AND group_id IS NULL "
            "ORDER BY coalesce(received_at, sent_at) DESC, seq DESC LIMIT ?",
            (contact, contact, time.time(), limit)).fetchall()
        return [_message(r) for r in reversed(rows)]

    def group_history(self, group_id: bytes, limit: int) -> list[StoredMessage]:
        """The last ``limit`` messages of a group, oldest first."""
        rows = self._db.execute(
            _SELECT + " WHERE group_id = ? AND text != '' AND (outgoing = 1 OR seq < "
            "(SELECT next_in_seq FROM conversations c WHERE c.contact = m.contact)) "
            "ORDER BY coalesce(received_at, sent_at) DESC LIMIT ?",
            (group_id, limit)).fetchall()
        return [_message(r) for r in reversed(rows)]

    def unfetched(self, limit: int = 1000) -> list[StoredMessage]:
        """Incoming messages in order that ``receive`` has not returned yet."""
        rows = self._db.execute(
            _SELECT + " JOIN conversations c ON c.contact = m.contact WHERE m.outgoing = 0 "
            "AND m.fetched = 0 AND m.seq < c.next_in_seq ORDER BY m.contact, m.seq "
            "LIMIT ?", (limit,)).fetchall()
        return [_message(r) for r in rows]

    def mark_fetched(self, ids: list[bytes]) -> None:
        """Remember that ``receive`` returned these messages; a disappearing message's timer
        starts now (as in Signal: when it is read)."""
        stamp = time.time()
        with self.transaction() as db:
            db.executemany("UPDATE messages SET fetched = 1, read = 1, expire_at = CASE WHEN "
                           "timer > 0 THEN ? + timer ELSE NULL END WHERE id = ?",
                           [(stamp, i) for i in ids])

    def delete_expired(self, now: float) -> int:
        """Delete disappearing messages whose time is up; returns how many."""
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM messages WHERE expire_at IS NOT NULL AND "
                                "expire_at <= ?", (now,))
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


_SELECT = ("SELECT m.id, m.contact, m.outgoing, m.seq, m.sent_at, m.received_at, m.text, "
           "m.delivered, m.read, m.group_id, m.author, m.kind FROM messages m")


def _message(row: tuple[Any, ...]) -> StoredMessage:
    mid, contact, outgoing, seq, sent_at, received_at, text, delivered, read, group, author, \
        kind = row
    return StoredMessage(bytes(mid), bytes(contact), bool(outgoing), seq, sent_at, received_at,
                         text, bool(delivered), bool(read),
                         bytes(group) if group is not None else None,
                         bytes(author) if author is not None else None, kind)


def now() -> float:
    """Wall-clock time for message timestamps."""
    return time.time()
