"""The SQLite / SQLCipher connection as the store uses it: a small typed Protocol.

``sqlcipher3`` ships no type information; ``sqlite3`` (the clear contact list of tools and
tests) does. Both satisfy :class:`Connection`. Rows come back from the driver untyped
(:data:`Row`); only the store's modules read them, each converting a row into its dataclass at
once, so nothing above the store sees a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

Row = tuple[Any, ...]
"""One result row, as the driver returns it (converted into a dataclass by the store)."""


class Cursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""

    def fetchone(self) -> Row | None:
        """The next row, if any."""

    def fetchall(self) -> list[Row]:
        """The remaining rows."""

    def __iter__(self) -> Iterator[Row]:
        """The remaining rows, one at a time."""


class Connection(Protocol):
    """A ``sqlite3``-compatible connection (``sqlite3`` or ``sqlcipher3``)."""

    @property
    def total_changes(self) -> int:
        """Rows written through this connection so far."""

    def execute(self, sql: str, parameters: Sequence[object] = (), /) -> Cursor:
        """Run one statement."""

    def executemany(self, sql: str, parameters: Iterable[Sequence[object]], /) -> Cursor:
        """Run one statement for each parameter tuple."""

    def executescript(self, script: str, /) -> Cursor:
        """Run several statements (schema)."""

    def close(self) -> None:
        """Close the connection."""

    def __enter__(self) -> Connection:
        """Start a transaction (``sqlite3``'s implicit one)."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None, /) -> bool | None:
        """Commit, or roll back on an exception."""
