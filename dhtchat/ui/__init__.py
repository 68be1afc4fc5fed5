"""The desktop client: a Textual app built only on the daemon's JSON-RPC API and event stream
(docs/api.md), so that other front ends can follow the same path.

Modules: :mod:`~dhtchat.ui.client` (the API connection: typed calls, typed events,
reconnection), :mod:`~dhtchat.ui.models` and :mod:`~dhtchat.ui.events` (the typed results
and events), :mod:`~dhtchat.ui.state` (what the screens show, kept from the events),
:mod:`~dhtchat.ui.daemonctl` (starting and stopping the profile's daemon as a subprocess),
:mod:`~dhtchat.ui.identity` (first run: the keystore functions ``dhtchat id new`` uses),
:mod:`~dhtchat.ui.format` (words and marks), :mod:`~dhtchat.ui.widgets`,
:mod:`~dhtchat.ui.app` (the app shell) and :mod:`dhtchat.ui.screens` (one module per screen).
It imports no daemon internals (an import-linter contract): only the client side of
:mod:`dhtchat.app.rpc`, the keystore and profile paths, and the core's id codecs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dhtchat.app.profile import resolve_profile_dir
from dhtchat.core.addresses import parse_address

__all__ = ["cmd_ui"]


def cmd_ui(args: argparse.Namespace) -> int:
    """``dhtchat ui`` (and ``dhtchat`` alone): run the desktop client on the profile."""
    root, _ = resolve_profile_dir(args.profile)
    bootstrap: list[str] = list(getattr(args, "bootstrap", None) or [])
    for value in bootstrap:
        try:
            parse_address(value)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("error: the desktop client needs a terminal; the other commands are the "
              "scripting interface (dhtchat --help)", file=sys.stderr)
        return 2
    _log_to_file(root)
    from dhtchat.ui.app import run  # noqa: PLC0415 - Textual loads only for the client
    from dhtchat.ui.daemonctl import DaemonOptions  # noqa: PLC0415

    return run(root, DaemonOptions(bootstrap=bootstrap, port=getattr(args, "port", None),
                                   host=getattr(args, "host", None)))


def _log_to_file(root: os.PathLike[str] | str) -> None:
    """Log to ``PROFILE/ui.log`` instead of the terminal the app draws on."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    path = os.path.join(root, "ui.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger()
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
