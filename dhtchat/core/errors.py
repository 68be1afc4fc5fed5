"""Error types shared by the core, in the style of h11.

``LocalProtocolError`` means the caller of this library misused it (a bug or bad user input on
our side); ``RemoteProtocolError`` means a peer sent something invalid. Remote errors never
escape :meth:`DhtNode.receive_datagram`: they are counted and reported as events.

Every error carries the :class:`ErrorCode` a client sees when it ends an API call (the
JSON-RPC error codes of docs/api.md §4.1), so the API maps them in one place instead of each
handler translating them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ErrorCode(IntEnum):
    """The error codes of the daemon's API (JSON-RPC 2.0 codes, then the application's)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    NOT_FOUND = -32001
    NOT_A_CONTACT = -32002
    BLOCKED = -32003
    TIMEOUT = -32004
    CONNECTION_FAILED = -32005
    NOT_READY = -32006
    STOPPING = -32007


class DhtChatError(Exception):
    """Base class for all dhtchat errors."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR


class LocalProtocolError(DhtChatError):
    """The local caller asked for something invalid (bad argument, misuse of the API)."""

    code: ClassVar[ErrorCode] = ErrorCode.INVALID_PARAMS


class NotFound(LocalProtocolError):
    """The caller named something (a call, a file) that does not exist or is not ready."""

    code: ClassVar[ErrorCode] = ErrorCode.NOT_FOUND


class RemoteProtocolError(DhtChatError):
    """A peer sent a datagram or record that violates the protocol."""


class InvalidRecord(RemoteProtocolError):
    """A record failed validation (size, key binding, expiry, signature or sequence)."""


class InvalidUserId(LocalProtocolError):
    """A user id string is malformed or its checksum does not match (a typo)."""
