"""Settings: what each one is, where it is kept and when it takes effect.

* daemon settings (``settings.get`` / ``settings.set``, kept in ``PROFILE/settings.json``):
  display name (at once), relay-only, TURN server, ICE addresses (at the next start of the
  daemon: the screen says which saved values are waiting for it);
* file auto-accept size (``file.limits``, at once);
* this client's own (``PROFILE/ui-prefs.json``): microphone, speaker, camera of the calls it
  places and answers; notifications and whether they may show message text;
* the passphrase of the identity file (the keystore, as ``dhtchat id passphrase``: used at
  the next unlock).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Static

from dhtchat.app.keystore import KeystoreError, rewrap_identity_file
from dhtchat.app.profile import Profile
from dhtchat.ui.client import ApiError
from dhtchat.ui.daemonctl import Settings as StartSettings
from dhtchat.ui.identity import MIN_PASSPHRASE, strength
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.records import DaemonSettings
from dhtchat.ui.screens.base import ApiScreen, guarded
from dhtchat.ui.screens.deskhost import desk
from dhtchat.ui.widgets import KeyFooter

MIB = 1 << 20
NOW = "at once"
NEXT = "at the next daemon start"


def sound_devices(pcm: str) -> list[str]:
    """The ALSA devices of ``/proc/asound/pcm`` as media specs with what they do, e.g.
    ``alsa:hw:0,0 (HDA Intel: playback, capture)``."""
    out = []
    for line in pcm.splitlines():
        parts = [p.strip() for p in line.split(":")]
        if len(parts) < 3 or "-" not in parts[0]:
            continue
        card, _, device = parts[0].partition("-")
        if not (card.isdigit() and device.isdigit()):
            continue
        roles = [p.split()[0] for p in parts[2:] if p.split() and p.split()[0] in
                 ("playback", "capture")]
        out.append(f"alsa:hw:{int(card)},{int(device)} ({parts[1]}: {', '.join(roles)})")
    return out


def devices_here() -> str:
    """The sound devices and cameras of this machine, in one line for the settings."""
    try:
        with open("/proc/asound/pcm", encoding="utf-8") as pcm:
            sound = sound_devices(pcm.read())
    except OSError:
        sound = []
    cameras = sorted(str(p) for p in Path("/dev").glob("video*"))
    return ("Sound devices here: " + ("; ".join(sound) if sound else "none found (ALSA)")
            + " · cameras: " + (", ".join(f"v4l2:{c}" for c in cameras) or "none found"))


@dataclass(frozen=True)
class Loaded:
    """What the screen edits, as read."""

    daemon: DaemonSettings
    auto_accept: int  # bytes
    prefs: UiPrefs


class Toggle(Checkbox):
    """A checkbox whose label says its state in words ("yes" / "no"), not by colour only."""

    def __init__(self, text: str, id: str) -> None:
        self.text = text
        super().__init__(self.words(False), id=id, compact=True)

    def words(self, value: bool) -> str:
        """The label for a state."""
        return f"{'yes' if value else 'no'}: {self.text}"

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.label = self.words(event.value)


def _field(widget_id: str, **options: str | bool | int) -> Input:
    return Input(id=widget_id, compact=True, **options)  # type: ignore[arg-type]


def _row(label: str, widget: Input | Checkbox, when: str, note_id: str) -> Horizontal:
    return Horizontal(Label(label, classes="label"), widget,
                      Static(when, id=note_id, classes="when", markup=False), classes="row")


class SettingsScreen(ApiScreen):
    """Edit the settings; Ctrl+S saves them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+p", "passphrase", "Passphrase", priority=True),
        Binding("escape", "back", "Back"),
        Binding("f5", "app.desk_settings", "Settings", show=False),  # (here already)
    ]
    DEFAULT_CSS = """
    SettingsScreen #head { height: 1; background: $boost; padding: 0 1; }
    SettingsScreen .row { height: 1; }
    SettingsScreen .label { width: 20; padding: 0 1; }
    SettingsScreen .row Input { width: 28; }
    SettingsScreen .row Checkbox { width: 28; }
    SettingsScreen .when { width: 1fr; padding: 0 1; color: $text-muted; }
    SettingsScreen .section { height: 1; padding: 0 1; text-style: bold underline; }
    SettingsScreen VerticalScroll { height: 1fr; }
    SettingsScreen #devices { height: auto; padding: 0 1; color: $text-muted; }
    SettingsScreen #status { height: auto; padding: 0 1; background: $boost; }
    """

    def __init__(self, loaded: Loaded | None = None, devices: str | None = None) -> None:
        super().__init__()
        self.loaded = loaded
        self.devices = devices_here() if devices is None else devices

    def compose(self) -> ComposeResult:
        yield Static("Settings", id="head", markup=False)
        with VerticalScroll():
            yield Static("Your node (saved in the profile, used by your daemon)",
                         classes="section", markup=False)
            yield _row("Display name", _field("name", max_length=64), NOW, "w-name")
            yield _row("Relay only", Toggle("hide my IP", id="relay_only"), NEXT,
                       "w-relay")
            yield _row("TURN server", _field("turn", placeholder="turn:HOST:3478"), NEXT,
                       "w-turn")
            yield _row("TURN user", _field("turn_user"), NEXT, "w-turn_user")
            yield _row("TURN password", _field("turn_pass", password=True), NEXT,
                       "w-turn_pass")
            yield _row("ICE addresses", _field("ice", placeholder="all, or IP IP"), NEXT,
                       "w-ice")
            yield _row("Auto-accept files", _field("auto_accept", type="number"),
                       "MiB (larger: ask) " + NOW, "w-auto")
            yield Static("This client (its calls and notifications)", classes="section",
                         markup=False)
            yield Static(self.devices, id="devices", markup=False)
            yield _row("Microphone", _field("audio_in"), "alsa:default, pulse:NAME…",
                       "w-in")
            yield _row("Speaker", _field("audio_out"), "alsa:default, a .wav file…",
                       "w-out")
            yield _row("Camera", _field("video_in"), "v4l2:/dev/video0…", "w-cam")
            yield _row("Notifications", Toggle("notify", id="notifications"),
                       "desktop, else the bell", "w-notify")
            yield _row("Message text", Toggle("show it", id="notify_text"),
                       "in notifications", "w-text")
        yield Static("", id="status", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        if self.loaded is not None:
            self.fill(self.loaded)
        else:
            self.load()
        self.query_one("#name", Input).focus()

    @work(exclusive=True, group="settings")
    async def load(self) -> None:
        """Read the settings from the daemon and the profile."""
        try:
            daemon, limits = await asyncio.gather(self.ui.client.settings_get(),
                                                  self.ui.client.file_limits())
        except ApiError as exc:
            self.query_one("#status", Static).update(f"could not read the settings: "
                                                     f"{exc.message}")
            return
        self.loaded = Loaded(daemon, limits.get("auto_accept", MIB), desk(self.app).prefs)
        self.fill(self.loaded)

    def fill(self, loaded: Loaded) -> None:
        """Put the values in the fields."""
        d, prefs = loaded.daemon, loaded.prefs
        self.query_one("#name", Input).value = d.name or str(d.running.get("name") or "")
        self.query_one("#relay_only", Checkbox).value = d.relay_only
        self.query_one("#turn", Input).value = d.turn
        self.query_one("#turn_user", Input).value = d.turn_user
        self.query_one("#turn_pass", Input).placeholder = \
            "(saved; type to change)" if d.turn_pass_set else ""
        self.query_one("#ice", Input).value = ", ".join(d.ice_addresses)
        self.query_one("#auto_accept", Input).value = f"{loaded.auto_accept / MIB:g}"
        self.query_one("#audio_in", Input).value = prefs.audio_in
        self.query_one("#audio_out", Input).value = prefs.audio_out
        self.query_one("#video_in", Input).value = prefs.video_in
        self.query_one("#notifications", Checkbox).value = prefs.notifications
        self.query_one("#notify_text", Checkbox).value = prefs.notify_text
        self.show_pending(d)

    def show_pending(self, d: DaemonSettings) -> None:
        """Say which saved values wait for the next start."""
        words = {"relay_only": "relay only", "turn": "TURN server",
                 "ice_addresses": "ICE addresses"}
        waiting = [words.get(k, k) for k in d.next_start]
        self.query_one("#status", Static).update(
            "Saved, waiting for the next start of your daemon: " + ", ".join(waiting)
            if waiting else "Ctrl+S: save · Ctrl+P: change passphrase")

    def _text(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    async def action_save(self) -> None:
        """Save every setting where it belongs."""
        status = self.query_one("#status", Static)
        try:
            auto = round(float(self._text("auto_accept") or "0") * MIB)
        except ValueError:
            status.update("✗ auto-accept: a number of MiB")
            return
        if auto < 0:
            status.update("✗ auto-accept: a number of MiB")
            return
        ice = [a.strip() for a in self._text("ice").replace(",", " ").split() if a.strip()]
        changes: dict[str, str | bool | list[str]] = {
            "name": self._text("name"),
            "relay_only": self.query_one("#relay_only", Checkbox).value,
            "turn": self._text("turn"), "turn_user": self._text("turn_user"),
            "ice_addresses": ice,
        }
        if self._text("turn_pass"):
            changes["turn_pass"] = self._text("turn_pass")
        saved = await guarded(self.app, self.ui.client.settings_set(**changes))
        if saved is None:
            status.update("✗ not saved (see the message); nothing was changed")
            return
        if await guarded(self.app, self.ui.client.file_limits(auto)) is None:
            return
        host = desk(self.app)
        prefs = replace(host.prefs, audio_in=self._text("audio_in") or "silence",
                        audio_out=self._text("audio_out") or "null",
                        video_in=self._text("video_in") or "lavfi:testsrc",
                        notifications=self.query_one("#notifications", Checkbox).value,
                        notify_text=self.query_one("#notify_text", Checkbox).value)
        host.set_prefs(prefs)
        start = StartSettings.load(host.profile)  # the name the client starts daemons with
        if start.name != saved.name:
            start.name = saved.name
            start.save(host.profile)
        self.loaded = Loaded(saved, auto, prefs)
        self.show_pending(saved)
        self.notify("settings saved", title="settings")

    def action_passphrase(self) -> None:
        """Change the identity's passphrase."""
        self.app.push_screen(PassphraseScreen())

    def action_back(self) -> None:
        """Back."""
        self.app.pop_screen()


class PassphraseScreen(ModalScreen[None]):
    """Current passphrase, the new one twice, with strength feedback."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss", "Cancel")]
    DEFAULT_CSS = """
    PassphraseScreen { align: center middle; }
    PassphraseScreen Vertical { width: 70; height: auto; padding: 1 2; border: thick $accent;
                                background: $surface; }
    PassphraseScreen Static { height: auto; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Change the passphrase of your identity (used at the next unlock)",
                         markup=False)
            yield Input(placeholder="current passphrase", password=True, id="old")
            yield Input(placeholder="new passphrase", password=True, id="new1")
            yield Input(placeholder="new passphrase again", password=True, id="new2")
            yield Static("", id="feedback", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#old", Input).focus()

    @on(Input.Changed, "#new1")
    def _strength(self, event: Input.Changed) -> None:
        if not event.value:
            self.query_one("#feedback", Static).update("")
            return
        score, guesses = strength(event.value)
        words = ["very weak", "weak", "fair", "strong", "very strong"][score]
        self.query_one("#feedback", Static).update(f"strength: {words} ({guesses})")

    @on(Input.Submitted)
    async def _submitted(self, event: Input.Submitted) -> None:
        order = ["old", "new1", "new2"]
        if event.input.id != "new2":
            self.query_one(f"#{order[order.index(event.input.id or 'old') + 1]}",
                           Input).focus()
            return
        feedback = self.query_one("#feedback", Static)
        old, new = self.query_one("#old", Input).value, self.query_one("#new1", Input).value
        if new != self.query_one("#new2", Input).value:
            feedback.update("✗ the new passphrases differ")
            return
        if len(new) < MIN_PASSPHRASE:
            feedback.update(f"✗ at least {MIN_PASSPHRASE} characters")
            return
        feedback.update("changing the passphrase…")
        path = Profile(desk(self.app).profile).identity_path
        try:
            await asyncio.to_thread(rewrap_identity_file, path, old or None, new)
        except KeystoreError as exc:
            feedback.update(f"✗ {exc}")
            return
        except OSError as exc:
            feedback.update(f"✗ cannot write {path}: {exc.strerror}")
            return
        self.notify("passphrase changed; it opens your identity from now on", title="settings")
        self.dismiss(None)
