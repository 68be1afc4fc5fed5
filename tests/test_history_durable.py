"""The history's durability barrier: commits are safe against a crash of the process at once
(WAL, synchronous = NORMAL) and on disk after :meth:`History.durable`, one fsync of the log
off the event loop shared by everyone waiting."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from dhtchat.store import history as history_module
from dhtchat.store.history import History


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which file every fsync of the history module syncs (and still sync it)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(history_module.os, "fsync", fsync)
    return synced


def _commit(history: History, name: str) -> None:
    with history.transaction() as db:
        history.set_meta(db, name, b"x" * 100)


def test_the_database_does_not_fsync_each_commit_and_the_barrier_syncs_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(tmp_path / "messages.db", bytes(32))
    assert history.connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert history.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    synced = _fsyncs(monkeypatch)
    _commit(history, "a")
    asyncio.run(history.durable())
    assert synced == [str(tmp_path / "messages.db-wal")]
    asyncio.run(history.durable())  # nothing committed since: no second fsync
    assert len(synced) == 1
    history.close()


def test_callers_waiting_together_share_one_fsync_and_later_commits_get_their_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(tmp_path / "messages.db", bytes(32))
    synced = _fsyncs(monkeypatch)

    async def main() -> None:
        for i in range(20):
            _commit(history, f"m{i}")
        await asyncio.gather(*(history.durable() for _ in range(50)))
        assert len(synced) == 1
        _commit(history, "later")
        waiting = asyncio.ensure_future(history.durable())
        await asyncio.wait_for(waiting, 10)
        assert len(synced) == 2
    asyncio.run(main())
    history.close()


def test_a_commit_during_an_fsync_waits_for_the_next_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The barrier covers what was committed when the fsync started, not what came later."""
    history = History(tmp_path / "messages.db", bytes(32))
    started, release = threading.Event(), threading.Event()
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:
        started.set()
        release.wait(10)
        synced.append(fd)
    monkeypatch.setattr(history_module.os, "fsync", slow_fsync)

    async def main() -> None:
        _commit(history, "first")
        first = asyncio.ensure_future(history.durable())
        assert await asyncio.to_thread(started.wait, 10)  # the fsync of "first" is under way
        _commit(history, "second")
        second = asyncio.ensure_future(history.durable())
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()
        release.set()
        await asyncio.wait_for(first, 10)
        await asyncio.wait_for(second, 10)
        assert len(synced) == 2  # the first fsync could not cover "second": another one ran
    asyncio.run(main())
    history.close()


def test_without_a_log_file_the_barrier_checkpoints(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    history = History(tmp_path / "messages.db", bytes(32))
    _commit(history, "a")

    def broken(fd: int) -> None:
        raise OSError("fsync failed")
    monkeypatch.setattr(history_module.os, "fsync", broken)
    asyncio.run(history.durable())
    # the checkpoint copied the log into the database file
    assert history.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    history.close()
