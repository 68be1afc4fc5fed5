"""Typed events of the daemon's stream (``events.subscribe``, docs/api.md §3.19).

:func:`parse_event` turns one ``event`` notification into one of the dataclasses below (an
unknown type becomes :class:`OtherEvent`, so a newer daemon does not break an older client);
:class:`Disconnected` and :class:`Reconnected` are the client's own, for the connection to
the daemon itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dhtchat.app.jsontypes import JsonValue


@dataclass(frozen=True)
class ApiEvent:
    """Base of every event: its id in the daemon's stream (0 for the client's own) and time."""

    id: int
    time: float


@dataclass(frozen=True)
class MessageEvent(ApiEvent):
    """A sequenced message from ``contact`` was stored (``kind``: text, file, timer,
    group_text)."""

    contact: str
    seq: int
    kind: str


@dataclass(frozen=True)
class ReceiptEvent(ApiEvent):
    """``contact`` acknowledged my messages up to ``delivered`` and read them up to ``read``."""

    contact: str
    delivered: int
    read: int


@dataclass(frozen=True)
class TypingEvent(ApiEvent):
    """``contact`` is typing (for about 6 s)."""

    contact: str


@dataclass(frozen=True)
class PresenceEvent(ApiEvent):
    """A new presence record of ``contact``."""

    contact: str
    online: bool


@dataclass(frozen=True)
class ConnectionEvent(ApiEvent):
    """The data channel to ``contact`` opened or closed."""

    contact: str
    status: str
    reason: str


@dataclass(frozen=True)
class ContactRequestEvent(ApiEvent):
    """A contact request arrived."""

    contact: str
    name: str
    message: str


@dataclass(frozen=True)
class ContactAcceptedEvent(ApiEvent):
    """My request was accepted."""

    contact: str
    name: str


@dataclass(frozen=True)
class FileEvent(ApiEvent):
    """``file.offer``, ``file.progress`` or ``file.complete`` (``type`` says which)."""

    type: str
    file: str
    data: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class CallEvent(ApiEvent):
    """``call.ringing`` or ``call.state`` (``type`` says which); ``data`` as documented."""

    type: str
    call: str
    contact: str
    state: str
    data: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupChangedEvent(ApiEvent):
    """A group's member list changed or a member left."""

    contact: str
    seq: int
    kind: str


@dataclass(frozen=True)
class ErrorEvent(ApiEvent):
    """Something failed in the daemon's background work."""

    message: str


@dataclass(frozen=True)
class OtherEvent(ApiEvent):
    """An event type this client does not know."""

    type: str
    data: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Disconnected(ApiEvent):
    """The connection to the daemon was lost (the client keeps reconnecting)."""

    reason: str


@dataclass(frozen=True)
class Reconnected(ApiEvent):
    """The connection is back; ``missed``: events were lost meanwhile (reload everything)."""

    missed: bool


def _s(data: dict[str, JsonValue], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _i(data: dict[str, JsonValue], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_event(params: dict[str, JsonValue]) -> ApiEvent | None:
    """The typed event of one ``event`` notification's params; None if malformed."""
    event_id, at, kind, data = (params.get("id"), params.get("time"), params.get("type"),
                                params.get("data"))
    if not isinstance(event_id, int) or isinstance(event_id, bool) \
            or not isinstance(kind, str) or not isinstance(data, dict):
        return None
    when = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
    contact = _s(data, "contact")
    match kind:
        case "message":
            return MessageEvent(event_id, when, contact, _i(data, "seq"), _s(data, "kind"))
        case "receipt":
            return ReceiptEvent(event_id, when, contact, _i(data, "delivered"),
                                _i(data, "read"))
        case "typing":
            return TypingEvent(event_id, when, contact)
        case "presence":
            return PresenceEvent(event_id, when, contact, data.get("online") is True)
        case "connection":
            return ConnectionEvent(event_id, when, contact, _s(data, "status"),
                                   _s(data, "reason"))
        case "contact.request":
            return ContactRequestEvent(event_id, when, contact, _s(data, "name"),
                                       _s(data, "message"))
        case "contact.accepted":
            return ContactAcceptedEvent(event_id, when, contact, _s(data, "name"))
        case "file.offer" | "file.progress" | "file.complete":
            return FileEvent(event_id, when, kind, _s(data, "id"), data)
        case "call.ringing" | "call.state":
            return CallEvent(event_id, when, kind, _s(data, "id"), contact, _s(data, "state"),
                             data)
        case "group.changed":
            return GroupChangedEvent(event_id, when, contact, _i(data, "seq"), _s(data, "kind"))
        case "error":
            return ErrorEvent(event_id, when, _s(data, "message"))
    return OtherEvent(event_id, when, kind, data)
