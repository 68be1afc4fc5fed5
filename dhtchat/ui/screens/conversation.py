"""One conversation: the history (times, authors, delivery marks), typing indicator,
disappearing-message timer, and the compose box.

The history pages in: the screen opens with the newest PAGE messages (``message.history``
with ``limit``), and each time it is scrolled to the top it asks for the PAGE above the oldest
one shown (``before`` its id) and puts them above. Marks follow the ``receipt`` events; new
messages the ``message`` events, after which ``message.receive`` for this conversation marks
them read (the sender sees ✓✓; other conversations stay unread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import ClassVar, Final

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static, TextArea

from dhtchat.ui import format as fmt
from dhtchat.ui.client import ApiError
from dhtchat.ui.events import (
    ApiEvent,
    ConnectionEvent,
    GroupChangedEvent,
    MessageEvent,
    PresenceEvent,
    ReceiptEvent,
    Reconnected,
    TypingEvent,
)
from dhtchat.ui.models import Message
from dhtchat.ui.screens.base import ApiScreen, guarded
from dhtchat.ui.screens.search import SearchScreen
from dhtchat.ui.widgets import ComposeArea, HistoryView, KeyFooter, MessageItem

log = logging.getLogger("dhtchat.ui")

PAGE: Final = 50  # messages per page of history (a 24-line screen shows about 17)
TAIL: Final = 20  # newest messages re-read after a message or receipt event
TAIL_WIDENINGS: Final = 8  # 20, 80, ... 100,000: how far back a burst is looked for
LAYOUT_WAITS: Final = 100  # x 10 ms: how long a prepended page may take to be laid out
TYPING_EVERY: Final = 3.0  # seconds between my typing notices while I type (api.md §3.14)


class ConversationScreen(ApiScreen):
    """A conversation with a contact (``key``: their user id) or a group (its id)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+f", "search", "Find"),
        Binding("pageup", "older", "Older", show=True),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    ConversationScreen #head { height: 1; background: $boost; padding: 0 1; }
    ConversationScreen HistoryView { height: 1fr; padding: 0 1; }
    ConversationScreen MessageItem { height: auto; }
    ConversationScreen #typing { height: 1; padding: 0 1; color: $text-muted; }
    ConversationScreen ComposeArea { height: 4; }
    """

    def __init__(self, key: str, group: bool) -> None:
        super().__init__()
        self.key = key
        self.group = group
        self.messages: list[Message] = []
        self.items: dict[str, MessageItem] = {}
        self.more = True  # older messages may exist
        self.timer: int | None = None
        self._lock = asyncio.Lock()
        self._typing_sent = 0.0
        self._created = time.monotonic()
        self.timings: dict[str, float] = {}  # how long the first page took (ms)

    def compose(self) -> ComposeResult:
        yield Static("", id="head", markup=False)
        yield HistoryView(id="history")
        yield Static("", id="typing", markup=False)
        yield ComposeArea(id="compose", soft_wrap=True, show_line_numbers=False,
                          placeholder="message (Enter sends, Ctrl+N new line)")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.ui.state.opened(self.key)
        self.redraw_head()
        self.query_one(ComposeArea).focus()
        self.load_first()

    # ---------------------------------------------------------------- header

    def title_text(self) -> Text:
        """Name, presence, verified badge and timer."""
        state = self.ui.state
        head = Text()
        if self.group:
            group = state.groups.get(self.key)
            head.append(f"# {fmt.name(group.name) if group else self.key[:12]}", style="bold")
            if group is not None:
                head.append(f" · group, {len(group.members)} members")
                if not group.active:
                    head.append(" · you left")
        else:
            contact = state.contacts.get(self.key)
            symbol, word = fmt.presence(contact)
            head.append(fmt.name(contact.label) if contact else self.key[:12], style="bold")
            head.append(f" · {symbol} {word}")
            if contact is not None and contact.verified is not None:
                head.append(f" · {fmt.VERIFIED}", style="green")
            if contact is not None and contact.path:
                head.append(f" · {contact.path}")
        if self.timer:
            head.append(f" · {fmt.timer_text(self.timer)} disappearing")
        return head

    def redraw_head(self) -> None:
        """Redraw the header line."""
        self.query_one("#head", Static).update(self.title_text())

    def redraw_typing(self) -> None:
        """Show or clear "NAME is typing…"."""
        state = self.ui.state
        text = f"{fmt.name(state.name_of(self.key))} is typing…" \
            if not self.group and state.typing(self.key) else ""
        self.query_one("#typing", Static).update(text)

    # ---------------------------------------------------------------- history

    @work(group="history")
    async def load_first(self) -> None:
        """The newest page, shown at the bottom."""
        async with self._lock:
            page = await guarded(self.app, self.ui.client.history(self.key, PAGE))
            if page is None:
                return
            fetched = time.monotonic()
            self.more = len(page) >= PAGE
            view = self.query_one(HistoryView)
            items = [self._item(m) for m in page]
            self.messages = list(page)
            if items:
                await view.mount_all(items)
            self.timer = fmt.timer_of(self.messages)
            self.redraw_head()
            self._to_end(view)
            self.timings = {"history_ms": (fetched - self._created) * 1000,
                            "shown_ms": (time.monotonic() - self._created) * 1000}

            def painted() -> None:
                self.timings["painted_ms"] = (time.monotonic() - self._created) * 1000
                log.debug("conversation opened: %s", self.timings)

            self.call_after_refresh(painted)
        await self.mark_read()

    def _to_end(self, view: HistoryView) -> None:
        """Scroll to the newest message once the new ones are laid out."""
        self.call_after_refresh(view.scroll_end, animate=False, immediate=True)

    def _item(self, message: Message) -> MessageItem:
        item = MessageItem(message, self.ui.state.me)
        self.items[message.id] = item
        return item

    def action_older(self) -> None:
        """Scroll up a page; at the top, fetch older messages."""
        view = self.query_one(HistoryView)
        if view.scroll_y <= 0:
            self.load_older()
        else:
            view.scroll_page_up(animate=False)

    @on(HistoryView.AtTop)
    def _at_top(self) -> None:
        self.load_older()

    @work(group="history", exclusive=True)
    async def load_older(self) -> None:
        """Put the next PAGE older messages above the ones shown."""
        async with self._lock:
            if not self.more or not self.messages:
                return
            first = self.messages[0].id
            page = await guarded(self.app, self.ui.client.history(self.key, PAGE, first))
            if page is None:
                return
            older = [m for m in page if m.id not in self.items]
            self.more = len(page) >= PAGE and bool(older)
            if not older:
                return
            view = self.query_one(HistoryView)
            was_first = self.items[first]
            items = [self._item(m) for m in older]
            await view.mount_all(items, before=0)
            self.messages = older + self.messages
            if self.timer is None:
                self.timer = fmt.timer_of(self.messages)
                self.redraw_head()
            # Keep the place: the message that was at the top stays there, the older page
            # is above it, out of view (scroll up to read it). Its new position is known once
            # the view has been laid out again (a few frames; bounded).
            for _ in range(LAYOUT_WAITS):
                if was_first.virtual_region.y > 0:
                    break
                await asyncio.sleep(0.01)
            view.scroll_to_widget(was_first, animate=False, top=True, immediate=True)

    @work(group="tail", exclusive=True)
    async def refresh_tail(self) -> None:
        """Append new messages and update the marks of the newest ones."""
        async with self._lock:
            page = await self._tail_page()
            if page is None:
                return
            fresh = []
            for message in page:
                item = self.items.get(message.id)
                if item is not None:
                    if (item.message.delivered, item.message.read) != \
                            (message.delivered, message.read):
                        item.set_message(message)
                else:
                    fresh.append(message)
            if not fresh:
                return
            view = self.query_one(HistoryView)
            at_end = view.scroll_y >= view.max_scroll_y - 1
            await view.mount_all([self._item(m) for m in fresh])
            self.messages += fresh
            timer = fmt.timer_of(fresh)
            if timer is not None:
                self.timer = timer
                self.redraw_head()
            if at_end:
                self._to_end(view)
        if any(not m.outgoing(self.ui.state.me) for m in fresh):
            await self.mark_read()

    async def _tail_page(self) -> list[Message] | None:
        """The newest messages, reaching back to one already shown (a burst of new ones
        leaves no gap): TAIL, then four times more, a bounded number of times."""
        limit = TAIL
        for _ in range(TAIL_WIDENINGS):
            page = await guarded(self.app, self.ui.client.history(self.key, limit))
            if page is None or len(page) < limit or not self.items \
                    or any(m.id in self.items for m in page) or limit >= 100_000:
                return page
            limit = min(limit * 4, 100_000)
        return page

    async def mark_read(self) -> None:
        """Tell the daemon the messages were shown (``message.receive``: read receipts)."""
        if self.is_current:
            await guarded(self.app, self.ui.client.receive(conversation=self.key))
            self.ui.state.opened(self.key)

    def on_screen_resume(self) -> None:
        self.ui.state.opened(self.key)

    # ---------------------------------------------------------------- events

    def api_event(self, event: ApiEvent) -> None:
        match event:
            case MessageEvent(contact=contact, kind=kind):
                if contact == self.key or (self.group and kind == "group_text"):
                    self.refresh_tail()
                    self.redraw_typing()
            case ReceiptEvent(contact=contact):
                group = self.ui.state.groups.get(self.key)
                if contact == self.key or (group is not None and contact in group.members):
                    self.refresh_tail()
            case TypingEvent(contact=contact) if contact == self.key:
                self.redraw_typing()
                self.set_timer(6.1, self.redraw_typing)
            case GroupChangedEvent() if self.group:
                self.redraw_head()
                self.refresh_tail()
            case PresenceEvent() | ConnectionEvent() | Reconnected():
                self.redraw_head()

    # ---------------------------------------------------------------- compose

    @on(ComposeArea.Submitted)
    async def _send(self, event: ComposeArea.Submitted) -> None:
        compose = self.query_one(ComposeArea)
        sent = await guarded(self.app, self.ui.client.send(self.key, event.text))
        if sent is None:
            return  # the text stays in the box: nothing is lost
        compose.clear()
        async with self._lock:
            if sent.id not in self.items:
                view = self.query_one(HistoryView)
                await view.mount(self._item(sent))
                self.messages.append(sent)
                self._to_end(view)

    @on(TextArea.Changed, "#compose")
    async def _typed(self) -> None:
        now = time.monotonic()
        if self.group or now - self._typing_sent < TYPING_EVERY \
                or not self.query_one(ComposeArea).text:
            return
        self._typing_sent = now
        with contextlib.suppress(ApiError):  # a typing notice is best effort
            await self.ui.client.typing(self.key)

    def action_search(self) -> None:
        """Search this conversation (its own screen)."""
        state = self.ui.state
        group = state.groups.get(self.key) if self.group else None
        title = f"# {group.name}" if group is not None else state.name_of(self.key)
        self.app.push_screen(SearchScreen(self.key, title))

    def action_back(self) -> None:
        """Back to the conversations."""
        self.ui.state.opened(None)
        self.app.pop_screen()
