"""The JSON-RPC server's reply hooks: a result with side effects (``message.receive``
marking messages as shown) takes effect only once the client has the reply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from dhtchat.app.rpc import Reply, RpcServer, call
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
