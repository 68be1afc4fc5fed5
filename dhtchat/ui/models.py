"""Typed views of the daemon API's results (docs/api.md §2.2, §3.11, §3.16) for front ends.

Every parser takes a JSON value as the daemon sent it and returns a frozen dataclass; a value
of the wrong shape raises :class:`BadReply` (shown to the user as a message), never a
``KeyError`` deep in a screen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dhtchat.app.jsontypes import JsonValue


class BadReply(ValueError):
    """The daemon's reply does not have the documented shape."""


def _obj(value: JsonValue, what: str) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise BadReply(f"the daemon sent a malformed {what}")
    return value


def _str(obj: dict[str, JsonValue], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise BadReply(f"the daemon sent a malformed {key!r}")
    return value


def _opt_str(obj: dict[str, JsonValue], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _num(obj: dict[str, JsonValue], key: str, default: float = 0.0) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _int(obj: dict[str, JsonValue], key: str) -> int:
    value = obj.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _list(value: JsonValue, what: str) -> list[JsonValue]:
    if not isinstance(value, list):
        raise BadReply(f"the daemon sent a malformed {what} list")
    return value


@dataclass(frozen=True)
class Contact:
    """A contact-list entry (docs/api.md §2.2)."""

    id: str
    name: str
    state: str  # incoming, outgoing, accepted, refused, blocked
    status: str = ""  # accepted only: offline, online, connecting, connected, unreachable
    message: str = ""  # the request's note (incoming / outgoing)
    since: float = 0.0
    verified: float | None = None  # when the contact was verified (a call's SAS compared)
    warning: str = ""  # the impersonation warning of a request
    typing: bool = False
    reason: str = ""
    path: str = ""

    @property
    def label(self) -> str:
        """The name, or the start of the id when the name is empty."""
        return self.name or self.id[:12]


def parse_contact(value: JsonValue) -> Contact:
    """A contact object."""
    obj = _obj(value, "contact")
    verified = obj.get("verified")
    return Contact(
        id=_str(obj, "id"), name=_str(obj, "name", ""), state=_str(obj, "state"),
        status=_opt_str(obj, "status") or "", message=_opt_str(obj, "message") or "",
        since=_num(obj, "since"),
        verified=float(verified) if isinstance(verified, int | float)
        and not isinstance(verified, bool) else None,
        warning=_opt_str(obj, "warning") or "", typing=obj.get("typing") is True,
        reason=_opt_str(obj, "reason") or "", path=_opt_str(obj, "path") or "")


def parse_contacts(value: JsonValue) -> list[Contact]:
    """An array of contact objects."""
    return [parse_contact(item) for item in _list(value, "contact")]


@dataclass(frozen=True)
class Message:
    """A message object (docs/api.md §3.11)."""

    id: str
    kind: str  # text, notice, file
    author: str
    author_name: str | None
    sender: str  # `from`
    to: str
    text: str
    timestamp: float
    received: float | None
    seq: int
    delivered: bool
    read: bool
    group: str | None = None
    group_name: str | None = None

    def outgoing(self, me: str) -> bool:
        """Whether I wrote it."""
        return self.author == me

    @property
    def shown_at(self) -> float:
        """The local time the history is ordered by: arrival of theirs, sending of mine."""
        return self.received if self.received is not None else self.timestamp

    def with_marks(self, delivered: bool, read: bool) -> Message:
        """A copy with new delivery marks."""
        return replace(self, delivered=delivered, read=read)


def parse_message(value: JsonValue) -> Message:
    """A message object."""
    obj = _obj(value, "message")
    received = obj.get("received")
    return Message(
        id=_str(obj, "id"), kind=_opt_str(obj, "kind") or "text", author=_str(obj, "author"),
        author_name=_opt_str(obj, "author_name"), sender=_str(obj, "from"), to=_str(obj, "to"),
        text=_str(obj, "text"), timestamp=_num(obj, "timestamp"),
        received=float(received) if isinstance(received, int | float)
        and not isinstance(received, bool) else None,
        seq=_int(obj, "seq"), delivered=obj.get("delivered") is True,
        read=obj.get("read") is True, group=_opt_str(obj, "group"),
        group_name=_opt_str(obj, "group_name"))


def parse_messages(value: JsonValue) -> list[Message]:
    """An array of message objects."""
    return [parse_message(item) for item in _list(value, "message")]


@dataclass(frozen=True)
class Group:
    """A group object (docs/api.md §3.16)."""

    id: str
    name: str
    admin: str
    members: tuple[str, ...]
    i_am_admin: bool
    active: bool
    version: int = 0


def parse_group(value: JsonValue) -> Group:
    """A group object."""
    obj = _obj(value, "group")
    members = obj.get("members")
    return Group(id=_str(obj, "id"), name=_str(obj, "name", ""), admin=_str(obj, "admin", ""),
                 members=tuple(m for m in members if isinstance(m, str))
                 if isinstance(members, list) else (),
                 i_am_admin=obj.get("i_am_admin") is True, active=obj.get("active") is not False,
                 version=_int(obj, "version"))


def parse_groups(value: JsonValue) -> list[Group]:
    """An array of group objects."""
    return [parse_group(item) for item in _list(value, "group")]


@dataclass(frozen=True)
class Status:
    """The parts of ``status`` (docs/api.md §3.1) a front end shows."""

    id: str
    dht_contacts: int
    dht_address: str
    uptime: float


def parse_status(value: JsonValue) -> Status:
    """The ``status`` result."""
    obj = _obj(value, "status")
    return Status(id=_str(obj, "id"), dht_contacts=_int(obj, "dht_contacts"),
                  dht_address=_opt_str(obj, "dht_address") or "", uptime=_num(obj, "uptime"))
