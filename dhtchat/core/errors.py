"""Error types shared by the core, in the style of h11.

``LocalProtocolError`` means the caller of this library misused it (a bug or bad user input on
our side); ``RemoteProtocolError`` means a peer sent something invalid. Remote errors never
escape :meth:`DhtNode.receive_datagram`: they are counted and reported as events.
"""

from __future__ import annotations


class DhtChatError(Exception):
    """Base class for all dhtchat errors."""


class LocalProtocolError(DhtChatError):
    """The local caller asked for something invalid (bad argument, misuse of the API)."""


class RemoteProtocolError(DhtChatError):
    """A peer sent a datagram or record that violates the protocol."""


class InvalidRecord(RemoteProtocolError):
    """A record failed validation (size, key binding, expiry, signature or sequence)."""


class InvalidUserId(LocalProtocolError):
    """A user id string is malformed or its checksum does not match (a typo)."""
