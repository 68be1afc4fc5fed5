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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("dhtchat.rpc")

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Application errors (JSON-RPC reserves -32000..-32099 for implementations).
NOT_FOUND: Final = -32001
NOT_A_CONTACT: Final = -32002
BLOCKED: Final = -32003
TIMEOUT: Final = -32004
CONNECTION_FAILED: Final = -32005
NOT_READY: Final = -32006
STOPPING: Final = -32007

MAX_LINE: Final = 1 << 20

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class RpcError(Exception):
    """An error reported to the client as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_dict(self) -> dict[str, Any]:
        """The JSON-RPC error member."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass
class Reply:
    """A result whose side effects must wait until the client has it: ``on_sent`` runs once
    the reply is written to the socket, ``on_lost`` if the client went away first (e.g.
    ``message.receive`` marks messages as shown only when they reached the client)."""

    result: Any
    on_sent: Callable[[], None]
    on_lost: Callable[[], None]


class RpcServer:
    """Serves ``handlers`` (method name -> coroutine taking the params dict)."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
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
        try:
            await self._serve_lines(reader, writer)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Cancelled by close(): the client has been told; end this connection quietly.
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_lines(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _write(writer, _error(None, RpcError(INVALID_REQUEST,
                                                               "request line too long")))
                    break
                if not line:
                    break
                try:
                    response, reply = await self.handle_line(line)
                except asyncio.CancelledError:
                    if self._closing:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(_write(writer, _error(
                                _request_id(line), RpcError(STOPPING, "the daemon stopped"))),
                                1.0)
                    raise
                if response is None:
                    if reply is not None:
                        reply.on_lost()
                    continue
                try:
                    await _write(writer, response)
                except BaseException:
                    if reply is not None:
                        reply.on_lost()
                    raise
                if reply is not None:
                    reply.on_sent()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def handle_line(self, line: bytes) -> tuple[dict[str, Any] | None, Reply | None]:
        """The response to one request line (``None`` for a notification), and the
        handler's :class:`Reply` hooks if it returned one."""
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(None, RpcError(PARSE_ERROR, "parse error: not JSON")), None
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" \
                or not isinstance(request.get("method"), str):
            return _error(None, RpcError(INVALID_REQUEST,
                                         "invalid request: need jsonrpc '2.0' and a method")), None
        request_id = request.get("id")
        params = request.get("params", {})
        if not isinstance(params, dict):
            return _error(request_id, RpcError(INVALID_PARAMS, "params must be an object")), None
        handler = self.handlers.get(request["method"])
        try:
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"no method {request['method']!r}")
            result = await handler(params)
        except RpcError as exc:
            return (_error(request_id, exc) if "id" in request else None), None
        except Exception:
            log.exception("internal error in %s", request["method"])
            return _error(request_id, RpcError(INTERNAL_ERROR,
                                               "internal error (see daemon log)")), None
        reply = result if isinstance(result, Reply) else None
        if reply is not None:
            result = reply.result
        if "id" not in request:
            return None, reply  # a notification: nobody reads the result
        return {"jsonrpc": "2.0", "id": request_id, "result": result}, reply


def _request_id(line: bytes) -> Any:
    """The id of a request line, if it has one (for an error reply)."""
    with contextlib.suppress(ValueError):
        request = json.loads(line)
        if isinstance(request, dict):
            return request.get("id")
    return None


def _error(request_id: Any, exc: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.as_dict()}


async def _write(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode("utf-8") + b"\n")
    await writer.drain()


class DaemonNotRunning(Exception):
    """No daemon listens on the profile's socket."""


class DaemonStopped(ConnectionError):
    """The daemon closed the connection before it answered (it stopped or died)."""


async def call(path: Path, method: str, params: dict[str, Any] | None = None,
               timeout: float = 120.0) -> Any:
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
    reply = json.loads(line)
    if "error" in reply:
        err = reply["error"]
        raise RpcError(int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "")),
                       err.get("data"))
    return reply.get("result")
