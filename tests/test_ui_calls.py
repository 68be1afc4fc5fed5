"""Calls in the desktop client against real daemons on a loopback DHT, with tone sources: an
incoming call answered in the dialog, the same SAS words on both sides, live numbers, "they
match" verifies the contact; a call placed with F2, "they differ" hangs up and warns; a group
call from a group's conversation, each leg's words equal to that person's, Tab to pick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.rpc import call
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.screens.calls import (
    CallScreen,
    DifferScreen,
    IncomingCallScreen,
    PlaceCallScreen,
    big,
)
from dhtchat.ui.screens.conversations import ConversationsScreen
from tests.daemons import DaemonProcess, DhtProcess, cli, make_contacts
from tests.test_ui_support import screen_text, start_daemon, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


async def _api(profile: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    return await call(profile / "daemon.sock", method, params or {}, 60.0)


async def _alice_sas(profile: Path, call_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await _api(profile, "call.status", {"id": call_id})
        if status.get("sas"):
            return str(status["sas"]["words"])
        await asyncio.sleep(0.2)
    raise AssertionError("Alice's daemon never showed a SAS")


def test_answer_a_call_and_place_one_with_equal_sas_words(tmp_path: Path,
                                                          dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    make_contacts(alice, alice_id, bob, bob_id)
    UiPrefs(audio_in="tone:1000", audio_out=str(tmp_path / "bob-heard.wav")).save(bob.profile)
    app = DhtchatApp(bob.profile)

    def panel() -> CallScreen | None:
        return app.screen if isinstance(app.screen, CallScreen) else None

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            # 0. Alice calls; Bob declines in the dialog.
            refused = await _api(alice.profile, "call.start", {"to": bob_id})
            await until(pilot, lambda: isinstance(app.screen, IncomingCallScreen), 60,
                        "the first incoming-call dialog")
            await pilot.press("d")
            deadline = time.monotonic() + 30
            while (await _api(alice.profile, "call.status", {"id": refused["id"]}))[
                    "reason"] != "declined":
                assert time.monotonic() < deadline, "Alice never saw the call declined"
                await asyncio.sleep(0.2)
            assert isinstance(app.screen, ConversationsScreen)
            # 1. Alice calls; Bob answers in the dialog.
            placed = await _api(alice.profile, "call.start", {
                "to": bob_id, "audio_in": "tone:440",
                "audio_out": str(tmp_path / "alice-heard.wav")})
            await until(pilot, lambda: isinstance(app.screen, IncomingCallScreen), 60,
                        "the incoming-call dialog")
            assert "is calling" in screen_text(app) and "d  decline" in screen_text(app)
            # notified too (the desktop with a session bus, else the bell), no text asked
            assert any(note.kind == "call" and note.title == "alice is calling"
                       for _, note in app.notifier.shown), list(app.notifier.shown)
            await pilot.press("a")
            await until(pilot, lambda: (p := panel()) is not None and bool(p.leg.sas_words),
                        60, "the SAS words on the panel")
            screen = panel()
            assert screen is not None
            theirs = await _alice_sas(alice.profile, placed["id"], 30)
            assert screen.leg.sas_words == theirs
            await until(pilot, lambda: big(theirs) in screen_text(app), 5, "large words")
            await until(pilot, lambda: "RTT —" not in screen_text(app)
                        and "ms" in screen_text(app), 30, "live RTT")
            await until(pilot, lambda: screen.leg.state == "active", 30, "active")
            await pilot.press("m")
            await until(pilot, lambda: "muted" in screen_text(app), 10, "muted")
            await pilot.press("y")
            await until(pilot, lambda: app.state.contacts[alice_id].verified is not None, 20,
                        "verified")
            assert "is verified" in screen_text(app)
            await pilot.press("x")
            await until(pilot, lambda: screen.leg.ended, 30, "hung up")
            ended = await _api(alice.profile, "call.status", {"id": placed["id"]})
            assert ended["state"] == "ended" and ended["reason"] == "hung up by the contact"
            # 2. Bob calls with F2 from the list; Alice answers with a tone.
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 10,
                        "back to the list")
            await _api(alice.profile, "call.auto_answer", {
                "audio_in": "tone:440", "audio_out": str(tmp_path / "alice-heard-2.wav")})
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, PlaceCallScreen), 10, "voice?")
            await pilot.press("a")
            await until(pilot, lambda: (p := panel()) is not None and bool(p.leg.sas_words),
                        90, "the SAS of the call Bob placed")
            second = panel()
            assert second is not None and second.leg.direction == "outgoing"
            theirs = await _alice_sas(alice.profile, second.leg.id, 30)
            assert second.leg.sas_words == theirs
            await pilot.press("n")  # they differ: hang up and warn
            await until(pilot, lambda: isinstance(app.screen, DifferScreen), 10, "warning")
            assert "someone may be in the middle" in screen_text(app).lower().replace("\n",
                                                                                     " ")
            deadline = time.monotonic() + 30
            while (await _api(alice.profile, "call.status", {"id": second.leg.id}))[
                    "state"] != "ended":
                assert time.monotonic() < deadline, "the call did not end on Alice's side"
                await asyncio.sleep(0.2)
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()


def _befriend(asker: DaemonProcess, asker_id: str, asker_name: str, other: DaemonProcess,
              other_id: str) -> None:
    cli(asker.profile, "contact", "request", other_id, "--name", asker_name)
    other.wait_contact(asker_id, lambda r: r["state"] == "incoming", 60)
    cli(other.profile, "contact", "accept", asker_id, "--name", asker_name)
    asker.wait_contact(other_id, lambda r: r["state"] == "accepted", 60)


def test_a_group_call_from_the_group_conversation(tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    carol, carol_id = start_daemon(tmp_path, "carol", dht)
    _befriend(alice, alice_id, "Alice", bob, bob_id)
    _befriend(carol, carol_id, "Carol", bob, bob_id)
    _befriend(carol, carol_id, "Carol", alice, alice_id)
    UiPrefs(audio_in="tone:300", audio_out=str(tmp_path / "bob.wav")).save(bob.profile)
    app = DhtchatApp(bob.profile)

    async def scenario() -> None:
        group = await _api(bob.profile, "group.create", {"name": "Desk",
                                                         "members": [alice_id, carol_id]})
        for who, tone in ((alice, 500), (carol, 700)):
            await _api(who.profile, "call.auto_answer", {
                "audio_in": f"tone:{tone}", "audio_out": str(tmp_path / f"{tone}.wav")})
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await until(pilot, lambda: group["id"] in app.state.groups, 10, "the group")
            await pilot.press("f4", "enter")  # the groups, then the group's conversation
            await until(pilot, lambda: "# Desk" in screen_text(app), 10, "the conversation")
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, CallScreen), 90, "the panel")
            screen = app.screen
            assert isinstance(screen, CallScreen) and len(screen.order) == 2
            await until(pilot, lambda: all(screen.legs[k].sas_words for k in screen.order),
                        90, "both legs' words")
            for key in screen.order:
                leg = screen.legs[key]
                peer = alice if leg.contact == alice_id else carol
                assert leg.sas_words == await _alice_sas(peer.profile, key, 30)
                assert leg.sas_words in screen_text(app)  # each person's line
            await pilot.press("tab")
            chosen = screen.leg
            assert chosen.id == screen.order[1]  # Tab picked the second person
            await pilot.press("y")
            await until(pilot, lambda: app.state.contacts[chosen.contact].verified is not None,
                        20, "that person verified")
            other = next(k for k in screen.order if k != chosen.id)
            assert app.state.contacts[screen.legs[other].contact].verified is None
            await pilot.press("x")  # leave the group call: every leg ends
            await until(pilot, lambda: all(screen.legs[k].ended for k in screen.order), 30,
                        "all legs ended")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
    finally:
        for daemon in (alice, bob, carol):
            daemon.stop()
