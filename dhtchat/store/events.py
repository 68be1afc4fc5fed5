"""The ``events`` table of the history database: the event stream's numbered log.

Theory of operation: :class:`dhtchat.app.events.EventLog` numbers the events and appends
them here in batches (one transaction per batch); a client that reconnects reads the events
after its last id from here. The newest MAX_EVENTS are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dhtchat.store.history import History

MAX_EVENTS: Final = 100_000  # events kept in the store (older ones are deleted)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL);
"""


@dataclass(frozen=True)
class EventRow:
    """One stored event: its id, UNIX time, type and data (JSON text)."""

    id: int
    at: float
    type: str
    data: str


class EventTable:
    """The ``events`` table of one history database."""

    def __init__(self, history: History) -> None:
        self._history = history
        with history.transaction() as db:
            db.connection.execute(_SCHEMA)

    def last_id(self) -> int:
        """The newest stored id (0 when none)."""
        row = self._history.connection.execute("SELECT max(id) FROM events").fetchone()
        return int(row[0] or 0) if row else 0

    def append(self, events: Sequence[EventRow]) -> None:
        """Store a batch of events (ids increasing) in one transaction; now and then the
        oldest beyond MAX_EVENTS go."""
        if not events:
            return
        with self._history.transaction() as db:
            db.connection.executemany("INSERT INTO events (id, at, type, data) VALUES (?, ?, ?, ?)",
                                      [(e.id, e.at, e.type, e.data) for e in events])
            if events[-1].id % 1000 < len(events):  # now and then: forget the oldest
                db.connection.execute("DELETE FROM events WHERE id <= ?",
                                      (events[-1].id - MAX_EVENTS,))

    def read(self, after: int, upto: int, limit: int) -> list[EventRow]:
        """Stored events with ``after < id <= upto``, oldest first."""
        rows = self._history.connection.execute(
            "SELECT id, at, type, data FROM events WHERE id > ? AND id <= ? ORDER BY id "
            "LIMIT ?", (after, upto, limit)).fetchall()
        return [EventRow(int(r[0]), float(r[1]), str(r[2]), str(r[3])) for r in rows]

    def oldest_id(self) -> int | None:
        """The oldest stored id (None when none)."""
        row = self._history.connection.execute("SELECT min(id) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else None
