"""The ``files`` table of the history database: every file transfer, both directions.

Theory of operation: a transfer's row is written when it is offered (ours: before the offer
is queued; the contact's: inside the transaction of the message that carried the offer) and
updated as it goes: accepted, bytes received (at each checkpoint, after the bytes are synced),
complete, or ended with an error. :class:`dhtchat.app.files.FileTransfers` drives it; the
columns added by later versions are added here when an older history is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dhtchat.store.db import Row
from dhtchat.store.history import History, Transaction

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS files (
    id BLOB PRIMARY KEY, contact BLOB NOT NULL, outgoing INTEGER NOT NULL,
    name TEXT NOT NULL, size INTEGER NOT NULL, sha256 BLOB NOT NULL, key BLOB NOT NULL,
    path TEXT NOT NULL, received INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
"""


@dataclass(frozen=True)
class FileEntry:
    """One transfer, as stored."""

    id: bytes
    contact: bytes
    outgoing: bool
    name: str
    size: int
    sha256: bytes
    key: bytes
    path: str
    received: int
    complete: bool
    created: float
    group_id: bytes | None = None  # a file sent to a group
    author: bytes | None = None  # incoming, relayed by the group's admin: who sent it
    error: str | None = None  # the transfer ended without the file (e.g. a hash mismatch)
    accepted: bool = True  # incoming: the user (or the auto-accept limit) said yes
    sealed: bool = True  # incoming: stored as sealed chunks (False: in clear, pre-migration)
    source_id: bytes | None = None  # outgoing: streamed from this received (sealed) file


class FileTable:
    """The ``files`` table of one history database (each write its own transaction, but
    :meth:`add_offer`, which joins the caller's)."""

    def __init__(self, history: History) -> None:
        self._history = history
        with history.transaction() as txn:
            db = txn.connection
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(files)")}
            for column in ("group_id", "author"):
                if column not in columns:  # a history from before group files
                    db.execute(f"ALTER TABLE files ADD COLUMN {column} BLOB")
            if "error" not in columns:  # a history from before failed transfers
                db.execute("ALTER TABLE files ADD COLUMN error TEXT")
            if "accepted" not in columns:  # a history from before consent: all accepted
                db.execute("ALTER TABLE files ADD COLUMN accepted INTEGER NOT NULL DEFAULT 1")
            if "sealed" not in columns:  # a history from before encryption at rest
                db.execute("ALTER TABLE files ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0")
                db.execute("ALTER TABLE files ADD COLUMN source_id BLOB")
            # An outgoing file that is a received one (an older version's relay of a group
            # file): that file is sealed, so the stream must decrypt it as its source.
            db.execute("UPDATE files SET source_id = (SELECT i.id FROM files AS i "
                       "WHERE i.outgoing = 0 AND i.path = files.path) WHERE outgoing = 1 "
                       "AND source_id IS NULL "
                       "AND path IN (SELECT path FROM files WHERE outgoing = 0)")

    # ------------------------------------------------------------------ reading

    def get(self, file_id: bytes) -> FileEntry | None:
        """A transfer by id."""
        row = self._history.connection.execute(_SELECT + " WHERE id = ?",
                                               (file_id,)).fetchone()
        return _entry(row) if row else None

    def all(self) -> list[FileEntry]:
        """Every transfer, newest first."""
        rows = self._history.connection.execute(_SELECT + " ORDER BY created DESC").fetchall()
        return [_entry(r) for r in rows]

    def in_clear(self) -> list[FileEntry]:
        """Received files an older version stored in clear (not sealed)."""
        rows = self._history.connection.execute(
            _SELECT + " WHERE outgoing = 0 AND sealed = 0").fetchall()
        return [_entry(r) for r in rows]

    def pending_offers(self, contact: bytes) -> int:
        """Incoming offers from ``contact`` that wait for the user's accept or decline."""
        row = self._history.connection.execute(
            "SELECT count(*) FROM files WHERE contact = ? AND outgoing = 0 AND accepted = 0 "
            "AND error IS NULL AND complete = 0", (contact,)).fetchone()
        return int(row[0]) if row else 0

    def held_bytes(self, contact: bytes | None = None) -> int:
        """The size of the accepted incoming files not ended by an error (of ``contact``,
        or of everyone)."""
        held = "SELECT coalesce(sum(size), 0) FROM files WHERE outgoing = 0 AND accepted = 1 " \
            "AND error IS NULL"
        db = self._history.connection
        row = db.execute(held).fetchone() if contact is None else \
            db.execute(held + " AND contact = ?", (contact,)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ writing

    def add_outgoing(self, file_id: bytes, contact: bytes, *, name: str, size: int,
                     digest: bytes, key: bytes, path: str, created: float,
                     group_id: bytes | None, author: bytes | None,
                     source_id: bytes | None) -> None:
        """A file we offer."""
        with self._history.transaction() as db:
            db.connection.execute(
                "INSERT INTO files (id, contact, outgoing, name, size, sha256, key, "
                "path, created, group_id, author, source_id) "
                "VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (file_id, contact, name, size, digest, key, path, created, group_id, author,
                 source_id))

    @staticmethod
    def add_offer(db: Transaction, file_id: bytes, contact: bytes, *, name: str, size: int,
                  digest: bytes, key: bytes, path: str, created: float,
                  group_id: bytes | None, author: bytes | None, accepted: bool,
                  error: str | None) -> bool:
        """A contact's offer, inside the transaction of its message (stored sealed); False
        when that file id is stored already."""
        return db.connection.execute(
            "INSERT OR IGNORE INTO files (id, contact, outgoing, name, size, sha256, "
            "key, path, created, group_id, author, accepted, error, sealed) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (file_id, contact, name, size, digest, key, path, created, group_id, author,
             int(accepted), error)).rowcount > 0

    def _update(self, sql: str, parameters: tuple[object, ...]) -> None:
        with self._history.transaction() as db:
            db.connection.execute(sql, parameters)

    def restart_sealed(self, file_id: bytes) -> None:
        """A partial download in clear: fetched again from 0, sealed as it arrives."""
        self._update("UPDATE files SET sealed = 1, received = 0 WHERE id = ?", (file_id,))

    def mark_sealed(self, file_id: bytes, path: str) -> None:
        """A received file is now sealed at ``path``."""
        self._update("UPDATE files SET sealed = 1, path = ? WHERE id = ?", (path, file_id))

    def mark_delivered(self, file_id: bytes) -> None:
        """The contact has the whole (outgoing) file."""
        self._update("UPDATE files SET complete = 1, received = size WHERE id = ?",
                     (file_id,))

    def mark_accepted(self, file_id: bytes) -> None:
        """The user accepted an incoming offer."""
        self._update("UPDATE files SET accepted = 1 WHERE id = ?", (file_id,))

    def end(self, file_id: bytes, reason: str) -> None:
        """The transfer ended (declined, cancelled...); a first reason stays."""
        self._update("UPDATE files SET error = coalesce(error, ?) WHERE id = ?",
                     (reason, file_id))

    def set_received(self, file_id: bytes, received: int) -> None:
        """Checkpoint: the first ``received`` bytes are on disk (synced)."""
        self._update("UPDATE files SET received = ? WHERE id = ?", (received, file_id))

    def fail(self, file_id: bytes, error: str) -> None:
        """The received content is unusable: the transfer ends with ``error``."""
        self._update("UPDATE files SET error = ?, received = 0 WHERE id = ?", (error, file_id))

    def complete(self, file_id: bytes, path: str) -> None:
        """A received file is whole and checked, at ``path``."""
        self._update("UPDATE files SET complete = 1, path = ? WHERE id = ?", (path, file_id))


_SELECT: Final = ("SELECT id, contact, outgoing, name, size, sha256, key, path, received, "
                  "complete, created, group_id, author, error, accepted, sealed, source_id "
                  "FROM files")


def _entry(row: Row) -> FileEntry:
    fid, contact, outgoing, name, size, digest, key, path, received, complete, created, \
        group_id, author, error, accepted, sealed, source_id = row
    return FileEntry(bytes(fid), bytes(contact), bool(outgoing), name, size, bytes(digest),
                     bytes(key), path, received, bool(complete), created,
                     bytes(group_id) if group_id is not None else None,
                     bytes(author) if author is not None else None, error, bool(accepted),
                     bool(sealed), bytes(source_id) if source_id is not None else None)
