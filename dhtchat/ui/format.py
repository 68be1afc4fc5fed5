"""How the desktop client words things: marks, presence, times, badges.

Nothing is conveyed by colour alone: every state has a word or a symbol. Text that other
people chose (names, messages, request notes) is made terminal-safe and always rendered as
plain text (``rich.text.Text``), never as markup.
"""

from __future__ import annotations

import time
from typing import Final

from rich.text import Text

from dhtchat.app.terminal import one_line, terminal_safe
from dhtchat.ui.models import Contact, Message

VERIFIED: Final = "✔verified"
MARK_QUEUED: Final = "…"  # outgoing, not yet acknowledged (as `dhtchat history`)
MARK_DELIVERED: Final = "✓"
MARK_READ: Final = "✓✓"

# presence: a symbol and a word (the symbol differs too, for a monochrome terminal)
PRESENCE: Final = {
    "connected": ("●", "connected"),
    "online": ("◐", "online"),
    "connecting": ("◌", "connecting"),
    "unreachable": ("✕", "unreachable"),
    "offline": ("○", "offline"),
}


def safe(text: str) -> str:
    """``text`` with control characters escaped (it may have come from someone else)."""
    return terminal_safe(text)


def preview(text: str, width: int) -> str:
    """One terminal-safe line of at most ``width`` characters."""
    line = one_line(text)
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def mark(message: Message, me: str) -> str:
    """The delivery mark of my message ("" for theirs)."""
    if not message.outgoing(me) or message.kind != "text":
        return ""
    if message.read:
        return MARK_READ
    return MARK_DELIVERED if message.delivered else MARK_QUEUED


def mark_word(message: Message, me: str) -> str:
    """The mark in words, for screen readers and the help text."""
    return {MARK_READ: "read", MARK_DELIVERED: "delivered", MARK_QUEUED: "sent"}.get(
        mark(message, me), "")


def presence(contact: Contact | None) -> tuple[str, str]:
    """The presence symbol and word of a contact (groups: no presence)."""
    if contact is None:
        return "#", "group"
    if contact.state != "accepted":
        return "?", contact.state
    return PRESENCE.get(contact.status, ("○", contact.status or "offline"))


def clock(at: float, now: float | None = None) -> str:
    """HH:MM today, else the date (local time)."""
    now = time.time() if now is None else now
    local, today = time.localtime(at), time.localtime(now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%Y-%m-%d", local)


def stamp(at: float) -> str:
    """Date and time of a message in the history."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def author(message: Message, me: str) -> str:
    """Who wrote a message: "me", the contact's name, else the start of their id."""
    if message.outgoing(me):
        return "me"
    return one_line(message.author_name or message.author[:12])


def timer_text(seconds: int) -> str:
    """The disappearing-message timer as shown in a conversation's header."""
    if seconds <= 0:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"⏱ {seconds // size} {unit}"
    return f"⏱ {seconds} s"


def timer_of(messages: list[Message]) -> int | None:
    """The conversation's timer from its newest timer notice in ``messages`` (None: none
    there). The API has no call for the timer itself; its notices say it (§3.15)."""
    for message in reversed(messages):
        if message.kind != "notice" or not message.text.startswith("[timer]"):
            continue
        if "off" in message.text:
            return 0
        for word in message.text.split():
            if word.isdigit():
                return int(word)
    return None


def message_line(message: Message, me: str) -> Text:
    """One message of the history: time, author, text, mark."""
    line = Text()
    line.append(stamp(message.shown_at), style="dim")
    line.append(" ")
    who = author(message, me)
    if message.kind == "notice":
        line.append("⚑ " + safe(message.text), style="italic")
        return line
    line.append(who, style="bold")
    line.append(": ")
    text = safe(message.text).replace("\n", "\n    ")  # continuation lines indented
    if message.kind == "file":
        text = "⚑ " + text
    line.append(text)
    tick = mark(message, me)
    if tick:
        line.append(f" {tick}", style="bold")
    return line


def name(text: str) -> str:
    """A name someone chose, on one terminal-safe line."""
    return one_line(text)
