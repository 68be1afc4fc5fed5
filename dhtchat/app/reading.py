"""Reading: the messages the API clients have not been shown yet, and their JSON form.

Theory of operation: a received message is stored unfetched; :meth:`Reader.receive` hands
unfetched messages out in order, reserved for that caller until :meth:`Reader.shown` (the
reply reached the client: they are marked fetched, disappearing timers start and the read
receipt is requested) or :meth:`Reader.release` (it did not: offered again). So a lost
reply loses nothing, and two concurrent callers never get the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

from dhtchat.app.jsontypes import JsonObject
from dhtchat.core.identity import encode_user_id
from dhtchat.store.history import ConversationRef, History, StoredMessage

MAX_RECEIVE_BYTES: Final = 512 * 1024  # per message.receive reply (the client asks again)


class Reader:
    """The unfetched messages of one daemon, handed to API clients."""

    def __init__(self, history: History, read_up_to: Callable[[bytes, int], None]) -> None:
        """``read_up_to(contact, seq)``: the client was shown the contact's messages up to
        ``seq`` (send a read receipt)."""
        self.history = history
        self._read_up_to = read_up_to
        self._in_flight: set[bytes] = set()  # returned by receive, reply not yet written
        self._arrived = asyncio.Condition()

    async def arrived(self) -> None:
        """New messages were stored: wake the waiting ``receive`` calls."""
        async with self._arrived:
            self._arrived.notify_all()

    async def receive(self, wait: float, limit: int,
                      only: ConversationRef | None = None) -> list[StoredMessage]:
        """Messages not yet shown, in order; waits up to ``wait`` s for the first one. They
        are reserved for this caller until :meth:`shown` (the reply reached the client) or
        :meth:`release` (it did not): a lost reply loses nothing, and two concurrent callers
        never get the same message."""
        deadline = time.monotonic() + wait
        while True:
            messages = [m for m in self.history.unfetched(limit + len(self._in_flight), only)
                        if m.id not in self._in_flight][:limit]
            messages = _cap_bytes(messages)
            if messages or time.monotonic() >= deadline:
                break
            async with self._arrived:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
        self._in_flight.update(m.id for m in messages)
        return messages

    def release(self, messages: list[StoredMessage]) -> None:
        """The reply with these messages did not reach the client: offer them again."""
        self._in_flight.difference_update(m.id for m in messages)

    def shown(self, messages: list[StoredMessage]) -> None:
        """The client has these messages: mark them fetched (disappearing timers start) and
        send read receipts."""
        self._in_flight.difference_update(m.id for m in messages)
        if not messages:
            return
        self.history.mark_fetched([m.id for m in messages])
        by_contact: dict[bytes, int] = {}
        for message in messages:
            by_contact[message.contact] = max(by_contact.get(message.contact, 0), message.seq)
        for contact, seq in by_contact.items():
            self._read_up_to(contact, seq)


def _cap_bytes(messages: list[StoredMessage]) -> list[StoredMessage]:
    """The longest prefix whose API reply stays under MAX_RECEIVE_BYTES (at least one)."""
    size = 0
    for count, message in enumerate(messages):
        size += len(message.text.encode("utf-8")) + 400
        if size > MAX_RECEIVE_BYTES:
            return messages[:max(count, 1)]
    return messages


def message_json(message: StoredMessage, me: str, them: str, *,
                 author_name: str | None = None,
                 group_name: str | None = None) -> JsonObject:
    """The JSON form of a message for the API (``them``: the contact, or for an outgoing
    group message the group id). ``author``: who wrote it (for a group message relayed by
    the admin, the member who signed it, not the admin); ``kind``: "text" (typed by
    ``author``), "notice" (written by dhtchat: a timer change, a member list) or "file"."""
    sender = them if message.author is None else encode_user_id(message.author)
    return {
        "group": message.group_id.hex() if message.group_id else None,
        "group_name": group_name,
        "id": message.id.hex(),
        "kind": message.kind,
        "author": me if message.outgoing else sender,
        "author_name": author_name,
        "from": me if message.outgoing else sender,
        "to": them if message.outgoing else me,
        "timestamp": message.sent_at,
        "received": message.received_at,
        "seq": message.seq,
        "text": message.text,
        "delivered": message.delivered,
        "read": message.read,
    }
