"""The conversations list: accepted contacts and groups, newest first, each with its
presence (a symbol and a word), the verified badge, the unread count and the last message."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import ListItem, ListView, Static

from dhtchat.ui import format as fmt
from dhtchat.ui.events import ApiEvent
from dhtchat.ui.screens.base import ApiScreen
from dhtchat.ui.state import ChatState, ConversationRow
from dhtchat.ui.widgets import KeyFooter

ROW_WIDTH = 76


def row_text(row: ConversationRow, me: str, now: float | None = None) -> Text:
    """The two lines of one conversation."""
    symbol, word = fmt.presence(row.contact)
    top = Text()
    top.append(f"{symbol} ")
    top.append(fmt.name(row.title)[:40], style="bold" if row.unread else "")
    if row.contact is not None and row.contact.verified is not None:
        top.append(f" {fmt.VERIFIED}", style="green")
    if row.unread:
        top.append(f"  [{row.unread} unread]", style="bold reverse")
    if row.last is not None:
        when = fmt.clock(row.last.shown_at, now)
        top.append(" " * max(1, ROW_WIDTH - top.cell_len - len(when)))
        top.append(when, style="dim")
    bottom = Text("  ")
    if row.group is not None:
        word = f"group, {len(row.group.members)} members"
        if not row.group.active:
            word += ", left"
    bottom.append(word, style="dim")
    bottom.append(" · ")
    if row.typing:
        bottom.append("typing…", style="italic")
    elif row.last is None:
        bottom.append("no messages yet", style="dim")
    else:
        who = fmt.author(row.last, me)
        tick = fmt.mark(row.last, me)
        room = ROW_WIDTH - bottom.cell_len - len(who) - len(tick) - 4
        bottom.append(f"{who}: {fmt.preview(row.last.text, room)}")
        if tick:
            bottom.append(f" {tick}")
    return Text("\n").join([top, bottom])


class ConversationItem(ListItem):
    """A conversation in the list."""

    def __init__(self, row: ConversationRow, me: str) -> None:
        super().__init__(Static(row_text(row, me)))
        self.row = row


class ConversationsScreen(ApiScreen):
    """The main screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", priority=True),
        Binding("r", "requests", "Requests"),
        Binding("a", "add_contact", "Add"),
        Binding("i", "my_id", "My id"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    ConversationsScreen #top { height: 1; background: $boost; padding: 0 1; }
    ConversationsScreen ListView { height: 1fr; }
    ConversationsScreen ListItem { height: 2; padding: 0 1; }
    ConversationsScreen #empty { height: auto; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="top", markup=False)
        yield ListView(id="list")
        yield Static("", id="empty", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.redraw()
        self.query_one(ListView).focus()

    def on_screen_resume(self) -> None:
        self.ui.state.opened(None)
        self.redraw()

    def api_events(self, events: list[ApiEvent]) -> None:
        self.redraw()  # (once per batch)

    def top_text(self, state: ChatState) -> Text:
        """My name/id, the daemon connection and the requests waiting."""
        top = Text(f"dhtchat · me {state.me[:12]}")
        if not state.connected:
            top.append(" · daemon: reconnecting…", style="bold")
        waiting = len(state.incoming())
        if waiting:
            top.append(f" · {waiting} contact request{'s' if waiting != 1 else ''} (r)",
                       style="bold reverse")
        return top

    def redraw(self) -> None:
        """Rebuild the list from the state, keeping the selected conversation."""
        state = self.ui.state
        self.query_one("#top", Static).update(self.top_text(state))
        view = self.query_one(ListView)
        selected = view.highlighted_child
        keep = selected.row.key if isinstance(selected, ConversationItem) else None
        rows = state.rows()
        items = [ConversationItem(row, state.me) for row in rows]
        view.clear()
        view.extend(items)
        index = next((i for i, r in enumerate(rows) if r.key == keep), 0 if rows else None)
        view.index = index
        empty = self.query_one("#empty", Static)
        empty.display = not rows
        view.display = bool(rows)
        empty.update("No conversations yet. Press a to add a contact by their user id, "
                     "i to see yours (give it to others), r for requests you received.")

    @on(ListView.Selected)
    def _selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ConversationItem):
            self.open_row(event.item.row)

    def action_open(self) -> None:
        """Open the highlighted conversation."""
        selected = self.query_one(ListView).highlighted_child
        if isinstance(selected, ConversationItem):
            self.open_row(selected.row)

    def open_row(self, row: ConversationRow) -> None:
        """Show a conversation."""
        from dhtchat.ui.screens.conversation import ConversationScreen  # noqa: PLC0415

        self.app.push_screen(ConversationScreen(row.key, row.group is not None))

    def action_requests(self) -> None:
        """The contact requests."""
        from dhtchat.ui.screens.requests import RequestsScreen  # noqa: PLC0415

        self.app.push_screen(RequestsScreen())

    def action_add_contact(self) -> None:
        """Ask someone to be a contact by their user id."""
        from dhtchat.ui.screens.requests import AddContactScreen  # noqa: PLC0415

        self.app.push_screen(AddContactScreen())

    def action_my_id(self) -> None:
        """My user id, fingerprint and QR code."""
        from dhtchat.ui.screens.requests import MyIdScreen  # noqa: PLC0415

        self.app.push_screen(MyIdScreen(self.ui.state.me))
