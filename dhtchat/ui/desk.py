"""What the desktop client adds to its shell beyond conversations: calls, files, groups,
settings and notifications, as app-wide key bindings (shown in every screen's footer) and
one event hook. :class:`DeskApp` is the base of :class:`dhtchat.ui.app.DhtchatApp`, which
calls :meth:`DeskApp.desk_event` for every event after its state applied it.

F2 calls (the open or highlighted conversation; the call in progress, if any), F3 the files
of that conversation, F4 the groups, F5 the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

from textual.app import App
from textual.binding import Binding, BindingType

from dhtchat.ui.client import ApiError, UiClient
from dhtchat.ui.events import ApiEvent, CallEvent
from dhtchat.ui.notify import Notifier
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.state import ChatState

if TYPE_CHECKING:
    from dhtchat.ui.records import CallInfo


class DeskApp(App[int]):
    """The app-wide bindings and event hook of the calls, files, groups and settings."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "desk_call", "Call"),
        Binding("f3", "desk_files", "Files"),
        Binding("f4", "desk_groups", "Groups"),
        Binding("f5", "desk_settings", "Setup"),
    ]

    # (set by the subclass before mount)
    profile: Path
    client: UiClient
    state: ChatState

    def __init__(self) -> None:
        super().__init__()
        self.notifier = Notifier(self.bell)
        self.calls: dict[str, CallInfo] = {}  # the calls of this run, by id
        self._prefs: UiPrefs | None = None

    @property
    def prefs(self) -> UiPrefs:
        """The client's own preferences (read from the profile once)."""
        if self._prefs is None:
            self._prefs = UiPrefs.load(self.profile)
        return self._prefs

    def set_prefs(self, prefs: UiPrefs) -> None:
        """Save new preferences."""
        prefs.save(self.profile)
        self._prefs = prefs

    @property
    def desk_ready(self) -> bool:
        """Whether the conversations are up (the shell's ``ready``), so these screens can
        open."""
        return getattr(self, "ready", True) is True

    def current_call(self) -> list[CallInfo]:
        """The legs of the call in progress (empty: none)."""
        live = [c for c in self.calls.values() if not c.ended]
        if not live:
            return []
        first = live[0]
        if first.conference:
            return [c for c in live if c.conference == first.conference]
        return [first]

    async def desk_event(self, event: ApiEvent) -> None:
        """Calls ring and change; notify about messages, requests and calls."""
        from dhtchat.ui.screens.calls import call_event  # noqa: PLC0415 - (import cycle)

        if isinstance(event, CallEvent):
            await call_event(cast(App[object], self), event)
        try:
            await self.notifier.event(event, self.state, self.prefs)
        except ApiError as exc:
            self.notify(exc.message, title="error", severity="warning")

    def conversation_key(self) -> tuple[str, bool] | None:
        """The conversation open or highlighted on screen: its key and whether a group."""
        from dhtchat.ui.screens.conversation import ConversationScreen  # noqa: PLC0415
        from dhtchat.ui.screens.conversations import (  # noqa: PLC0415
            ConversationItem,
            ConversationsScreen,
        )

        for screen in reversed(self.screen_stack):
            if isinstance(screen, ConversationScreen):
                return screen.key, screen.group
            if isinstance(screen, ConversationsScreen):
                from textual.widgets import ListView  # noqa: PLC0415

                item = screen.query_one(ListView).highlighted_child
                if isinstance(item, ConversationItem):
                    return item.row.key, item.row.group is not None
                return None
        return None

    async def action_desk_call(self) -> None:
        """Call the conversation on screen, or show the call in progress."""
        if not self.desk_ready:
            return
        from dhtchat.ui.screens.calls import place_call  # noqa: PLC0415

        await place_call(cast(App[object], self))

    async def action_desk_files(self) -> None:
        """The files of the conversation on screen (all files when none)."""
        if not self.desk_ready:
            return
        from dhtchat.ui.screens.files import FilesScreen  # noqa: PLC0415

        if not isinstance(self.screen, FilesScreen):
            target = self.conversation_key()
            await self.push_screen(FilesScreen(target[0] if target else None))

    async def action_desk_groups(self) -> None:
        """The groups: create, invite, remove, leave, members."""
        if not self.desk_ready:
            return
        from dhtchat.ui.screens.groups import GroupsScreen  # noqa: PLC0415

        if not isinstance(self.screen, GroupsScreen):
            await self.push_screen(GroupsScreen())

    async def action_desk_settings(self) -> None:
        """The settings."""
        if not self.desk_ready:
            return
        from dhtchat.ui.screens.settings import SettingsScreen  # noqa: PLC0415

        if not isinstance(self.screen, SettingsScreen):
            await self.push_screen(SettingsScreen())
