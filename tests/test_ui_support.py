"""Helpers of the desktop client's tests (no tests here): the text on screen, waiting with a
deadline, real daemons on a loopback DHT."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import App
from textual.pilot import Pilot

from tests.daemons import DaemonProcess, DhtProcess, new_identity, next_host


def screen_text(app: App[object]) -> str:
    """What the terminal shows now, one line per row."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def until(pilot: Pilot[object], predicate: Callable[[], bool], timeout: float,
                what: str) -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; screen:\n"
                                 f"{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def cli_async(*args: object) -> object:
    """A blocking helper of tests.daemons run off the event loop (the app keeps running)."""
    func, *rest = args
    assert callable(func)
    return await asyncio.to_thread(func, *rest)


def start_daemon(tmp: Path, name: str, dht: DhtProcess) -> tuple[DaemonProcess, str]:
    """A real daemon with a new identity on the loopback DHT; returns it and its user id."""
    profile = tmp / name
    user_id = new_identity(profile)
    args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1",
            "--name", name.capitalize()]
    for address in dht.bootstrap:
        args += ["--bootstrap", address]
    daemon = DaemonProcess(profile, args)
    daemon.wait_ready()
    return daemon, user_id
