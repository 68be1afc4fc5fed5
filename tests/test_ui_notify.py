"""Notifications of the desktop client: which channel (desktop through the session bus, else
the terminal bell), what they say (no message text unless allowed), and the fallback to the
bell when the bus fails. No bus is needed: the desktop sender is injected."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dhtchat.ui.events import CallEvent, ContactRequestEvent, MessageEvent, TypingEvent
from dhtchat.ui.models import Contact, Message
from dhtchat.ui.notify import Note, Notifier, channel, note_for
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.state import ChatState

ME, ALICE = "m" * 58, "a" * 58
SECRET = "meet at the north gate at 9"


def _state(open_conversation: str | None = None) -> ChatState:
    state = ChatState(me=ME, connected=True)
    state.contacts = {ALICE: Contact(ALICE, "Alice", "accepted", status="connected")}
    state.last = {ALICE: Message(id="1" * 32, kind="text", author=ALICE, author_name="Alice",
                                 sender=ALICE, to=ME, text=SECRET, timestamp=1.0,
                                 received=2.0, seq=1, delivered=False, read=False)}
    state.open_conversation = open_conversation
    return state


def test_the_channel_is_the_desktop_only_with_a_session_bus_here() -> None:
    bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}
    assert channel(bus, "linux") == "desktop"
    assert channel({}, "linux") == "bell"  # a console, a container: no bus
    assert channel({"DBUS_SESSION_BUS_ADDRESS": ""}, "linux") == "bell"
    # Over SSH a bus (if any) belongs to the remote machine, not where the user sits.
    assert channel({**bus, "SSH_CONNECTION": "10.0.0.1 5 10.0.0.2 22"}, "linux") == "bell"
    assert channel({"SSH_TTY": "/dev/pts/3"}, "darwin") == "bell"
    assert channel({}, "darwin") == "desktop"


def test_message_text_is_withheld_unless_allowed() -> None:
    event = MessageEvent(5, 3.0, ALICE, 1, "text")
    withheld = note_for(event, _state(), UiPrefs())
    assert withheld == Note("message", "Alice", "new message")
    assert SECRET not in withheld.title + withheld.body
    allowed = note_for(event, _state(), UiPrefs(notify_text=True))
    assert allowed is not None and allowed.body == SECRET
    # a file offer: its name is content too
    file_note = note_for(MessageEvent(6, 3.0, ALICE, 2, "file"), _state(), UiPrefs())
    assert file_note is not None and file_note.body == "sent a file"
    # the conversation on screen, or notifications off: nothing
    assert note_for(event, _state(open_conversation=ALICE), UiPrefs()) is None
    assert note_for(event, _state(), UiPrefs(notifications=False)) is None
    assert note_for(TypingEvent(7, 3.0, ALICE), _state(), UiPrefs()) is None


def test_requests_and_calls_are_notified_without_the_note() -> None:
    request = ContactRequestEvent(8, 1.0, "b" * 58, "Bob", "it's Bob from the paper")
    note = note_for(request, _state(), UiPrefs())
    assert note == Note("request", "Contact request from Bob", "wants to be your contact")
    shown = note_for(request, _state(), UiPrefs(notify_text=True))
    assert shown is not None and "it's Bob from the paper" in shown.body
    ring = CallEvent(9, 1.0, "call.ringing", "c" * 32, ALICE, "ringing", {"video": True})
    assert note_for(ring, _state(), UiPrefs()) == Note("call", "Alice is calling", "video call")


def test_the_bell_without_a_bus_and_when_the_bus_fails(tmp_path: Path) -> None:
    rings: list[int] = []
    sent: list[tuple[str, str]] = []

    async def desktop(title: str, body: str) -> object:
        sent.append((title, body))
        return None

    async def broken(title: str, body: str) -> object:
        raise OSError("no notification daemon")

    event = MessageEvent(5, 3.0, ALICE, 1, "text")

    async def scenario() -> None:
        plain = Notifier(lambda: rings.append(1), env={}, platform="linux", desktop=desktop)
        assert await plain.event(event, _state(), UiPrefs()) is not None
        assert rings == [1] and sent == []
        bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}
        good = Notifier(lambda: rings.append(2), env=bus, platform="linux", desktop=desktop)
        await good.event(event, _state(), UiPrefs())
        assert sent == [("Alice", "new message")] and rings == [1]
        bad = Notifier(lambda: rings.append(3), env=bus, platform="linux", desktop=broken)
        assert await bad.show(Note("call", "Alice is calling", "voice call")) == "bell"
        assert rings == [1, 3] and bad.channel == "bell"  # and it stays the bell

    asyncio.run(scenario())


def test_the_preferences_are_kept_in_the_profile(tmp_path: Path) -> None:
    assert UiPrefs.load(tmp_path) == UiPrefs()
    UiPrefs(audio_in="tone:440", notify_text=True).save(tmp_path)
    again = UiPrefs.load(tmp_path)
    assert again.audio_in == "tone:440" and again.notify_text and again.audio_out == \
        "alsa:default"
    assert (tmp_path / "ui-prefs.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "ui-prefs.json").write_text("[not an object", "utf-8")
    assert UiPrefs.load(tmp_path) == UiPrefs()
