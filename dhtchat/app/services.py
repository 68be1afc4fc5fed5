"""The narrow interfaces the daemon's services are built with.

Theory of operation: a service (calls, file transfer, ...) never reaches into another
class's private members. What it needs of the rest of the daemon is given to it when it is
built, as one of the small interfaces below: a :class:`Spawner` that runs its background
tasks (and cancels them when the daemon stops), a :data:`Names` callable that gives a contact
the name to show in logs, and :class:`PeerStatus`, what is known of a contact's daemon
(connection and presence). The daemon satisfies them with public methods; the tests give
fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from dhtchat.core.contacts import Presence

_T = TypeVar("_T")

Names = Callable[[bytes], str]
"""The name to show for a public key (the contact's name, else the start of its user id)."""


class Spawner(Protocol):
    """Runs background tasks for a service; their owner cancels them when it stops."""

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[_T]:
        """Run ``coro`` as a background task (a failure is logged, not raised)."""
        ...


class PeerStatus(Protocol):
    """What is known of a contact's daemon: the data connection and its last presence."""

    @property
    def status(self) -> str:
        """The data connection: "connected", "connecting", "offline", ..."""
        ...

    @property
    def online(self) -> bool:
        """A fresh presence record says the contact's daemon is online."""
        ...

    @property
    def presence(self) -> Presence | None:
        """The newest presence record seen, if any."""
        ...

    @property
    def connected_at(self) -> float:
        """When the data connection last came up (UNIX time; 0 if never)."""
        ...
