"""First run: create the identity with a passphrase (strength shown as you type), then show
the user id, its fingerprint and a QR code, and choose the display name.

Dismissed with ``(passphrase, name)``; the identity file exists by then.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Input, Static

from dhtchat.ui.daemonctl import Settings
from dhtchat.ui.identity import IdentityInfo, KeystoreError, create_identity, qr_code, strength
from dhtchat.ui.widgets import KeyFooter

STRENGTH_WORDS = ("very weak", "weak", "fair", "strong", "very strong")
GOOD_ENOUGH = 3  # zxcvbn score from which no confirmation is asked


def grouped(text: str, size: int, per_line: int) -> str:
    """``text`` in space-separated groups of ``size``, ``per_line`` groups a line (a user id
    pasted back with the spaces and line breaks still parses)."""
    groups = [text[i:i + size] for i in range(0, len(text), size)]
    return "\n".join(" ".join(groups[i:i + per_line]) for i in range(0, len(groups), per_line))


def strength_line(passphrase: str) -> str:
    """The feedback under the passphrase field."""
    if not passphrase:
        return "Strength: -  (use several unrelated words)"
    score, guesses = strength(passphrase)
    bar = "█" * (score + 1) + "░" * (4 - score)
    return f"Strength: {bar} {score}/4 {STRENGTH_WORDS[score]} ({guesses})"


class FirstRunScreen(Screen[tuple[str | None, str]]):
    """Create the identity, show it, choose a name."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "app.quit", "Quit")]
    DEFAULT_CSS = """
    FirstRunScreen { padding: 0 1; }
    FirstRunScreen #intro { height: auto; margin-bottom: 1; }
    FirstRunScreen Input { width: 60; }
    FirstRunScreen #strength, FirstRunScreen #problem { height: auto; }
    FirstRunScreen #card { height: auto; }
    FirstRunScreen #qr { width: 37; height: auto; }
    FirstRunScreen #who { width: 1fr; height: auto; padding-left: 1; }
    """

    def __init__(self, profile: Path) -> None:
        super().__init__()
        self.profile = profile
        self.info: IdentityInfo | None = None
        self._passphrase: str | None = None
        self._weak_ok = ""  # a weak passphrase the user confirmed with a second Enter

    def compose(self) -> ComposeResult:
        with Vertical(id="step1"):
            yield Static("Welcome to dhtchat. No account, no server: your identity is a key "
                         "that stays on this computer, protected by a passphrase. If you "
                         "forget it, the key cannot be recovered.", id="intro", markup=False)
            yield Input(placeholder="passphrase", password=True, id="pass1")
            yield Input(placeholder="the same passphrase again", password=True, id="pass2")
            yield Static(strength_line(""), id="strength", markup=False)
            yield Static("Enter: create the identity", id="problem", markup=False)
        with Vertical(id="step2"):
            with Horizontal(id="card"):
                yield Static("", id="qr", markup=False)
                yield Static("", id="who", markup=False)
            yield Input(placeholder="your display name (others see it with your requests)",
                        id="name", max_length=64)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#step2").display = False
        self.query_one("#pass1", Input).focus()

    @on(Input.Changed, "#pass1")
    def _typed(self, event: Input.Changed) -> None:
        self.query_one("#strength", Static).update(strength_line(event.value))

    @on(Input.Submitted, "#pass1")
    def _next(self) -> None:
        self.query_one("#pass2", Input).focus()

    @on(Input.Submitted, "#pass2")
    async def _create(self) -> None:
        first = self.query_one("#pass1", Input).value
        second = self.query_one("#pass2", Input).value
        problem = self.query_one("#problem", Static)
        if not first:
            problem.update("Choose a passphrase first.")
            self.query_one("#pass1", Input).focus()
            return
        if first != second:
            problem.update("The two passphrases differ; type the same one twice.")
            return
        score, _ = strength(first)
        if score < GOOD_ENOUGH and self._weak_ok != first:
            self._weak_ok = first
            problem.update("This passphrase is easy to guess: anyone who copies your profile "
                           "could try it. Press Enter again to use it anyway, or change it.")
            return
        problem.update("Creating your key...")
        try:
            self.info = await asyncio.to_thread(create_identity, self.profile, first)
        except (KeystoreError, OSError) as exc:
            problem.update(f"Could not create the identity: {exc}")
            return
        self._passphrase = first
        self._show_card(self.info)

    def _show_card(self, info: IdentityInfo) -> None:
        self.query_one("#step1").display = False
        self.query_one("#step2").display = True
        self.query_one("#qr", Static).update(qr_code(info.user_id))
        self.query_one("#who", Static).update(
            "Your user id (give it to people so they can ask you to be a contact):\n\n"
            f"{grouped(info.user_id, 29, 1)}\n\n"
            f"Fingerprint (compare it when you meet):\n{grouped(info.fingerprint, 24, 1)}\n\n"
            "Now choose your display name and press Enter.")
        name = self.query_one("#name", Input)
        name.value = Settings.load(self.profile).name
        name.focus()

    @on(Input.Submitted, "#name")
    def _named(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        settings = Settings.load(self.profile)
        settings.name = name
        settings.save(self.profile)
        self.dismiss((self._passphrase, name))
