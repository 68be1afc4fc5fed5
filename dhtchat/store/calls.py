"""The persistence of calls: the call log and our DTLS certificate per contact.

Theory of operation: both tables live in the encrypted history database (SQLCipher), beside
the messages. A call's row is written when it starts ringing and rewritten whenever its
state changes (``INSERT OR REPLACE``), so a daemon killed mid-call still lists it. The
certificate a call's media connection uses is kept per contact, so its fingerprint stays the
same from call to call (a contact who verified it notices a change) and a network observer
cannot link our calls with different people. Nothing else reads or writes these tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dhtchat.store.history import History

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS calls (
    id BLOB PRIMARY KEY, contact BLOB NOT NULL, direction TEXT NOT NULL,
    video INTEGER NOT NULL, started REAL NOT NULL, answered REAL, ended REAL,
    reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS call_certificates (
    contact BLOB PRIMARY KEY, key_pem BLOB NOT NULL, cert_pem BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS suspicious_calls (id BLOB PRIMARY KEY, marked REAL NOT NULL);
"""


@dataclass(frozen=True)
class CallRecord:
    """One row of the call log."""

    call_id: bytes
    contact: bytes
    direction: str  # "outgoing" or "incoming"
    video: bool
    started: float
    answered: float | None
    ended: float | None
    reason: str

    @property
    def missed(self) -> bool:
        """An incoming call nobody here answered."""
        return self.direction == "incoming" and self.answered is None and self.reason in (
            "missed", "cancelled by the caller", "missed (busy)")


class CallStore:
    """The ``calls`` and ``call_certificates`` tables of one history database."""

    def __init__(self, history: History) -> None:
        self._history = history
        history.connection.executescript(_SCHEMA)

    def save(self, record: CallRecord) -> None:
        """Write (or rewrite) a call's row."""
        with self._history.transaction() as db:
            db.connection.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                  (record.call_id, record.contact, record.direction,
                                   int(record.video), record.started, record.answered,
                                   record.ended, record.reason))

    def log(self, limit: int) -> list[CallRecord]:
        """The newest ``limit`` calls, newest first."""
        rows = self._history.connection.execute(
            "SELECT id, contact, direction, video, started, answered, ended, reason FROM calls "
            "ORDER BY started DESC LIMIT ?", (limit,)).fetchall()
        return [CallRecord(bytes(r[0]), bytes(r[1]), r[2], bool(r[3]), r[4], r[5], r[6], r[7])
                for r in rows]

    def mark_suspicious(self, call_id: bytes, now: float) -> None:
        """The user said the SAS words of this call differed (a possible attacker)."""
        with self._history.transaction() as db:
            db.connection.execute("INSERT OR IGNORE INTO suspicious_calls VALUES (?, ?)",
                                  (call_id, now))

    def suspicious(self) -> set[bytes]:
        """The ids of the calls marked suspicious."""
        return {bytes(row[0]) for row in
                self._history.connection.execute("SELECT id FROM suspicious_calls")}

    def certificate(self, contact: bytes) -> tuple[bytes, bytes] | None:
        """Our stored (private key PEM, certificate PEM) for calls with ``contact``."""
        row = self._history.connection.execute(
            "SELECT key_pem, cert_pem FROM call_certificates WHERE contact = ?",
            (contact,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def save_certificate(self, contact: bytes, key_pem: bytes, cert_pem: bytes) -> None:
        """Keep our certificate for calls with ``contact`` (replacing any older one)."""
        with self._history.transaction() as db:
            db.connection.execute("INSERT OR REPLACE INTO call_certificates VALUES (?, ?, ?)",
                                  (contact, key_pem, cert_pem))
