"""End to end on a real terminal: ``dhtchat demo`` in a tmux pane of 80x24 opens the desktop
client with the demo contact (the demo's loopback DHT, the bot's daemon, the user's daemon the
client starts); keys typed with send-keys open the conversation, write a message and send it
with Enter; the bot's daemon has it in its history (read over its API with the CLI) and its
answer is on the screen; Ctrl+Q, s stops everything and removes the demo's files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libtmux  # a pinned test dependency: never skipped
import pytest

from dhtchat.cli.demoui import daemon_options
from dhtchat.cli.parser import build_parser
from dhtchat.ui.daemonctl import DaemonControl
from tests.daemons import REPO, cli

WIDTH, HEIGHT = 80, 24
TEXT = "hello from the tmux test"


def _shown(pane: Any) -> str:
    return "\n".join(pane.capture_pane())


def _flat(text: str) -> str:
    """The pane's text with the line breaks of wrapped lines taken out."""
    return " ".join(text.split())


def _wait(pane: Any, check: Callable[[str], bool], timeout: float, what: str) -> str:
    """Poll capture-pane until ``check(text)``; fail after ``timeout`` s with the screen."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _shown(pane)
        if check(text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")


def _one_dir(root: Path) -> Path:
    found = list(root.glob("dhtchat-demo-*"))
    assert len(found) == 1, found
    return found[0]


def _bot_history(bot: Path, user: str) -> list[dict[str, Any]]:
    out = cli(bot, "history", user, "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.timeout(240)
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI") != "true",
                    reason="needs tmux (./dev test installs it; CI fails without)")
def test_the_demo_on_a_terminal_opens_the_client_and_enter_sends() -> None:
    # The demo's TemporaryDirectory goes here (TMPDIR). Not under tmp_path: under xdist that
    # is long enough to push the daemon's socket path past AF_UNIX's 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="dtt-"))
    demo = " ".join(shlex.quote(a) for a in [
        "env", "-u", "CI", "-u", "DHTCHAT_HOME", "-u", "DHTCHAT_PASSPHRASE",
        f"TMPDIR={tmp}", f"PYTHONPATH={REPO}", "TERM=xterm-256color",
        sys.executable, "-m", "dhtchat", "demo", "--nodes", "8"])
    server = libtmux.Server(socket_name=f"dhtchat-demo-test-{os.getpid()}")
    try:
        session = server.new_session(session_name="demo", x=WIDTH, y=HEIGHT,
                                     start_directory=str(REPO),
                                     window_command=f"{demo}; echo DEMO-EXIT=$?; sleep 60")
        pane = session.active_window.active_pane
        assert (int(pane.pane_width), int(pane.pane_height)) == (WIDTH, HEIGHT)
        # the conversations list: the bot accepted the demo's request and greeted
        _wait(pane, lambda t: "DemoBot" in t and "unread" in t, 90,
              "DemoBot in the conversations list with its greeting")
        workdir = _one_dir(tmp)
        bot, you = workdir / "bot", workdir / "you"
        user = json.loads(cli(bot, "contact", "list", "--json").stdout)[0]["id"]
        pane.send_keys("Enter", enter=False)
        _wait(pane, lambda t: "New line" in t and "a tone of" in _flat(t), 15,
              "the conversation with DemoBot (its greeting, the compose box)")
        pane.send_keys(TEXT, enter=False, literal=True)
        _wait(pane, lambda t: TEXT in t, 10, "the text in the compose box")
        assert not any(r["text"] == TEXT for r in _bot_history(bot, user))  # not sent yet
        pane.send_keys("Enter", enter=False)
        _wait(pane, lambda t: f'You said "{TEXT}"' in _flat(t), 60, "DemoBot's answer")
        deadline = time.monotonic() + 30
        while True:  # the other side's history, from its daemon's API
            rows = _bot_history(bot, user)
            mine = [r for r in rows if r["text"] == TEXT]
            if mine:
                break
            assert time.monotonic() < deadline, f"not in DemoBot's history: {rows}"
            time.sleep(0.3)
        assert len(mine) == 1 and mine[0]["author"] == user
        # my copy: in my daemon's history, delivered
        history = cli(you, "history", "DemoBot", "--json").stdout
        assert any(json.loads(line)["text"] == TEXT for line in history.splitlines())
        # quit: the client started my daemon, so it asks; s stops it, then the demo ends
        pane.send_keys("C-q", enter=False)
        _wait(pane, lambda t: "stop the daemon and quit" in t, 10, "the quit question")
        pane.send_keys("s", enter=False)
        shown = _wait(pane, lambda t: "DEMO-EXIT=" in t, 60, "the demo's end")
        assert "DEMO-EXIT=0" in shown and "demo ended" in shown, shown
        assert "Traceback" not in shown
        assert not workdir.exists()
        left = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True,
                              check=False)
        assert left.stdout.strip() == "", "a process of the demo is still running"
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_demos_daemon_flags_reach_the_daemon_the_client_starts(tmp_path: Path) -> None:
    """The client's command line for the demo's profile parses to the same ``dhtchat
    daemon`` options as the demo's own flags (nothing lost, nothing doubled)."""
    flags = ["--port", "0", "--host", "127.0.202.1", "--ice-address", "127.0.0.1", "--name",
             "Demo User", "--bootstrap", "127.0.1.1:4000", "--bootstrap", "127.0.2.1:4001"]
    argv = DaemonControl(tmp_path, daemon_options(flags)).command("")
    assert argv[1:3] == ["-m", "dhtchat"]
    parser = build_parser()
    theirs = vars(parser.parse_args(["--profile", str(tmp_path), "daemon", *flags]))
    ours = vars(parser.parse_args(argv[3:]))
    assert ours == theirs
    assert ours["ice_address"] == ["127.0.0.1"] and ours["host"] == "127.0.202.1"
    assert ours["bootstrap"] == ["127.0.1.1:4000", "127.0.2.1:4001"]
