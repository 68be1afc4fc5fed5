"""The daemon's lifecycle helpers (dhtchat/app/lifecycle.py): the profile lock, the task set
and the periodic job, without a network."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from dhtchat.app.lifecycle import DaemonAlreadyRunning, ProfileLock, TaskSet, every, join
from dhtchat.app.rpc import NOT_READY, RpcError


def test_one_lock_per_profile_and_the_holder_is_named(tmp_path: Path) -> None:
    lock = ProfileLock.acquire(tmp_path)
    with pytest.raises(DaemonAlreadyRunning, match=f"pid {os.getpid()}"):
        ProfileLock.acquire(tmp_path)
    lock.release()
    ProfileLock.acquire(tmp_path).release()  # free again once released


def test_a_failed_task_is_reported_and_cancel_all_ends_the_rest() -> None:
    failures: list[str] = []

    async def scenario() -> tuple[bool, bool]:
        tasks = TaskSet(failures.append)

        async def fail() -> None:
            raise ValueError("boom")

        async def not_ready() -> None:  # an RpcError was reported by whoever raised it
            raise RpcError(NOT_READY, "not yet")

        forever = tasks.spawn(asyncio.sleep(3600))
        done = tasks.spawn(asyncio.sleep(0, result=7))
        tasks.spawn(fail())
        tasks.spawn(not_ready())
        for _ in range(10):  # (each task ends within a few turns of the loop)
            await asyncio.sleep(0)
        closing = asyncio.ensure_future(tasks.cancel_all())
        await asyncio.wait({closing}, timeout=5.0)
        ended = closing.done()
        forever.cancel()  # (only if cancel_all did not: the loop must end)
        closing.cancel()
        return ended and forever.cancelled(), done.result() == 7
    cancelled, finished = asyncio.run(scenario())
    assert cancelled and finished
    assert failures == ["background task failed: ValueError('boom')"]


def test_every_survives_network_errors_and_ends_when_stopping() -> None:
    async def scenario() -> int:
        stopping = asyncio.Event()
        rounds = 0

        async def job() -> None:
            nonlocal rounds
            rounds += 1
            if rounds == 3:
                stopping.set()
            raise TimeoutError("a DHT timeout")
        await asyncio.wait_for(every(0.001, stopping, job), 5.0)
        return rounds
    assert asyncio.run(scenario()) == 3


class _Table:
    def __init__(self) -> None:
        self.size = 0

    def __len__(self) -> int:
        return self.size


class _Core:
    def __init__(self) -> None:
        self.table = _Table()
        self.config = type("Config", (), {"k": 8})()


class _SlowBootstrapNode:
    """A node whose self-lookup waits out a dead peer while its table is already full."""

    def __init__(self) -> None:
        self.core = _Core()
        self.release = asyncio.Event()
        self.finished = False

    async def bootstrap(self, addresses: list[tuple[str, int]]) -> int:
        self.core.table.size = 8  # the first answers came in ...
        await self.release.wait()  # ... and a dead node's timeout is still running
        self.finished = True
        return 8


def test_join_returns_once_the_table_holds_k_contacts_and_the_lookup_finishes_later() -> None:
    async def main() -> None:
        node = _SlowBootstrapNode()
        await asyncio.wait_for(join(node, [("127.0.0.1", 1)], asyncio.Event()),  # type: ignore[arg-type]
                               5)
        assert not node.finished  # joined while the self-lookup still runs
        node.release.set()
        for _ in range(100):
            if node.finished:
                break
            await asyncio.sleep(0.01)
        assert node.finished  # it was not cancelled
    asyncio.run(main())
