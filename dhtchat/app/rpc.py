"""JSON-RPC 2.0 over the daemon's Unix socket (one JSON object per line, both directions).

The socket lives in the profile directory (``daemon.sock``, mode 0600): only its owner can
talk to the daemon. See ``docs/api.md`` for the methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from dhtchat.app.jsontypes import JsonObject, JsonValue
from dhtchat.core.errors import ErrorCode

log = logging.getLogger("dhtchat.rpc")

# The codes live with the errors that carry them (dhtchat.core.errors.ErrorCode).
PARSE_ERROR: Final = int(ErrorCode.PARSE_ERROR)
INVALID_REQUEST: Final = int(ErrorCode.INVALID_REQUEST)
METHOD_NOT_FOUND: Final = int(ErrorCode.METHOD_NOT_FOUND)
INVALID_PARAMS: Final = int(ErrorCode.INVALID_PARAMS)
INTERNAL_ERROR: Final = int(ErrorCode.INTERNAL_ERROR)
# Application errors (JSON-RPC reserves -32000..-32099 for implementations).
NOT_FOUND: Final = int(ErrorCode.NOT_FOUND)
NOT_A_CONTACT: Final = int(ErrorCode.NOT_A_CONTACT)
BLOCKED: Final = int(ErrorCode.BLOCKED)
TIMEOUT: Final = int(ErrorCode.TIMEOUT)
CONNECTION_FAILED: Final = int(ErrorCode.CONNECTION_FAILED)
NOT_READY: Final = int(ErrorCode.NOT_READY)
STOPPING: Final = int(ErrorCode.STOPPING)

MAX_LINE: Final = 1 << 20

Handler = Callable[[JsonObject], Awaitable[object]]
"""A method: takes the request's params, returns its result (JSON-encodable) or a
:class:`Reply`."""


class RpcError(Exception):
    """An error reported to the client as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data

    def as_dict(self) -> JsonObject:
        """The JSON-RPC error member."""
        out: JsonObject = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass
class Reply:
    """A result whose side effects must wait until the client has it: ``on_sent`` runs once
    the reply is written to the socket, ``on_lost`` if the client went away first (e.g.
    ``message.receive`` marks messages as shown only when they reached the client)."""

    result: object
    on_sent: Callable[[], None]
    on_lost: Callable[[], None]


MAX_IN_FLIGHT: Final = 256  # requests of one connection handled at once (then reading waits)


class Connection:
    """One client connection: replies and notifications are written whole, one at a time."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()
        self._on_close: list[Callable[[], None]] = []
        self.closed = False

    async def send(self, message: JsonObject) -> None:
        """Write one JSON object line (raises ``ConnectionError`` once the client left)."""
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        async with self._lock:
            await _write(self._writer, message)

    async def notify(self, method: str, params: JsonObject) -> None:
        """Send a JSON-RPC notification (no id) to the client."""
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the connection has ended (at once if it already has)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        """Mark the connection ended and run the close callbacks."""
        if self.closed:
            return
        self.closed = True
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("connection close callback failed")


# The connection whose request a handler is serving (for methods that stream, such as
# events.subscribe); None outside the server.
current_connection: ContextVar[Connection | None] = ContextVar("current_connection",
                                                               default=None)


class RpcServer:
    """Serves ``handlers`` (method name -> coroutine taking the params dict).

    Requests on one connection are pipelined: the client may write many lines without waiting,
    each request is started in the order it arrived (so a handler that does its work before
    its first ``await``, as ``message.send`` does, keeps the client's order), up to
    MAX_IN_FLIGHT run at once, and each reply is written when its request finishes (match
    replies by ``id``)."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        """Listen on the socket path (replacing a stale socket file), mode 0600."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening, answer every request still waiting (e.g. a ``message.receive``
        of ``receive --follow``) with a "daemon stopped" error, and remove the socket file."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        connection = Connection(writer)
        current_connection.set(connection)
        try:
            await self._serve_lines(reader, connection)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Cancelled by close(): the client has been told; end this connection quietly.
        finally:
            if task is not None:
                self._connections.discard(task)
            connection.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_lines(self, reader: asyncio.StreamReader, connection: Connection) -> None:
        requests: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(MAX_IN_FLIGHT)

        unanswered: dict[asyncio.Task[None], bytes] = {}  # (until its _answer starts)

        def finished(task: asyncio.Task[None]) -> None:
            requests.discard(task)
            room.release()

        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    with contextlib.suppress(ConnectionError):
                        await connection.send(_error(None, RpcError(
                            INVALID_REQUEST, "request line too long")))
                    break
                except (ConnectionError, asyncio.IncompleteReadError):
                    break
                if not line:
                    break
                await room.acquire()
                task = asyncio.ensure_future(self._answer(line, connection, unanswered))
                requests.add(task)
                unanswered[task] = line
                task.add_done_callback(finished)
            # The client stopped writing: the requests under way still get their replies.
            while requests:
                await asyncio.wait(list(requests))
        except asyncio.CancelledError:
            for task in list(requests):
                task.cancel()
            if requests:
                await asyncio.wait(list(requests), timeout=2.0)
            if self._closing:  # a request cancelled before it started still gets its reply
                for line in list(unanswered.values()):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.send(_error(
                            _request_id(line), RpcError(STOPPING, "the daemon stopped"))), 1.0)
            raise

    async def _answer(self, line: bytes, connection: Connection,
                      unanswered: dict[asyncio.Task[None], bytes]) -> None:
        """Handle one request line and write its reply (if it has one)."""
        task = asyncio.current_task()
        if task is not None:
            unanswered.pop(task, None)  # started: it answers for itself from here on
        try:
            response, reply = await self.handle_line(line)
        except asyncio.CancelledError:
            if self._closing:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.send(_error(
                        _request_id(line), RpcError(STOPPING, "the daemon stopped"))), 1.0)
            raise
        if response is None:
            if reply is not None:
                reply.on_lost()
            return
        try:
            await connection.send(response)
        except BaseException as exc:
            if reply is not None:
                reply.on_lost()
            if isinstance(exc, ConnectionError):
                return
            raise
        if reply is not None:
            reply.on_sent()

    async def handle_line(self, line: bytes) -> tuple[JsonObject | None, Reply | None]:
        """The response to one request line (``None`` for a notification), and the
        handler's :class:`Reply` hooks if it returned one."""
        try:
            request: JsonValue = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(None, RpcError(PARSE_ERROR, "parse error: not JSON")), None
        method = request.get("method") if isinstance(request, dict) else None
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" \
                or not isinstance(method, str):
            return _error(None, RpcError(INVALID_REQUEST,
                                         "invalid request: need jsonrpc '2.0' and a method")), None
        request_id = request.get("id")
        params = request.get("params", {})
        if not isinstance(params, dict):
            return _error(request_id, RpcError(INVALID_PARAMS, "params must be an object")), None
        handler = self.handlers.get(method)
        try:
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"no method {method!r}")
            result = await handler(cast(JsonObject, params))  # (dict is invariant)
        except RpcError as exc:
            return (_error(request_id, exc) if "id" in request else None), None
        except Exception:
            log.exception("internal error in %s", method)
            return _error(request_id, RpcError(INTERNAL_ERROR,
                                               "internal error (see daemon log)")), None
        reply = result if isinstance(result, Reply) else None
        if reply is not None:
            result = reply.result
        if "id" not in request:
            return None, reply  # a notification: nobody reads the result
        return {"jsonrpc": "2.0", "id": request_id, "result": result}, reply


def _request_id(line: bytes) -> JsonValue:
    """The id of a request line, if it has one (for an error reply)."""
    with contextlib.suppress(ValueError):
        request: JsonValue = json.loads(line)
        if isinstance(request, dict):
            return request.get("id")
    return None


def _error(request_id: JsonValue, exc: RpcError) -> JsonObject:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.as_dict()}


async def _write(writer: asyncio.StreamWriter, message: JsonObject) -> None:
    writer.write(json.dumps(message).encode("utf-8") + b"\n")
    await writer.drain()


class DaemonNotRunning(Exception):
    """No daemon listens on the profile's socket."""


class DaemonStopped(ConnectionError):
    """The daemon closed the connection before it answered (it stopped or died)."""


async def call(path: Path, method: str, params: JsonObject | None = None,
               timeout: float = 120.0) -> JsonValue:
    """Call one method; raises :class:`RpcError` for an error reply and
    :class:`DaemonNotRunning` when nothing listens on ``path``."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonNotRunning(str(path)) from exc
    try:
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        writer.write(json.dumps(request).encode("utf-8") + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not line:
        raise DaemonStopped("the daemon stopped before it answered")
    reply: JsonValue = json.loads(line)
    if not isinstance(reply, dict):
        raise RpcError(INTERNAL_ERROR, "the daemon's reply is not a JSON object")
    if "error" in reply:
        raise _reply_error(reply["error"])
    return reply.get("result")


def _reply_error(err: JsonValue) -> RpcError:
    """The :class:`RpcError` of a reply's ``error`` member."""
    if not isinstance(err, dict):
        return RpcError(INTERNAL_ERROR, str(err))
    code = err.get("code", INTERNAL_ERROR)
    return RpcError(code if isinstance(code, int) else INTERNAL_ERROR,
                    str(err.get("message", "")), err.get("data"))


class RpcClient:
    """One connection to the daemon with many calls in flight: requests are pipelined and
    their replies matched by id; notifications (e.g. of ``events.subscribe``) are put on
    :attr:`notifications` as ``(method, params)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[JsonValue]] = {}
        self.notifications: asyncio.Queue[tuple[str, dict[str, JsonValue]]] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, path: Path) -> RpcClient:
        """Connect; raises :class:`DaemonNotRunning` when nothing listens on ``path``."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(str(path)) from exc
        return cls(reader, writer)

    async def call(self, method: str, params: JsonObject | None = None,
                   timeout: float = 120.0) -> JsonValue:
        """Send one request and wait for its reply (others may be in flight meanwhile)."""
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[JsonValue] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            if self._task.done():
                raise DaemonStopped("the daemon closed the connection")
            request = {"jsonrpc": "2.0", "id": request_id, "method": method,
                       "params": params or {}}
            self._writer.write(json.dumps(request).encode("utf-8") + b"\n")
            await self._writer.drain()
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)

    async def _read(self) -> None:
        try:
            while line := await self._reader.readline():
                message: JsonValue = json.loads(line)
                if not isinstance(message, dict):
                    continue
                method, params, request_id = (message.get("method"), message.get("params"),
                                              message.get("id"))
                if "id" not in message and isinstance(method, str):
                    self.notifications.put_nowait((method,
                                                   params if isinstance(params, dict) else {}))
                    continue
                future = self._waiting.get(request_id) if isinstance(request_id, int) \
                    else None
                if future is None or future.done():
                    continue
                if "error" in message:
                    future.set_exception(_reply_error(message["error"]))
                else:
                    future.set_result(message.get("result"))
        except (ConnectionError, ValueError):
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(DaemonStopped("the daemon stopped before it answered"))

    async def notification(self) -> tuple[str, dict[str, JsonValue]]:
        """The next notification; :class:`DaemonStopped` once the connection has closed and
        none is left."""
        if not self.notifications.empty():
            return self.notifications.get_nowait()
        if self._task.done():
            raise DaemonStopped("the daemon closed the connection")
        getter = asyncio.ensure_future(self.notifications.get())
        try:
            await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        raise DaemonStopped("the daemon closed the connection")

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
