"""The JSON-RPC server's reply hooks: a result with side effects (``message.receive``
marking messages as shown) takes effect only once the client has the reply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from dhtchat.app.rpc import Reply, RpcClient, RpcServer, call
from tests.support import async_wait_until


def test_reply_hooks_follow_the_client(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        events: list[str] = []

        async def slow(params: dict[str, Any]) -> Reply:
            await asyncio.sleep(0.3)  # the scenario: a handler slower than the client
            return Reply(["message"], on_sent=lambda: events.append("sent"),
                         on_lost=lambda: events.append("lost"))

        server = RpcServer(tmp_path / "api.sock", {"receive": slow})
        await server.start()
        try:
            # The client gives up before the reply: nothing is marked, the message stays.
            _reader, writer = await asyncio.open_unix_connection(str(tmp_path / "api.sock"))
            writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "receive"}).encode()
                         + b"\n")
            await writer.drain()
            writer.close()
            await async_wait_until(lambda: events == ["lost"], 10, "the first reply lost")
            # A notification (no id): nobody reads the result either.
            _reader, writer = await asyncio.open_unix_connection(str(tmp_path / "api.sock"))
            writer.write(json.dumps({"jsonrpc": "2.0", "method": "receive"}).encode() + b"\n")
            await writer.drain()
            await async_wait_until(lambda: events == ["lost", "lost"], 10,
                                   "the notification's reply lost")
            writer.close()
            # A client that reads it: marked once it is written.
            assert await call(tmp_path / "api.sock", "receive") == ["message"]
            await async_wait_until(lambda: len(events) == 3, 10, "the reply marked sent")
            return events
        finally:
            await server.close()

    assert asyncio.run(scenario()) == ["lost", "lost", "sent"]


def test_pipelined_requests_start_in_order_and_answer_when_done(tmp_path: Path) -> None:
    """Many requests on one connection without waiting: each starts in the order sent (a
    handler's work before its first await keeps the client's order, as message.send's
    queueing does), a slow one does not hold up the others, replies match by id."""
    async def scenario() -> tuple[list[int], list[Any]]:
        started: list[int] = []
        gate = asyncio.Event()

        async def record(params: dict[str, Any]) -> int:
            started.append(params["n"])  # before any await, like message.send's enqueue
            await asyncio.sleep(0)
            return int(params["n"])

        async def slow(params: dict[str, Any]) -> str:
            await gate.wait()
            return "slow"

        server = RpcServer(tmp_path / "api.sock", {"record": record, "slow": slow})
        await server.start()
        client = await RpcClient.open(tmp_path / "api.sock")
        try:
            waiting = asyncio.ensure_future(client.call("slow"))
            results = await asyncio.wait_for(asyncio.gather(
                *(client.call("record", {"n": n}) for n in range(500))), 10)
            assert not waiting.done()  # still held: the others did not wait for it
            gate.set()
            assert await asyncio.wait_for(waiting, 10) == "slow"
            return started, results
        finally:
            await client.close()
            await server.close()

    started, results = asyncio.run(scenario())
    assert started == list(range(500))
    assert results == list(range(500))
