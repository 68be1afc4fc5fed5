"""Settings: ``settings.get`` / ``settings.set`` on a real daemon (the name at once, the
network settings at the next start, flags win, the TURN password never returned, bad values
refused with nothing saved), and the settings screen driving them, the file limit, the
client's own preferences and the passphrase."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox, Input

from dhtchat.app.rpc import RpcError, call
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.daemonctl import Settings as StartSettings
from dhtchat.ui.identity import KeystoreError, unlock
from dhtchat.ui.prefs import UiPrefs
from dhtchat.ui.screens.conversations import ConversationsScreen
from dhtchat.ui.screens.settings import PassphraseScreen, SettingsScreen
from tests.daemons import PASSPHRASE, DaemonProcess, DhtProcess, cli, new_identity, next_host
from tests.test_ui_support import screen_text, start_daemon, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(8)
    yield net
    net.stop()


def _api(profile: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    return asyncio.run(call(profile / "daemon.sock", method, params or {}, 30.0))


def test_settings_are_saved_in_the_profile_and_used_at_the_next_start(
        tmp_path: Path, dht: DhtProcess) -> None:
    daemon, _ = start_daemon(tmp_path, "dora", dht)
    profile = daemon.profile
    try:
        first = _api(profile, "settings.get")
        assert first["saved"]["name"] == "" and first["running"]["name"] == "Dora"
        assert first["next_start"] == []
        with pytest.raises(RpcError, match="relay_only needs a TURN server"):
            _api(profile, "settings.set", {"relay_only": True})
        with pytest.raises(RpcError, match="needs turn_user and turn_pass"):
            _api(profile, "settings.set", {"turn": "turn:127.0.0.1:3478"})
        with pytest.raises(RpcError, match="is not an IP address"):
            _api(profile, "settings.set", {"ice_addresses": ["not-an-ip"]})
        with pytest.raises(RpcError, match="must be a turn: URL"):
            _api(profile, "settings.set", {"turn": "http://x", "turn_user": "u",
                                           "turn_pass": "p"})
        assert not (profile / "settings.json").exists()  # nothing saved by a refusal
        reply = _api(profile, "settings.set", {
            "name": "Dorothea", "turn": "turn:127.0.0.1:3478", "turn_user": "dora",
            "turn_pass": "s3cret", "relay_only": True, "ice_addresses": ["127.0.0.1"]})
        assert reply["running"]["name"] == "Dorothea"  # at once
        assert sorted(reply["next_start"]) == ["relay_only", "turn"]  # the ICE flag matches
        assert "s3cret" not in json.dumps(reply) and reply["saved"]["turn_pass_set"] is True
        assert (profile / "settings.json").stat().st_mode & 0o777 == 0o600
    finally:
        daemon.stop()
    # Started again without those flags: the saved values are in effect.
    again = DaemonProcess(profile, ["--port", "0", "--host", next_host(),
                                    *[arg for a in dht.bootstrap for arg in ("--bootstrap", a)]])
    try:
        again.wait_ready()
        status = _api(profile, "status")
        assert status["relay_only"] is True and status["turn"] == "turn:127.0.0.1:3478"
        got = _api(profile, "settings.get")
        assert got["next_start"] == [] and got["running"]["name"] == "Dorothea"
        assert got["running"]["ice_addresses"] == ["127.0.0.1"]
        cleared = _api(profile, "settings.set", {"turn": "", "relay_only": False})
        assert cleared["saved"]["turn_user"] == "" and not cleared["saved"]["turn_pass_set"]
        assert cleared["running"]["relay_only"] is True  # until the next start
    finally:
        again.stop()
    # A flag wins over the saved value.
    flagged = DaemonProcess(profile, ["--port", "0", "--host", next_host(),
                                      "--ice-address", "127.0.0.2", "--name", "D"])
    try:
        flagged.wait_ready()
        got = _api(profile, "settings.get")
        assert got["running"]["ice_addresses"] == ["127.0.0.2"]
        assert got["running"]["name"] == "D" and got["saved"]["name"] == "Dorothea"
        assert got["next_start"] == ["ice_addresses"]
        assert got["running"]["relay_only"] is False and got["running"]["turn"] is None
    finally:
        flagged.stop()


def test_the_settings_screen_saves_each_setting_where_it_belongs(
        tmp_path: Path, dht: DhtProcess) -> None:
    daemon, _ = start_daemon(tmp_path, "erin", dht)
    profile = daemon.profile
    app = DhtchatApp(profile)

    async def scenario() -> None:
        async with app.run_test(size=(110, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await pilot.press("f5")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen), 5, "settings")
            screen = app.screen
            await until(pilot, lambda: screen.query_one("#name", Input).value == "Erin", 10,
                        "the running name")
            assert screen.query_one("#auto_accept", Input).value == "1"  # MiB
            assert "at the next daemon start" in screen_text(app)
            screen.query_one("#name", Input).value = "Erin R"
            screen.query_one("#auto_accept", Input).value = "5"
            screen.query_one("#audio_in", Input).value = "tone:300"
            screen.query_one("#notify_text", Checkbox).value = True
            screen.query_one("#ice", Input).value = "127.0.0.1, 127.0.0.3"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: "waiting for the next start" in screen_text(app), 10,
                        "saved")
            assert "ICE addresses" in screen.query_one("#status").render().plain  # type: ignore[attr-defined]
            got = await call(profile / "daemon.sock", "settings.get", {}, 10)
            assert got["saved"]["name"] == "Erin R" and got["running"]["name"] == "Erin R"
            assert got["saved"]["ice_addresses"] == ["127.0.0.1", "127.0.0.3"]
            limits = await call(profile / "daemon.sock", "file.limits", {}, 10)
            assert limits["auto_accept"] == 5 << 20
            prefs = UiPrefs.load(profile)
            assert prefs.audio_in == "tone:300" and prefs.notify_text
            assert StartSettings.load(profile).name == "Erin R"
            # A TURN server without its login: refused, nothing changed.
            screen.query_one("#turn", Input).value = "turn:127.0.0.1:3478"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: "not saved" in screen_text(app), 10, "refused")
            got = await call(profile / "daemon.sock", "settings.get", {}, 10)
            assert got["saved"]["turn"] == ""
            # The passphrase.
            await pilot.press("ctrl+p")
            await until(pilot, lambda: isinstance(app.screen, PassphraseScreen), 5, "passph")
            modal = app.screen
            modal.query_one("#old", Input).value = PASSPHRASE
            modal.query_one("#new1", Input).value = "a new and long passphrase 42"
            modal.query_one("#new2", Input).value = "a different one"
            modal.query_one("#new2", Input).focus()
            await pilot.press("enter")
            await until(pilot, lambda: "differ" in screen_text(app), 5, "differ")
            modal.query_one("#new2", Input).value = "a new and long passphrase 42"
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, SettingsScreen), 30, "changed")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
        unlock(profile, "a new and long passphrase 42")
        with pytest.raises(KeystoreError):
            unlock(profile, PASSPHRASE)
    finally:
        daemon.stop()


def test_a_daemon_refuses_to_start_on_broken_saved_settings(tmp_path: Path) -> None:
    profile = tmp_path / "fay"
    new_identity(profile)
    (profile / "settings.json").write_text('{"relay_only": true}', "utf-8")
    result = cli(profile, "daemon", "--port", "0", "--host", next_host(), check=False,
                 timeout=60)
    assert result.returncode == 2
    assert "profile settings: relay_only needs a TURN server" in result.stderr
    (profile / "settings.json").write_text('{"name": 5', "utf-8")
    result = cli(profile, "daemon", "--port", "0", "--host", next_host(), check=False,
                 timeout=60)
    assert result.returncode == 2 and "settings.json is not valid" in result.stderr
