"""The ``groups`` table of the history database: each group's signed member list.

Theory of operation: a group's newest signed state (encoded by :mod:`dhtchat.app.groups`,
which alone decodes and verifies it) is kept with its id, name, admin, version and members in
clear columns of the encrypted database, and whether we are still a member. A state is
written inside the transaction of the message that brought it (or of the change we publish),
so the member list and the messages queued to the members commit together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from dhtchat.store.history import History, Transaction

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS groups (
    id BLOB PRIMARY KEY, name TEXT NOT NULL, admin BLOB NOT NULL, version INTEGER NOT NULL,
    members TEXT NOT NULL, state BLOB NOT NULL, active INTEGER NOT NULL DEFAULT 1);
"""


@dataclass(frozen=True)
class GroupRow:
    """A stored group: its encoded signed state and whether we are a member."""

    state: bytes
    active: bool


class GroupTable:
    """The ``groups`` table of one history database."""

    def __init__(self, history: History) -> None:
        self._db = history.connection
        self._db.execute(_SCHEMA)

    def get(self, group_id: bytes) -> GroupRow | None:
        """A group by id."""
        row = self._db.execute("SELECT state, active FROM groups WHERE id = ?",
                               (group_id,)).fetchone()
        return GroupRow(bytes(row[0]), bool(row[1])) if row else None

    def all(self) -> list[GroupRow]:
        """Every group, by name."""
        return [GroupRow(bytes(s), bool(a))
                for s, a in self._db.execute("SELECT state, active FROM groups ORDER BY name")]

    @staticmethod
    def save(db: Transaction, group_id: bytes, *, name: str, admin: bytes, version: int,
             members: Iterable[bytes], state: bytes, active: bool) -> None:
        """Store (or replace) a group's state inside a transaction."""
        db.connection.execute("INSERT OR REPLACE INTO groups VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (group_id, name, admin, version,
                               json.dumps([m.hex() for m in members]), state, int(active)))

    @staticmethod
    def deactivate(db: Transaction, group_id: bytes) -> None:
        """We are no longer a member (we left, or were removed)."""
        db.connection.execute("UPDATE groups SET active = 0 WHERE id = ?", (group_id,))
