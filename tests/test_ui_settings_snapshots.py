"""Snapshot (SVG) of the settings screen on fixed data, at 80x24: each setting with when it
takes effect, the saved network settings waiting for the next start, toggles in words.
Update after a deliberate change with ``pytest --snapshot-update``."""

from __future__ import annotations

from collections.abc import Callable

from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.records import DaemonSettings
from dhtchat.ui.screens.settings import Loaded, SettingsScreen, sound_devices
from tests.test_ui_calls_snapshots import SnapApp

SAVED = DaemonSettings(name="Bob", relay_only=True, turn="turn:203.0.113.5:3478",
                       turn_user="bob", turn_pass_set=True, ice_addresses=("192.0.2.10",),
                       running={"name": "Bob", "relay_only": False, "turn": None,
                                "ice_addresses": []},
                       next_start=("relay_only", "turn", "ice_addresses"))


def test_settings_screen(snap_compare: Callable[..., bool]) -> None:
    loaded = Loaded(SAVED, 4 << 20, UiPrefs(audio_in="alsa:default", audio_out="alsa:default"))
    devices = "Sound devices here: alsa:hw:0,0 (HDA Intel PCH: playback, capture)"
    assert snap_compare(SnapApp(lambda: SettingsScreen(loaded, devices)),
                        terminal_size=(80, 24))


def test_sound_devices_are_read_from_proc_asound() -> None:
    pcm = ("00-00: ALC3246 Analog : ALC3246 Analog : playback 1 : capture 1\n"
           "00-03: HDMI 0 : HDMI 0 : playback 1\n"
           "garbage line\n")
    assert sound_devices(pcm) == ["alsa:hw:0,0 (ALC3246 Analog: playback, capture)",
                                  "alsa:hw:0,3 (HDMI 0: playback)"]
    assert sound_devices("") == []
