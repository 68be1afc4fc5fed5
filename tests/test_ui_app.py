"""The desktop client against real daemons on a loopback DHT, driven with Textual's pilot:
start and stop the daemon, first run, a contact request accepted in the UI, messages both
ways with their delivery marks, history paging. The client reaches the daemons through the
socket API only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.events import Paste
from textual.widgets import ListView

from dhtchat.app.rpc import call
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.client import UiClient, socket_path
from dhtchat.ui.daemonctl import DaemonOptions, Settings, daemon_answers
from dhtchat.ui.screens.conversation import ConversationScreen
from dhtchat.ui.screens.conversations import ConversationItem, ConversationsScreen
from dhtchat.ui.screens.firstrun import FirstRunScreen
from dhtchat.ui.screens.requests import RequestsScreen
from dhtchat.ui.screens.start import QuitScreen
from dhtchat.ui.screens.unlock import UnlockScreen
from dhtchat.ui.widgets import MessageItem
from tests.daemons import PASSPHRASE, DhtProcess, cli, make_contacts, new_identity, next_host
from tests.test_ui_support import screen_text, start_daemon, until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


def _options(dht: DhtProcess) -> DaemonOptions:
    return DaemonOptions(bootstrap=list(dht.bootstrap), host=next_host(),
                         extra_args=["--ice-address", "127.0.0.1"])


def test_the_client_starts_the_daemon_and_stops_it_on_quit(tmp_path: Path,
                                                           dht: DhtProcess) -> None:
    profile = tmp_path / "carol"
    new_identity(profile)
    app = DhtchatApp(profile, _options(dht))

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, UnlockScreen), 15, "unlock")
            await pilot.press(*"wrong passphrase", "enter")
            await until(pilot, lambda: "Try again" in screen_text(app), 15, "refusal")
            assert isinstance(app.screen, UnlockScreen)
            assert not await daemon_answers(profile, 1.0)
            await pilot.press(*PASSPHRASE, "enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 60,
                        "conversations")
            assert app.daemon.started_here and await daemon_answers(profile)
            assert "No conversations yet" in screen_text(app)
            assert Settings.load(profile).port > 0  # kept for the next start
            await pilot.press("ctrl+q")
            await until(pilot, lambda: isinstance(app.screen, QuitScreen), 5, "quit dialog")
            await pilot.press("s")
            await until(pilot, lambda: not app.is_running, 30, "exit")
        assert not await daemon_answers(profile, 1.0)

    asyncio.run(scenario())
    assert not socket_path(profile).exists()


def test_keep_running_leaves_the_daemon_and_a_running_one_is_left_alone(
        tmp_path: Path, dht: DhtProcess) -> None:
    profile = tmp_path / "dave"
    new_identity(profile)

    async def first() -> None:
        app = DhtchatApp(profile, _options(dht))
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, UnlockScreen), 15, "unlock")
            await pilot.press(*PASSPHRASE, "enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 60,
                        "conversations")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: isinstance(app.screen, QuitScreen), 5, "quit dialog")
            await pilot.press("k")
            await until(pilot, lambda: not app.is_running, 30, "exit")
        assert await daemon_answers(profile)

    async def second() -> None:
        # The daemon runs: no passphrase asked, and quitting does not stop it.
        app = DhtchatApp(profile, _options(dht))
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            assert not app.daemon.started_here
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")
        assert await daemon_answers(profile)
        client = UiClient(socket_path(profile))
        await client.connect()
        await client.shutdown()
        await client.close()

    asyncio.run(first())
    asyncio.run(second())
    deadline = time.monotonic() + 20
    while socket_path(profile).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not socket_path(profile).exists()


def test_first_run_creates_the_identity_and_shows_it(tmp_path: Path, dht: DhtProcess) -> None:
    profile = tmp_path / "erin"
    app = DhtchatApp(profile, _options(dht))

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, FirstRunScreen), 15,
                        "first run")
            await pilot.press(*"abc")
            await until(pilot, lambda: "very weak" in screen_text(app), 5, "weak feedback")
            await pilot.press(*"defgh", "tab", *"abcdefgh", "enter")
            await until(pilot, lambda: "easy to guess" in screen_text(app), 5, "warning")
            assert not (profile / "identity.json").exists()
            app.screen.query_one("#pass1").value = PASSPHRASE  # type: ignore[attr-defined]
            app.screen.query_one("#pass2").value = PASSPHRASE  # type: ignore[attr-defined]
            app.screen.query_one("#pass2").focus()
            await pilot.press("enter")
            await until(pilot, lambda: "Fingerprint" in screen_text(app), 30, "the id card")
            screen = app.screen
            assert isinstance(screen, FirstRunScreen) and screen.info is not None
            text = screen_text(app)
            assert screen.info.user_id[:29] in text and screen.info.user_id[29:] in text
            assert "█" in text  # the QR code
            await pilot.press(*"Erin", "enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 60,
                        "conversations")
            assert app.state.me == screen.info.user_id
            await pilot.press("ctrl+q")
            await until(pilot, lambda: isinstance(app.screen, QuitScreen), 5, "quit dialog")
            await pilot.press("s")
            await until(pilot, lambda: not app.is_running, 30, "exit")

    asyncio.run(scenario())
    assert (profile / "identity.json").exists()
    assert Settings.load(profile).name == "Erin"
    assert "--name Erin" in " ".join(app.daemon.command("Erin"))


def _history(profile: Path, contact: str) -> list[dict[str, object]]:
    """``dhtchat history --json``: one message object per line."""
    out = cli(profile, "history", contact, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_accept_a_request_then_messages_both_ways_with_their_marks(
        tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    app = DhtchatApp(bob.profile)

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await asyncio.to_thread(cli, alice.profile, "contact", "request", bob_id,
                                    "--name", "Alice", "--message", "hi Bob, it's Alice")
            await until(pilot, lambda: "1 contact request" in screen_text(app), 60,
                        "the request on the conversations screen")
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, RequestsScreen), 5, "requests")
            text = screen_text(app)
            assert "hi Bob, it's Alice" in text and alice_id in text
            assert "fingerprint" in text
            await pilot.press("a")
            await until(pilot, lambda: app.state.contacts[alice_id].state == "accepted", 20,
                        "accepted")
            await asyncio.to_thread(alice.wait_contact, bob_id,
                                    lambda r: r["state"] == "accepted", 60)
            await pilot.press("escape")
            await until(pilot, lambda: "Alice" in screen_text(app), 10, "Alice listed")
            # A message while the conversation is closed: counted unread in the list.
            await asyncio.to_thread(cli, alice.profile, "send", bob_id, "are you there?")
            await until(pilot, lambda: "[1 unread]" in screen_text(app), 90, "unread count")
            assert "Alice: are you there?" in screen_text(app)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationScreen), 5,
                        "conversation")
            await pilot.press(*"hello Alice", "ctrl+n", *"second line", "enter")
            screen = app.screen
            assert isinstance(screen, ConversationScreen)

            def mine() -> MessageItem | None:
                return next((i for i in screen.query(MessageItem)
                             if i.message.text == "hello Alice\nsecond line"), None)

            await until(pilot, lambda: mine() is not None, 10, "my message shown")
            await until(pilot, lambda: (m := mine()) is not None and m.message.delivered,
                        90, "the delivered mark")
            await until(pilot, lambda: "second line ✓" in screen_text(app), 5, "✓ shown")
            rows = await asyncio.to_thread(_history, alice.profile, bob_id)
            assert any(r["text"] == "hello Alice\nsecond line" for r in rows)
            # Alice reads it (message.receive): Bob's mark becomes read.
            await asyncio.to_thread(cli, alice.profile, "receive")
            await until(pilot, lambda: (m := mine()) is not None and m.message.read, 60,
                        "the read mark")
            await until(pilot, lambda: "second line ✓✓" in screen_text(app), 5, "✓✓ shown")
            # Alice answers; it appears in Bob's open conversation, and is marked read.
            await asyncio.to_thread(cli, alice.profile, "send", bob_id, "hi Bob!")
            await until(pilot, lambda: any(i.message.text == "hi Bob!"
                                           for i in screen.query(MessageItem)), 90,
                        "Alice's answer")
            await until(pilot, lambda: "Alice: hi Bob!" in screen_text(app)
                        and "are you there?" in screen_text(app), 5, "both on screen")
            # Alice types (over the data channel the daemons opened): Bob sees it.
            await asyncio.to_thread(alice.wait_contact, bob_id,
                                    lambda r: r.get("status") == "connected", 60)
            await call(alice.profile / "daemon.sock", "message.typing", {"contact": bob_id})
            await until(pilot, lambda: "Alice is typing…" in screen_text(app), 20, "typing")

            def answer_read() -> bool:
                rows = _history(alice.profile, bob_id)
                return any(r["text"] == "hi Bob!" and r["read"] for r in rows)

            deadline = time.monotonic() + 60
            while not await asyncio.to_thread(answer_read):
                assert time.monotonic() < deadline, "Alice never saw ✓✓"
                await pilot.pause(0.3)
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()


def test_add_a_contact_by_pasting_an_id_checked_as_typed(tmp_path: Path,
                                                         dht: DhtProcess) -> None:
    frank, frank_id = start_daemon(tmp_path, "frank", dht)
    grace, grace_id = start_daemon(tmp_path, "grace", dht)
    app = DhtchatApp(frank.profile)
    typo = grace_id[:-1] + ("a" if grace_id[-1] != "a" else "b")

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await pilot.press("a")
            await until(pilot, lambda: "Add a contact" in screen_text(app), 5, "add screen")
            await pilot.press(*grace_id[:20])
            await until(pilot, lambda: "✗ a user id has 58 characters, this one has 20"
                        in screen_text(app), 5, "length error")
            id_input = app.screen.query_one("#user_id")
            id_input.value = typo  # type: ignore[attr-defined]
            await until(pilot, lambda: "✗ user id checksum mismatch" in screen_text(app), 5,
                        "checksum error")
            await pilot.press("ctrl+s")  # refused here, nothing sent
            await until(pilot, lambda: "✗ user id checksum mismatch" in screen_text(app), 5,
                        "still refused")
            # The daemon's own errors are messages: asking myself.
            id_input.value = frank_id  # type: ignore[attr-defined]
            await until(pilot, lambda: "✓ checksum ok" in screen_text(app), 5, "ok")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: any("your own id" in n.message
                                           for n in app._notifications), 30, "the error")
            # Pasted in groups with line breaks, as the id card shows it.
            id_input.value = ""  # type: ignore[attr-defined]
            await pilot.pause()
            app.post_message(Paste(f"{grace_id[:29]}\n{grace_id[29:]}\n".upper()))
            await until(pilot, lambda: "✓ checksum ok" in screen_text(app), 5, "ok again")
            await pilot.press("enter")  # to the note
            await pilot.press(*"from Frank", "enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 60,
                        "request sent")
            assert app.state.contacts[grace_id].state == "outgoing"
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
        row = grace.wait_contact(frank_id, lambda r: r["state"] == "incoming", 60)
        assert row["message"] == "from Frank" and row["name"] == "Frank"
    finally:
        frank.stop()
        grace.stop()


def test_a_group_message_with_its_author_and_the_disappearing_timer(
        tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    make_contacts(alice, alice_id, bob, bob_id)  # Bob calls her "alice"
    app = DhtchatApp(bob.profile)

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await asyncio.to_thread(cli, alice.profile, "timer", bob_id, "3600")
            await asyncio.to_thread(cli, alice.profile, "group", "create", "Newsroom",
                                    "--member", bob_id)
            await until(pilot, lambda: "# Newsroom" in screen_text(app), 90, "the group")
            await asyncio.to_thread(cli, alice.profile, "send", "Newsroom", "group hello")
            await until(pilot, lambda: "alice: group hello" in screen_text(app)
                        and "[1 unread]" in screen_text(app), 90, "the group message")
            view = app.screen.query_one(ListView)
            rows = [item.row.title for item in view.query(ConversationItem)]
            view.index = rows.index("Newsroom")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationScreen)
                        and "alice: group hello" in screen_text(app), 10, "group history")
            assert "# Newsroom · group, 2 members" in screen_text(app)
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 5, "back")
            view = app.screen.query_one(ListView)
            rows = [item.row.title for item in view.query(ConversationItem)]
            view.index = rows.index("alice")
            await pilot.press("enter")
            await until(pilot, lambda: "⏱ 1 h disappearing" in screen_text(app), 30,
                        "the timer in the header")
            assert "⚑ [timer] messages disappear 3600 s after they are read" \
                in screen_text(app)
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()
