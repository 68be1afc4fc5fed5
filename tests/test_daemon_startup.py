"""How ``dhtchat daemon`` starts (issue 12: 50 offline messages fetched <= 1.5 s after a
restart): the passphrase's Argon2id runs in a worker thread while the app and aiortc are
imported, and a wrong passphrase still fails the way it did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"

# Runs `dhtchat daemon` in a fresh interpreter (nothing imported yet) with the identity's
# unlock wrapped: it notes whether it runs off the main thread and whether the app's daemon
# module finished loading while it was unlocking (it waits up to 30 s for that), then
# unlocks with the passphrase given, so a wrong one stops the daemon before it listens.
PROBE = """
import sys, threading, time
import dhtchat.cli.daemon as command
from dhtchat.cli import main

real = command.open_identity
seen = {}

def unlock(document, passphrase):
    seen["worker thread"] = threading.current_thread() is not threading.main_thread()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not hasattr(
            sys.modules.get("dhtchat.app.daemon"), "DaemonOptions"):
        time.sleep(0.01)
    seen["app imported meanwhile"] = hasattr(sys.modules.get("dhtchat.app.daemon"),
                                             "DaemonOptions")
    return real(document, passphrase)

command.open_identity = unlock
code = main(["--profile", sys.argv[1], "daemon", "--port", "0", "--host", "127.0.0.1"])
print("SEEN", sorted(k for k, v in seen.items() if v), "EXIT", code)
"""


def _env(passphrase: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHTCHAT_")}
    env.update(PYTHONPATH=str(REPO), DHTCHAT_PASSPHRASE=passphrase)
    return env


def test_the_passphrase_is_unlocked_while_the_app_loads(tmp_path: Path) -> None:
    root = tmp_path / "p"
    made = subprocess.run([sys.executable, "-m", "dhtchat", "--profile", str(root), "id",
                           "new"], env=_env(PASSPHRASE), capture_output=True, text=True,
                          timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    probe = subprocess.run([sys.executable, "-c", PROBE, str(root)],
                           env=_env("not the passphrase"), capture_output=True, text=True,
                           timeout=120, check=False)
    assert "SEEN ['app imported meanwhile', 'worker thread'] EXIT 2" in probe.stdout, (
        probe.stdout + probe.stderr)
    assert "error:" in probe.stderr and "Traceback" not in probe.stderr, probe.stderr
    assert not (root / "daemon.sock").exists()  # it never listened


def test_the_daemon_loads_without_numpy() -> None:
    """numpy (only for generated and analysed call audio) is not on the start path."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, dhtchat.cli, dhtchat.app.daemon; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy')[:3])"],
        env=_env(PASSPHRASE), capture_output=True, text=True, timeout=120, check=False)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
