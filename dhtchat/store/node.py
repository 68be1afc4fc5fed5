"""The node's own database (``node.sqlite``, clear): its DHT key, its UDP port and the peers of
the last run, so a restarted node keeps its id and port and rejoins the network without the
bootstrap nodes."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

from dhtchat.core.addresses import Address
from dhtchat.core.identity import SEED_BYTES, SigningIdentity
from dhtchat.store.private import write_private_file


class NodeState:
    """Persistent node key and contacts (SQLite)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            write_private_file(path, b"")
        self._db = sqlite3.connect(path)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS contacts (
                node_id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
                last_seen REAL NOT NULL);
            """
        )

    def node_key(self) -> SigningIdentity:
        """The node key, created on first use."""
        row = self._db.execute("SELECT value FROM meta WHERE name='node_key'").fetchone()
        if row is not None and len(row[0]) == SEED_BYTES:
            return SigningIdentity.from_seed(bytes(row[0]))
        seed = secrets.token_bytes(SEED_BYTES)
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('node_key', ?)", (seed,))
        return SigningIdentity.from_seed(seed)

    def port(self) -> int | None:
        """The UDP port the node used last (None before the first run)."""
        row = self._db.execute("SELECT value FROM meta WHERE name='port'").fetchone()
        if row is None:
            return None
        try:
            port = int(row[0])
        except (TypeError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def save_port(self, port: int) -> None:
        """Keep ``port`` for the next run."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('port', ?)", (port,))

    def peers(self, limit: int = 200) -> list[tuple[bytes, Address]]:
        """The DHT peers of the last run, most recently seen first."""
        rows = self._db.execute(
            "SELECT node_id, host, port FROM contacts ORDER BY last_seen DESC LIMIT ?", (limit,)
        ).fetchall()
        return [(bytes(node_id), (host, int(port))) for node_id, host, port in rows]

    def save_peers(self, peers: list[tuple[bytes, Address, float]]) -> None:
        """Replace the stored DHT peers (the table keeps its old name, ``contacts``)."""
        with self._db:
            self._db.execute("DELETE FROM contacts")
            self._db.executemany(
                "INSERT OR REPLACE INTO contacts VALUES (?, ?, ?, ?)",
                [(nid, host, port, seen) for nid, (host, port), seen in peers],
            )

    def close(self) -> None:
        """Close the database."""
        self._db.close()
