"""A send returns only once its message is on disk: the streams wait for the history's
durability barrier after the group commit (dhtchat.app.stream, dhtchat.store.history)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from dhtchat.app.stream import Streams
from dhtchat.core.identity import SigningIdentity
from dhtchat.messaging.payload import Payload
from dhtchat.messaging.prekeys import PrekeyStore
from dhtchat.store.history import History

_T = TypeVar("_T")
CONTACT = bytes(range(32))


class _Tasks:
    def __init__(self) -> None:
        self.running: set[asyncio.Task[object]] = set()

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[_T]:
        task = asyncio.ensure_future(coro)
        self.running.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self.running.discard)  # type: ignore[arg-type]
        return task


def test_a_send_waits_for_the_durability_barrier_after_its_commit(tmp_path: Path) -> None:
    history = History(tmp_path / "messages.db", bytes(32))
    prekeys = PrekeyStore.create(bytes(32), 0.0)
    flushed: list[bytes] = []

    async def flush(contact: bytes) -> None:
        flushed.append(contact)

    async def main() -> None:
        release = asyncio.Event()
        barriers = 0

        async def gated_durable() -> None:
            nonlocal barriers
            barriers += 1
            await release.wait()
        history.durable = gated_durable  # type: ignore[method-assign]
        me = SigningIdentity.from_seed(bytes(32)).public_key
        streams = Streams(history, prekeys, me, tasks=_Tasks(), flush=flush)
        send = asyncio.ensure_future(streams.enqueue(CONTACT, Payload("text", text="hi"), "hi",
                                                     None))
        for _ in range(100):  # until the group commit ran
            await asyncio.sleep(0)
            if history.history(CONTACT, 10):
                break
        stored = history.history(CONTACT, 10)
        assert [m.text for m in stored] == ["hi"]  # committed...
        await asyncio.sleep(0.05)
        assert not send.done() and barriers == 1  # ... and waiting for the disk
        release.set()
        message = await asyncio.wait_for(send, 10)
        assert message.id == stored[0].id and message.seq == 1
    asyncio.run(main())
    history.close()
