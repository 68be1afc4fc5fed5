"""The JSON-RPC server's reply hooks: a result with side effects (``message.receive``
marking messages as shown) takes effect only once the client has the reply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.profile import Profile
from dhtchat.app.rpc import Reply, RpcClient, RpcServer, call
from dhtchat.core.identity import SigningIdentity
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


def test_pipelined_sends_to_a_daemon_are_queued_in_order(tmp_path: Path) -> None:
    """message.send pipelined on one connection, and message.send_batch: the outbox holds
    them in the order the client sent them (a contact that is offline: nothing is acked)."""
    async def scenario() -> tuple[list[str], list[Any]]:
        me = SigningIdentity.from_seed(bytes([211]) * 32)
        bob = SigningIdentity.from_seed(bytes([212]) * 32)
        daemon = Daemon(Profile(tmp_path / "me"), me,
                        DaemonOptions(host="127.0.0.1", auto_connect=False))
        await daemon.start()
        try:
            daemon.contacts.put(bob.public_key, name="bob", state="accepted")
            client = await RpcClient.open(daemon.socket_path)
            replies = await asyncio.wait_for(asyncio.gather(
                *(client.call("message.send", {"to": "bob", "text": f"m{i}"})
                  for i in range(60))), 60)
            batch = await client.call("message.send_batch", {"messages": [
                {"to": "bob", "text": f"b{i}"} for i in range(40)] + [
                {"to": "nobody", "text": "x"}]})
            await client.close()
            assert [r["seq"] for r in replies] == list(range(1, 61))
            assert daemon.history is not None
            rows = daemon.history.history(bob.public_key, 1000)
            return [m.text for m in sorted(rows, key=lambda m: m.seq)], batch
        finally:
            await daemon.stop()

    texts, batch = asyncio.run(scenario())
    assert texts == [f"m{i}" for i in range(60)] + [f"b{i}" for i in range(40)]
    assert [b["seq"] for b in batch[:40]] == list(range(61, 101))
    assert batch[40]["error"]["code"] == -32001  # refused alone; the others are queued
