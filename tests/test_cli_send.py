"""Sending through the CLI: text piped on stdin (`send NAME` and `send NAME -`), a message
over the limit refused with the limit in the error, `timer NAME 1h|30m|7d`; and the call
commands' wording: `call list` says "missed" once, a mistyped SAS can be retyped and only an
explicit "they differ" marks the call suspicious."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat import cli as dhtchat_cli
from dhtchat.app.rpc import INVALID_PARAMS, RpcError
from dhtchat.cli import rpcclient
from dhtchat.messaging.payload import MAX_TEXT_BYTES
from tests.daemons import (
    DaemonProcess,
    DhtProcess,
    _env,
    cli,
    daemon_args,
    make_contacts,
    new_identity,
)

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


def piped(profile: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``dhtchat --profile PROFILE ARGS`` with ``stdin`` piped in."""
    return subprocess.run([sys.executable, "-m", "dhtchat", "--profile", str(profile), *args],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env=_env(), check=False)


def _history(profile: Path, contact: str) -> list[dict[str, Any]]:
    out = cli(profile, "history", contact, "--json", "--limit", "100").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_send_from_stdin_limits_and_timer_durations(tmp_path: Path, dht: DhtProcess) -> None:
    alice_id = new_identity(tmp_path / "alice")
    bob_id = new_identity(tmp_path / "bob")
    alice = DaemonProcess(tmp_path / "alice", daemon_args(dht, "Alice"))
    bob = DaemonProcess(tmp_path / "bob", daemon_args(dht, "Bob"))
    try:
        alice.wait_ready()
        bob.wait_ready()
        make_contacts(alice, alice_id, bob, bob_id)
        first = piped(alice.profile, "piped in\nwith two lines\n", "send", "Bob")
        assert first.returncode == 0, first.stderr
        dash = piped(alice.profile, "through a dash", "send", "Bob", "-")
        assert dash.returncode == 0, dash.stderr
        texts = [m["text"] for m in _history(alice.profile, bob_id)]
        assert texts[-2:] == ["piped in\nwith two lines", "through a dash"]

        big = piped(alice.profile, "x" * (MAX_TEXT_BYTES + 1), "send", "Bob")
        assert big.returncode == 2 and str(MAX_TEXT_BYTES) in big.stderr, big.stderr
        assert "Traceback" not in big.stderr
        huge = piped(alice.profile, "y" * (3 * MAX_TEXT_BYTES), "send", "Bob", "-")
        assert huge.returncode == 2 and f"at most {MAX_TEXT_BYTES} bytes" in huge.stderr
        big_arg = cli(alice.profile, "send", "Bob", "z" * (MAX_TEXT_BYTES + 5), check=False)
        assert big_arg.returncode == 2 and str(MAX_TEXT_BYTES) in big_arg.stderr
        assert len(_history(alice.profile, bob_id)) == 2  # nothing of those was queued

        for spoken, seconds in (("1h", 3600), ("30m", 1800), ("7d", 604800), ("90", 90),
                                ("off", 0)):
            result = cli(alice.profile, "timer", "Bob", spoken)
            assert (f"{seconds} s" in result.stdout) if seconds else ("off" in result.stdout)
        bad = cli(alice.profile, "timer", "Bob", "soon", check=False)
        assert bad.returncode == 2 and "30m" in bad.stderr and "Traceback" not in bad.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = [m["text"] for m in _history(bob.profile, alice_id)]
            if "through a dash" in got:
                break
            time.sleep(0.5)
        assert "piped in\nwith two lines" in got and "through a dash" in got
    finally:
        alice.stop()
        bob.stop()


# --- the call commands, against a daemon that answers as recorded --------------------------


class FakeDaemon:
    """Answers the CLI's RPC calls; ``call.verify`` checks the words like the daemon."""

    def __init__(self, log: list[dict[str, Any]], words: str) -> None:
        self.log_rows = log
        self.words = words
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, path: Path, method: str, params: dict[str, Any],
                       timeout: float) -> Any:
        self.calls.append((method, dict(params)))
        if method == "call.list":
            return self.log_rows
        assert method == "call.verify"
        if params.get("differ"):
            return {"contact": "x", "name": "Bob", "verified": False, "suspicious": True,
                    "sas": self.words}
        if params.get("sas") not in (None, self.words):
            raise RpcError(INVALID_PARAMS, f"the words do not match the ones shown here "
                           f"({self.words}): check them for a typo and try again")
        return {"contact": "x", "name": "Bob", "verified": True, "sas": self.words}


def _row(reason: str, missed: bool, suspicious: bool = False) -> dict[str, Any]:
    return {"id": "00" * 16, "contact": "x", "name": "Bob", "direction": "incoming",
            "video": False, "started": 0.0, "answered": None, "ended": 1.0,
            "reason": reason, "missed": missed, "suspicious": suspicious}


def test_call_list_says_missed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeDaemon([_row("missed", True), _row("cancelled by the caller", True),
                       _row("hung up", False, suspicious=True)], "apple banana cherry")
    monkeypatch.setattr(rpcclient, "rpc_call", fake)
    assert dhtchat_cli.main(["--profile", str(tmp_path), "call", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.lower().count("missed") for line in lines] == [1, 1, 0]
    assert "missed (cancelled by the caller)" in lines[1]
    assert "SUSPICIOUS" in lines[2]


def test_a_mistyped_sas_can_be_retyped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeDaemon([], "apple banana cherry")
    monkeypatch.setattr(rpcclient, "rpc_call", fake)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    answers = iter(["apple banana cherry"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    profile = ["--profile", str(tmp_path)]
    assert dhtchat_cli.main([*profile, "call", "verify", "Bob", "--sas", "aple banana"]) == 0
    err = capsys.readouterr().err
    assert "is verified" in err and "middle" not in err  # a typo is not an attack
    assert not any(params.get("differ") for _, params in fake.calls)

    # Only "they differ" marks the call suspicious, and only then the attacker warning.
    answers = iter(["differ"])
    assert dhtchat_cli.main([*profile, "call", "verify", "Bob", "--sas", "dog egg fig"]) == 1
    err = capsys.readouterr().err
    assert "WARNING" in err and "middle" in err and "suspicious" in err
    assert fake.calls[-1] == ("call.verify", {"contact": "Bob", "differ": True})

    # Without a terminal: the error says how to retype or to say they differ, nothing marked.
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    before = len(fake.calls)
    assert dhtchat_cli.main([*profile, "call", "verify", "Bob", "--sas", "dog egg fig"]) == 2
    err = capsys.readouterr().err
    assert "typo" in err and "middle" not in err
    assert not any(params.get("differ") for _, params in fake.calls[before:])
    assert dhtchat_cli.main([*profile, "call", "verify", "Bob", "--differ"]) == 1
    assert fake.calls[-1] == ("call.verify", {"contact": "Bob", "differ": True})
