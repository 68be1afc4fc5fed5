"""The desktop client's connection to the daemon: calls and the event stream, API only.

Theory of operation: one :class:`dhtchat.app.rpc.RpcClient` connection to
``PROFILE/daemon.sock`` carries both the calls (pipelined, replies matched by id) and the
``events.subscribe`` stream (docs/api.md §3.19). A supervisor task reads the stream, turns
each notification into a typed event (:mod:`dhtchat.ui.events`) and queues it for
:meth:`UiClient.events`. When the connection breaks (the daemon restarted or died), it queues
:class:`Disconnected`, reconnects with a growing delay (0.2 s doubling to 2 s) and subscribes
again with ``since`` = the last event id it handed out: the daemon keeps its events across
restarts, so nothing is missed or repeated; :class:`Reconnected` says whether events had
already been deleted (then the front end reloads its lists). Every failure of a call comes
out as :class:`ApiError` with a sentence for a person, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final, TypeVar

from dhtchat.app.jsontypes import JsonObject, JsonValue
from dhtchat.app.rpc import DaemonNotRunning, DaemonStopped, RpcClient, RpcError
from dhtchat.ui.events import ApiEvent, Disconnected, Reconnected, parse_event
from dhtchat.ui.models import (
    BadReply,
    Contact,
    Group,
    Message,
    Status,
    parse_contact,
    parse_contacts,
    parse_group,
    parse_groups,
    parse_message,
    parse_messages,
    parse_status,
)
from dhtchat.ui.records import (
    CallInfo,
    DaemonSettings,
    FileInfo,
    parse_call,
    parse_call_start,
    parse_file,
    parse_files,
    parse_settings,
)

log = logging.getLogger("dhtchat.ui.client")

RETRY_FIRST: Final = 0.2  # seconds before the first reconnection attempt
RETRY_MAX: Final = 2.0
# Reply lines can be longer than the daemon's 1 MiB request limit: message.history pages by
# count from the newest message, so a deep page (thousands of messages) is several MiB.
READ_LIMIT: Final = 64 << 20

T = TypeVar("T")


class ApiError(Exception):
    """A call failed; ``message`` is meant for a person, ``code`` is the JSON-RPC code (None
    when the daemon could not be reached)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def socket_path(profile: Path) -> Path:
    """The daemon's API socket in a profile directory."""
    return profile / "daemon.sock"


class UiClient:
    """One connection to a daemon for a front end: typed calls and the event stream."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._rpc: RpcClient | None = None
        self._last_event = -1  # -1: only the events after the first subscription
        self._queue: asyncio.Queue[ApiEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the connection to the daemon is up."""
        return self._rpc is not None

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect and subscribe to the events; :class:`ApiError` when no daemon answers."""
        try:
            missed = await asyncio.wait_for(self._open(), timeout)
        except (DaemonNotRunning, OSError, TimeoutError) as exc:
            raise ApiError(f"no daemon answers on {self.socket}") from exc
        except RpcError as exc:
            raise ApiError(exc.message, exc.code) from exc
        del missed
        self._task = asyncio.ensure_future(self._supervise())

    async def _open(self) -> bool:
        """Open the connection and subscribe from the last event seen; whether the daemon
        had already deleted some of the events since then."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket),
                                                            limit=READ_LIMIT)
        rpc = RpcClient(reader, writer)
        try:
            reply = await rpc.call("events.subscribe", {"since": self._last_event}, 10.0)
        except BaseException:
            await rpc.close()
            raise
        if self._last_event < 0 and isinstance(reply, dict):
            last = reply.get("last")
            if isinstance(last, int) and not isinstance(last, bool):
                self._last_event = last
        self._rpc = rpc
        return isinstance(reply, dict) and reply.get("missed") is True

    async def _supervise(self) -> None:
        delay = RETRY_FIRST
        while not self._closed:
            rpc = self._rpc
            if rpc is not None:
                await self._pump(rpc)
                self._rpc = None
                await rpc.close()
                if self._closed:
                    return
                self._queue.put_nowait(Disconnected(0, time.time(), "lost the connection "
                                                    "to the daemon; reconnecting"))
                delay = RETRY_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            try:
                missed = await asyncio.wait_for(self._open(), 10.0)
            except (DaemonNotRunning, OSError, TimeoutError, RpcError):
                continue
            self._queue.put_nowait(Reconnected(0, time.time(), missed))

    async def _pump(self, rpc: RpcClient) -> None:
        """Queue the typed events of one connection until it closes."""
        while True:
            try:
                method, params = await rpc.notification()
            except (DaemonStopped, OSError):
                return
            if method != "event":
                continue
            event = parse_event(params)
            if event is None:
                log.warning("ignored a malformed event from the daemon")
                continue
            self._last_event = max(self._last_event, event.id)
            self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[ApiEvent]:
        """The events, as they come, until :meth:`close`."""
        while not self._closed:
            yield await self._queue.get()

    def drain(self, limit: int = 10_000) -> list[ApiEvent]:
        """The events already queued (at most ``limit``), without waiting."""
        out: list[ApiEvent] = []
        while len(out) < limit and not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    async def next_event(self, timeout: float) -> ApiEvent | None:
        """The next event within ``timeout`` seconds, else None."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def call(self, method: str, params: JsonObject | None = None,
                   timeout: float = 120.0) -> JsonValue:
        """Call one method; every failure is an :class:`ApiError`."""
        rpc = self._rpc
        if rpc is None:
            raise ApiError("not connected to the daemon (reconnecting...)")
        try:
            return await rpc.call(method, params, timeout)
        except RpcError as exc:
            raise ApiError(exc.message, exc.code) from None
        except DaemonStopped:
            raise ApiError("the daemon stopped before it answered") from None
        except TimeoutError:
            raise ApiError(f"the daemon did not answer {method} within {timeout:g} s") \
                from None
        except (OSError, ValueError):
            raise ApiError("lost the connection to the daemon; reconnecting") from None

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rpc, self._rpc = self._rpc, None
        if rpc is not None:
            await rpc.close()

    # ------------------------------------------------------------------ typed calls

    async def _typed(self, parse: Callable[[JsonValue], T], method: str,
                     params: JsonObject | None = None, timeout: float = 120.0) -> T:
        value = await self.call(method, params, timeout)
        try:
            return parse(value)
        except BadReply as exc:
            raise ApiError(str(exc)) from None

    async def status(self) -> Status:
        """The daemon's summary."""
        return await self._typed(parse_status, "status")

    async def contacts(self) -> list[Contact]:
        """Every contact-list entry."""
        return await self._typed(parse_contacts, "contact.list")

    async def pending(self) -> list[Contact]:
        """The requests waiting (incoming and outgoing)."""
        return await self._typed(parse_contacts, "contact.pending")

    async def groups(self) -> list[Group]:
        """Every group."""
        return await self._typed(parse_groups, "group.list")

    async def history(self, conversation: str, limit: int,
                      before: str | None = None) -> list[Message]:
        """The last ``limit`` messages of a contact or group, oldest first; with ``before``
        (a message id), the last ones above that message (the next page up)."""
        params: JsonObject = {"contact": conversation, "limit": limit}
        if before is not None:
            params["before"] = before
        return await self._typed(parse_messages, "message.history", params)

    async def receive(self, limit: int = 1000,
                      conversation: str | None = None) -> list[Message]:
        """The messages no earlier call returned (of ``conversation`` only, if given): marks
        them read."""
        params: JsonObject = {"limit": limit}
        if conversation is not None:
            params["contact"] = conversation
        return await self._typed(parse_messages, "message.receive", params)

    async def search(self, conversation: str, text: str, limit: int = 50) -> list[Message]:
        """The messages of a contact or group containing ``text``, newest first."""
        return await self._typed(parse_messages, "message.search",
                                 {"contact": conversation, "text": text, "limit": limit})

    async def send(self, to: str, text: str) -> Message:
        """Queue a message to a contact or group."""
        return await self._typed(parse_message, "message.send", {"to": to, "text": text})

    async def typing(self, contact: str) -> None:
        """Tell the contact I am typing (if connected)."""
        await self.call("message.typing", {"contact": contact})

    async def request(self, user_id: str, name: str | None = None,
                      message: str | None = None) -> Contact:
        """Send a contact request."""
        params: JsonObject = {"id": user_id}
        if name:
            params["name"] = name
        if message:
            params["message"] = message
        return await self._typed(parse_contact, "contact.request", params)

    async def accept(self, contact: str, name: str | None = None) -> Contact:
        """Accept a request."""
        params: JsonObject = {"id": contact}
        if name:
            params["name"] = name
        return await self._typed(parse_contact, "contact.accept", params)

    async def refuse(self, contact: str) -> Contact:
        """Refuse a request."""
        return await self._typed(parse_contact, "contact.refuse", {"id": contact})

    async def block(self, contact: str) -> Contact:
        """Block an id."""
        return await self._typed(parse_contact, "contact.block", {"id": contact})

    async def shutdown(self) -> None:
        """Ask the daemon to stop."""
        await self.call("shutdown", timeout=10.0)


    # ------------------------------------------------ files, groups, calls, settings

    async def files(self) -> list[FileInfo]:
        """Every transfer, newest first."""
        return await self._typed(parse_files, "file.list")

    async def file_send(self, to: str, path: str) -> JsonValue:
        """Offer a file (a path on the daemon's machine) to a contact or group."""
        return await self.call("file.send", {"to": to, "path": path}, timeout=600.0)

    async def file_accept(self, file_id: str) -> FileInfo:
        """Download an offered file."""
        return await self._typed(parse_file, "file.accept", {"id": file_id})

    async def file_decline(self, file_id: str) -> FileInfo:
        """Refuse an offered file."""
        return await self._typed(parse_file, "file.decline", {"id": file_id})

    async def file_get(self, file_id: str, dest: str) -> str:
        """Copy a complete received file to ``dest``; the path written."""
        reply = await self.call("file.get", {"id": file_id, "dest": dest})
        path = reply.get("path") if isinstance(reply, dict) else None
        if not isinstance(path, str):
            raise ApiError("the daemon sent a malformed file.get reply")
        return path

    async def file_limits(self, auto_accept: int | None = None) -> dict[str, int]:
        """The file limits (bytes); with ``auto_accept``, set that one first."""
        params: JsonObject = {} if auto_accept is None else {"auto_accept": auto_accept}
        reply = await self.call("file.limits", params)
        if not isinstance(reply, dict):
            raise ApiError("the daemon sent malformed file limits")
        return {k: v for k, v in reply.items() if isinstance(v, int)}

    async def group_create(self, name: str, members: list[str]) -> Group:
        """A new group with me as admin."""
        return await self._typed(parse_group, "group.create",
                                 {"name": name, "members": list(members)})

    async def group_invite(self, group: str, members: list[str]) -> Group:
        """Add members (admin only)."""
        return await self._typed(parse_group, "group.invite",
                                 {"group": group, "members": list(members)})

    async def group_remove(self, group: str, member: str) -> Group:
        """Remove a member (admin only)."""
        return await self._typed(parse_group, "group.remove",
                                 {"group": group, "member": member})

    async def group_leave(self, group: str) -> bool:
        """Leave a group (members only)."""
        reply = await self.call("group.leave", {"group": group})
        return isinstance(reply, dict) and reply.get("left") is True

    async def call_start(self, to: str | list[str], media: dict[str, str],
                         video: bool = False) -> list[CallInfo]:
        """Call a contact (or 2-4 contacts: a group call, one call per leg)."""
        params: JsonObject = {"to": to if isinstance(to, str) else list(to), "video": video}
        params.update(media)
        return await self._typed(parse_call_start, "call.start", params, timeout=90.0)

    async def call_answer(self, call_id: str, media: dict[str, str]) -> CallInfo:
        """Answer a ringing call with these media."""
        params: JsonObject = {"id": call_id}
        params.update(media)
        return await self._typed(parse_call, "call.answer", params, timeout=60.0)

    async def call_decline(self, call_id: str) -> CallInfo:
        """Refuse a ringing call."""
        return await self._typed(parse_call, "call.decline", {"id": call_id})

    async def call_hangup(self, call_id: str) -> CallInfo:
        """End (or cancel) a call."""
        return await self._typed(parse_call, "call.hangup", {"id": call_id})

    async def call_status(self, call_id: str) -> CallInfo:
        """The call with its live numbers."""
        return await self._typed(parse_call, "call.status", {"id": call_id})

    async def call_control(self, call_id: str, *, mute: bool | None = None,
                           hold: bool | None = None, camera: bool | None = None) -> CallInfo:
        """Mute, hold, camera."""
        params: JsonObject = {"id": call_id}
        for key, value in (("mute", mute), ("hold", hold), ("camera", camera)):
            if value is not None:
                params[key] = value
        return await self._typed(parse_call, "call.control", params)

    async def call_verify(self, contact: str) -> bool:
        """Mark the contact verified after the SAS words were compared and matched."""
        reply = await self.call("call.verify", {"contact": contact})
        return isinstance(reply, dict) and reply.get("verified") is True

    async def settings_get(self) -> DaemonSettings:
        """The daemon settings saved in the profile and in effect."""
        return await self._typed(parse_settings, "settings.get")

    async def settings_set(self, **changes: str | bool | list[str]) -> DaemonSettings:
        """Save daemon settings (docs/api.md §3.21)."""
        params: JsonObject = {k: list(v) if isinstance(v, list) else v
                              for k, v in changes.items()}
        return await self._typed(parse_settings, "settings.set", params)
