"""The client side of the daemon's API: one call per command step."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from dhtchat.app.rpc import DaemonNotRunning
from dhtchat.app.rpc import call as rpc_call
from dhtchat.cli.errors import DaemonUnavailable
from dhtchat.cli.options import open_profile

_T = TypeVar("_T")


def rpc(args: argparse.Namespace, method: str, params: dict[str, Any],
        timeout: float = 120.0) -> Any:
    """Call ``method`` on the daemon of the profile in ``args``; its result."""
    return run_with_daemon(args, lambda path: rpc_call(path, method, params, timeout=timeout))


def run_with_daemon(args: argparse.Namespace,
                    job: Callable[[Path], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``job(socket path)`` of the profile in ``args``; DaemonUnavailable when no
    daemon listens there."""
    profile, _ = open_profile(args)
    try:
        return asyncio.run(job(profile.root / "daemon.sock"))
    except DaemonNotRunning:
        raise DaemonUnavailable(
            f"no daemon is running for profile {profile.root}; start one with "
            "`dhtchat daemon`") from None


def contact_names(args: argparse.Namespace) -> dict[str, str]:
    """Display name by user id (yours is "me"; ``"__me__"`` maps to your id)."""
    rows = rpc(args, "contact.list", {})
    names = {row["id"]: row["name"] for row in rows}
    names["__me__"] = rpc(args, "status", {})["id"]
    names[names["__me__"]] = "me"
    return names
