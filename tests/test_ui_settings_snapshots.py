"""Snapshot (SVG) of the settings screen on fixed data, at 80x24: each setting with when it
takes effect, the saved network settings waiting for the next start, toggles in words.
Update after a deliberate change with ``pytest --snapshot-update``."""

from __future__ import annotations

from collections.abc import Callable

from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.records import DaemonSettings
from dhtchat.ui.screens.settings import Loaded, SettingsScreen
from tests.test_ui_calls_snapshots import SnapApp

SAVED = DaemonSettings(name="Bob", relay_only=True, turn="turn:203.0.113.5:3478",
                       turn_user="bob", turn_pass_set=True, ice_addresses=("192.0.2.10",),
                       running={"name": "Bob", "relay_only": False, "turn": None,
                                "ice_addresses": []},
                       next_start=("relay_only", "turn", "ice_addresses"))


def test_settings_screen(snap_compare: Callable[..., bool]) -> None:
    loaded = Loaded(SAVED, 4 << 20, UiPrefs(audio_in="alsa:default", audio_out="alsa:default"))
    assert snap_compare(SnapApp(lambda: SettingsScreen(loaded)), terminal_size=(80, 24))
