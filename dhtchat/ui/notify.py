"""Notifications of the desktop client: messages, contact requests and calls.

Theory of operation: after the app has applied an event to :class:`ChatState`,
:func:`note_for` decides whether it deserves a notification and words it. What someone else
wrote (a message, a request's note) is left out unless the user allowed it
(:attr:`UiPrefs.notify_text`, off by default): a notification can be read over the user's
shoulder or on a locked screen. :func:`channel` picks how it is shown: a desktop
notification through the session bus (``desktop-notifier``, D-Bus on Linux) when there is one
on the machine the user sits at, else the terminal bell (over SSH, on a console, and when
sending to the bus fails).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from dhtchat.app.terminal import one_line
from dhtchat.ui.events import ApiEvent, CallEvent, ContactRequestEvent, MessageEvent
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.state import ChatState

log = logging.getLogger("dhtchat.ui.notify")

Channel = Literal["desktop", "bell"]
PREVIEW = 120  # characters of a message shown when the user allowed it


@dataclass(frozen=True)
class Note:
    """One notification: what it is about, its title and its text."""

    kind: Literal["message", "request", "call"]
    title: str
    body: str


def channel(env: Mapping[str, str], platform: str) -> Channel:
    """Desktop notifications where a desktop session is at hand, else the bell."""
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return "bell"  # the session bus (if any) is on a machine the user is not at
    if platform == "darwin" or platform.startswith("win"):
        return "desktop"
    return "desktop" if env.get("DBUS_SESSION_BUS_ADDRESS") else "bell"


def _said(text: str, allowed: bool, withheld: str) -> str:
    if not allowed:
        return withheld
    line = one_line(text)
    return line if len(line) <= PREVIEW else line[: PREVIEW - 1] + "…"


def note_for(event: ApiEvent, state: ChatState, prefs: UiPrefs) -> Note | None:
    """The notification an event deserves (None: none), once ``state`` applied it."""
    if not prefs.notifications:
        return None
    match event:
        case MessageEvent(contact=contact, kind=kind) if kind in ("text", "file"):
            if contact == state.open_conversation:
                return None
            last = state.last.get(contact)
            if last is not None and last.outgoing(state.me):
                return None
            text = last.text if last is not None else ""
            withheld = "sent a file" if kind == "file" else "new message"
            return Note("message", one_line(state.name_of(contact)),
                        _said(text, prefs.notify_text, withheld))
        case MessageEvent(kind="group_text"):
            newest = max((m for m in state.last.values()
                          if m.group and not m.outgoing(state.me)),
                         key=lambda m: m.shown_at, default=None)
            if newest is None or newest.group == state.open_conversation:
                return None
            group = state.groups.get(newest.group or "")
            where = one_line(group.name) if group else "a group"
            who = one_line(newest.author_name or state.name_of(newest.author))
            return Note("message", f"{where}: {who}",
                        _said(newest.text, prefs.notify_text, "new message"))
        case ContactRequestEvent(name=name, message=note):
            body = "wants to be your contact"
            if prefs.notify_text and note:
                body += ": " + _said(note, True, "")
            return Note("request", f"Contact request from {one_line(name) or 'someone'}",
                        body)
        case CallEvent(type="call.ringing", contact=contact, data=data):
            video = data.get("video") is True
            return Note("call", f"{one_line(state.name_of(contact))} is calling",
                        "video call" if video else "voice call")
    return None


Send = Callable[[str, str], Awaitable[object]]


class Notifier:
    """Shows notes on the chosen channel; a failing bus falls back to the bell for good."""

    def __init__(self, bell: Callable[[], None], env: Mapping[str, str] | None = None,
                 platform: str | None = None, desktop: Send | None = None) -> None:
        self.bell = bell
        self.channel: Channel = channel(os.environ if env is None else env,
                                        sys.platform if platform is None else platform)
        self._desktop = desktop
        self.shown: deque[tuple[Channel, Note]] = deque(maxlen=50)  # the latest shown

    def _sender(self) -> Send:
        if self._desktop is None:
            from desktop_notifier import DesktopNotifier  # noqa: PLC0415 - only with a bus

            notifier = DesktopNotifier(app_name="dhtchat")

            async def send(title: str, body: str) -> object:
                return await notifier.send(title=title, message=body)

            self._desktop = send
        return self._desktop

    async def show(self, note: Note) -> Channel:
        """Show one note; returns the channel it went out on."""
        if self.channel == "desktop":
            try:
                await self._sender()(note.title, note.body)
            except Exception as exc:  # no bus after all, a notification daemon gone...
                log.warning("desktop notifications failed (%s); the terminal bell from now "
                            "on", exc)
                self.channel = "bell"
            else:
                self.shown.append(("desktop", note))
                return "desktop"
        self.bell()
        self.shown.append(("bell", note))
        return "bell"

    async def event(self, event: ApiEvent, state: ChatState, prefs: UiPrefs) -> Note | None:
        """Notify about an event if it deserves it."""
        note = note_for(event, state, prefs)
        if note is not None:
            await self.show(note)
        return note
