"""The SQL side of a profile backup: the rows of a profile's databases out, and back in.

:func:`dump_rows` reads a table one row at a time (a cursor, never the whole table in memory)
as ``{column: value}``; :func:`load_rows` writes such rows into the same table of a fresh
profile. Only the tables named here travel, and every table and column name of a row read
back is checked against the database's own schema before it reaches SQL (a backup file is
input like any other). What must not travel is dropped on the way out (see
:func:`dump_rows`): the ratchet sessions, the prekeys and the frames they encrypted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from dhtchat.core.errors import DhtChatError
from dhtchat.store.db import Connection

CONTACT_TABLES: Final = ("contacts", "verified", "seen_envelopes")
"""Tables of ``contacts.sqlite`` in every backup."""
ACCOUNT_TABLES: Final = ("meta", "conversations", "outbox", "group_copies", "groups",
                         "call_certificates")
"""Tables of ``messages.db`` in every backup: positions of the message streams, messages not
yet delivered, groups and the DTLS certificates of calls."""
HISTORY_TABLES: Final = ("messages", "files", "calls", "suspicious_calls")
"""Tables of ``messages.db`` only in a backup with the history."""
NOT_BACKED_UP_META: Final = frozenset({"prekeys"})
"""Meta entries that never travel (one-time prekeys: restoring them would let an old
initial message be accepted twice)."""

Value = bytes | str | int | float | None


class BackupRowError(DhtChatError):
    """A row of a backup does not fit the database it is restored into."""


def _columns(connection: Connection, table: str) -> list[str]:
    return [str(row[1]) for row in connection.execute(f'PRAGMA table_info("{table}")')]


def has_table(connection: Connection, table: str) -> bool:
    """Whether ``table`` exists in the database."""
    return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)).fetchone() is not None


def dump_rows(connection: Connection, table: str) -> Iterator[dict[str, Value]]:
    """The rows of ``table`` (one of the tables above), streamed, with what must not leave
    the profile removed: the ratchet session of each conversation, the prekeys, and the
    frames (and their mailbox slots) encrypted under the old sessions. The messages those
    frames held stay in the outbox and are encrypted again on the new sessions."""
    if table not in CONTACT_TABLES + ACCOUNT_TABLES + HISTORY_TABLES:
        raise ValueError(f"{table} is not backed up")
    if not has_table(connection, table):
        return
    columns = _columns(connection, table)
    names = ", ".join(f'"{c}"' for c in columns)
    for row in connection.execute(f'SELECT {names} FROM "{table}"'):
        values: dict[str, Value] = dict(zip(columns, row, strict=True))
        if table == "meta" and values.get("name") in NOT_BACKED_UP_META:
            continue
        if table == "conversations":
            values["session"] = None
        elif table == "outbox":
            values.update(frame=None, mailbox_index=None, mailbox_stored=0)
        yield values


def load_rows(connection: Connection, table: str,
              rows: Iterable[Mapping[str, object]]) -> int:
    """Insert ``rows`` into ``table`` (inside the caller's transaction); returns how many.
    A table or column the database does not have, or a value that is not a SQL scalar, is a
    :class:`BackupRowError`."""
    if table not in CONTACT_TABLES + ACCOUNT_TABLES + HISTORY_TABLES:
        raise BackupRowError(f"the backup holds an unknown table {table[:40]!r}")
    known = set(_columns(connection, table))
    count = 0
    for row in rows:
        unknown = [name for name in row if name not in known]
        if unknown or not row:
            raise BackupRowError(f"the backup's {table} rows have unknown columns "
                                 f"{unknown[:3]!r}")
        values = list(row.values())
        if not all(v is None or isinstance(v, (bytes, str, int, float)) for v in values):
            raise BackupRowError(f"the backup's {table} rows hold a value of a wrong type")
        names = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        connection.execute(f'INSERT OR REPLACE INTO "{table}" ({names}) VALUES ({marks})',
                           values)
        count += 1
    return count
