"""Every script in examples/ runs as a user would run it, exits 0 and says what it did."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TIME_LIMIT = 20.0  # seconds an example may take

# (script, needs 127.0.N.1 loopback addresses, lines that must appear in its output)
CASES: list[tuple[str, bool, list[str]]] = [
    ("local_network_put_get.py", True, [
        r"^5 nodes up; entry node at 127\.0\.1\.1:\d+$",
        r"^stored on [1-5] of [1-5] nodes",
        r"^fetched and verified 'hello from Alice' \(seq 1\) signed by [a-z2-7]{58}$",
        r"^tampered copy rejected: bad signature$",
    ]),
    ("listen_for_updates.py", True, [
        r"^Bob listens on [0-9a-f]{16}\.\.\.$",
        r"^update received: 'online' \(seq 2\)",
    ]),
    ("two_daemons_chat.py", False, [
        r"^Bob got a request from Alice: \"hi Bob, it's Alice\"$",
        r"^Alice and Bob are contacts$",
        r"^connected direct: host <-> host in \d+ ms$",
        r"^Bob received 'hello Bob'; Alice has the delivery receipt: True",
        r"^OK: end-to-end encrypted message delivered exactly once, with a receipt$",
    ]),
    ("demo_conversation.py", True, [
        r"^DemoBot is [a-z2-7]{58}; your profile is you$",
        r"^DemoBot accepted the request$",
        r"^'how are you\?' delivered: True$",
        r"^DemoBot answered: 'You said \"how are you\?\"",
        r"^OK: the demo contact accepted and answered, through the daemon's API$",
    ]),
    ("identity_and_fingerprint.py", False, [
        r"^Alice's user id: [a-z2-7]{58}$",
        r"^typo detected: +user id checksum mismatch",
        r"^fingerprint: +(\d{5} ){11}\d{5}$",
        r"^safety number: +(\d{5} ){11}\d{5}$",
        r"^OK: both sides see the same safety number$",
    ]),
]


def _loopback_aliases_work() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.77.1", 0))
        except OSError:
            return False
    return True


def test_every_example_is_tested_and_listed() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    assert scripts == {name for name, _, _ in CASES}
    readme = (EXAMPLES / "README.md").read_text("utf-8")
    for name in scripts:
        assert f"({name})" in readme, f"{name} is not listed in examples/README.md"


@pytest.mark.parametrize(("script", "network", "expected"), CASES,
                         ids=[name for name, _, _ in CASES])
def test_example_runs(script: str, network: bool, expected: list[str],
                      tmp_path: Path) -> None:
    if network and not _loopback_aliases_work():
        pytest.skip("this OS does not route 127.0.N.1 to loopback")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHTCHAT_")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"),
               PYTHONIOENCODING="utf-8")
    started = time.monotonic()
    # subprocess.run kills the script if it overruns the timeout
    result = subprocess.run(
        [sys.executable, str(Path("examples") / script)], cwd=REPO, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIME_LIMIT * 2,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    # The run time is reported, not asserted (a speed target, not behaviour); the
    # subprocess timeout above only stops a hung script.
    print(f"{script}: {elapsed:.1f} s (target < {TIME_LIMIT} s)")
    assert "Traceback" not in result.stderr, output
    for pattern in expected:
        assert re.search(pattern, result.stdout, re.MULTILINE), f"{pattern!r} missing\n{output}"
    assert result.stdout.splitlines()[-1].startswith("OK"), output
