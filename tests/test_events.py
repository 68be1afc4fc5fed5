"""The event stream (``events.subscribe``): ids persisted in the history database, a client that
reconnects with its last id gets exactly what it missed, in order, across daemon restarts."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.events import QUEUE_LIMIT, EventLog
from dhtchat.app.profile import Profile
from dhtchat.app.rpc import RpcClient, RpcError, RpcServer
from dhtchat.core.contacts import make_contact_request
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.store.history import History
from tests.daemons import befriend, start_in_process, wait_joined

pytestmark = pytest.mark.timeout(120)

KEY = bytes(range(32))


@asynccontextmanager
async def _served(tmp: Path) -> AsyncIterator[tuple[EventLog, Path]]:
    """An event log on a history database, served as events.subscribe on a socket."""
    history = History(tmp / "messages.db", KEY)
    events = EventLog()
    events.open(history)

    async def subscribe(params: dict[str, Any]) -> Any:
        return await events.subscribe_connection(int(params.get("since", 0)))

    path = tmp / "api.sock"
    server = RpcServer(path, {"events.subscribe": subscribe})
    await server.start()
    try:
        yield events, path
    finally:
        await server.close()
        await events.close()
        history.close()


async def _next_events(client: RpcClient, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        method, params = await asyncio.wait_for(client.notifications.get(),
                                                max(0.01, deadline - time.monotonic()))
        assert method == "event"
        out.append(params)
    return out


def test_reconnect_with_the_last_id_gets_exactly_the_missed_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _served(tmp_path) as (events, path):
            first = await RpcClient.open(path)
            reply = await first.call("events.subscribe", {"since": 0})
            assert reply == {"last": 0, "oldest": 1, "missed": False}
            for i in range(5):
                events.emit("message", n=i)
            got = await _next_events(first, 5)
            assert [e["id"] for e in got] == [1, 2, 3, 4, 5]
            assert [e["data"]["n"] for e in got] == [0, 1, 2, 3, 4]
            assert all(e["type"] == "message" for e in got)
            await first.close()
            # Offline: three more happen.
            for i in range(5, 8):
                events.emit("typing", n=i)
            events.flush()
            second = await RpcClient.open(path)
            reply = await second.call("events.subscribe", {"since": got[-1]["id"]})
            assert reply["last"] == 8
            missed = await _next_events(second, 3)
            assert [(e["id"], e["data"]["n"]) for e in missed] == [(6, 5), (7, 6), (8, 7)]
            # Nothing twice: the next notification is the next new event.
            events.emit("presence", n=8)
            (live,) = await _next_events(second, 1)
            assert (live["id"], live["type"]) == (9, "presence")
            assert second.notifications.empty()
            await second.close()
    asyncio.run(scenario())


def test_event_ids_continue_across_a_restart(tmp_path: Path) -> None:
    async def run_once(emits: int, since: int) -> list[int]:
        async with _served(tmp_path) as (events, path):
            for i in range(emits):
                events.emit("message", n=i)
            client = await RpcClient.open(path)
            reply = await client.call("events.subscribe", {"since": since})
            got = await _next_events(client, reply["last"] - since)
            await client.close()
            return [e["id"] for e in got]

    assert asyncio.run(run_once(3, 0)) == [1, 2, 3]
    # A restarted daemon: the old events are still there, new ids follow them.
    assert asyncio.run(run_once(2, 2)) == [3, 4, 5]


def test_a_slow_subscriber_still_gets_every_event_in_order(tmp_path: Path) -> None:
    """More events than a subscriber's queue holds, emitted while it is subscribed: it falls
    back to reading the store and still sees each id once, in order."""
    async def scenario() -> list[int]:
        async with _served(tmp_path) as (events, path):
            client = await RpcClient.open(path)
            await client.call("events.subscribe", {})
            total = 3 * QUEUE_LIMIT
            for i in range(total):
                events.emit("message", n=i)
                if i % 700 == 0:
                    await asyncio.sleep(0)  # some flushes while it reads
            got = await _next_events(client, total, timeout=60)
            await client.close()
            return [e["id"] for e in got]
    ids = asyncio.run(scenario())
    assert ids == list(range(1, 3 * QUEUE_LIMIT + 1))


def test_the_daemon_streams_its_events_and_keeps_them_across_restarts(tmp_path: Path) -> None:
    """A real daemon: a contact request from its inbox is an event; after a restart a client
    that names its last id gets only what came later, with ids that kept increasing."""
    me = SigningIdentity.from_seed(bytes(range(32)))
    profile = Profile(tmp_path / "me")

    def request(seed: bytes, name: str) -> tuple[str, Any]:
        sender = SigningIdentity.from_seed(seed)
        record = make_contact_request(sender, me.public_key, name=name, message="hi",
                                      now=time.time(), random_bytes=lambda n: seed[:1] * n)
        return encode_user_id(sender.public_key), record

    async def run(seed: bytes, name: str, since: int) -> tuple[int, list[dict[str, Any]]]:
        daemon = Daemon(profile, me, DaemonOptions(host="127.0.0.1"))
        await daemon.start()
        try:
            who, record = request(seed, name)
            client = await RpcClient.open(daemon.socket_path)
            reply = await client.call("events.subscribe", {"since": since})
            backlog = await _next_events(client, reply["last"] - since)
            await daemon.inbox.handle_record(record)
            (new,) = [e for e in await _next_events(client, 1)]
            assert new["type"] == "contact.request"
            assert new["data"] == {"contact": who, "name": name, "message": "hi"}
            with pytest.raises(RpcError) as refused:  # the params are checked too
                await client.call("events.subscribe", {"since": -2})
            assert refused.value.code == -32602
            await client.close()
            return new["id"], backlog
        finally:
            await daemon.stop()

    async def scenario() -> None:
        first_id, backlog = await run(b"a" * 32, "Ann", 0)
        assert backlog == []
        second_id, backlog = await run(b"b" * 32, "Bob", first_id)
        assert backlog == []  # the first request is not sent again
        assert second_id > first_id
        # A client that missed both gets both, once each, in order.
        _third, backlog = await run(b"c" * 32, "Cid", 0)
        requests = [e for e in backlog if e["type"] == "contact.request"]
        assert [e["data"]["name"] for e in requests] == ["Ann", "Bob"]
        assert [e["id"] for e in backlog] == sorted({e["id"] for e in backlog})
    asyncio.run(scenario())


def test_messages_receipts_and_connections_are_events(tmp_path: Path) -> None:
    """Two daemons on loopback: Bob connects and sends; Alice's subscriber sees the connection
    and the message, and Bob's sees the delivery and then the read receipt."""
    async def wait_for(client: RpcClient, kind: str, match: Any,
                       timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            (event,) = await _next_events(client, 1, max(0.01, deadline - time.monotonic()))
            if event["type"] == kind and match(event["data"]):
                return event

    async def scenario() -> None:
        alice = await start_in_process(tmp_path, 1, 201, [])
        bob = await start_in_process(tmp_path, 2, 202, [alice_address(alice)])
        try:
            await wait_joined([alice, bob])
            befriend(alice, bob, "alice", "bob")
            alice_id, bob_id = alice.identity.user_id, bob.identity.user_id
            at_alice = await RpcClient.open(alice.socket_path)
            at_bob = await RpcClient.open(bob.socket_path)
            await at_alice.call("events.subscribe", {})
            await at_bob.call("events.subscribe", {})
            await at_bob.call("connect", {"contact": "alice", "timeout": 30})
            await wait_for(at_alice, "connection",
                           lambda d: d["contact"] == bob_id and d["status"] == "connected")
            sent = await at_bob.call("message.send", {"to": "alice", "text": "hello"})
            message = await wait_for(at_alice, "message", lambda d: d["contact"] == bob_id)
            assert message["data"]["seq"] == sent["seq"] and message["data"]["kind"] == "text"
            await wait_for(at_bob, "receipt",
                           lambda d: d["contact"] == alice_id and d["delivered"] >= sent["seq"])
            got = await at_alice.call("message.receive", {"wait": 10})
            assert [m["text"] for m in got] == ["hello"]
            await wait_for(at_bob, "receipt",
                           lambda d: d["contact"] == alice_id and d["read"] >= sent["seq"])
            await at_alice.close()
            await at_bob.close()
        finally:
            await bob.stop()
            await alice.stop()
    asyncio.run(scenario())


def test_receive_follow_prints_what_arrives_while_it_waits(tmp_path: Path) -> None:
    """`receive --follow` first prints what is waiting, then each message as its event
    arrives, and ends with "the daemon stopped" when the daemon stops."""
    async def line_with(stream: asyncio.StreamReader, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(stream.readline(),
                                          max(0.01, deadline - time.monotonic()))
            assert line, f"the follower ended before printing {text!r}"
            if json.loads(line)["text"] == text:
                return

    async def scenario() -> None:
        alice = await start_in_process(tmp_path, 1, 211, [])
        bob = await start_in_process(tmp_path, 2, 212, [alice_address(alice)])
        follower: asyncio.subprocess.Process | None = None
        try:
            await wait_joined([alice, bob])
            befriend(alice, bob, "alice", "bob")
            at_bob = await RpcClient.open(bob.socket_path)
            await at_bob.call("connect", {"contact": "alice", "timeout": 30})
            await at_bob.call("message.send", {"to": "alice", "text": "waiting",
                                               "wait": True, "timeout": 30})
            follower = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dhtchat", "--profile", str(alice.profile.root),
                "receive", "--follow", "--json",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            assert follower.stdout is not None and follower.stderr is not None
            await line_with(follower.stdout, "waiting", 30)
            for text in ("one", "two"):
                await at_bob.call("message.send", {"to": "alice", "text": text})
                await line_with(follower.stdout, text, 30)
            await at_bob.close()
            await alice.stop()
            err = await asyncio.wait_for(follower.stderr.read(), 30)
            assert await follower.wait() != 0
            assert b"the daemon stopped" in err, err
        finally:
            if follower is not None and follower.returncode is None:
                follower.kill()
                await follower.wait()
            await bob.stop()
            await alice.stop()
    asyncio.run(scenario())


def alice_address(daemon: Daemon) -> tuple[str, int]:
    assert daemon.node is not None
    return daemon.node.address
