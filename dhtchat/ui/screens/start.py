"""The screen under everything while the client starts (and says why it could not), and the
question asked on quitting when the client started the daemon."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from dhtchat.ui.widgets import KeyFooter


class StartScreen(Screen[None]):
    """"Starting..." and, when starting failed, the reason and what to do."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "app.retry", "Retry"),
                                             Binding("ctrl+q", "app.quit", "Quit")]
    DEFAULT_CSS = """
    StartScreen { align: center middle; }
    StartScreen #status { width: 76; height: auto; padding: 1 2; border: round $accent; }
    """

    def compose(self) -> ComposeResult:
        yield Static("dhtchat: starting...", id="status", markup=False)
        yield KeyFooter()

    def show(self, text: str) -> None:
        """Replace the status text."""
        self.query_one("#status", Static).update(text)


class QuitScreen(ModalScreen[str]):
    """Quit: stop the daemon this client started, or keep it running for the contacts."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("s", "choose('stop')", "Stop daemon and quit"),
                Binding("k", "choose('keep')", "Keep it running and quit"),
                Binding("escape", "choose('cancel')", "Cancel")]
    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen Vertical { width: 60; height: auto; padding: 1 2; border: thick $warning;
                          background: $surface; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Quit dhtchat", markup=False)
            yield Static("This window started your daemon. While it runs, your contacts can "
                         "reach you and messages arrive.\n\n"
                         "  s  stop the daemon and quit\n"
                         "  k  keep it running in the background and quit\n"
                         "  Esc  cancel", markup=False)
        yield KeyFooter()

    def action_choose(self, choice: str) -> None:
        """Close with ``stop``, ``keep`` or ``cancel``."""
        self.dismiss(choice)
