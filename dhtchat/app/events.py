"""The event stream of the daemon's API (``events.subscribe``, docs/api.md §3.19).

Theory of operation: the services report what happens (a message arrived, a receipt, a
contact's presence, a file's progress, a call ringing...) with :meth:`EventLog.emit`. Each
event gets the next id of a counter that never goes back (ids continue across restarts: the
events are kept in the ``events`` table of the history database). Emitting only appends to
memory; a flush FLUSH_DELAY later commits everything emitted meanwhile in one transaction
(at thousands of messages a second, one fsync for many events), and only then hands the
events to the subscribers, so a client never sees an id the store could lose in a crash and
reuse.

A subscriber starts by catching up: it reads the stored events after the id it names, then
takes the live ones. Catching up and going live meet without a gap or a repeat because the
switch happens synchronously (flush, note the last id, queue only later ones). A subscriber
that falls behind (its queue full: the client reads too slowly) drops its queue and catches
up from the store again; memory stays bounded.
The store keeps the newest MAX_EVENTS events (:mod:`dhtchat.store.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Final

from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.rpc import NOT_READY, Connection, Reply, RpcError, current_connection
from dhtchat.core.errors import LocalProtocolError
from dhtchat.store.events import EventRow, EventTable
from dhtchat.store.history import History

log = logging.getLogger("dhtchat.events")

QUEUE_LIMIT: Final = 1000  # live events buffered per subscriber before it re-reads the store
PAGE: Final = 500  # events read from the store at a time when catching up
FLUSH_DELAY: Final = 0.005  # events of these seconds share one transaction (one fsync)

# The event types (docs/api.md §3.19): the `type` member of every event.
EVENT_TYPES: Final = frozenset({
    "message", "receipt", "typing", "presence", "connection", "contact.request",
    "contact.accepted", "file.offer", "file.progress", "file.complete", "call.ringing",
    "call.state", "group.changed", "error",
})

@dataclass(frozen=True)
class Event:
    """One event: ``id`` (increasing, never reused), UNIX time, type and its data."""

    id: int
    at: float
    type: str
    data: JsonObject

    def as_json(self) -> JsonObject:
        """The params of the ``event`` notification."""
        return {"id": self.id, "time": self.at, "type": self.type, "data": self.data}


@dataclass(eq=False)
class _Subscriber:
    connection: Connection
    last: int  # the newest id written to the client
    catch_up: bool = True  # read the store before (again) taking live events
    queue: asyncio.Queue[Event] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))


class EventLog:
    """The daemon's events: persisted, numbered, streamed to subscribed connections."""

    def __init__(self) -> None:
        self._store: EventTable | None = None
        self._last_id = 0
        self._pending: list[Event] = []
        self._flush_scheduled = False
        self._subscribers: set[_Subscriber] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, history: History) -> None:
        """Keep the events in ``history``'s database; continue its ids."""
        table = EventTable(history)
        self._last_id = table.last_id()
        self._store = table

    @property
    def last_id(self) -> int:
        """The id of the newest event emitted."""
        return self._last_id

    def emit(self, kind: str, /, **data: object) -> None:
        """Record an event (committed and streamed FLUSH_DELAY seconds later, with the
        others emitted meanwhile)."""
        if kind not in EVENT_TYPES:
            raise LocalProtocolError(f"no event type {kind!r}")
        if self._store is None:
            return  # not started or already closed: nothing runs that a client could miss
        self._last_id += 1
        self._pending.append(Event(self._last_id, time.time(), kind, data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Commit the pending events in one transaction, then hand them to subscribers."""
        self._flush_scheduled = False
        events, self._pending = self._pending, []
        if not events or self._store is None:
            return
        self._store.append([EventRow(e.id, e.at, e.type, json.dumps(e.data))
                              for e in events])
        for sub in self._subscribers:
            if sub.catch_up:
                continue  # it reads these from the store
            for event in events:
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.catch_up = True  # too slow: drop the queue, re-read the store
                    break

    def read(self, after: int, upto: int, limit: int = PAGE) -> list[Event]:
        """Stored events with ``after < id <= upto``, oldest first."""
        if self._store is None:
            return []
        return [Event(r.id, r.at, r.type, json.loads(r.data))
                for r in self._store.read(after, upto, limit)]

    def oldest_id(self) -> int:
        """The oldest event still stored (``last_id + 1`` if none)."""
        if self._store is None:
            return self._last_id + 1
        oldest = self._store.oldest_id()
        return oldest if oldest is not None else self._last_id + 1

    async def subscribe_connection(self, since: int) -> Reply:
        """``events.subscribe`` on the current RPC connection: once the reply is written,
        every event after ``since`` goes to the client as an ``event`` notification
        (``since`` = -1: only the events that follow)."""
        connection = current_connection.get()
        if connection is None or self._store is None:
            raise RpcError(NOT_READY, "events are streamed to an API connection only")
        if since < 0:  # only what follows: start after the newest event so far
            since = self._last_id
        oldest = self.oldest_id()
        result = {"last": self._last_id, "oldest": oldest, "missed": since + 1 < oldest}
        sub = _Subscriber(connection, last=since)

        def start() -> None:
            task = asyncio.ensure_future(self._stream(sub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            connection.on_close(lambda: _cancel(task))

        return Reply(result, on_sent=start, on_lost=lambda: None)

    async def _stream(self, sub: _Subscriber) -> None:
        self._subscribers.add(sub)
        try:
            while True:
                if sub.catch_up and sub.queue.empty():
                    await self._catch_up(sub)
                event = await sub.queue.get()  # (queued ids all follow sub.last)
                await sub.connection.notify("event", event.as_json())
                sub.last = event.id
        except ConnectionError:
            pass
        finally:
            self._subscribers.discard(sub)

    async def _catch_up(self, sub: _Subscriber) -> None:
        """Write the stored events after ``sub.last``, then go live."""
        self.flush()  # everything emitted so far is in the store...
        upto = self._last_id
        sub.catch_up = False  # ...and everything after it goes to the queue
        while sub.last < upto:
            page = self.read(sub.last, upto)
            if not page:
                break
            for event in page:
                await sub.connection.notify("event", event.as_json())
                sub.last = event.id

    async def close(self) -> None:
        """Commit what is pending, stop streaming and let go of the store."""
        self.flush()
        self._store = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
