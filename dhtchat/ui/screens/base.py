"""What every screen of the desktop client shares: the host app's client and state, API
events, and errors shown as messages."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol, TypeVar, cast

from textual.app import App
from textual.screen import Screen

from dhtchat.ui.client import ApiError, UiClient
from dhtchat.ui.events import ApiEvent
from dhtchat.ui.state import ChatState

T = TypeVar("T")


class UiHost(Protocol):
    """The app the screens run in (:class:`dhtchat.ui.app.DhtchatApp`)."""

    client: UiClient
    state: ChatState
    profile: Path


def host(app: App[object]) -> UiHost:
    """The running app as the screens see it."""
    return cast(UiHost, app)


async def guarded(app: App[object], call: Awaitable[T]) -> T | None:
    """Await an API call; a failure is shown as a message (None returned), never raised."""
    try:
        return await call
    except ApiError as exc:
        app.notify(exc.message, title="error", severity="error", timeout=8)
        return None


class ApiScreen(Screen[None]):
    """A screen that follows the daemon's events (after the app updated its state)."""

    @property
    def ui(self) -> UiHost:
        """The host app's client and state."""
        return host(self.app)

    def api_events(self, events: list[ApiEvent]) -> None:
        """Called with each batch of events once :attr:`ui` ``.state`` is up to date."""
        for event in events:
            self.api_event(event)

    def api_event(self, event: ApiEvent) -> None:
        """Called for every event (by :meth:`api_events`); redraw here."""
        del event
