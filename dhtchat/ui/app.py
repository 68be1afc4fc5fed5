"""The desktop client (``dhtchat`` / ``dhtchat ui``): a Textual app on the daemon's API.

Start: if a daemon answers on the profile's socket, the client connects to it. Otherwise it
asks for what a daemon needs (first run: create the identity and a name; later: the
passphrase), starts one in the background (:mod:`dhtchat.ui.daemonctl`) and connects. Then
the conversations screen; every event from the daemon updates :class:`ChatState` and goes to
the screens. On quit it leaves the daemon as it found it: one it started is stopped, unless
the user chooses to keep it running.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.binding import Binding, BindingType

from dhtchat.ui.client import ApiError, UiClient, socket_path
from dhtchat.ui.daemonctl import DaemonControl, DaemonOptions, Settings, daemon_answers
from dhtchat.ui.desk import DeskApp
from dhtchat.ui.events import Disconnected, ErrorEvent, Reconnected
from dhtchat.ui.identity import KeystoreError, has_identity, needs_passphrase
from dhtchat.ui.screens.base import ApiScreen
from dhtchat.ui.screens.conversations import ConversationsScreen
from dhtchat.ui.screens.firstrun import FirstRunScreen
from dhtchat.ui.screens.start import QuitScreen, StartScreen
from dhtchat.ui.screens.unlock import UnlockScreen
from dhtchat.ui.state import ChatState


class DhtchatApp(DeskApp):
    """The dhtchat desktop client for one profile."""

    TITLE = "dhtchat"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "quit", "Quit", priority=True)]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, profile: Path, options: DaemonOptions | None = None) -> None:
        super().__init__()
        self.profile = profile
        self.daemon = DaemonControl(profile, options)
        self.client = UiClient(socket_path(profile))
        self.state = ChatState()
        self.ready = False  # the conversations screen is up
        self._quitting = False

    def on_mount(self) -> None:
        self.push_screen(StartScreen())
        self.startup()

    def _status(self, text: str) -> None:
        screen = self.screen
        if isinstance(screen, StartScreen):
            screen.show(text)

    @work(exclusive=True, group="startup")
    async def startup(self) -> None:
        """Find or start the daemon, connect, load the lists, show the conversations."""
        try:
            if not await daemon_answers(self.profile):
                await self._start_daemon()
            self._status("connecting to your daemon...")
            await self.client.connect()
            await self.state.load(self.client)
        except (ApiError, KeystoreError, OSError) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            self._status(f"dhtchat could not start:\n\n{message}\n\n"
                         f"(daemon log: {self.daemon.log_path})\n\nr: retry   Ctrl+Q: quit")
            return
        self.ready = True
        await self.switch_screen(ConversationsScreen())
        self.follow_events()

    async def _start_daemon(self) -> None:
        passphrase: str | None
        if not has_identity(self.profile):
            passphrase, name = await self.push_screen_wait(FirstRunScreen(self.profile))
        else:
            passphrase = None
            if needs_passphrase(self.profile):
                passphrase = await self.push_screen_wait(UnlockScreen(self.profile))
            name = Settings.load(self.profile).name
        self._status("starting your node (DHT, contacts, connections)...")
        await self.daemon.start(passphrase, name)

    def action_retry(self) -> None:
        """Try to start again (from the start screen)."""
        if not self.ready:
            self._status("dhtchat: starting...")
            self.startup()

    @work(group="events")
    async def follow_events(self) -> None:
        """Apply the events to the state (those that came together as one batch), then hand
        them to the screens."""
        async for first in self.client.events():
            batch = [first, *self.client.drain()]
            try:
                await self.state.apply(self.client, batch)
            except ApiError as exc:
                self.notify(exc.message, title="error", severity="warning")
            for event in batch:
                if isinstance(event, Disconnected):
                    self.notify(event.reason, title="daemon", severity="warning")
                elif isinstance(event, Reconnected):
                    self.notify("connected to the daemon again", title="daemon")
                elif isinstance(event, ErrorEvent):
                    self.notify(event.message, title="daemon", severity="warning")
            for screen in self.screen_stack:
                if isinstance(screen, ApiScreen):
                    screen.api_events(batch)
            for event in batch:
                await self.desk_event(event)  # calls, notifications

    async def action_quit(self) -> None:
        """Quit; when this window started the daemon, ask whether to keep it running."""
        if self._quitting:
            return
        if not self.daemon.started_here:
            await self.finish(stop=False)
            return

        async def chosen(choice: str | None) -> None:
            if choice in ("stop", "keep"):
                await self.finish(stop=choice == "stop")

        if not isinstance(self.screen, QuitScreen):
            await self.push_screen(QuitScreen(), chosen)

    async def finish(self, stop: bool) -> None:
        """Close the connection, stop (or keep) the daemon this window started, exit."""
        self._quitting = True
        await self.client.close()
        if stop:
            self._status("stopping your node...")
            await self.daemon.stop()
        else:
            self.daemon.keep()
        self.exit(0)


def run(profile: Path, options: DaemonOptions | None = None) -> int:
    """Run the client in this terminal; returns the exit code."""
    app = DhtchatApp(profile, options)
    try:
        code = app.run()
    finally:
        with contextlib.suppress(OSError):
            app.daemon.stop_sync()  # (after a crash of the UI: leave things as found)
    return code if isinstance(code, int) else 0
