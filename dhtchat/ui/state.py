"""What the desktop client knows about the conversations, kept from the API and its events.

:class:`ChatState` is filled by :meth:`ChatState.load` (``contact.list``, ``group.list`` and
the newest page of each conversation's ``message.history``, pipelined on one connection) and
kept current by :meth:`ChatState.apply` for every event. Screens render from it.

Unread counts: an incoming message is unread until the client shows its conversation. At load
they are the incoming messages of the newest page whose ``read`` is false; then every
``message`` event of a conversation that is not open adds one. Opening a conversation marks
only its messages read (``message.receive`` with ``contact``): the others stay unread at the
daemon too, so the counts survive a restart of the client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Final

from dhtchat.ui.client import ApiError, UiClient
from dhtchat.ui.events import (
    ApiEvent,
    ConnectionEvent,
    ContactAcceptedEvent,
    ContactRequestEvent,
    Disconnected,
    GroupChangedEvent,
    MessageEvent,
    PresenceEvent,
    ReceiptEvent,
    Reconnected,
    TypingEvent,
)
from dhtchat.ui.models import Contact, Group, Message

UNREAD_PAGE: Final = 200  # messages read per conversation at load to count the unread
TYPING_FOR: Final = 6.0  # seconds a typing notice lasts (docs/api.md §3.14)


@dataclass(frozen=True)
class ConversationRow:
    """One line of the conversations list."""

    key: str  # the contact's user id or the group's id
    title: str
    contact: Contact | None  # None for a group
    group: Group | None
    unread: int
    last: Message | None
    typing: bool

    @property
    def sort_key(self) -> tuple[float, str]:
        """Newest conversation first, then by name."""
        return (-(self.last.shown_at if self.last else 0.0), self.title.lower())


@dataclass
class ChatState:
    """Contacts, groups, last messages, unread counts and typing, as the API reports them."""

    me: str = ""
    contacts: dict[str, Contact] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    last: dict[str, Message] = field(default_factory=dict)
    unread: dict[str, int] = field(default_factory=dict)
    typing_until: dict[str, float] = field(default_factory=dict)
    open_conversation: str | None = None
    connected: bool = False  # the client's connection to the daemon is up

    async def load(self, client: UiClient) -> None:
        """Everything from the API (at start, and after events were missed)."""
        status, contacts, groups = await asyncio.gather(client.status(), client.contacts(),
                                                        client.groups())
        self.me = status.id
        self.connected = True
        self.contacts = {c.id: c for c in contacts}
        self.groups = {g.id: g for g in groups}
        keys = [c.id for c in contacts if c.state == "accepted"] + list(self.groups)
        pages = await asyncio.gather(*(client.history(key, UNREAD_PAGE) for key in keys),
                                     return_exceptions=True)
        self.last, self.unread = {}, {}
        for key, page in zip(keys, pages, strict=True):
            if isinstance(page, BaseException):
                if not isinstance(page, ApiError):
                    raise page
                continue
            if page:
                self.last[key] = page[-1]
            self.unread[key] = sum(1 for m in page if not m.outgoing(self.me) and not m.read
                                   and m.kind != "notice")

    def rows(self, now: float | None = None) -> list[ConversationRow]:
        """The conversations: accepted contacts and groups, newest first."""
        now = time.time() if now is None else now
        rows = [ConversationRow(c.id, c.label, c, None, self.unread.get(c.id, 0),
                                self.last.get(c.id), self.typing_until.get(c.id, 0) > now)
                for c in self.contacts.values() if c.state == "accepted"]
        rows += [ConversationRow(g.id, g.name, None, g, self.unread.get(g.id, 0),
                                 self.last.get(g.id), False)
                 for g in self.groups.values()]
        return sorted(rows, key=lambda r: r.sort_key)

    def incoming(self) -> list[Contact]:
        """The contact requests waiting for my answer."""
        return sorted((c for c in self.contacts.values() if c.state == "incoming"),
                      key=lambda c: c.since)

    def typing(self, key: str, now: float | None = None) -> bool:
        """Whether the contact typed within the last TYPING_FOR seconds."""
        return self.typing_until.get(key, 0.0) > (time.time() if now is None else now)

    def name_of(self, user_id: str) -> str:
        """A contact's name, else the start of the id."""
        contact = self.contacts.get(user_id)
        return contact.label if contact is not None else user_id[:12]

    async def apply(self, client: UiClient, events: list[ApiEvent]) -> None:
        """Bring the state up to date with a batch of events (the ones that came together:
        a burst of 1,000 messages costs a handful of API calls, not 1,000)."""
        last: set[str] = set()
        contacts = groups = reload = False
        group_texts = 0
        for event in events:
            match event:
                case MessageEvent(contact=contact, kind=kind):
                    self.typing_until.pop(contact, None)
                    if kind == "group_text":
                        group_texts += 1
                    else:
                        last.add(contact)
                        if contact != self.open_conversation and kind in ("text", "file"):
                            self.unread[contact] = self.unread.get(contact, 0) + 1
                case GroupChangedEvent():
                    groups = True
                case ReceiptEvent(contact=contact):
                    last.add(contact)
                case TypingEvent(contact=contact):
                    self.typing_until[contact] = time.time() + TYPING_FOR
                case (PresenceEvent() | ConnectionEvent() | ContactRequestEvent()
                      | ContactAcceptedEvent()):
                    contacts = True
                case Disconnected():
                    self.connected = False
                case Reconnected(missed=missed):
                    self.connected = True
                    contacts = True
                    reload = reload or missed
        if reload:
            await self.load(client)
            return
        if contacts:
            self.contacts = {c.id: c for c in await client.contacts()}
        if groups:
            self.groups = {g.id: g for g in await client.groups()}
        await asyncio.gather(*(self._refresh_last(client, key) for key in last))
        if groups or group_texts:
            await self._refresh_groups(client, group_texts)

    async def _refresh_last(self, client: UiClient, key: str) -> None:
        try:
            page = await client.history(key, 1)
        except ApiError:
            return  # not (or no longer) a conversation
        if page:
            self.last[key] = page[-1]

    async def _refresh_groups(self, client: UiClient, new_texts: int) -> None:
        """Re-read each group's newest messages; the new ones from others are unread (the
        events do not say which group a message is in: up to ``new_texts`` per group)."""
        keys = list(self.groups)
        pages = await asyncio.gather(
            *(client.history(key, max(1, min(new_texts, UNREAD_PAGE))) for key in keys),
            return_exceptions=True)
        for key, page in zip(keys, pages, strict=True):
            if isinstance(page, BaseException):
                if not isinstance(page, ApiError):
                    raise page
                continue
            if not page:
                continue
            before = self.last.get(key)
            self.last[key] = page[-1]
            if not new_texts or key == self.open_conversation:
                continue
            fresh = [m for m in page if before is None or m.shown_at > before.shown_at]
            self.unread[key] = self.unread.get(key, 0) + sum(
                1 for m in fresh if not m.outgoing(self.me) and m.kind == "text")

    def opened(self, key: str | None) -> None:
        """The conversation now on screen (its unread count is cleared)."""
        self.open_conversation = key
        if key is not None:
            self.unread[key] = 0
