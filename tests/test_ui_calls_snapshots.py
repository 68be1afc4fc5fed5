"""Snapshots (SVG) of the in-call panel and the incoming-call dialog on fixed data, at 80x24:
the SAS words large, the match / differ / mute / hold / hang-up keys in the footer, the live
numbers in words. Update after a deliberate change with ``pytest --snapshot-update``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.screen import Screen

from dhtchat.core.identity import SigningIdentity
from dhtchat.ui.client import UiClient
from dhtchat.ui.desk import DeskApp
from dhtchat.ui.models import Contact
from dhtchat.ui.records import CallInfo, CallStats
from dhtchat.ui.screens.calls import CallScreen, IncomingCallScreen
from dhtchat.ui.state import ChatState


def _id(seed: int) -> str:
    return SigningIdentity.from_seed(bytes([seed]) * 32).user_id


ME, ALICE, BOB = _id(1), _id(2), _id(3)
CALL = CallInfo(id="c0" * 16, contact=ALICE, name="Alice", direction="outgoing", video=False,
                state="active", sas_words="granite orbit lantern", sas_number="4821 0937",
                muted=True, path="direct",
                stats=CallStats(rtt_ms=23.0, jitter_ms=2.0, loss_percent=0.4, send_kbps=41.0,
                                receive_packets_per_s=50.0, duration_s=65.0))


class SnapApp(DeskApp):
    """One of these screens on fixed state; no daemon (nothing is polled)."""

    ENABLE_COMMAND_PALETTE = False

    def __init__(self, screen: Callable[[], Screen[object]]) -> None:
        super().__init__()
        self.profile = Path("/nonexistent")
        self.client = UiClient(Path("/nonexistent/daemon.sock"))
        self.state = ChatState(me=ME, connected=True)
        self.state.contacts = {ALICE: Contact(ALICE, "Alice", "accepted", status="connected"),
                               BOB: Contact(BOB, "Bob", "accepted", status="online")}
        self._make = screen

    def on_mount(self) -> None:
        self.push_screen(self._make())


def test_call_panel(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(SnapApp(lambda: CallScreen([CALL], poll=False)),
                        terminal_size=(80, 24))


def test_incoming_call_dialog(snap_compare: Callable[..., bool]) -> None:
    ringing = CallInfo(id="d1" * 16, contact=BOB, name="Bob", direction="incoming",
                       video=True, state="ringing")
    assert snap_compare(SnapApp(lambda: IncomingCallScreen(ringing)), terminal_size=(80, 24))
