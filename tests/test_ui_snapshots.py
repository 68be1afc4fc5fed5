"""Snapshot (SVG) of the desktop client's conversations screen on fixed data, at 80x24:
presence as symbol and word, the verified badge, unread counts, last messages with their
marks, a group. Update after a deliberate change with ``pytest --snapshot-update``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.app import App

from dhtchat.core.identity import SigningIdentity
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.client import UiClient
from dhtchat.ui.models import Contact, Group, Message
from dhtchat.ui.screens.conversations import ConversationsScreen
from dhtchat.ui.screens.requests import RequestsScreen
from dhtchat.ui.state import ChatState
from tests.test_ui_support import screen_text

T0 = 1_764_000_000.0  # 2025-11-24 16:00 UTC


def _id(seed: int) -> str:
    return SigningIdentity.from_seed(bytes([seed]) * 32).user_id


ME, ALICE, BOB, CAROL, MALLORY, DAN = _id(1), _id(2), _id(3), _id(4), _id(5), _id(6)
GROUP = "ab" * 16


def _message(n: int, author: str, to: str, text: str, at: float, *, delivered: bool = False,
             read: bool = False, group: str | None = None, author_name: str | None = None
             ) -> Message:
    return Message(id=f"{n:032x}", kind="text", author=author, author_name=author_name,
                   sender=author, to=to, text=text, timestamp=at,
                   received=None if author == ME else at + 1, seq=n, delivered=delivered,
                   read=read, group=group, group_name="Newsroom" if group else None)


def fixed_state() -> ChatState:
    """Three contacts, one group, a request received and one sent, as the API would report
    them."""
    state = ChatState(me=ME, connected=True)
    state.contacts = {
        ALICE: Contact(ALICE, "Alice", "accepted", status="connected", verified=T0 - 86400,
                       path="direct"),
        BOB: Contact(BOB, "Bob", "accepted", status="online"),
        CAROL: Contact(CAROL, "Carol", "accepted", status="offline"),
        MALLORY: Contact(MALLORY, "Alice", "incoming", message="it's me, new phone",
                         since=T0, warning="uses the name of your verified contact 'Alice' "
                         "but is a different identity"),
        DAN: Contact(DAN, DAN[:12], "outgoing", message="hi Dan", since=T0 - 60),
    }
    state.groups = {GROUP: Group(GROUP, "Newsroom", ME, (ME, ALICE, BOB), True, True, 2)}
    state.last = {
        ALICE: _message(1, ME, ALICE, "the draft is in the shared folder", T0 + 600,
                        delivered=True, read=True),
        BOB: _message(2, BOB, ME, "can we talk tonight? I have news about the source",
                      T0 + 300, author_name="Bob"),
        GROUP: _message(3, ALICE, GROUP, "meeting moved to 15:00", T0 + 120, group=GROUP,
                        author_name="Alice"),
        CAROL: _message(4, ME, CAROL, "thanks!", T0 - 3 * 86400),
    }
    state.unread = {BOB: 2, GROUP: 1}
    return state


class SnapshotApp(App[None]):
    """The conversations screen (or another) on fixed state; no daemon."""

    BINDINGS = DhtchatApp.BINDINGS
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, screen: Callable[[], object]) -> None:
        super().__init__()
        self.profile = Path("/nonexistent")
        self.client = UiClient(Path("/nonexistent/daemon.sock"))
        self.state = fixed_state()
        self._make = screen

    def on_mount(self) -> None:
        screen = self._make()
        assert isinstance(screen, ConversationsScreen | RequestsScreen)
        self.push_screen(screen)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_conversations_screen(snap_compare: Callable[..., bool], utc: None) -> None:
    assert snap_compare(SnapshotApp(ConversationsScreen), terminal_size=(80, 24))


def test_requests_screen_shows_the_impersonation_warning(
        snap_compare: Callable[..., bool], utc: None) -> None:
    assert snap_compare(SnapshotApp(RequestsScreen), terminal_size=(80, 24))


def test_accepting_a_flagged_request_asks_first() -> None:
    """A request the API flags as impersonating a verified contact is accepted only after a
    second, explicit yes (no daemon here: the accept call then fails with a message)."""
    async def scenario() -> None:
        app = SnapshotApp(RequestsScreen)
        async with app.run_test() as pilot:
            await pilot.pause()
            await pilot.press("a")
            await pilot.pause()
            assert "Someone may be pretending" in screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            assert not app._notifications  # nothing was asked of the daemon
            assert "Someone may be pretending" not in screen_text(app)
            await pilot.press("a")
            await pilot.pause()
            await pilot.press("y")
            for _ in range(100):
                if app._notifications:
                    break
                await pilot.pause(0.02)
            assert any("not connected to the daemon" in n.message for n in app._notifications)

    asyncio.run(scenario())
