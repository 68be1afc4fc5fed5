"""Typed views of the daemon API's file, call and settings results (docs/api.md §3.17,
§3.18, §3.21) for front ends, in the style of :mod:`dhtchat.ui.models`: a value of the wrong
shape raises :class:`~dhtchat.ui.models.BadReply`, never a ``KeyError`` in a screen."""

from __future__ import annotations

from dataclasses import dataclass, field

from dhtchat.app.jsontypes import JsonValue
from dhtchat.ui.models import BadReply


def _obj(value: JsonValue, what: str) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise BadReply(f"the daemon sent a malformed {what}")
    return value


def _str(obj: dict[str, JsonValue], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default


def _num(obj: dict[str, JsonValue], key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(obj: dict[str, JsonValue], key: str) -> int:
    value = obj.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class FileInfo:
    """A transfer (docs/api.md §3.17)."""

    id: str
    direction: str  # in, out
    name: str
    size: int
    sha256: str
    transferred: int
    progress: float  # percent
    complete: bool
    error: str | None
    accepted: bool
    contact: str = ""

    @property
    def waiting(self) -> bool:
        """An incoming offer that waits for my answer."""
        return self.direction == "in" and not self.accepted and not self.complete \
            and self.error is None

    @property
    def status(self) -> str:
        """The transfer's state in words (never colour alone)."""
        if self.error is not None:
            return self.error if self.error in ("declined", "cancelled") \
                else f"failed: {self.error}"
        if self.complete:
            return "complete" if self.direction == "in" else "delivered"
        if self.waiting:
            return "offered: accept or decline"
        return "downloading" if self.direction == "in" else "sending"


def parse_file(value: JsonValue) -> FileInfo:
    """A file object."""
    obj = _obj(value, "file")
    error = obj.get("error")
    file_id = _str(obj, "id")
    if not file_id:
        raise BadReply("the daemon sent a file without an id")
    return FileInfo(id=file_id, direction=_str(obj, "direction", "in"),
                    name=_str(obj, "name"), size=_int(obj, "size"),
                    sha256=_str(obj, "sha256"), transferred=_int(obj, "transferred"),
                    progress=_num(obj, "progress") or 0.0, complete=obj.get("complete") is True,
                    error=error if isinstance(error, str) else None,
                    accepted=obj.get("accepted") is not False, contact=_str(obj, "contact"))


def parse_files(value: JsonValue) -> list[FileInfo]:
    """An array of file objects."""
    if not isinstance(value, list):
        raise BadReply("the daemon sent a malformed file list")
    return [parse_file(item) for item in value]


@dataclass(frozen=True)
class CallStats:
    """The live numbers of ``call.status`` (``{}`` before media flow: all None)."""

    rtt_ms: float | None = None
    jitter_ms: float | None = None
    loss_percent: float | None = None
    send_kbps: float | None = None
    receive_packets_per_s: float | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class CallInfo:
    """A call object (docs/api.md §3.18)."""

    id: str
    contact: str
    name: str
    direction: str
    video: bool
    state: str  # inviting, ringing, connecting, active, ended
    reason: str = ""
    sas_words: str = ""
    sas_number: str = ""
    muted: bool = False
    held: bool = False
    camera_off: bool = False
    remote_held: bool = False
    warning: str = ""
    path: str = ""
    conference: str = ""
    participants: tuple[str, ...] = ()
    stats: CallStats = field(default_factory=CallStats)

    @property
    def ended(self) -> bool:
        """Whether the call is over."""
        return self.state == "ended"


def parse_call(value: JsonValue) -> CallInfo:
    """A call object (with ``stats`` when ``call.status`` sent them)."""
    obj = _obj(value, "call")
    call_id = _str(obj, "id")
    if not call_id:
        raise BadReply("the daemon sent a call without an id")
    sas = obj.get("sas")
    words = number = ""
    if isinstance(sas, dict):
        words, number = _str(sas, "words"), _str(sas, "number")
    elif isinstance(sas, str):  # (call.state events carry the words alone)
        words = sas
    stats = obj.get("stats")
    parsed = CallStats()
    if isinstance(stats, dict):
        parsed = CallStats(rtt_ms=_num(stats, "rtt_ms"), jitter_ms=_num(stats, "jitter_ms"),
                           loss_percent=_num(stats, "loss_percent"),
                           send_kbps=_num(stats, "send_kbps"),
                           receive_packets_per_s=_num(stats, "receive_packets_per_s"),
                           duration_s=_num(stats, "duration_s"))
    people = obj.get("participants")
    return CallInfo(
        id=call_id, contact=_str(obj, "contact"), name=_str(obj, "name"),
        direction=_str(obj, "direction", "incoming"), video=obj.get("video") is True,
        state=_str(obj, "state"), reason=_str(obj, "reason"), sas_words=words,
        sas_number=number, muted=obj.get("muted") is True, held=obj.get("held") is True,
        camera_off=obj.get("camera_off") is True, remote_held=obj.get("remote_held") is True,
        warning=_str(obj, "warning"), path=_str(obj, "path"),
        conference=_str(obj, "conference"),
        participants=tuple(p for p in people if isinstance(p, str))
        if isinstance(people, list) else (), stats=parsed)


def parse_call_start(value: JsonValue) -> list[CallInfo]:
    """``call.start``'s reply: one call, or a group call's legs."""
    obj = _obj(value, "call")
    legs = obj.get("calls")
    if "conference" in obj and isinstance(legs, list):
        return [parse_call(leg) for leg in legs]
    return [parse_call(obj)]


@dataclass(frozen=True)
class DaemonSettings:
    """``settings.get`` (docs/api.md §3.21): what is saved in the profile, what the running
    daemon uses, and which saved values wait for the next start."""

    name: str
    relay_only: bool
    turn: str
    turn_user: str
    turn_pass_set: bool
    ice_addresses: tuple[str, ...]
    running: dict[str, JsonValue]
    next_start: tuple[str, ...]  # settings whose saved value is not in effect yet


def parse_settings(value: JsonValue) -> DaemonSettings:
    """The ``settings.get`` / ``settings.set`` result."""
    obj = _obj(value, "settings")
    saved = _obj(obj.get("saved", {}), "settings")
    running = obj.get("running")
    pending = obj.get("next_start")
    ice = saved.get("ice_addresses")
    return DaemonSettings(
        name=_str(saved, "name"), relay_only=saved.get("relay_only") is True,
        turn=_str(saved, "turn"), turn_user=_str(saved, "turn_user"),
        turn_pass_set=saved.get("turn_pass_set") is True,
        ice_addresses=tuple(a for a in ice if isinstance(a, str))
        if isinstance(ice, list) else (),
        running=running if isinstance(running, dict) else {},
        next_start=tuple(p for p in pending if isinstance(p, str))
        if isinstance(pending, list) else ())
