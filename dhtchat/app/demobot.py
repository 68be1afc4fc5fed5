"""The demo contact of ``dhtchat demo``: a bot that drives a real daemon through its API.

Theory of operation: the bot owns nothing but a connection to its daemon's socket
(``PROFILE/daemon.sock``, docs/api.md). It subscribes to the event stream
(``events.subscribe``) and reacts to what arrives, one handler task per event, calling the
same JSON-RPC methods any front end calls:

* ``contact.request`` -> ``contact.accept``, then a greeting ``message.send``;
* ``message`` -> ``message.receive`` (which sends the read receipts) and an answer to every
  text: a request containing "file" gets a small generated file (``file.send``);
* ``call.ringing`` -> ``call.answer`` with a generated sine (``tone:HZ``) as its microphone
  and a WAV recording of what it hears; once the call ends it measures the recording
  (:func:`dhtchat.app.media.dominant_frequency`) and tells the caller what it heard and the
  SAS words its daemon showed.

It never touches daemon internals, so it works against a daemon in this process or in
another one. What it did is kept in :class:`BotLog` for the demo's transcript.

``DHTCHAT_DEMO_BOT_SKIP`` (comma-separated ``accept``, ``reply``, ``file``, ``call``) makes the
bot leave those out: the demo's tests use it to show the demo fails when the bot is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from dhtchat.app.jsontypes import JsonObject, JsonValue
from dhtchat.app.media import MediaError, audio_duration, dominant_frequency
from dhtchat.app.rpc import DaemonNotRunning, DaemonStopped, RpcClient, RpcError

log = logging.getLogger("dhtchat.demobot")

SKIP_ENV: Final = "DHTCHAT_DEMO_BOT_SKIP"
SKIPPABLE: Final = frozenset({"accept", "reply", "file", "call"})
BOT_TONE_HZ: Final = 880.0
FILE_NAME: Final = "postcard-from-demobot.txt"
RECORDING_WAIT: Final = 10.0  # seconds a finished call's recording may take to be readable

Json = dict[str, JsonValue]


# ------------------------------------------------------------------------- JSON narrowing


def as_object(value: JsonValue, what: str) -> Json:
    """``value`` as a JSON object (else :class:`DemoError`)."""
    if not isinstance(value, dict):
        raise DemoError(f"{what}: expected an object, got {value!r}")
    return value


def as_list(value: JsonValue, what: str) -> list[Json]:
    """``value`` as a list of JSON objects."""
    if not isinstance(value, list):
        raise DemoError(f"{what}: expected a list, got {value!r}")
    return [as_object(item, what) for item in value]


def text_of(obj: Json, key: str) -> str:
    """``obj[key]`` if it is a string, else ``""``."""
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def number_of(obj: Json, key: str) -> float:
    """``obj[key]`` if it is a number (not a bool), else 0."""
    value = obj.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else 0.0


class DemoError(Exception):
    """A step of the demo did not happen (the message says which and why)."""


# ------------------------------------------------------------------------- one API session


class ApiSession:
    """One connection to a daemon's API with its event stream: :meth:`call` methods and
    wait for events (:meth:`wait_event`) or read them in order (:meth:`event_after`)."""

    def __init__(self, client: RpcClient, who: str) -> None:
        self._client = client
        self.who = who
        self.events: list[Json] = []
        self._grew = asyncio.Event()
        self._closed = False
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, socket: Path, who: str) -> ApiSession:
        """Connect to the daemon listening on ``socket`` and subscribe to every event it
        stored (``since`` 0: none is missed between start and subscription)."""
        session = cls(await RpcClient.open(socket), who)
        await session.call("events.subscribe", since=0)
        session._reader = asyncio.ensure_future(session._read())
        return session

    async def _read(self) -> None:
        try:
            while True:
                method, params = await self._client.notification()
                if method == "event":
                    self.events.append(params)
                    self._grew.set()
        except DaemonStopped:
            pass
        finally:
            self._closed = True
            self._grew.set()

    async def call(self, method: str, *, rpc_timeout: float = 60.0,
                   **params: object) -> JsonValue:
        """Call ``method`` with ``params`` (the reply within ``rpc_timeout`` s);
        :class:`RpcError` for an error reply."""
        request: JsonObject = dict(params)
        return await self._client.call(method, request, rpc_timeout)

    async def event_after(self, index: int) -> tuple[int, Json]:
        """The event at ``index`` of this session's stream (waits for it) and the next index;
        :class:`DaemonStopped` once the connection closed."""
        while index >= len(self.events):
            if self._closed:
                raise DaemonStopped(f"{self.who}'s daemon closed the event stream")
            self._grew.clear()
            await self._grew.wait()
        return index + 1, self.events[index]

    async def wait_event(self, kind: str, match: Callable[[Json], bool], timeout: float,
                         what: str, start: int = 0) -> Json:
        """The data of the first event of type ``kind`` from index ``start`` on for which
        ``match(data)`` holds (its UNIX time added as ``"_time"``); :class:`DemoError`
        naming ``what`` after ``timeout`` s."""
        index = start
        try:
            async with asyncio.timeout(timeout):
                while True:
                    index, event = await self.event_after(index)
                    data = event.get("data")
                    if event.get("type") == kind and isinstance(data, dict) and match(data):
                        return {**data, "_time": event.get("time")}
        except TimeoutError:
            raise DemoError(f"{what}: nothing within {timeout:.0f} s") from None
        except DaemonStopped as exc:
            raise DemoError(f"{what}: {exc}") from None

    async def close(self) -> None:
        """Close the connection."""
        await self._client.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# ------------------------------------------------------------------------------ the bot


@dataclass
class BotCall:
    """A call the bot answered: its SAS and what it heard."""

    id: str
    contact: str
    sas_words: str = ""
    sas_number: str = ""
    reason: str = ""
    heard_hz: float | None = None
    heard_s: float = 0.0
    recording: Path | None = None


@dataclass
class BotLog:
    """What the bot did, for the transcript."""

    accepted: list[str] = field(default_factory=list)  # user ids
    replies: int = 0
    files: list[tuple[str, str]] = field(default_factory=list)  # (name, SHA-256) sent
    calls: list[BotCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def skipped_from_environment() -> frozenset[str]:
    """The behaviours ``DHTCHAT_DEMO_BOT_SKIP`` switches off (unknown names are ignored with
    a warning)."""
    names = {n.strip() for n in os.environ.get(SKIP_ENV, "").split(",") if n.strip()}
    for name in names - SKIPPABLE:
        log.warning("%s: unknown behaviour %r (known: %s)", SKIP_ENV, name,
                    ", ".join(sorted(SKIPPABLE)))
    return frozenset(names & SKIPPABLE)


class DemoBot:
    """The demo contact: :meth:`run` it as a task until its daemon stops or the task is
    cancelled."""

    def __init__(self, socket: Path, workdir: Path, *, name: str = "DemoBot",
                 tone_hz: float = BOT_TONE_HZ, skip: frozenset[str] = frozenset()) -> None:
        self.socket = socket
        self.workdir = workdir
        self.name = name
        self.tone_hz = tone_hz
        self.skip = skip
        self.log = BotLog()
        self._session: ApiSession | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._failed: Exception | None = None

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the bot listens to its daemon's events (:class:`DemoError` if it
        cannot)."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise DemoError(f"{self.name} did not connect to its daemon within "
                            f"{timeout:.0f} s") from None
        if self._failed is not None:
            raise DemoError(f"{self.name} cannot reach its daemon: {self._failed}")

    async def run(self) -> None:
        """Handle the daemon's events until the connection closes or the task is
        cancelled."""
        try:
            self._session = session = await ApiSession.open(self.socket, self.name)
        except (OSError, DaemonNotRunning, RpcError) as exc:
            self._failed = exc
            raise
        finally:
            self._ready.set()
        try:
            index = 0
            while True:
                index, event = await session.event_after(index)
                handler = self._handler(event)
                if handler is not None:
                    task = asyncio.create_task(handler)
                    self._handlers.add(task)
                    task.add_done_callback(self._done)
        except DaemonStopped:
            pass
        finally:
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await session.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            message = exc.message if isinstance(exc, RpcError) else f"{exc!r}"
            log.warning("demo bot: %s", message)
            self.log.errors.append(message)

    def _handler(self, event: Json) -> Coroutine[object, object, None] | None:
        kind, data = event.get("type"), event.get("data")
        if not isinstance(data, dict):
            return None
        if kind == "contact.request" and "accept" not in self.skip:
            return self._accept(data)
        if kind == "message" and "reply" not in self.skip:
            return self._answer_messages()
        if kind == "call.ringing" and "call" not in self.skip:
            return self._answer_call(data)
        return None

    @property
    def session(self) -> ApiSession:
        """The bot's API session (once :meth:`run` has connected)."""
        if self._session is None:
            raise DemoError("the demo bot is not connected to its daemon")
        return self._session

    # ------------------------------------------------------------------ contacts, messages

    async def _accept(self, data: Json) -> None:
        contact, name = text_of(data, "contact"), text_of(data, "name")
        await self.session.call("contact.accept", id=contact, name=name)
        self.log.accepted.append(contact)
        greeting = (f"Hi {name or 'there'}! I'm {self.name}, a bot on this demo network. "
                    "Write to me and I answer; write 'file' and I send you a small file; "
                    f"call me and I answer with a tone of {self.tone_hz:.0f} Hz.")
        await self.session.call("message.send", to=contact, text=greeting)

    async def _answer_messages(self) -> None:
        received = as_list(await self.session.call("message.receive", wait=0),
                           "message.receive")
        for message in received:
            if message.get("group") is not None or text_of(message, "kind") != "text":
                continue  # groups and file offers: nothing to answer
            contact, text = text_of(message, "from"), text_of(message, "text")
            if "file" in text.lower() and "file" not in self.skip:
                await self.session.call(
                    "message.send", to=contact,
                    text=f"Here is a small file for you: {FILE_NAME}. Its SHA-256 follows "
                         "in the next message, so you can check what arrived.")
                await self._send_file(contact)
            else:
                await self.session.call(
                    "message.send", to=contact,
                    text=f'You said "{text[:200]}". Every message here is end-to-end '
                         "encrypted (X3DH + Double Ratchet); the marks show it was "
                         "delivered and read.")
            self.log.replies += 1

    async def _send_file(self, contact: str) -> None:
        path = self.workdir / FILE_NAME
        lines = [f"A postcard from {self.name}", "",
                 "This file came to you over a WebRTC data channel, end-to-end encrypted,",
                 "from a daemon on this machine you found through a local Kademlia DHT.",
                 f"Written at {time.strftime('%Y-%m-%d %H:%M:%S')}; "
                 f"token {secrets.token_hex(16)}.", ""]
        path.write_text("\n".join(lines * 8), encoding="utf-8")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.log.files.append((FILE_NAME, digest))
        await self.session.call("file.send", to=contact, path=str(path))
        await self.session.call("message.send", to=contact,
                                text=f"SHA-256 of {FILE_NAME} on my side: {digest}")

    # ------------------------------------------------------------------ calls

    async def _answer_call(self, data: Json) -> None:
        call_id, contact = text_of(data, "id"), text_of(data, "contact")
        record = BotCall(call_id, contact,
                         recording=self.workdir / f"heard-{call_id[:8]}.wav")
        self.log.calls.append(record)
        index = len(self.session.events)
        await self.session.call("call.answer", id=call_id, audio_in=f"tone:{self.tone_hz:g}",
                                audio_out=str(record.recording))
        while True:  # the call's changes, until it ends (the caller hangs up)
            index, event = await self.session.event_after(index)
            state = event.get("data")
            if event.get("type") != "call.state" or not isinstance(state, dict) \
                    or state.get("id") != call_id:
                continue
            if state.get("sas") and not record.sas_words:
                await self.note_sas(call_id)
            if state.get("state") == "ended":
                record.reason = text_of(state, "reason")
                break
        await self._report_call(record)

    async def note_sas(self, call_id: str) -> BotCall | None:
        """Read the SAS of a call the bot answered from its daemon (``call.status``) into
        the log; the call's log entry, or None if the bot did not answer it."""
        record = next((c for c in self.log.calls if c.id == call_id), None)
        if record is None:
            return None
        status = as_object(await self.session.call("call.status", id=call_id), "call.status")
        sas = status.get("sas")
        if isinstance(sas, dict):
            record.sas_words, record.sas_number = text_of(sas, "words"), text_of(sas, "number")
        return record

    async def _report_call(self, record: BotCall) -> None:
        if record.recording is None:
            return
        deadline = time.monotonic() + RECORDING_WAIT
        while True:  # the daemon closes the recording just after it reports the end
            try:
                record.heard_hz = dominant_frequency(record.recording)
                record.heard_s = audio_duration(record.recording)
                break
            except MediaError as exc:
                if time.monotonic() > deadline:
                    record.heard_hz = None
                    log.warning("demo bot: %s", exc)
                    break
                await asyncio.sleep(0.2)
        heard = (f"I heard a {record.heard_hz:.0f} Hz tone for {record.heard_s:.1f} s"
                 if record.heard_hz is not None else "I could not read my recording")
        await self.session.call(
            "message.send", to=record.contact,
            text=f"Thanks for calling! {heard}. The SAS on my side was "
                 f"'{record.sas_words or '?'}' ({record.sas_number or '?'}): if you saw the "
                 "same words, nobody was in the middle.")
