"""Calls: the incoming-call dialog, placing a call, and the in-call panel.

The panel shows the SAS words large (the short authentication string both daemons derive from
the call's keys, protocol.md §40): the two people read them to each other. "They match"
(``call.verify``) marks the contact verified; "they differ" hangs up at once and warns that
someone may be in the middle. Mute, hold, camera (``call.control``) and hang up
(``call.hangup``); RTT, loss and bitrates from ``call.status`` once a second. A group call
(``call.start`` with 2-4 contacts) shows one line per leg, each with its own SAS: Tab picks
the leg the match / differ keys are about. The media of calls placed and answered here are
the client's preferences (settings: microphone, speaker, camera).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from dhtchat.ui import format as fmt
from dhtchat.ui.client import ApiError
from dhtchat.ui.events import ApiEvent, CallEvent
from dhtchat.ui.models import BadReply
from dhtchat.ui.records import CallInfo, parse_call
from dhtchat.ui.screens.base import ApiScreen, guarded
from dhtchat.ui.screens.deskhost import desk
from dhtchat.ui.widgets import KeyFooter

STATE_WORDS: dict[str, str] = {
    "inviting": "calling…", "ringing": "ringing…", "connecting": "connecting…",
    "active": "in call", "ended": "ended",
}


def big(words: str) -> str:
    """The SAS words as large as a terminal allows: capitals, spaced letters."""
    return "   ".join(" ".join(word.upper()) for word in words.split())


def stats_line(call: CallInfo) -> str:
    """RTT, loss and bitrates in words (— before media flow)."""
    s = call.stats
    if s.rtt_ms is None and s.send_kbps is None:
        return "RTT — · loss — · send — · receive —"

    def num(value: float | None, unit: str, digits: int = 0) -> str:
        return "—" if value is None else f"{value:.{digits}f} {unit}"

    return (f"RTT {num(s.rtt_ms, 'ms')} · loss {num(s.loss_percent, '%', 1)} · "
            f"send {num(s.send_kbps, 'kbit/s')} · "
            f"receive {num(s.receive_packets_per_s, 'packets/s')}")


async def call_event(app: App[object], event: CallEvent) -> None:
    """A call rang or changed: keep it, and ask about a ringing one."""
    host = desk(app)
    known = host.calls.get(event.call)
    if event.type == "call.ringing":
        try:
            call = parse_call(event.data)
        except BadReply:
            return
        host.calls[call.id] = call
        if not isinstance(app.screen, IncomingCallScreen):
            await app.push_screen(IncomingCallScreen(call), _answered(app, call))
        return
    if known is not None:
        ended = event.state == "ended"
        sas = event.data.get("sas")
        host.calls[event.call] = replace(
            known, state=event.state or known.state,
            reason=str(event.data.get("reason") or known.reason),
            sas_words=sas if isinstance(sas, str) and sas else known.sas_words)
        screen = app.screen
        if ended and isinstance(screen, IncomingCallScreen) and screen.call.id == event.call:
            screen.dismiss("gone")


Chosen = Callable[[str | None], Awaitable[None]]


def _answered(app: App[object], call: CallInfo) -> Chosen:
    async def chosen(choice: str | None) -> None:
        host = desk(app)
        if choice == "decline":
            await guarded(app, host.client.call_decline(call.id))
        elif choice in ("audio", "video"):
            answered = await guarded(app, host.client.call_answer(
                call.id, host.prefs.media(video=choice == "video")))
            if answered is not None:
                host.calls[answered.id] = answered
                await app.push_screen(CallScreen([answered]))
        elif choice == "gone":
            app.notify(f"missed call from {fmt.name(call.name or call.contact[:12])}",
                       title="call")
    return chosen


async def place_call(app: App[object]) -> None:
    """F2: the call in progress, else call the conversation on screen."""
    host = desk(app)
    legs = host.current_call()
    if legs:
        if not isinstance(app.screen, CallScreen):
            await app.push_screen(CallScreen(legs))
        return
    target = host.conversation_key()
    if target is None:
        app.notify("Open or highlight a conversation to call it.", title="call")
        return
    key, group = target
    if group:
        found = host.state.groups.get(key)
        members = [m for m in (found.members if found else ()) if m != host.state.me]
        people = [m for m in members if m in host.state.contacts
                  and host.state.contacts[m].state == "accepted"]
        if not 2 <= len(people) <= 4 or len(people) != len(members):
            app.notify("A group call takes 2 to 4 people who are all your contacts.",
                       title="call", severity="warning")
            return
        await _start(app, people, video=False)
        return
    await app.push_screen(PlaceCallScreen(host.state.name_of(key)),
                          _place_chosen(app, key))


def _place_chosen(app: App[object], key: str) -> Chosen:
    async def chosen(choice: str | None) -> None:
        if choice in ("audio", "video"):
            await _start(app, key, video=choice == "video")
    return chosen


async def _start(app: App[object], to: str | list[str], video: bool) -> None:
    host = desk(app)
    app.notify("calling… (connecting to the contact can take a few seconds)", title="call")
    legs = await guarded(app, host.client.call_start(to, host.prefs.media(video), video))
    if not legs:
        return
    for leg in legs:
        host.calls[leg.id] = leg
    await app.push_screen(CallScreen(legs))


class PlaceCallScreen(ModalScreen[str]):
    """Voice or video?"""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "choose('audio')", "Voice call"),
        Binding("v", "choose('video')", "Video call"),
        Binding("escape", "choose('cancel')", "Cancel"),
    ]
    DEFAULT_CSS = """
    PlaceCallScreen { align: center middle; }
    PlaceCallScreen Vertical { width: 60; height: auto; padding: 1 2; border: thick $accent;
                               background: $surface; }
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.who = name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Call {fmt.name(self.who)}\n\n  a  voice call\n  v  video call\n"
                         "  Esc  cancel", markup=False)
        yield KeyFooter()

    def action_choose(self, choice: str) -> None:
        """Close with ``audio``, ``video`` or ``cancel``."""
        self.dismiss(choice)


class IncomingCallScreen(ModalScreen[str]):
    """Someone calls: answer with sound, with the camera too, or decline."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "choose('audio')", "Answer (voice)"),
        Binding("v", "choose('video')", "Answer with video"),
        Binding("d", "choose('decline')", "Decline"),
    ]
    DEFAULT_CSS = """
    IncomingCallScreen { align: center middle; }
    IncomingCallScreen Vertical { width: 64; height: auto; padding: 1 2;
                                  border: thick $warning; background: $surface; }
    """

    def __init__(self, call: CallInfo) -> None:
        super().__init__()
        self.call = call

    def compose(self) -> ComposeResult:
        who = fmt.name(self.call.name or self.call.contact[:12])
        kind = "video call" if self.call.video else "voice call"
        with Vertical():
            yield Static(Text.assemble(("☎ Incoming " + kind, "bold"), f"\n\n{who} is calling"
                                       f"\n{self.call.contact}\n\n  a  answer (voice)\n"
                                       "  v  answer with video\n  d  decline"))
        yield KeyFooter()

    def action_choose(self, choice: str) -> None:
        """Close with ``audio``, ``video`` or ``decline``."""
        self.dismiss(choice)


class DifferScreen(ModalScreen[None]):
    """The warning after "they differ"."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "dismiss", "Close")]
    DEFAULT_CSS = """
    DifferScreen { align: center middle; }
    DifferScreen Vertical { width: 70; height: auto; padding: 1 2; border: thick $error;
                            background: $surface; }
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.who = name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"⚠ WARNING: the words differ\n\nSomeone may be in the middle of your "
                         f"call with {fmt.name(self.who)}, listening or speaking for them. The "
                         "call was ended and the contact stays unverified.\n\nCompare the words "
                         "again on another call, or meet in person.", markup=False)
        yield KeyFooter()


class CallScreen(ApiScreen):
    """The call in progress (or a group call's legs)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "match", "They match"),
        Binding("n", "differ", "They differ"),
        Binding("m", "mute", "Mute"),
        Binding("h", "hold", "Hold"),
        Binding("c", "camera", "Camera"),
        Binding("x", "hangup", "Hang up"),
        Binding("tab", "next_leg", "Next person", show=False),
        Binding("escape", "back", "Back"),
        # (the app's files, groups and settings keys work here too; the footer keeps room
        # for the call's own)
        Binding("f3", "app.desk_files", "Files", show=False),
        Binding("f4", "app.desk_groups", "Groups", show=False),
        Binding("f5", "app.desk_settings", "Settings", show=False),
    ]
    DEFAULT_CSS = """
    CallScreen { align: center top; }
    CallScreen #who { height: auto; padding: 1 2 0 2; }
    CallScreen #sas { height: auto; margin: 1 2; padding: 1 2; border: heavy $accent;
                      text-align: center; text-style: bold; }
    CallScreen #legs { height: auto; padding: 0 2; }
    CallScreen #controls, CallScreen #stats, CallScreen #verdict { height: auto;
                                                                    padding: 0 2; }
    """

    def __init__(self, legs: list[CallInfo], poll: bool = True) -> None:
        super().__init__()
        self.legs = {leg.id: leg for leg in legs}
        self.order = [leg.id for leg in legs]
        self.selected = 0
        self.verdict: dict[str, str] = {}  # leg id -> "match" / "differ"
        self.poll = poll

    def compose(self) -> ComposeResult:
        yield Static("", id="who", markup=False)
        yield Static("", id="sas", markup=False)
        yield Static("", id="legs", markup=False)
        yield Static("", id="controls", markup=False)
        yield Static("", id="stats", markup=False)
        yield Static("", id="verdict", markup=False)
        yield KeyFooter()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The camera key only in video calls, Tab only in group calls."""
        if action == "camera":
            return self.leg.video
        if action == "next_leg":
            return len(self.order) > 1
        return True

    def on_mount(self) -> None:
        self.redraw()
        if self.poll:
            self.refresh_status()
            self.set_interval(1.0, self.refresh_status)

    @property
    def leg(self) -> CallInfo:
        """The leg the keys are about."""
        return self.legs[self.order[self.selected % len(self.order)]]

    def redraw(self) -> None:
        """Everything from the legs as last read."""
        leg = self.leg
        group = len(self.order) > 1
        who = Text()
        who.append("☎ group call" if group else ("☎ video call" if leg.video else "☎ call"),
                   style="bold")
        who.append(f" with {fmt.name(leg.name or leg.contact[:12])}")
        if not group:
            contact = self.ui.state.contacts.get(leg.contact)
            if contact is not None and contact.verified is not None:
                who.append(f" · {fmt.VERIFIED}")
        who.append(f" · {STATE_WORDS.get(leg.state, leg.state)}")
        if leg.ended and leg.reason:
            who.append(f" ({leg.reason})")
        if leg.path:
            who.append(f" · {leg.path}")
        self.query_one("#who", Static).update(who)
        sas = self.query_one("#sas", Static)
        if leg.sas_words:
            sas.update(f"{big(leg.sas_words)}\n\n{leg.sas_number}\n\nRead these words to "
                       f"{fmt.name(leg.name)}: do they see the same ones?")
        else:
            sas.update("(the words appear once the call is connected)")
        lines = []
        if group:
            for i, key in enumerate(self.order):
                item = self.legs[key]
                pointer = "▶" if i == self.selected % len(self.order) else " "
                lines.append(f"{pointer} {fmt.name(item.name)}: "
                             f"{STATE_WORDS.get(item.state, item.state)} · "
                             f"{item.sas_words or '—'} · {self.verdict.get(key, 'not compared')}")
            lines.append("Tab: next person")
        if leg.warning:
            lines.append(f"⚠ {leg.warning}")
        self.query_one("#legs", Static).update("\n".join(lines))
        flags = [("muted" if leg.muted else "microphone on"),
                 ("on hold" if leg.held else "not on hold")]
        if leg.video:
            flags.append("camera off" if leg.camera_off else "camera on")
        if leg.remote_held:
            flags.append(f"{fmt.name(leg.name)} put the call on hold")
        self.query_one("#controls", Static).update(" · ".join(flags))
        self.query_one("#stats", Static).update(stats_line(leg))
        verdict = self.verdict.get(leg.id)
        self.query_one("#verdict", Static).update(
            f"✔ you said the words match: {fmt.name(leg.name)} is verified"
            if verdict == "match" else
            "✗ you said the words differ: the call was ended" if verdict == "differ" else "")

    @work(exclusive=True, group="call-status")
    async def refresh_status(self) -> None:
        """Read the legs' state and numbers (``call.status``)."""
        host = desk(self.app)
        for key in list(self.order):
            if self.legs[key].ended:
                continue
            try:
                fresh = await host.client.call_status(key)
            except ApiError:
                continue
            self.legs[key] = fresh
            host.calls[key] = fresh
        self.redraw()

    def api_event(self, event: ApiEvent) -> None:
        if isinstance(event, CallEvent) and event.call in self.legs and self.poll:
            self.refresh_status()

    def action_next_leg(self) -> None:
        """Tab: the next person of a group call."""
        self.selected = (self.selected + 1) % len(self.order)
        self.redraw()

    async def action_match(self) -> None:
        """The words are the same on both sides: verify the contact."""
        leg = self.leg
        if not leg.sas_words:
            self.notify("No words to compare yet.", title="call")
            return
        if await guarded(self.app, self.ui.client.call_verify(leg.contact)) is None:
            return
        self.verdict[leg.id] = "match"
        contacts = await guarded(self.app, self.ui.client.contacts())
        if contacts is not None:
            self.ui.state.contacts = {c.id: c for c in contacts}
        self.redraw()

    async def action_differ(self) -> None:
        """The words differ: hang up at once and warn."""
        leg = self.leg
        self.verdict[leg.id] = "differ"
        await guarded(self.app, self.ui.client.call_hangup(leg.id))
        self.redraw()
        await self.app.push_screen(DifferScreen(leg.name or leg.contact[:12]))

    async def action_mute(self) -> None:
        """Microphone off / on."""
        await self._control(mute=not self.leg.muted)

    async def action_hold(self) -> None:
        """Hold / resume."""
        await self._control(hold=not self.leg.held)

    async def action_camera(self) -> None:
        """Camera off / on (video calls)."""
        if not self.leg.video:
            self.notify("This is a voice call.", title="call")
            return
        await self._control(camera=self.leg.camera_off)

    async def _control(self, **change: bool) -> None:
        fresh = await guarded(self.app, self.ui.client.call_control(self.leg.id, **change))
        if fresh is not None:
            for key in self.order:  # (a group call's control applies to every leg)
                if key == fresh.id:
                    self.legs[key] = fresh
            self.redraw()
            if self.poll:
                self.refresh_status()

    async def action_hangup(self) -> None:
        """End the call (a group call: leave it)."""
        if self.leg.ended:
            self.app.pop_screen()
            return
        await guarded(self.app, self.ui.client.call_hangup(self.leg.id))
        if self.poll:
            self.refresh_status()

    def action_back(self) -> None:
        """Back (the call goes on; F2 shows it again)."""
        self.app.pop_screen()
