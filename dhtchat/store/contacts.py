"""The contact list of a profile (``contacts.sqlite``, mode 0600, SQLCipher).

The file is encrypted at rest like the history (SQLCipher 4) under :func:`contacts_key`,
derived from the identity seed, which is itself stored under the passphrase (Argon2id): names,
user ids and request messages are unreadable without the passphrase. A contact list written in
clear by an older version is converted in place when it is first opened with a key.

States: ``incoming`` (a request waits for my answer), ``outgoing`` (I asked, no answer yet),
``accepted``, ``refused`` (I said no; a new request from them shows up again) and ``blocked``
(everything from them is dropped, silently, forever).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import sqlcipher3  # type: ignore[import-untyped]  # no stubs; the sqlite3 API

from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.ids import blake2b_256
from dhtchat.core.names import name_skeleton
from dhtchat.store.db import Connection, Row
from dhtchat.store.private import write_private_file

SEEN_RETENTION: Final = 15 * 86400  # longer than a contact request can live in the DHT
TRIM_PERIOD: Final = 3600.0  # seen envelopes are trimmed at most this often
MAX_INCOMING: Final = 256  # pending incoming requests kept; the oldest go first
ENTRY_CACHE: Final = 4096  # contact entries kept in memory (the list is cleared when full)

ContactState = Literal["incoming", "outgoing", "accepted", "refused", "blocked"]
STATES: Final = ("incoming", "outgoing", "accepted", "refused", "blocked")


@dataclass(frozen=True)
class ContactEntry:
    """One row of the contact list."""

    public_key: bytes
    name: str
    state: ContactState
    message: str
    created: float
    updated: float


_PLAIN_HEADER: Final = b"SQLite format 3\x00"


def contacts_key(identity_seed: bytes) -> bytes:
    """The 32-byte SQLCipher key of the contact list for an identity."""
    return blake2b_256(b"dhtchat/contacts-key/v1", identity_seed)


def _open_encrypted(path: Path, key: bytes) -> Connection:
    """A SQLCipher connection to ``path`` (converting a clear contact list first)."""
    db: Connection = sqlcipher3.connect(str(path))
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlcipher3.DatabaseError:
        db.close()
    with open(path, "rb") as handle:
        header = handle.read(len(_PLAIN_HEADER))
    if header != _PLAIN_HEADER:
        raise LocalProtocolError(f"{path} cannot be opened with this identity's key")
    # A contact list from before encryption: export it into an encrypted copy, then swap.
    tmp = path.with_name(f".{path.name}.encrypting")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, b"")
    plain = sqlcipher3.connect(str(path))
    try:
        plain.execute("ATTACH DATABASE ? AS enc KEY ?", (str(tmp), f"x'{key.hex()}'"))
        plain.execute("SELECT sqlcipher_export('enc')").fetchone()
        plain.execute("DETACH DATABASE enc")
    finally:
        plain.close()
    os.replace(tmp, path)
    return _open_encrypted(path, key)


class ContactStore:
    """SQLite-backed contact list (encrypted when a ``key`` is given, as the daemon does;
    without one, a clear file for tools and tests)."""

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            write_private_file(path, b"")
        self._db: Connection = sqlite3.connect(path) if key is None else _open_encrypted(path, key)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS contacts (
                public_key BLOB PRIMARY KEY,
                name TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN
                    ('incoming','outgoing','accepted','refused','blocked')),
                message TEXT NOT NULL DEFAULT '',
                created REAL NOT NULL,
                updated REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS seen_envelopes (
                envelope BLOB PRIMARY KEY, seen REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS seen_envelopes_by_time ON seen_envelopes(seen);
            CREATE TABLE IF NOT EXISTS verified (
                public_key BLOB PRIMARY KEY, name TEXT NOT NULL, verified REAL NOT NULL,
                fingerprint TEXT NOT NULL DEFAULT '');
            """
        )
        # Older versions keyed seen envelopes by owner + signature[:16]; the request id is
        # the owner (the one-time envelope key): keep what was refused refused.
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO seen_envelopes (envelope, seen) "
                             "SELECT substr(envelope, 1, 32), seen FROM seen_envelopes "
                             "WHERE length(envelope) = 48")
            self._db.execute("DELETE FROM seen_envelopes WHERE length(envelope) = 48")
        self._trimmed = 0.0
        # Entries by key, read once: the daemon's connection is the only writer while it
        # runs (the profile lock), and every write below clears the copy it changes.
        self._entries: dict[bytes, ContactEntry | None] = {}
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(verified)")}
        if "fingerprint" not in columns:  # a contact list from before pinning
            with self._db:
                self._db.execute("ALTER TABLE verified ADD COLUMN fingerprint TEXT NOT NULL "
                                 "DEFAULT ''")

    @property
    def connection(self) -> Connection:
        """The connection, for a backup (:mod:`dhtchat.store.backup`) while no daemon runs."""
        return self._db

    def get(self, public_key: bytes) -> ContactEntry | None:
        """The entry for a key, if any."""
        if public_key in self._entries:
            return self._entries[public_key]
        row = self._db.execute(
            "SELECT public_key, name, state, message, created, updated FROM contacts "
            "WHERE public_key = ?", (public_key,)).fetchone()
        entry = _entry(row) if row else None
        if len(self._entries) >= ENTRY_CACHE:
            self._entries.clear()
        self._entries[bytes(public_key)] = entry
        return entry

    def all(self, state: ContactState | None = None) -> list[ContactEntry]:
        """All entries (optionally of one state), by name."""
        query = "SELECT public_key, name, state, message, created, updated FROM contacts"
        params: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            params = (state,)
        return [_entry(row) for row in self._db.execute(query + " ORDER BY name", params)]

    def by_name(self, name: str) -> list[ContactEntry]:
        """Entries whose display name is ``name`` (case-insensitive)."""
        rows = self._db.execute(
            "SELECT public_key, name, state, message, created, updated FROM contacts "
            "WHERE lower(name) = lower(?)", (name,)).fetchall()
        return [_entry(row) for row in rows]

    def put(self, public_key: bytes, *, name: str, state: ContactState, message: str = "",
            now: float | None = None) -> ContactEntry:
        """Insert or update an entry (the name is kept when ``name`` is empty)."""
        stamp = time.time() if now is None else now
        self._entries.pop(public_key, None)
        with self._db:
            self._db.execute(
                """INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(public_key) DO UPDATE SET
                     name = CASE WHEN excluded.name = '' THEN name ELSE excluded.name END,
                     state = excluded.state, message = excluded.message,
                     updated = excluded.updated""",
                (public_key, name, state, message, stamp, stamp),
            )
        entry = self.get(public_key)
        assert entry is not None
        return entry

    def mark_verified(self, public_key: bytes, name: str, now: float,
                      fingerprint: str = "") -> None:
        """The user compared the SAS of a call with this contact and it matched
        (``fingerprint``: the contact's DTLS fingerprint in that call, pinned)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?)",
                             (public_key, name, now, fingerprint))

    def verified_fingerprint(self, public_key: bytes) -> str:
        """The call fingerprint pinned when the contact was verified ("" if none)."""
        row = self._db.execute("SELECT fingerprint FROM verified WHERE public_key = ?",
                               (public_key,)).fetchone()
        return str(row[0]) if row else ""

    def unverify(self, public_key: bytes) -> None:
        """Drop the verified mark (the contact's key changed)."""
        with self._db:
            self._db.execute("DELETE FROM verified WHERE public_key = ?", (public_key,))

    def verified_at(self, public_key: bytes) -> float | None:
        """When the contact was verified (None: never)."""
        row = self._db.execute("SELECT verified FROM verified WHERE public_key = ?",
                               (public_key,)).fetchone()
        return float(row[0]) if row else None

    def verified_impersonated(self, public_key: bytes, name: str) -> str | None:
        """The name of a verified contact that ``name`` claims while ``public_key`` is a
        different identity (someone posing as a verified contact), else None."""
        wanted = name_skeleton(name)
        if not wanted:
            return None
        for verified_name, in self._db.execute(
                "SELECT name FROM verified WHERE public_key != ?", (public_key,)):
            if name_skeleton(str(verified_name)) == wanted:  # NFKC, confusables folded
                return str(verified_name)
        return None

    def delete(self, public_key: bytes) -> None:
        """Forget an entry."""
        self._entries.pop(public_key, None)
        with self._db:
            self._db.execute("DELETE FROM contacts WHERE public_key = ?", (public_key,))

    def add_incoming(self, public_key: bytes, *, name: str, message: str, now: float,
                     envelope: bytes, lifetime: float,
                     cap: int = MAX_INCOMING) -> ContactEntry | None:
        """Record a pending request and its envelope in one transaction; drop pending
        requests older than ``lifetime`` and, over ``cap``, the oldest. Returns the entry
        (None when it was itself the oldest over the cap)."""
        self._entries.pop(public_key, None)
        with self._db:
            self._db.execute(
                """INSERT INTO contacts VALUES (?, ?, 'incoming', ?, ?, ?)
                   ON CONFLICT(public_key) DO UPDATE SET
                     name = excluded.name, state = 'incoming', message = excluded.message,
                     updated = excluded.updated""",
                (public_key, name, message, now, now))
            self._remember(envelope, now)
            self._expire_incoming(now, lifetime, cap)
        return self.get(public_key)

    def expire_incoming(self, now: float, lifetime: float, cap: int = MAX_INCOMING) -> int:
        """Drop pending requests older than ``lifetime`` and the oldest over ``cap``;
        returns how many were dropped (no write when none is)."""
        with self._db:
            return self._expire_incoming(now, lifetime, cap)

    def _expire_incoming(self, now: float, lifetime: float, cap: int) -> int:
        stale = self._db.execute(
            "SELECT public_key FROM contacts WHERE state = 'incoming' AND updated < ? "
            "UNION SELECT public_key FROM (SELECT public_key FROM contacts "
            "WHERE state = 'incoming' ORDER BY updated DESC, public_key LIMIT -1 OFFSET ?)",
            (now - lifetime, cap)).fetchall()
        if stale:
            self._entries.clear()
            self._db.executemany("DELETE FROM contacts WHERE public_key = ?", stale)
        return len(stale)

    def seen(self, envelope: bytes) -> bool:
        """Whether a request envelope was processed before (a read, no write)."""
        return self._db.execute("SELECT 1 FROM seen_envelopes WHERE envelope = ?",
                                (envelope,)).fetchone() is not None

    def mark_seen(self, envelope: bytes, now: float) -> bool:
        """Remember a processed request envelope; False when it was seen already."""
        with self._db:
            return self._remember(envelope, now)

    def _remember(self, envelope: bytes, now: float) -> bool:
        cursor = self._db.execute("INSERT OR IGNORE INTO seen_envelopes VALUES (?, ?)",
                                  (envelope, now))
        if now - self._trimmed >= TRIM_PERIOD:  # a range delete on the index, hourly
            self._trimmed = now
            self._db.execute("DELETE FROM seen_envelopes WHERE seen < ?",
                             (now - SEEN_RETENTION,))
        return bool(cursor.rowcount == 1)

    def total_changes(self) -> int:
        """Rows written through this connection so far (for tests and diagnostics)."""
        return int(self._db.total_changes)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def _entry(row: Row) -> ContactEntry:
    public_key, name, state, message, created, updated = row
    assert state in STATES
    return ContactEntry(bytes(public_key), name, state, message, created, updated)
