"""Finding, starting and stopping the profile's daemon for the desktop client.

The client never runs daemon code in its own process: when no daemon answers on the
profile's socket it starts ``python -m dhtchat daemon`` as a detached subprocess (its own
session, so a Ctrl-C in the UI's terminal does not reach it; stdin closed; its log appended to
``PROFILE/daemon.log``), hands it the passphrase in ``DHTCHAT_PASSPHRASE`` (which the daemon
removes from its environment once read), and waits until the API answers. On exit the client
stops only a daemon it started, with the API's ``shutdown``.

The client's own settings (the display name sent with requests, the DHT port of the daemons
it starts) are kept in ``PROFILE/ui.json`` (mode 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dhtchat.app.rpc import DaemonNotRunning, RpcError, call
from dhtchat.ui.client import ApiError, socket_path

START_TIMEOUT: Final = 60.0  # seconds for a started daemon's API to answer
STOP_TIMEOUT: Final = 15.0


@dataclass
class Settings:
    """The client's settings (``PROFILE/ui.json``)."""

    name: str = ""
    port: int = 0  # the DHT port of the daemons this client starts (0: pick one)

    @classmethod
    def load(cls, profile: Path) -> Settings:
        """Read the settings; missing or unreadable: the defaults."""
        try:
            doc = json.loads((profile / "ui.json").read_text("utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(doc, dict):
            return cls()
        name, port = doc.get("name"), doc.get("port")
        return cls(name=name if isinstance(name, str) else "",
                   port=port if isinstance(port, int) and 0 < port < 65536 else 0)

    def save(self, profile: Path) -> None:
        """Write the settings (0600)."""
        path = profile / "ui.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"name": self.name, "port": self.port}, out)
        os.replace(tmp, path)


def free_udp_port(host: str = "0.0.0.0") -> int:
    """A UDP port nothing is bound to now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def daemon_answers(profile: Path, timeout: float = 5.0) -> bool:
    """Whether a daemon answers ``status`` on the profile's socket."""
    try:
        await call(socket_path(profile), "status", {}, timeout)
    except (DaemonNotRunning, OSError, TimeoutError, ValueError, RpcError):
        return False
    return True


@dataclass
class DaemonOptions:
    """How the client starts a daemon (the ``dhtchat ui`` options)."""

    bootstrap: list[str] = field(default_factory=list)
    port: int | None = None  # None: the port in ui.json, else a free one (then saved)
    host: str | None = None
    extra_args: list[str] = field(default_factory=list)  # more `dhtchat daemon` options


class DaemonControl:
    """The profile's daemon as the client found it, and the one it started (if any)."""

    def __init__(self, profile: Path, options: DaemonOptions | None = None) -> None:
        self.profile = profile
        self.options = options or DaemonOptions()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = profile / "daemon.log"

    @property
    def started_here(self) -> bool:
        """Whether this client started the daemon (and so stops it on exit)."""
        return self.process is not None

    def command(self, name: str) -> list[str]:
        """The ``dhtchat daemon`` command line for this profile."""
        settings = Settings.load(self.profile)
        port = self.options.port
        if port is None:
            port = settings.port or free_udp_port(self.options.host or "0.0.0.0")
            if port != settings.port:
                settings.port = port
                settings.save(self.profile)
        argv = [sys.executable, "-m", "dhtchat", "--profile", str(self.profile), "daemon",
                "--port", str(port)]
        if self.options.host:
            argv += ["--host", self.options.host]
        if self.options.bootstrap:
            argv += ["--bootstrap", *self.options.bootstrap]
        if name:
            argv += ["--name", name]
        return argv + self.options.extra_args

    async def start(self, passphrase: str | None, name: str) -> None:
        """Start the daemon in the background and wait until its API answers;
        :class:`ApiError` with the daemon's own error line if it fails."""
        env = dict(os.environ)
        env.pop("DHTCHAT_PASSPHRASE", None)
        if passphrase is not None:
            env["DHTCHAT_PASSPHRASE"] = passphrase
        # Run this checkout's dhtchat even when it is not the installed one.
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self.profile.mkdir(parents=True, exist_ok=True, mode=0o700)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.process = subprocess.Popen(
                self.command(name), stdin=subprocess.DEVNULL, stdout=fd,
                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        finally:
            os.close(fd)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise ApiError(f"the daemon did not start: {self._log_error(offset)}")
            if await daemon_answers(self.profile, 2.0):
                return
            await asyncio.sleep(0.1)
        raise ApiError(f"the daemon did not answer within {START_TIMEOUT:g} s; see "
                       f"{self.log_path}")

    def _log_error(self, offset: int) -> str:
        """The daemon's last ``error:`` line written since ``offset`` (its start)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                lines = log.read().decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        errors = [line for line in lines if line.startswith("error:")]
        if errors:
            return errors[-1].removeprefix("error:").strip()
        return f"see {self.log_path}"

    async def stop(self, client_shutdown: bool = True) -> None:
        """Stop the daemon this client started (``shutdown`` over the API, then SIGTERM if
        it is still there after STOP_TIMEOUT); nothing when it did not start one."""
        process, self.process = self.process, None
        if process is None:
            return
        if client_shutdown:
            with contextlib.suppress(DaemonNotRunning, OSError, TimeoutError, ValueError,
                                     RpcError):
                await call(socket_path(self.profile), "shutdown", {}, 5.0)
        deadline = time.monotonic() + STOP_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def keep(self) -> None:
        """Leave the started daemon running after the client exits."""
        self.process = None

    def stop_sync(self) -> None:
        """Last resort when the event loop is gone: SIGTERM the daemon this client started."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT)
