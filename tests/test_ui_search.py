"""Searching a conversation in the desktop client: Ctrl+F in the conversation, words, Enter;
the matches of this conversation only are listed (a real daemon pair on a loopback DHT)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import ListView

from dhtchat.app.rpc import call
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.screens.conversation import ConversationScreen
from dhtchat.ui.screens.conversations import ConversationItem, ConversationsScreen
from dhtchat.ui.screens.search import SearchScreen
from tests.daemons import DhtProcess, make_contacts
from tests.test_ui_support import screen_text, start_daemon, until


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


def test_ctrl_f_lists_the_messages_that_contain_the_words(tmp_path: Path,
                                                          dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    carol, carol_id = start_daemon(tmp_path, "carol", dht)
    try:
        make_contacts(alice, alice_id, bob, bob_id)
        make_contacts(carol, carol_id, bob, bob_id)

        async def send(daemon: object, text: str) -> None:
            profile = alice.profile if daemon is alice else carol.profile
            await call(profile / "daemon.sock", "message.send",
                       {"to": bob_id, "text": text, "wait": True}, 60)

        async def scenario() -> None:
            for text in ("the Meeting is at noon", "bring the notes", "meeting moved to 2"):
                await send(alice, text)
            await send(carol, "carol's meeting notes")  # another conversation
            app = DhtchatApp(bob.profile)
            async with app.run_test() as pilot:
                await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                            "conversations")
                await until(pilot, lambda: "meeting moved to 2" in screen_text(app)
                            and "carol's meeting notes" in screen_text(app), 30,
                            "both conversations listed")
                # open Alice's conversation with the keys: down the list to her row, Enter
                for _ in range(4):
                    item = app.screen.query_one(ListView).highlighted_child
                    if isinstance(item, ConversationItem) and item.row.key == alice_id:
                        break
                    await pilot.press("down")
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, ConversationScreen), 10,
                            "the conversation")
                await pilot.press("ctrl+f")
                await until(pilot, lambda: isinstance(app.screen, SearchScreen), 5, "search")
                await pilot.press(*"meeting", "enter")
                await until(pilot, lambda: "2 messages contain" in screen_text(app), 20,
                            "the matches")
                text = screen_text(app)
                assert "meeting moved to 2" in text and "the Meeting is at noon" in text
                assert "bring the notes" not in text and "carol's meeting notes" not in text
                assert text.index("meeting moved to 2") < text.index("the Meeting is at noon")
                await pilot.press("ctrl+a", "ctrl+k", *"nowhere", "enter")
                await until(pilot, lambda: "No message here contains" in screen_text(app), 20,
                            "no match")
                await pilot.press("escape")
                await until(pilot, lambda: isinstance(app.screen, ConversationScreen), 5,
                            "back in the conversation")

        asyncio.run(scenario())
    finally:
        for daemon in (alice, bob, carol):
            daemon.stop()
