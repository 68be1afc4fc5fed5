"""The desktop client's API connection (dhtchat.ui.client) against a real daemon: typed
results, errors as sentences, the event stream across a daemon restart (nothing missed, nothing
twice), and the import rule that keeps dhtchat.ui on the API."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from dhtchat.ui.client import ApiError, UiClient, socket_path
from dhtchat.ui.events import (
    ContactRequestEvent,
    Disconnected,
    MessageEvent,
    OtherEvent,
    Reconnected,
    parse_event,
)
from tests.daemons import DaemonProcess, DhtProcess, cli
from tests.test_ui_support import start_daemon

pytestmark = pytest.mark.timeout(240)

UI = Path(__file__).resolve().parent.parent / "dhtchat" / "ui"
# What the client may import from dhtchat: the API's client side and what it is written in,
# the keystore (first run, before a daemon exists), profile paths, terminal safety, the core's
# id codecs and errors. Everything else in dhtchat.app runs inside the daemon.
ALLOWED = {"dhtchat.app.rpc", "dhtchat.app.jsontypes", "dhtchat.app.keystore",
           "dhtchat.app.profile", "dhtchat.app.terminal", "dhtchat.core.identity",
           "dhtchat.core.errors", "dhtchat.core.addresses"}


def test_the_ui_imports_only_the_api_client_side() -> None:
    for path in sorted(UI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("dhtchat.") and not name.startswith("dhtchat.ui"):
                    assert name in ALLOWED, f"{path.name} imports {name}"


def test_events_are_typed_and_unknown_or_malformed_ones_do_not_break() -> None:
    event = parse_event({"id": 7, "time": 1.5, "type": "message",
                         "data": {"contact": "x", "seq": 3, "kind": "text"}})
    assert event == MessageEvent(7, 1.5, "x", 3, "text")
    assert isinstance(parse_event({"id": 8, "time": 1, "type": "new.kind", "data": {}}),
                      OtherEvent)
    assert parse_event({"id": "8", "type": "message", "data": {}}) is None
    assert parse_event({"id": 8, "type": "message", "data": []}) is None


def test_no_daemon_is_a_message(tmp_path: Path) -> None:
    async def scenario() -> None:
        client = UiClient(socket_path(tmp_path))
        with pytest.raises(ApiError, match="no daemon answers"):
            await client.connect(2.0)
        with pytest.raises(ApiError, match="not connected"):
            await client.status()

    asyncio.run(scenario())


def test_calls_errors_and_events_across_a_daemon_restart(tmp_path: Path) -> None:
    dht = DhtProcess(16)
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    try:
        async def scenario() -> None:
            nonlocal bob
            client = UiClient(socket_path(bob.profile))
            await client.connect()
            status = await client.status()
            assert status.id == bob_id
            # An error from the daemon: its sentence, not a traceback.
            with pytest.raises(ApiError) as info:
                await client.send("nobody", "hi")
            assert info.value.message == "no contact named 'nobody'"
            with pytest.raises(ApiError, match="58 characters"):
                await client.request("not-an-id")
            await asyncio.to_thread(cli, alice.profile, "contact", "request", bob_id,
                                    "--name", "Alice", "--message", "hello")
            event = None
            for _ in range(200):
                event = await client.next_event(60)
                if isinstance(event, ContactRequestEvent):
                    break
            assert isinstance(event, ContactRequestEvent)
            assert (event.contact, event.name, event.message) == (alice_id, "Alice", "hello")
            last_before = event.id
            await client.accept(alice_id)
            await asyncio.to_thread(alice.wait_contact, bob_id,
                                    lambda r: r["state"] == "accepted", 60)
            # Bob's daemon restarts; a message sent meanwhile comes as an event after the
            # reconnection, and no event is handed out twice.
            args = bob.proc.args[bob.proc.args.index("daemon") + 1:]
            await asyncio.to_thread(bob.stop)
            seen: list[object] = []
            for _ in range(200):
                got = await client.next_event(30)
                assert got is not None, "no Disconnected"
                seen.append(got)
                if isinstance(got, Disconnected):
                    break
            await asyncio.to_thread(cli, alice.profile, "send", bob_id, "while you were away")
            bob = DaemonProcess(bob.profile, [str(a) for a in args])
            await asyncio.to_thread(bob.wait_ready)
            ids: list[int] = []
            reconnected = False
            for _ in range(500):
                got = await client.next_event(90)
                assert got is not None, f"no message event; saw {seen}"
                if isinstance(got, Reconnected):
                    reconnected = True
                    assert not got.missed
                elif got.id:
                    ids.append(got.id)
                if isinstance(got, MessageEvent) and got.contact == alice_id:
                    break
            assert reconnected
            assert ids == sorted(set(ids)) and ids[0] > last_before
            history = await client.history(alice_id, 10)
            assert [m.text for m in history] == ["while you were away"]
            assert history[0].author == alice_id and not history[0].outgoing(bob_id)
            await client.close()

        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()
        dht.stop()



def test_dhtchat_alone_opens_the_client_which_needs_a_terminal(tmp_path: Path) -> None:
    for argv in ([], ["ui"]):
        result = cli(tmp_path / "p", *argv, check=False)
        assert result.returncode == 2
        assert "the desktop client needs a terminal" in result.stderr
        assert "Traceback" not in result.stderr
    result = cli(tmp_path / "p", "ui", "--bootstrap", "nonsense", check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
