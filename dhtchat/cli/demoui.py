"""``dhtchat demo`` on a terminal: the desktop client with the demo contact.

The demo's network (a loopback DHT and the demo bot's daemon, :class:`DemoInBackground`) runs
on a thread of its own; the desktop client (:mod:`dhtchat.ui`) runs in this thread on the
demo's user profile and starts that profile's daemon as it always does, with the flags the
demo gives (:attr:`DemoSetup.daemon_args`: its loopback host, the DHT's addresses, ICE on
127.0.0.1 only, the display name). Once that daemon has joined, a helper thread sends the
contact request to the bot over the daemon's API (what "add contact" does), so the client
opens with the bot accepting it and greeting. On quit everything stops and the demo's
temporary directory is removed; logs go to ``WORKDIR/demo.log`` (the client draws on the
terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from dhtchat.app.demo import DemoInBackground, DemoSetup
from dhtchat.app.demobot import DemoError
from dhtchat.app.rpc import DaemonNotRunning, RpcError, call
from dhtchat.ui.daemonctl import START_TIMEOUT, DaemonOptions

REQUEST_TIMEOUT: Final = START_TIMEOUT + 60.0  # seconds for the user's daemon to join
STILL_JOINING: Final = -32006  # contact.request before the node has joined (docs/api.md)

log = logging.getLogger("dhtchat.demo")


def daemon_options(daemon_args: Sequence[str]) -> DaemonOptions:
    """The client's :class:`DaemonOptions` for ``dhtchat daemon DAEMON_ARGS``: ``--port``,
    ``--host`` and ``--bootstrap`` go to their fields, every other flag (with its value) to
    ``extra_args`` as it is."""
    options = DaemonOptions(port=0)
    args = list(daemon_args)
    i = 0
    while i < len(args):
        flag, value = args[i], args[i + 1] if i + 1 < len(args) else None
        if flag in ("--port", "--host", "--bootstrap") and value is not None \
                and not value.startswith("--"):
            if flag == "--port":
                options.port = int(value)
            elif flag == "--host":
                options.host = value
            else:
                options.bootstrap.append(value)
            i += 2
        else:
            options.extra_args.append(flag)
            i += 1
    return options


class Befriender:
    """Sends the demo's contact request to the bot once the user's daemon (started by the
    client) has joined; on a thread of its own. :attr:`error` says what went wrong."""

    def __init__(self, setup: DemoSetup, timeout: float = REQUEST_TIMEOUT) -> None:
        self.setup = setup
        self.timeout = timeout
        self.sent = threading.Event()
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dhtchat-demo-request",
                                        daemon=True)

    def start(self) -> None:
        """Start waiting for the daemon."""
        self._thread.start()

    def stop(self) -> None:
        """Stop waiting (the client quit) and join the thread."""
        self._stop.set()
        self._thread.join(15.0)

    def _run(self) -> None:
        try:
            asyncio.run(self._befriend())
        except (DaemonNotRunning, RpcError, OSError, TimeoutError, ValueError) as exc:
            self.error = exc.message if isinstance(exc, RpcError) else str(exc) or repr(exc)
            log.warning("demo: the contact request to %s failed: %s", self.setup.bot_name,
                        self.error)

    async def _befriend(self) -> None:
        socket = self.setup.user_profile / "daemon.sock"
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"your daemon did not join the demo's DHT within "
                                   f"{self.timeout:.0f} s")
            try:
                status = await call(socket, "status", {}, 5.0)
                if isinstance(status, dict) and status.get("joined"):
                    await call(socket, "contact.request",
                               {"id": self.setup.bot_id,
                                "message": f"hi {self.setup.bot_name}, it's the demo user"},
                               30.0)
                    self.sent.set()
                    log.info("demo: contact request sent to %s", self.setup.bot_name)
                    return
            except (DaemonNotRunning, OSError):
                pass  # not started yet
            except RpcError as exc:
                if exc.code != STILL_JOINING:
                    raise
            await asyncio.sleep(0.2)


def _log_to_file(path: Path, verbose: bool) -> None:
    """Everything logged (the DHT nodes and the bot's daemon run in this process) goes to
    ``path``: the client owns the terminal."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _stop_user_daemon(profile: Path) -> None:
    """Stop the user's daemon if it still runs (the user chose to keep it, or the client
    crashed): the demo's network and profile are about to go."""
    socket = profile / "daemon.sock"
    with contextlib.suppress(DaemonNotRunning, RpcError, OSError, TimeoutError, ValueError):
        asyncio.run(call(socket, "shutdown", {}, 10.0))
    deadline = time.monotonic() + 15.0
    while socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def run_demo_ui(*, nodes: int = 16, timeout: float = 60.0, verbose: bool = False) -> int:
    """The demo on a terminal: the desktop client with the demo contact; the exit code."""
    from dhtchat.ui.app import run  # noqa: PLC0415 - Textual loads only here

    print("dhtchat demo: starting a local DHT and a demo contact (loopback only; nothing "
          "leaves this machine)...", flush=True)
    with tempfile.TemporaryDirectory(prefix="dhtchat-demo-") as tmp:
        workdir = Path(tmp)
        _log_to_file(workdir / "demo.log", verbose)
        background = DemoInBackground(workdir, nodes=nodes, timeout=timeout)
        try:
            with background as setup:
                befriender = Befriender(setup)
                befriender.start()
                try:
                    code = run(setup.user_profile, daemon_options(setup.daemon_args))
                finally:
                    befriender.stop()
                    _stop_user_daemon(setup.user_profile)
                errors = background.network.bot.log.errors if background.network else []
        except (DemoError, OSError, TimeoutError) as exc:
            print(f"demo FAILED: {exc}", flush=True)
            return 1
    if befriender.error:
        print(f"demo: the contact request to {setup.bot_name} failed: {befriender.error}")
        code = code or 1
    for error in errors:
        print(f"demo: {setup.bot_name} reported: {error}")
    print("demo ended: the demo contact, your demo daemon and the local DHT are stopped "
          "and their files removed", flush=True)
    return code
