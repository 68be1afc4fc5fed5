"""Test tooling: real ``dhtchat`` daemons and CLI calls in subprocesses (optionally in a
network namespace), and a throwaway DHT from :mod:`tests.dhtnet`."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.profile import Profile
from dhtchat.app.rpc import DaemonNotRunning, call
from dhtchat.core.identity import SigningIdentity

REPO = Path(__file__).resolve().parent.parent
Wrap = Callable[[list[str]], list[str]]
PASSPHRASE = "correct horse battery staple"


def _first_host() -> int:
    """Where this process's loopback /24s start: each pytest-xdist worker (``gw0``, ``gw1``,
    ...) gets its own range of 1,000, so parallel workers never hand out the same address."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    return 40 + 1_000 * index


_hosts = itertools.count(_first_host())


def next_host() -> str:
    """A fresh 127.N.M.1 loopback address for a daemon's DHT node. Each daemon gets its own
    /24, as machines on the Internet would: DHT nodes rate-limit and charge storage per /24
    (512 records per subnet), so daemons sharing 127.0.0.1 would exhaust one shared quota."""
    n = next(_hosts)
    return f"127.{n // 250}.{n % 250 + 1}.1"


def daemon_args(dht: DhtProcess, name: str) -> list[str]:
    """``dhtchat daemon`` flags of a test daemon called ``name`` on ``dht``: any free port,
    its own loopback /24, ICE on loopback only."""
    args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1",
            "--name", name]
    for address in dht.bootstrap:
        args += ["--bootstrap", address]
    return args


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["DHTCHAT_PASSPHRASE"] = PASSPHRASE
    env["PYTHONPATH"] = str(REPO)
    env.pop("DHTCHAT_HOME", None)
    return env


def cli(profile: Path, *args: str, timeout: float = 60.0,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dhtchat --profile PROFILE ARGS`` (a thin API client, runs in this namespace)."""
    result = subprocess.run([sys.executable, "-m", "dhtchat", "--profile", str(profile), *args],
                            capture_output=True, text=True, timeout=timeout, env=_env(),
                            stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"dhtchat {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def new_identity(profile: Path) -> str:
    """Create an identity in ``profile``; returns its user id."""
    return cli(profile, "id", "new").stdout.strip()


class DaemonProcess:
    """``dhtchat daemon`` in a subprocess; its log goes to ``PROFILE/daemon.log``."""

    def __init__(self, profile: Path, args: Sequence[str], wrap: Wrap | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``env``: extra environment variables (e.g. ``DHTCHAT_CRASH_AFTER``)."""
        self.profile = profile
        self.log_path = profile / "daemon.log"
        verbose = ["-v"] if os.environ.get("DHTCHAT_DAEMON_VERBOSE") else []
        argv = [sys.executable, "-m", "dhtchat", *verbose, "--profile", str(profile), "daemon",
                *args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen((wrap or (lambda a: a))(argv), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=_env() | (env or {}))

    def status(self) -> dict[str, Any] | None:
        """The daemon's ``status`` once it has joined the DHT (None before)."""
        if not (self.profile / "daemon.sock").exists():
            return None
        try:
            status: dict[str, Any] = asyncio.run(
                call(self.profile / "daemon.sock", "status", {}, 20))
        except (DaemonNotRunning, ConnectionError, TimeoutError, OSError, ValueError):
            return None
        return status if status.get("joined") else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the API answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if self.status() is not None:
                return
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready after {timeout} s:\n{self.log()}")

    def contact(self, user_id: str) -> dict[str, Any] | None:
        """This daemon's contact-list row for ``user_id``."""
        rows = json.loads(cli(self.profile, "contact", "list", "--json").stdout)
        return next((r for r in rows if r["id"] == user_id), None)

    def wait_contact(self, user_id: str, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 30.0) -> dict[str, Any]:
        """Poll the contact list until ``predicate(row)`` holds."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            row = self.contact(user_id)
            if row is not None and predicate(row):
                return row
            time.sleep(0.3)
        raise AssertionError(f"contact {user_id[:12]} never matched; last row {row}\n"
                             f"{self.log()}")

    def log(self) -> str:
        """The daemon's output so far (tail); also after stop()."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class DhtProcess:
    """A DHT of ``count`` loopback nodes in a subprocess (``python -m tests.dhtnet``)."""

    def __init__(self, count: int = 32, host: str = "127.0.0.1", wrap: Wrap | None = None,
                 timeout: float = 60.0) -> None:
        argv = [sys.executable, "-m", "tests.dhtnet", str(count), host]
        self.proc = subprocess.Popen((wrap or (lambda a: a))(argv), stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE, text=True, cwd=REPO, env=_env())
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line.startswith("READY"):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise AssertionError("DHT process died")
        if not line.startswith("READY"):
            raise AssertionError("DHT not ready")
        self.bootstrap = line.split()[1:]

    def stop(self) -> None:
        """Close stdin (the process exits) and reap it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def make_contacts(alice: DaemonProcess, alice_id: str, bob: DaemonProcess, bob_id: str,
                  timeout: float = 60.0) -> None:
    """Alice asks, Bob accepts, both see the other as accepted."""
    cli(alice.profile, "contact", "request", bob_id, "--name", "Alice", "--message", "hi Bob")
    bob.wait_contact(alice_id, lambda r: r["state"] == "incoming", timeout)
    cli(bob.profile, "contact", "accept", alice_id, "--name", "alice")
    alice.wait_contact(bob_id, lambda r: r["state"] == "accepted", timeout)


# --- in-process daemons (one event loop, a real loopback DHT) ---------------------------------


async def start_in_process(tmp: Path, n: int, seed_byte: int,
                           bootstrap: list[tuple[str, int]]) -> Daemon:
    """An in-process daemon on its own /24, DHT mailboxes only (no automatic connections);
    its identity comes from ``seed_byte`` (distinct per test file and daemon)."""
    options = DaemonOptions(port=0, host=next_host(), bootstrap=bootstrap,
                            ice_addresses=["127.0.0.1"], auto_connect=False)
    daemon = Daemon(Profile(tmp / f"d{n}"), SigningIdentity.from_seed(bytes([seed_byte]) * 32),
                    options)
    await daemon.start()
    return daemon


async def wait_joined(daemons: Sequence[Daemon], timeout: float = 60.0) -> None:
    """Wait until every daemon has joined the DHT."""
    deadline = time.monotonic() + timeout
    while not all(d.joined for d in daemons):
        assert time.monotonic() < deadline, "joins"
        await asyncio.sleep(0.1)


def befriend(a: Daemon, b: Daemon, a_name: str, b_name: str) -> None:
    """Make ``a`` and ``b`` accepted contacts of each other, linked (``a`` calls ``b``
    ``b_name``)."""
    a.contacts.put(b.identity.public_key, name=b_name, state="accepted")
    b.contacts.put(a.identity.public_key, name=a_name, state="accepted")
    a.link_contact(b.identity.public_key)
    b.link_contact(a.identity.public_key)
