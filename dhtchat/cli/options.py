"""Options several commands share: the profile directory and bootstrap addresses."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dhtchat.app.profile import Profile, resolve_profile_dir
from dhtchat.cli.errors import UsageError
from dhtchat.core.addresses import Address, parse_address


def open_profile(args: argparse.Namespace) -> tuple[Profile, bool]:
    """The profile of ``--profile`` (else ``$DHTCHAT_HOME`` or the user data directory), and
    whether one was chosen explicitly."""
    root, chosen = resolve_profile_dir(args.profile)
    return Profile(root), chosen


def parse_bootstrap(values: Sequence[str] | None) -> list[Address]:
    """``HOST:PORT`` strings as addresses; a bad one is a usage error."""
    out = []
    for value in values or []:
        try:
            out.append(parse_address(value))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return out
