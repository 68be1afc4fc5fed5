"""The params of the daemon's JSON-RPC methods (docs/api.md §3), as msgspec Structs.

Theory of operation: each method's params are one Struct; their names, types and limits are
the API's contract (tests/test_api_doc.py checks them against docs/api.md). A limit carries the
message a client gets when a value breaks it, in ``Meta.extra["error"]`` (``"type_error"`` for
a value of the wrong type); :func:`decode_params` is the one place that checks params and turns
a failure into ``INVALID_PARAMS`` with that message. Unknown params are ignored.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Annotated, Final, TypeVar

import msgspec

from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.rpc import INVALID_PARAMS, RpcError

MAX_BATCH: Final = 1000  # messages in one message.send_batch


def _meta(error: str, type_error: str | None = None, *, missing: str | None = None,
          **limits: float | str) -> msgspec.Meta:
    """Limits of a param and the message of a value outside them (``type_error``: of a value
    of the wrong type, ``missing``: of no value, if those read differently)."""
    extra = {"error": error, "type_error": type_error or error,
             "missing": missing or type_error or error}
    return _new_meta(extra=extra, **limits)


# msgspec.Meta's overloads admit only some combinations of limits; the ones above are valid.
_new_meta: Callable[..., msgspec.Meta] = msgspec.Meta


def _text(name: str, limit: int) -> msgspec.Meta:
    return _meta(f"{name} is limited to {limit} characters", f"{name} must be a string",
                 max_length=limit)


ContactName = Annotated[str, _meta("a contact name or user id is required")]
GroupName = Annotated[str, _meta("a group name or id is required")]
HexId = Annotated[str, _meta("id must be 32 hex digits", pattern="^[0-9a-fA-F]{32}$")]
FileId = Annotated[str, _meta("need id (32 hex digits)", pattern="^[0-9a-fA-F]{32}$")]
Members = Annotated[list[ContactName],
                    _meta("members must be a non-empty list of contacts", min_length=1)]
MediaSpec = Annotated[str, _meta("{name} must be a media spec string", min_length=1,
                                 max_length=4096)]
Bytes = Annotated[int, _meta("{name} must be a number of bytes")]


class Params(msgspec.Struct, kw_only=True):
    """Params of a method without any."""


class ContactRequestParams(Params, kw_only=True):
    id: Annotated[str, _meta("a user id is required")]
    name: Annotated[str, _text("name", 64)] | None = None
    message: Annotated[str, _text("message", 280)] | None = None
    contact_name: Annotated[str, _text("contact_name", 64)] | None = None


# contact.rename / contact.remove (issue 16)
class ContactRenameParams(Params, kw_only=True):
    id: ContactName
    name: Annotated[str, _meta("name must be 1-64 characters", "name must be a string",
                               min_length=1, max_length=64)]


class ContactRemoveParams(Params, kw_only=True):
    id: ContactName
    delete_history: bool = False


class ContactParams(Params, kw_only=True):
    id: ContactName


class ContactAcceptParams(Params, kw_only=True):
    id: ContactName
    name: Annotated[str, _text("name", 64)] | None = None


class ConnectParams(Params, kw_only=True):
    contact: ContactName
    timeout: Annotated[float, _meta("timeout must be 1-600 seconds", ge=1, le=600)] | None = None


class MessageSendParams(Params, kw_only=True):
    text: Annotated[str, _meta("text must be a non-empty string", min_length=1)]
    to: ContactName
    id: HexId | None = None
    wait: bool = False
    timeout: Annotated[float, _meta("timeout must be 0-3600 seconds", gt=0, le=3600)] = 60


class BatchItem(msgspec.Struct, kw_only=True):
    """One message of message.send_batch."""

    text: Annotated[str, _meta("text must be a non-empty string", min_length=1)]
    to: ContactName
    id: HexId | None = None


class MessageBatchParams(Params, kw_only=True):
    messages: Annotated[list[BatchItem],
                        _meta(f"messages must be a list of 1-{MAX_BATCH} messages",
                              min_length=1, max_length=MAX_BATCH)]


class MessageReceiveParams(Params, kw_only=True):
    wait: Annotated[float, _meta("wait must be 0-3600 seconds", ge=0, le=3600)] = 0
    limit: Annotated[int, _meta("limit must be 1-10000", ge=1, le=10000)] = 1000
    contact: ContactName | None = None  # only this conversation (a contact or a group)


class MessageHistoryParams(Params, kw_only=True):
    contact: ContactName
    limit: Annotated[int, _meta("limit must be 1-100000", ge=1, le=100000)] = 50
    before: HexId | None = None  # only messages older than this one (the next page up)


class MessageSearchParams(Params, kw_only=True):
    contact: ContactName
    text: Annotated[str, _meta("text must be 1-200 characters", min_length=1,
                               max_length=200)]
    limit: Annotated[int, _meta("limit must be 1-500", ge=1, le=500)] = 50


class MessageTypingParams(Params, kw_only=True):
    contact: ContactName


class MessageTimerParams(Params, kw_only=True):
    seconds: Annotated[int, _meta("the timer is 0 (off) to one year, in seconds",
                                  "seconds must be an integer", ge=0, le=365 * 24 * 3600)]
    contact: ContactName


class GroupCreateParams(Params, kw_only=True):
    name: Annotated[str, _meta("name is limited to 64 characters", "name must be a string",
                               max_length=64, missing="a group needs a name")]
    members: Members


class GroupInviteParams(Params, kw_only=True):
    group: GroupName
    members: Members


class GroupRemoveParams(Params, kw_only=True):
    group: GroupName
    member: ContactName


class GroupParams(Params, kw_only=True):
    group: GroupName


class FileSendParams(Params, kw_only=True):
    to: ContactName
    path: Annotated[str, _meta("path must be a file path", min_length=1)]
    wait: bool = False
    timeout: Annotated[float, _meta("timeout must be 0-86400 seconds", gt=0, le=86400)] = 3600


class FileIdParams(Params, kw_only=True):
    id: FileId


class FileGetParams(Params, kw_only=True):
    id: Annotated[str, _meta("need id (32 hex digits) and dest",
                             pattern="^[0-9a-fA-F]{32}$")]
    dest: Annotated[str, _meta("need id (32 hex digits) and dest", min_length=1)]


class FileLimitsParams(Params, kw_only=True):
    auto_accept: Bytes | None = None
    contact_quota: Bytes | None = None
    total_quota: Bytes | None = None


class SettingsSetParams(Params, kw_only=True):
    name: Annotated[str, _text("name", 64)] | None = None
    relay_only: bool | None = None
    turn: Annotated[str, _text("turn", 1024)] | None = None
    turn_user: Annotated[str, _text("turn_user", 256)] | None = None
    turn_pass: Annotated[str, _text("turn_pass", 256)] | None = None
    ice_addresses: Annotated[list[str], _meta("ice_addresses must be a list of IP "
                                              "addresses")] | None = None


class MediaParams(Params, kw_only=True):
    audio_in: MediaSpec | None = "silence"
    audio_out: MediaSpec | None = "null"
    video_in: MediaSpec | None = None


class CallStartParams(MediaParams, kw_only=True):
    to: ContactName | Annotated[list[ContactName],
                                _meta("a group call takes 2 to 4 contacts", min_length=2,
                                      max_length=4)]
    video: bool = False


class CallIdParams(Params, kw_only=True):
    id: HexId | None = None


class CallAnswerParams(MediaParams, kw_only=True):
    id: HexId | None = None


class CallWaitParams(Params, kw_only=True):
    id: HexId | None = None
    timeout: Annotated[float, _meta("timeout must be 0-3600 seconds", gt=0, le=3600)] = 30


class CallListParams(Params, kw_only=True):
    limit: Annotated[int, _meta("limit must be 1-10000", ge=1, le=10000)] = 50


class CallVerifyParams(Params, kw_only=True):
    contact: ContactName
    sas: str | int | None = None
    differ: bool = False


class CallAutoAnswerParams(MediaParams, kw_only=True):
    enabled: bool = True


class CallControlParams(Params, kw_only=True):
    id: HexId | None = None
    mute: bool | None = None
    hold: bool | None = None
    camera: bool | None = None


class EventsSubscribeParams(Params, kw_only=True):
    # an event id, 0 for everything stored, -1 for only the events that follow
    since: Annotated[int, _meta("since must be an event id (0 or more) or -1", ge=-1,
                                le=2**63 - 1)] = 0


_P = TypeVar("_P", bound=Params)

_PATH = re.compile(r"`\$((?:\.[A-Za-z_]+|\[\d+\])+)`")
_MISSING = re.compile(r"missing required field `([A-Za-z_]+)`")


def decode_params(kind: type[_P], params: JsonObject) -> _P:
    """``params`` as a ``kind``; a field that does not fit is ``INVALID_PARAMS`` with its
    message (the one place params are checked)."""
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise RpcError(INVALID_PARAMS, _message(kind, str(exc))) from None


def _message(kind: type[Params], error: str) -> str:
    """The message of the field a msgspec error names (``$.messages[2].text``: the ``text``
    of an item of ``messages``), else msgspec's own."""
    found = _PATH.search(error)
    path = re.findall(r"\.([A-Za-z_]+)|\[(\d+)\]", found.group(1)) if found else []
    missing = _MISSING.search(error)
    names = [name for name, _index in path if name] + ([missing.group(1)] if missing else [])
    if not names:
        return error
    hint: object = kind
    for name in names:
        owner = _struct_in(hint)
        if owner is None:
            return error
        hint = typing.get_type_hints(owner, include_extras=True).get(name)
    which = "missing" if missing else "type_error" if ", got `" in error else "error"
    indexes = [index for _name, index in path if index]
    prefix = f"{names[0]}[{indexes[0]}]: " if indexes and len(names) > 1 else ""
    for meta in _metas(hint):
        extra = meta.extra or {}
        if which in extra:
            return prefix + str(extra[which]).replace("{name}", names[-1])
    expected = re.search(r"Expected `([^`]+)`", error)
    if expected is None:
        return f"{names[-1]}: {error}"
    words = [_WORDS.get(part.strip(), part.strip()) for part in expected.group(1).split("|")]
    return f"{prefix}{names[-1]} must be {' or '.join(words)}"


_WORDS: Final = {"bool": "true or false", "int": "an integer", "float": "a number",
                 "str": "a string", "null": "null", "array": "a list", "object": "an object"}


def _struct_in(hint: object) -> type[msgspec.Struct] | None:
    """The Struct type a hint is (or holds, as a list's item)."""
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return hint
    if typing.get_origin(hint) is Annotated:
        return _struct_in(typing.get_args(hint)[0])
    for arg in typing.get_args(hint):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


def _metas(hint: object) -> list[msgspec.Meta]:
    """Every Meta in a type hint, outermost first."""
    out: list[msgspec.Meta] = []
    if typing.get_origin(hint) is Annotated:
        hint, *metadata = typing.get_args(hint)
        out += [m for m in metadata if isinstance(m, msgspec.Meta)]
    for arg in typing.get_args(hint):
        out += _metas(arg)
    return out
