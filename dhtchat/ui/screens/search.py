"""Search one conversation: type words, Enter, and the matching messages are listed (time,
author, text), newest first, as ``message.search`` finds them in the daemon's encrypted
history (nothing leaves the machine). Escape goes back to the conversation."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Static

from dhtchat.ui import format as fmt
from dhtchat.ui.models import Message
from dhtchat.ui.screens.base import ApiScreen, guarded
from dhtchat.ui.widgets import KeyFooter

RESULTS = 100  # matches listed at most (the newest)


def results_text(found: list[Message], me: str, query: str) -> Text:
    """The matches as lines of the history, or a sentence when there is none."""
    out = Text()
    if not found:
        out.append(f"No message here contains “{fmt.safe(query)}”.")
        return out
    more = " (the newest)" if len(found) >= RESULTS else ""
    out.append(f"{len(found)} message{'s' if len(found) != 1 else ''} contain "
               f"“{fmt.safe(query)}”{more}:\n\n", style="bold")
    for message in found:
        out.append_text(fmt.message_line(message, me))
        out.append("\n")
    return out


class SearchScreen(ApiScreen):
    """Search the messages of one conversation (a contact or a group)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back")]
    DEFAULT_CSS = """
    SearchScreen #title { height: 1; background: $boost; padding: 0 1; }
    SearchScreen #results { height: 1fr; padding: 0 1; }
    """

    def __init__(self, key: str, title: str) -> None:
        super().__init__()
        self.key = key  # the conversation: a contact's user id or a group id
        self.title_text = title
        self.found: list[Message] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Search the conversation with {fmt.name(self.title_text)}",
                         id="title")
            yield Input(placeholder="words to find, then Enter", id="query", max_length=200)
            with VerticalScroll(id="results"):
                yield Static("", id="found")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#query", Input).focus()

    @on(Input.Submitted, "#query")
    async def _search(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            return
        found = await guarded(self.app, self.ui.client.search(self.key, query, RESULTS))
        if found is None:
            return
        self.found = found
        self.query_one("#found", Static).update(results_text(found, self.ui.state.me, query))

    def action_back(self) -> None:
        self.app.pop_screen()
