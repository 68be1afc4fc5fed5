"""``dhtchat demo``: the headless conversation with the demo bot as a user runs it (a
subprocess, ``CI=true``, no stdin), its failure when the bot stays silent, the DHT put/get
demo (``--dht``), and the seam a front end uses (:func:`dhtchat.app.demo.demo_network`)
opened by a real ``dhtchat daemon`` process, as the desktop UI will."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dhtchat.app.demo import BOT_NAME, DemoInBackground, DemoSetup, has_terminal
from dhtchat.app.demobot import SKIP_ENV, DemoBot
from tests.daemons import REPO, DaemonProcess, cli

TONE_TOLERANCE = 15.0
TIME_LIMIT = 90.0  # seconds the whole headless demo may take (it takes ~6 s on loopback)


def _demo(*args: str, env: dict[str, str] | None = None,
          timeout: float = TIME_LIMIT) -> tuple[subprocess.CompletedProcess[str], float]:
    """``dhtchat demo ARGS`` with no terminal (CI=true, stdin /dev/null)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DHTCHAT_")}
    environment.update(CI="true", PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8",
                       **(env or {}))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dhtchat", "demo", *args], cwd=REPO,
                            env=environment, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, encoding="utf-8", timeout=timeout, check=False)
    return result, time.monotonic() - started


def _one(pattern: str, text: str) -> re.Match[str]:
    found = re.findall(pattern, text, re.MULTILINE)
    assert len(found) == 1, (pattern, found, text)
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None
    return match


def test_headless_demo_runs_the_whole_conversation() -> None:
    result, elapsed = _demo()
    out = result.stdout
    print(f"\n{out}{result.stderr}\n(the demo took {elapsed:.1f} s)")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    _one(r"^network  16 DHT nodes up", out)
    _one(rf"^request  you -> {BOT_NAME}: .* \(stored on [1-9]\d* DHT nodes\)$", out)
    _one(rf"^accepted {BOT_NAME} accepted the request after [\d.]+ s; you are contacts$", out)
    _one(r"^connect  direct: host 127\.0\.0\.1:\d+ <-> host 127\.0\.0\.1:\d+ in \d+ ms", out)
    # my messages: each delivered (✓) and read (✓✓); the bot answered each and sent a file
    sent = re.findall(rf"^message  you -> {BOT_NAME}: .*  ✓ delivered after \d+ ms, "
                      r"✓✓ read after \d+ ms$", out, re.MULTILINE)
    assert len(sent) == 2, out
    assert len(re.findall(rf"^message  {BOT_NAME} -> you: ", out, re.MULTILINE)) == 6, out
    _one(rf'^message  {BOT_NAME} -> you: "You said "hello', out)
    _one(rf'^message  {BOT_NAME} -> you: "\[file\] postcard-from-demobot\.txt \(\d+ bytes\)"$',
         out)
    theirs = _one(rf"^file     SHA-256 on {BOT_NAME}'s side: ([0-9a-f]{{64}})$", out).group(1)
    ours = _one(r"^file     SHA-256 on your side: +([0-9a-f]{64})$", out).group(1)
    assert theirs == ours
    # the call: the same SAS on both sides, each side heard the other's tone
    sas = re.findall(r'^call     SAS on (?:your|\w+\'s) side: +"([a-z]+ [a-z]+ [a-z]+)" '
                     r"\((\d{4} \d{4})\)$", out, re.MULTILINE)
    assert len(sas) == 2 and sas[0] == sas[1], sas
    heard = _one(r"^call     you heard ([\d.]+) Hz for ([\d.]+) s \(\w+ sends (\d+) Hz", out)
    assert abs(float(heard.group(1)) - float(heard.group(3))) <= TONE_TOLERANCE
    assert float(heard.group(2)) >= 2.5
    bot_heard = _one(rf"^call     {BOT_NAME} heard ([\d.]+) Hz for [\d.]+ s \(you send (\d+) Hz",
                     out)
    assert abs(float(bot_heard.group(1)) - float(bot_heard.group(2))) <= TONE_TOLERANCE
    assert float(heard.group(3)) != float(bot_heard.group(2))  # two different tones
    # the history: every message with the sender's ✓✓
    rows = re.findall(r"^         \d\d:\d\d:\d\d (you|DemoBot) +.* (✓✓|✓|…)$", out, re.MULTILINE)
    assert len(rows) == 8 and all(mark == "✓✓" for _, mark in rows), rows
    _one(r"^history  8 messages \(2 yours, 6 DemoBot's\); 8 of 8 delivered and read$", out)
    _one(r"^demo OK in [\d.]+ s", out)
    assert elapsed < TIME_LIMIT


@pytest.mark.parametrize(("skip", "failure"), [
    ("reply", 'the read receipt of "hello DemoBot, can you read me\\?": nothing within 30 s'),
    ("call", "DemoBot answering the call: nothing within 30 s"),
])
def test_demo_fails_clearly_when_the_bot_is_silent(skip: str, failure: str) -> None:
    """The bot leaves out one behaviour: the demo exits 1 within its step's deadline and
    says which step did not happen, without a traceback."""
    result, elapsed = _demo(env={SKIP_ENV: skip})
    print(f"\n{result.stdout[-600:]}{result.stderr[-600:]}")
    assert result.returncode == 1
    _one(rf"^demo FAILED after [\d.]+ s: {failure}$", result.stdout)
    assert "demo OK" not in result.stdout
    assert "Traceback" not in result.stderr
    assert elapsed < 60


def test_dht_demo_is_still_there() -> None:
    result, _ = _demo("--dht", "--nodes", "8", timeout=60)
    assert result.returncode == 0, result.stderr
    for step in ("[1/4] 8 DHT nodes up", "[3/4] Alice stored 'greeting'",
                 "[4/4] Bob's listen received the update 'Alice is online now'"):
        assert step in result.stdout
    assert result.stdout.rstrip().endswith("demo OK")


def test_headless_without_a_terminal_or_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not has_terminal()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert not has_terminal()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert has_terminal()


def test_a_daemon_process_opens_the_seams_profile_and_talks_to_the_bot(tmp_path: Path) -> None:
    """What the desktop UI does on a terminal: :class:`DemoInBackground` runs the DHT and
    the bot on a thread of their own, then ``dhtchat --profile USER_PROFILE daemon
    DAEMON_ARGS`` (a process; no passphrase asked) requests the bot, which accepts and
    answers a message."""
    background = DemoInBackground(tmp_path, nodes=8)
    with background as setup:
        assert isinstance(setup, DemoSetup) and background.network is not None
        bot: DemoBot = background.network.bot
        daemon = DaemonProcess(setup.user_profile, list(setup.daemon_args))
        try:
            daemon.wait_ready()
            status = daemon.status()
            assert status is not None and status["id"] == setup.user_id
            cli(setup.user_profile, "contact", "request", setup.bot_id, "--message", "hi")
            daemon.wait_contact(setup.bot_id, lambda row: row["state"] == "accepted")
            cli(setup.user_profile, "send", setup.bot_name, "hi from a daemon process",
                "--wait", "--timeout", "30")
            deadline = time.monotonic() + 30
            history = ""
            while '"hi from a daemon process"' not in history:
                assert time.monotonic() < deadline, history
                history = cli(setup.user_profile, "history", setup.bot_name).stdout
                time.sleep(0.2)
            print(f"\n{history}")
            assert "hi from a daemon process ✓✓" in history  # read by the bot
            assert bot.log.accepted == [setup.user_id] and bot.log.replies == 1
        finally:
            daemon.stop()
