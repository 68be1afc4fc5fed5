"""Widgets the screens share: the compose box and the paged message history."""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message as TextualMessage
from textual.widgets import Footer, Input, Static, TextArea

from dhtchat.ui import format as fmt
from dhtchat.ui.models import Message


class ComposeArea(TextArea):
    """Multi-line input: Enter sends, Ctrl+N (or Alt+Enter, Ctrl+J) starts a new line; a
    paste is inserted as it is, newlines included (it never sends)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "send", "Send"),
                                             Binding("ctrl+n", "newline", "New line"),
                Binding("alt+enter,ctrl+j", "newline", "New line", show=False)]

    class Submitted(TextualMessage):
        """The user pressed Enter: send ``text``."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":  # (else TextArea's own handler inserts a newline)
            event.stop()
            event.prevent_default()
            self.action_send()
        # (other keys: Textual calls TextArea's own handler next, along the MRO)

    def action_send(self) -> None:
        """Send what was typed (nothing when it is blank)."""
        if self.text.strip():
            self.post_message(self.Submitted(self.text))

    def action_newline(self) -> None:
        """Insert a line break at the cursor."""
        self.insert("\n")


class MessageItem(Static):
    """One message of the history."""

    def __init__(self, message: Message, me: str) -> None:
        super().__init__(fmt.message_line(message, me), markup=False)
        self.message = message
        self.me = me

    def set_message(self, message: Message) -> None:
        """Redraw with new marks."""
        self.message = message
        self.update(fmt.message_line(message, self.me))


class HistoryView(VerticalScroll):
    """The messages, oldest at the top; scrolling to the top asks for an older page."""

    class AtTop(TextualMessage):
        """The view was scrolled to its top."""

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new <= 0 and old > 0:
            self.post_message(self.AtTop())


class IdInput(Input):
    """A one-line input for a user id: a paste spanning lines (an id copied from an id card,
    in groups) is joined with spaces instead of cut at its first line."""

    def _on_paste(self, event: events.Paste) -> None:
        if event.text:
            self.insert_text_at_cursor(" ".join(event.text.split()))
        event.stop()
        event.prevent_default()  # (not Input's handler too: it keeps the first line only)


class KeyFooter(Footer):
    """The footer of every screen: each key and what it does, compact enough for the
    app-wide keys to fit 80 columns, with a space (not only a colour) between entries."""

    DEFAULT_CSS = """
    KeyFooter FooterKey.-compact .footer-key--description {
        padding: 0 1;
    }
    """

    def __init__(self) -> None:
        super().__init__(compact=True, show_command_palette=False)
