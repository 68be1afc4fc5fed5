"""Contact requests (accept / refuse / block, with the sender's note, fingerprint and the
impersonation warning the API gives), adding a contact by pasting an id (its checksum
checked as you type), and my own id with its QR code."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, ListItem, ListView, Static

from dhtchat.core.errors import InvalidUserId
from dhtchat.core.identity import decode_user_id
from dhtchat.ui import format as fmt
from dhtchat.ui.events import ApiEvent
from dhtchat.ui.identity import id_fingerprint, qr_code
from dhtchat.ui.models import Contact
from dhtchat.ui.screens.base import ApiScreen, guarded, host
from dhtchat.ui.screens.firstrun import grouped
from dhtchat.ui.widgets import IdInput, KeyFooter


def request_text(contact: Contact) -> Text:
    """A request: who (name and id), when, the note, the fingerprint, any warning."""
    text = Text()
    if contact.warning:
        text.append(f"⚠ WARNING: {fmt.name(contact.label)} {contact.warning}\n",
                    style="bold reverse")
    text.append(fmt.name(contact.label), style="bold")
    text.append(f"  (asked {fmt.clock(contact.since)})\n", style="dim")
    text.append(f"id {contact.id}\n")
    text.append(f"fingerprint {id_fingerprint(contact.id)}\n", style="dim")
    if contact.message:
        text.append("“" + fmt.safe(contact.message) + "”")
    else:
        text.append("(no message)", style="dim")
    return text


class RequestItem(ListItem):
    """One request."""

    def __init__(self, contact: Contact) -> None:
        super().__init__(Static(request_text(contact)))
        self.contact = contact


class RequestsScreen(ApiScreen):
    """The requests waiting for my answer."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "answer('accept')", "Accept"),
        Binding("x", "answer('refuse')", "Refuse"),
        Binding("b", "answer('block')", "Block"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    RequestsScreen #top { height: 1; background: $boost; padding: 0 1; }
    RequestsScreen ListView { height: 1fr; }
    RequestsScreen ListItem { height: auto; padding: 0 1; margin-bottom: 1; }
    RequestsScreen #empty { height: auto; padding: 1 2; }
    RequestsScreen #sent { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Contact requests: compare the fingerprint with the person before "
                     "accepting", id="top", markup=False)
        yield ListView(id="requests")
        yield Static("No requests are waiting.", id="empty", markup=False)
        yield Static("", id="sent", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.redraw()
        self.query_one(ListView).focus()

    def api_events(self, events: list[ApiEvent]) -> None:
        self.redraw()  # (once per batch)

    def redraw(self) -> None:
        """Rebuild the list from the state."""
        requests = self.ui.state.incoming()
        view = self.query_one(ListView)
        index = view.index or 0
        view.clear()
        view.extend(RequestItem(c) for c in requests)
        view.index = min(index, len(requests) - 1) if requests else None
        self.query_one("#empty", Static).display = not requests
        sent = sorted((c for c in self.ui.state.contacts.values() if c.state == "outgoing"),
                      key=lambda c: c.since)
        self.query_one("#sent", Static).update(
            "Sent, waiting for their answer: " + ", ".join(
                _sent_label(c) for c in sent) if sent else "")

    @work(group="answer", exclusive=True)
    async def action_answer(self, how: str) -> None:
        """Accept, refuse or block the highlighted request."""
        item = self.query_one(ListView).highlighted_child
        if not isinstance(item, RequestItem):
            self.notify("No request selected.", severity="warning")
            return
        if how == "accept" and item.contact.warning:
            sure = await self.app.push_screen_wait(ConfirmScreen(
                f"⚠ {fmt.name(item.contact.label)} {item.contact.warning}.\n\nSomeone may "
                "be pretending to be your contact. Accept only if you checked the fingerprint "
                "with them in person or on a call.\n\n  y  accept anyway    n / Esc  do not "
                "accept"))
            if not sure:
                return
        client = self.ui.client
        target = item.contact.id
        call = {"accept": client.accept, "refuse": client.refuse, "block": client.block}[how]
        result = await guarded(self.app, call(target))
        if result is None:
            return
        self.ui.state.contacts[result.id] = result
        done = {"accept": "accepted", "refuse": "refused", "block": "blocked"}[how]
        self.notify(f"{fmt.name(result.label)}: {done}")
        self.redraw()


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question (dismissed with True for yes)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Yes"),
                                             Binding("n,escape", "answer(False)", "No")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen Static { width: 70; height: auto; padding: 1 2; border: thick $error;
                           background: $surface; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(self.question, markup=False)
        yield KeyFooter()

    def action_answer(self, yes: bool) -> None:
        """Close with the answer."""
        self.dismiss(yes)


def _sent_label(contact: Contact) -> str:
    """A request I sent: the name, and the start of the id (the name until they answer)."""
    if not contact.name or contact.name == contact.id[:12]:
        return f"{contact.id[:12]}…"
    return f"{fmt.name(contact.name)} ({contact.id[:12]}…)"


def check_id(text: str) -> str | None:
    """None when ``text`` is a well-formed user id, else what is wrong with it."""
    try:
        decode_user_id(text)
    except InvalidUserId as exc:
        return str(exc)
    return None


class AddContactScreen(ModalScreen[None]):
    """Paste someone's user id (checked as you type), add a note, send the request."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Cancel"),
                Binding("ctrl+s", "send", "Send request")]
    DEFAULT_CSS = """
    AddContactScreen { align: center middle; }
    AddContactScreen Vertical { width: 78; height: auto; padding: 1 1; border: thick $accent;
                                background: $surface; }
    AddContactScreen Static { height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Add a contact: paste their user id (58 characters; spaces and line "
                         "breaks are ignored)", markup=False)
            yield IdInput(placeholder="user id", id="user_id")
            yield Static("", id="check", markup=False)
            yield Input(placeholder="a short note they will see (optional)", id="note",
                        max_length=280)
            yield Static("Enter in the note, or Ctrl+S: send the request", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#user_id", Input).focus()

    @on(Input.Changed, "#user_id")
    def _check(self, event: Input.Changed) -> None:
        check = self.query_one("#check", Static)
        if not event.value.strip():
            check.update("")
            return
        problem = check_id(event.value)
        if problem is None:
            check.update(f"✓ checksum ok · fingerprint {id_fingerprint(event.value)}")
        else:
            check.update(f"✗ {problem}")

    @on(Input.Submitted, "#user_id")
    def _to_note(self) -> None:
        self.query_one("#note", Input).focus()

    @on(Input.Submitted, "#note")
    async def _submitted(self) -> None:
        await self.action_send()

    async def action_send(self) -> None:
        """Send the request if the id checks out."""
        text = self.query_one("#user_id", Input).value
        problem = check_id(text)
        if problem is not None:
            self.query_one("#check", Static).update(f"✗ {problem}")
            self.query_one("#user_id", Input).focus()
            return
        user_id = "".join(text.split()).replace("-", "").lower()
        note = self.query_one("#note", Input).value.strip() or None
        ui = host(self.app)
        self.query_one("#check", Static).update("sending the request (a few seconds)...")
        contact = await guarded(self.app, ui.client.request(user_id, message=note))
        if contact is None:
            self.query_one("#check", Static).update("not sent; see the message")
            return
        ui.state.contacts[contact.id] = contact
        self.notify(f"request sent to {contact.id[:12]}… ({contact.state})")
        self.dismiss(None)


class MyIdScreen(ModalScreen[None]):
    """My user id, fingerprint and QR code, to give to others."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Close")]
    DEFAULT_CSS = """
    MyIdScreen { align: center middle; }
    MyIdScreen Horizontal { width: 80; height: auto; background: $surface; }
    MyIdScreen #qr { width: 37; height: auto; }
    MyIdScreen #who { width: 1fr; height: auto; padding-left: 1; }
    """

    def __init__(self, user_id: str) -> None:
        super().__init__()
        self.user_id = user_id

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(qr_code(self.user_id) if self.user_id else "", id="qr", markup=False)
            yield Static(f"Your user id:\n\n{grouped(self.user_id, 29, 1)}\n\n"
                         f"Fingerprint:\n{grouped(id_fingerprint(self.user_id), 24, 1)}",
                         id="who", markup=False)
        yield KeyFooter()
