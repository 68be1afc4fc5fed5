"""A 10,000-message conversation opens in under a second in the desktop client (the newest
page first), and scrolling to the top pages older messages in; real daemons, loopback DHT."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dhtchat.app.rpc import RpcClient
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.client import UiClient, socket_path
from dhtchat.ui.screens.conversation import PAGE, ConversationScreen
from dhtchat.ui.screens.conversations import ConversationsScreen
from dhtchat.ui.widgets import HistoryView, MessageItem
from tests.daemons import DhtProcess, make_contacts
from tests.test_ui_support import screen_text, start_daemon, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

COUNT = 10_000
OPEN_BUDGET = 1.0  # seconds (issue 13)


async def _send_many(profile: Path, to: str, count: int, first: int = 0) -> None:
    client = await RpcClient.open(profile / "daemon.sock")
    try:
        for start in range(first, first + count, 1000):
            batch = [{"to": to, "text": f"message {n}"}
                     for n in range(start, min(first + count, start + 1000))]
            await client.call("message.send_batch", {"messages": batch})
    finally:
        await client.close()


async def _history_count(profile: Path, contact: str) -> int:
    client = UiClient(socket_path(profile))
    await client.connect()
    try:
        return len(await client.history(contact, COUNT + 10))
    finally:
        await client.close()


def test_ten_thousand_messages_open_in_a_second_and_page_in(tmp_path: Path) -> None:
    dht = DhtProcess(16)
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    try:
        make_contacts(alice, alice_id, bob, bob_id)
        asyncio.run(_send_many(alice.profile, bob_id, COUNT))
        deadline = time.monotonic() + 180
        while asyncio.run(_history_count(bob.profile, alice_id)) < COUNT:
            assert time.monotonic() < deadline, "the messages did not all arrive"
            time.sleep(1.0)
        app = DhtchatApp(bob.profile)

        async def scenario() -> None:
            async with app.run_test() as pilot:
                await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                            "conversations")
                await until(pilot, lambda: "alice" in screen_text(app), 10, "alice listed")
                started = time.monotonic()
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, ConversationScreen)
                            and len(app.screen.query(MessageItem)) == PAGE
                            and f"message {COUNT - 1}" in screen_text(app), 10, "first page")
                opened = time.monotonic() - started
                screen = app.screen
                assert isinstance(screen, ConversationScreen)
                await until(pilot, lambda: "painted_ms" in screen.timings, 5, "painted")
                print(f"opened a {COUNT}-message conversation: {opened * 1000:.0f} ms from the "
                      f"key to the text on screen (polled every 50 ms); in the app "
                      f"{screen.timings}")
                # From the screen's creation to its first paint with the newest page (the
                # key's own delivery by the pilot is not the app's).
                assert screen.timings["painted_ms"] < OPEN_BUDGET * 1000
                view = screen.query_one(HistoryView)
                view.scroll_home(animate=False)
                await until(pilot, lambda: len(screen.query(MessageItem)) == 2 * PAGE, 10,
                            "the second page")
                items = list(screen.query(MessageItem))
                assert items[0].message.text == f"message {COUNT - 2 * PAGE}"
                assert items[-1].message.text == f"message {COUNT - 1}"
                # the place is kept: the older page is above, out of view
                await until(pilot, lambda: view.scroll_y >= PAGE - 30, 5, "the place kept")
                await pilot.press("ctrl+q")
                await until(pilot, lambda: not app.is_running, 10, "exit")

        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()
        dht.stop()


BURST = 2_000


def test_a_burst_of_messages_while_the_client_runs(tmp_path: Path) -> None:
    """Messages arriving by the thousand are counted one by one, in a few redraws."""
    dht = DhtProcess(16)
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    try:
        make_contacts(alice, alice_id, bob, bob_id)
        app = DhtchatApp(bob.profile)

        async def scenario() -> None:
            async with app.run_test() as pilot:
                await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                            "conversations")
                started = time.monotonic()
                await _send_many(alice.profile, bob_id, BURST)
                await until(pilot, lambda: f"[{BURST} unread]" in screen_text(app)
                            and f"message {BURST - 1}" in screen_text(app), 180, "the burst")
                print(f"{BURST} messages sent and shown in "
                      f"{time.monotonic() - started:.1f} s")
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, ConversationScreen)
                            and f"message {BURST - 1}" in screen_text(app), 10, "opened")
                # A second burst while the conversation is open: every message is shown,
                # in order, with no gap.
                screen = app.screen
                assert isinstance(screen, ConversationScreen)
                await _send_many(alice.profile, bob_id, 300, first=BURST)
                await until(pilot, lambda: bool(screen.messages)
                            and screen.messages[-1].text == f"message {BURST + 299}", 120,
                            "the second burst")
                texts = [m.text for m in screen.messages]
                start = texts.index(f"message {BURST - PAGE}")
                assert texts[start:] == [f"message {n}"
                                         for n in range(BURST - PAGE, BURST + 300)]
                await pilot.press("ctrl+q")
                await until(pilot, lambda: not app.is_running, 10, "exit")

        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()
        dht.stop()
