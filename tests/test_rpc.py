"""The JSON-RPC server's reply hooks: a result with side effects (``message.receive``
marking messages as shown) takes effect only once the client has the reply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from dhtchat.app.rpc import Reply, RpcServer, call


def test_reply_hooks_follow_the_client(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        events: list[str] = []

        async def slow(params: dict[str, Any]) -> Reply:
            await asyncio.sleep(0.3)
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
            await asyncio.sleep(0.6)
            assert events == ["lost"]
            # A notification (no id): nobody reads the result either.
            _reader, writer = await asyncio.open_unix_connection(str(tmp_path / "api.sock"))
            writer.write(json.dumps({"jsonrpc": "2.0", "method": "receive"}).encode() + b"\n")
            await writer.drain()
            await asyncio.sleep(0.6)
            writer.close()
            assert events == ["lost", "lost"]
            # A client that reads it: marked once it is written.
            assert await call(tmp_path / "api.sock", "receive") == ["message"]
            await asyncio.sleep(0.05)
            return events
        finally:
            await server.close()

    assert asyncio.run(scenario()) == ["lost", "lost", "sent"]
