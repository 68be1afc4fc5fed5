"""End to end: the real terminal app (``dhtchat ui``) in tmux at 80x24, driven by keys, with
a real daemon on the other side: unlock, accept a request, send a message, quit (the daemon
it started stops). Checks the other side's history."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libtmux  # a pinned test dependency: never skipped
import pytest

from dhtchat.app.rpc import call
from tests.daemons import PASSPHRASE, REPO, DhtProcess, cli, new_identity, next_host
from tests.test_ui_support import start_daemon

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI") != "true",
                                 reason="needs tmux (./dev test installs it; CI fails without)")]


def _wait(pane: object, check: Callable[[str], bool], timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = "\n".join(pane.capture_pane())  # type: ignore[attr-defined]
        if check(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")


def test_the_terminal_app_accepts_and_sends(tmp_path: Path) -> None:
    dht = DhtProcess(16)
    alice, _ = start_daemon(tmp_path, "alice", dht)
    bob_profile = tmp_path / "bob"
    bob_id = new_identity(bob_profile)
    server = libtmux.Server(socket_name=f"dhtchat-test-{os.getpid()}")
    try:
        command = " ".join(shlex.quote(a) for a in [
            sys.executable, "-m", "dhtchat", "--profile", str(bob_profile), "ui",
            "--host", next_host(), "--bootstrap", *dht.bootstrap])
        env = {"PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
        session = server.new_session(session_name="ui", x=80, y=24, start_directory=str(REPO),
                                     window_command=f"env -u DHTCHAT_PASSPHRASE {command}; "
                                     "sleep 30", environment=env)
        pane = session.active_window.active_pane
        _wait(pane, lambda t: "Unlock your identity" in t, 30, "the unlock screen")
        pane.send_keys(PASSPHRASE, enter=True, literal=True)
        _wait(pane, lambda t: "No conversations yet" in t, 60, "the conversations screen")
        cli(alice.profile, "contact", "request", bob_id, "--name", "Alice",
            "--message", "hi from Alice")
        _wait(pane, lambda t: "1 contact request" in t, 60, "the request")
        pane.send_keys("r", enter=False)
        _wait(pane, lambda t: "hi from Alice" in t and "fingerprint" in t, 10, "requests")
        pane.send_keys("a", enter=False)
        _wait(pane, lambda t: "No requests are waiting" in t, 30, "accepted")
        alice.wait_contact(bob_id, lambda r: r["state"] == "accepted", 60)
        pane.send_keys("Escape", enter=False)
        _wait(pane, lambda t: "Alice" in t and "Open" in t, 10, "Alice in the list")
        pane.send_keys("Enter", enter=False)
        _wait(pane, lambda t: "Enter sends" in t, 10, "the conversation")
        pane.send_keys("typed in tmux", enter=False, literal=True)
        _wait(pane, lambda t: "typed in tmux" in t, 5, "the text in the box")
        pane.send_keys("Enter", enter=False)
        _wait(pane, lambda t: "me: typed in tmux ✓" in t, 90, "the delivered mark")
        deadline = time.monotonic() + 30
        while True:
            out = cli(alice.profile, "history", bob_id, "--json").stdout
            rows = [json.loads(line) for line in out.splitlines() if line.strip()]
            if any(r["text"] == "typed in tmux" and r["author"] == bob_id for r in rows):
                break
            assert time.monotonic() < deadline, f"not in Alice's history: {rows}"
            time.sleep(0.3)
        pane.send_keys("C-q", enter=False)
        _wait(pane, lambda t: "stop the daemon and quit" in t, 10, "the quit question")
        pane.send_keys("s", enter=False)
        deadline = time.monotonic() + 30
        while (bob_profile / "daemon.sock").exists():
            assert time.monotonic() < deadline, "the daemon the app started still runs"
            time.sleep(0.2)
    finally:
        server.kill()
        if (bob_profile / "daemon.sock").exists():  # the app's daemon, after a failure
            with contextlib.suppress(Exception):
                asyncio.run(call(bob_profile / "daemon.sock", "shutdown", {}, 10))
        alice.stop()
        dht.stop()
