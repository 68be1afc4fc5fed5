"""Unlock an existing identity: its passphrase, checked here before a daemon is started.

Dismissed with the passphrase once it opened the identity file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Input, Static

from dhtchat.ui.identity import KeystoreError, read_identity, unlock
from dhtchat.ui.widgets import KeyFooter


class UnlockScreen(Screen[str]):
    """Ask for the passphrase of the profile's identity."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "app.quit", "Quit")]
    DEFAULT_CSS = """
    UnlockScreen { align: center middle; }
    UnlockScreen Vertical { width: 76; height: auto; padding: 1 2; border: round $accent; }
    UnlockScreen Static { height: auto; margin-bottom: 1; }
    """

    def __init__(self, profile: Path) -> None:
        super().__init__()
        self.profile = profile

    def compose(self) -> ComposeResult:
        try:
            who = read_identity(self.profile).user_id
        except KeystoreError as exc:
            who = str(exc)
        with Vertical():
            yield Static(f"Unlock your identity\n{who}", markup=False)
            yield Input(placeholder="passphrase", password=True, id="passphrase")
            yield Static("Enter: unlock and start your node", id="problem", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#passphrase", Input).focus()

    @on(Input.Submitted, "#passphrase")
    async def _unlock(self, event: Input.Submitted) -> None:
        problem = self.query_one("#problem", Static)
        if not event.value:
            problem.update("Type your passphrase.")
            return
        problem.update("Checking the passphrase...")
        try:
            await asyncio.to_thread(unlock, self.profile, event.value)
        except KeystoreError as exc:
            problem.update(f"{exc}. Try again.")
            event.input.value = ""
            return
        self.dismiss(event.value)
