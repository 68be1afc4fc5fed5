"""``message.receive`` for one conversation, and ``message.history`` paged with ``before``:
what a client that shows one conversation at a time (the desktop client) needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.rpc import RpcError, call
from tests.daemons import DaemonProcess, DhtProcess, make_contacts, new_identity, next_host


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


def _daemon(tmp: Path, dht: DhtProcess, name: str) -> tuple[DaemonProcess, str]:
    user_id = new_identity(tmp / name)
    args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1", "--name", name]
    for address in dht.bootstrap:
        args += ["--bootstrap", address]
    return DaemonProcess(tmp / name, args), user_id


def rpc(daemon: DaemonProcess, method: str, params: dict[str, Any] | None = None) -> Any:
    return asyncio.run(call(daemon.profile / "daemon.sock", method, params or {}, 60))


def _receive(daemon: DaemonProcess, count: int, params: dict[str, Any]) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(got) < count and time.monotonic() < deadline:
        got += rpc(daemon, "message.receive", {"wait": 2, **params})
    return got


def test_receive_one_conversation_and_page_the_history(tmp_path: Path,
                                                       dht: DhtProcess) -> None:
    (alice, alice_id), (bob, bob_id), (carol, carol_id) = (
        _daemon(tmp_path, dht, name) for name in ("alice", "bob", "carol"))
    try:
        for daemon in (alice, bob, carol):
            daemon.wait_ready()
        make_contacts(alice, alice_id, bob, bob_id)
        make_contacts(carol, carol_id, bob, bob_id)
        for i in range(3):
            rpc(alice, "message.send", {"to": bob_id, "text": f"alice {i}", "wait": True})
        for i in range(2):
            rpc(carol, "message.send", {"to": bob_id, "text": f"carol {i}", "wait": True})

        # Bob opens Alice's conversation: only hers come, Carol's stay unread for later
        from_alice = _receive(bob, 3, {"contact": alice_id})
        assert [m["text"] for m in from_alice] == ["alice 0", "alice 1", "alice 2"]
        assert rpc(bob, "message.receive", {"contact": alice_id}) == []
        rest = _receive(bob, 2, {})
        assert [m["text"] for m in rest] == ["carol 0", "carol 1"]

        # Alice's history with Bob, a page of two at a time, upwards
        last = rpc(alice, "message.history", {"contact": bob_id, "limit": 2})
        assert [m["text"] for m in last] == ["alice 1", "alice 2"]
        above = rpc(alice, "message.history",
                    {"contact": bob_id, "limit": 2, "before": last[0]["id"]})
        assert [m["text"] for m in above] == ["alice 0"]
        assert rpc(alice, "message.history",
                   {"contact": bob_id, "limit": 2, "before": above[0]["id"]}) == []
        # search: this conversation only, newest first, ASCII case folded, % literal
        rpc(alice, "message.send", {"to": bob_id, "text": "Alice 100% sure", "wait": True})
        found = rpc(alice, "message.search", {"contact": bob_id, "text": "ALICE"})
        assert [m["text"] for m in found] == ["Alice 100% sure", "alice 2", "alice 1",
                                              "alice 0"]
        assert [m["text"] for m in rpc(alice, "message.search",
                                       {"contact": bob_id, "text": "0% s"})] == \
            ["Alice 100% sure"]
        assert rpc(alice, "message.search", {"contact": bob_id, "text": "_"}) == []
        assert rpc(bob, "message.search", {"contact": carol_id, "text": "alice"}) == []
        with pytest.raises(RpcError, match="text must be 1-200 characters"):
            rpc(alice, "message.search", {"contact": bob_id, "text": ""})
        # a message of another conversation is no cursor here
        carols = rpc(bob, "message.history", {"contact": carol_id, "limit": 1})
        with pytest.raises(RpcError, match="no such message in this conversation"):
            rpc(bob, "message.history",
                {"contact": alice_id, "limit": 2, "before": carols[0]["id"]})
        with pytest.raises(RpcError, match="32 hex digits"):
            rpc(bob, "message.history", {"contact": alice_id, "before": "xyz"})
    finally:
        for daemon in (alice, bob, carol):
            daemon.stop()
