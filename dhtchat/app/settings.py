"""The daemon settings kept in the profile (``PROFILE/settings.json``, mode 0600), for front
ends that have no command line to pass flags on (docs/api.md §3.21, ``settings.get`` /
``settings.set``).

Theory of operation: ``dhtchat daemon`` reads the file at start and uses each saved value
where the matching flag was not given (a flag always wins). ``settings.set`` validates and
writes the file; the display name also takes effect at once (it is only read when a request
or an acceptance is sent), the network settings (relay-only, TURN, ICE addresses) at the next
start, because the connections are configured with them when the daemon starts.
``settings.get`` says which saved values are not in effect yet. The TURN password is stored
(the daemon needs it) but never returned.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Final

import msgspec

from dhtchat.app.jsontypes import JsonObject
from dhtchat.core.errors import LocalProtocolError
from dhtchat.store.private import write_private_file

FILE_NAME: Final = "settings.json"
MAX_ICE: Final = 16


class ProfileSettings(msgspec.Struct, kw_only=True):
    """The saved settings ("" / empty: not set, the daemon's default)."""

    name: str = ""
    relay_only: bool = False
    turn: str = ""
    turn_user: str = ""
    turn_pass: str = ""
    ice_addresses: list[str] = msgspec.field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> ProfileSettings:
        """The profile's settings; a missing file is the defaults, an unreadable one an
        error that names it (never silently the defaults)."""
        path = root / FILE_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise LocalProtocolError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError as exc:
            raise LocalProtocolError(f"{path} is not valid: {exc}") from None

    def save(self, root: Path) -> None:
        """Write the file (0600)."""
        write_private_file(root / FILE_NAME, msgspec.json.encode(self) + b"\n")

    def check(self) -> None:
        """:class:`LocalProtocolError` with a sentence when the values cannot work together."""
        if self.turn and not self.turn.startswith(("turn:", "turns:")):
            raise LocalProtocolError("turn must be a turn: URL, e.g. turn:203.0.113.5:3478")
        if self.turn and not (self.turn_user and self.turn_pass):
            raise LocalProtocolError("a TURN server needs turn_user and turn_pass")
        if self.relay_only and not self.turn:
            raise LocalProtocolError("relay_only needs a TURN server (turn)")
        if len(self.ice_addresses) > MAX_ICE:
            raise LocalProtocolError(f"at most {MAX_ICE} ICE addresses")
        for address in self.ice_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise LocalProtocolError(f"{address!r} is not an IP address") from None

    def public(self) -> JsonObject:
        """The API form: everything but the TURN password (only whether one is set)."""
        return {"name": self.name, "relay_only": self.relay_only, "turn": self.turn,
                "turn_user": self.turn_user, "turn_pass_set": bool(self.turn_pass),
                "ice_addresses": list(self.ice_addresses)}


def settings_reply(saved: ProfileSettings, running: JsonObject) -> JsonObject:
    """``settings.get``'s result: saved, running and which saved ones wait for a restart (a
    value not set, empty or false, leaves the flag or default: it is not listed)."""
    public = saved.public()
    pending = [key for key in ("relay_only", "turn", "ice_addresses")
               if public[key] and public[key] != running.get(key)]
    return {"saved": public, "running": running, "next_start": pending}

