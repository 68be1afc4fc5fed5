"""Groups in the desktop client against real daemons on a loopback DHT: create a group with
two contacts, its members listed; a member's message shows its author in the group's
conversation (and reaches the other member, relayed by the admin, with the same author);
the admin removes a member; the admin cannot leave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import SelectionList

from dhtchat.app.rpc import call
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.screens.conversation import ConversationScreen
from dhtchat.ui.screens.conversations import ConversationsScreen
from dhtchat.ui.screens.groups import GroupsScreen, PickScreen
from tests.daemons import DaemonProcess, DhtProcess, cli
from tests.test_ui_support import screen_text, start_daemon, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


async def _api(profile: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    return await call(profile / "daemon.sock", method, params or {}, 60.0)


def _befriend(asker: DaemonProcess, asker_id: str, name: str, bob: DaemonProcess,
              bob_id: str) -> None:
    cli(asker.profile, "contact", "request", bob_id, "--name", name)
    bob.wait_contact(asker_id, lambda r: r["state"] == "incoming", 60)
    cli(bob.profile, "contact", "accept", asker_id, "--name", name)
    asker.wait_contact(bob_id, lambda r: r["state"] == "accepted", 60)


async def _until_api(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


def test_create_a_group_see_authors_remove_a_member(tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    carol, carol_id = start_daemon(tmp_path, "carol", dht)
    _befriend(alice, alice_id, "Alice", bob, bob_id)
    _befriend(carol, carol_id, "Carol", bob, bob_id)
    app = DhtchatApp(bob.profile)

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await pilot.press("f4")
            await until(pilot, lambda: isinstance(app.screen, GroupsScreen), 5, "groups")
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, PickScreen), 5, "new group")
            await pilot.press(*"Desk", "enter")  # the name, then to the people
            await pilot.press("space", "down", "space", "ctrl+s")
            await until(pilot, lambda: any(g.name == "Desk" for g in app.state.groups.values()),
                        30, "the group")
            group = next(g for g in app.state.groups.values() if g.name == "Desk")
            assert sorted(group.members) == sorted([alice_id, bob_id, carol_id])
            await until(pilot, lambda: "Members of Desk" in screen_text(app), 5, "members")
            text = screen_text(app)
            assert "Alice" in text and "Carol" in text and "me (admin, you)" in text
            # Alice (a member) writes to the group: Bob sees her as its author.
            await _until_api(lambda: _has_group(alice.profile, group.id), 60,
                             "Alice to get the group")
            await _api(alice.profile, "message.send", {"to": group.id, "text": "hello desk"})
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ConversationScreen), 5,
                        "the group's conversation")
            await until(pilot, lambda: "Alice: hello desk" in screen_text(app), 90,
                        "the message with its author")
            # Carol got it through Bob (the admin), signed by Alice.
            rows = await _until_api(lambda: _texts(carol.profile, group.id, "hello desk"), 90,
                                    "Carol to get it")
            assert rows[0]["author"] == alice_id
            # The admin removes Carol; the admin cannot leave.
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, GroupsScreen), 5, "groups")
            await pilot.press("l")
            await until(pilot, lambda: any("cannot leave" in n.message
                                           for n in app._notifications), 5, "admin stays")
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, PickScreen), 5, "remove")
            app.screen.query_one(SelectionList).select(carol_id)
            await pilot.press("ctrl+s")
            await until(pilot, lambda: carol_id not in app.state.groups[group.id].members, 30,
                        "Carol removed")
            await _until_api(lambda: _left(carol.profile, group.id), 60, "Carol told")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
    finally:
        for daemon in (alice, bob, carol):
            daemon.stop()


async def _has_group(profile: Path, group_id: str) -> bool:
    return any(g["id"] == group_id for g in await _api(profile, "group.list"))


async def _texts(profile: Path, group_id: str, text: str) -> list[dict[str, Any]]:
    try:
        rows = await _api(profile, "message.history", {"contact": group_id})
    except Exception:
        return []
    return [r for r in rows if r["text"] == text]


async def _left(profile: Path, group_id: str) -> bool:
    return any(g["id"] == group_id and not g["active"] for g in await _api(profile,
                                                                            "group.list"))
