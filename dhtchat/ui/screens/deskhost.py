"""What the calls, files, groups and settings screens need from the app
(:class:`dhtchat.ui.desk.DeskApp`), as a protocol: the screens do not import the app."""

from __future__ import annotations

from typing import Protocol, cast

from textual.app import App

from dhtchat.ui.notify import Notifier
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.records import CallInfo
from dhtchat.ui.screens.base import UiHost


class DeskHost(UiHost, Protocol):
    """The app's calls, preferences and notifier."""

    notifier: Notifier
    calls: dict[str, CallInfo]

    @property
    def prefs(self) -> UiPrefs:
        """The client's preferences."""
        ...

    def set_prefs(self, prefs: UiPrefs) -> None:
        """Save new preferences."""

    def current_call(self) -> list[CallInfo]:
        """The legs of the call in progress."""
        ...

    def conversation_key(self) -> tuple[str, bool] | None:
        """The conversation on screen."""
        ...


def desk(app: App[object]) -> DeskHost:
    """The running app as these screens see it."""
    return cast(DeskHost, app)
