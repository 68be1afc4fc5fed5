"""The user's side of the headless ``dhtchat demo``: a scripted conversation with the demo
bot, printed as a transcript and checked at every step.

Theory of operation: the script starts the user's daemon (:meth:`DemoNetwork.start_user_daemon`)
and, like any front end, drives it only through its JSON-RPC API and event stream
(docs/api.md): a contact request to the bot, two messages (each waits for its delivery
receipt, then its read receipt), a file the bot sends (SHA-256 of the bot's original and of
the copy the user's daemon saved), and a call with a generated tone each way (the SAS of both
daemons, the frequency each side measured in its recording). Every wait has a deadline; a
step that does not happen raises :class:`DemoError` saying which.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dhtchat.app.demobot import (
    ApiSession,
    BotCall,
    DemoError,
    Json,
    as_list,
    as_object,
    number_of,
    text_of,
)
from dhtchat.app.media import audio_duration, dominant_frequency

if TYPE_CHECKING:
    from dhtchat.app.demo import DemoNetwork

STEP: Final = 30.0  # seconds any one step may take
USER_TONE_HZ: Final = 440.0
TONE_TOLERANCE_HZ: Final = 15.0
CALL_AUDIO_S: Final = 3.0  # seconds of the bot's tone to hear before hanging up
SHOWN_CHARS: Final = 64  # a message's text in the transcript (the history has it whole)

Say = Callable[[str], None]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def _mark(row: Json) -> str:
    return "✓✓" if row.get("read") else "✓" if row.get("delivered") else "…"


async def run_conversation(demo: DemoNetwork, *, say: Say) -> None:
    """Start the user's daemon and go through the whole conversation with the bot."""
    daemon = await demo.start_user_daemon()
    say(f"you      your daemon joined the DHT: user id {demo.setup.user_id}")
    session = await ApiSession.open(daemon.socket_path, "your")
    try:
        await _Script(session, demo, say).run()
    except DemoError as exc:
        errors = demo.bot.log.errors
        if errors:  # what went wrong on the bot's side, if it knows
            raise DemoError(f"{exc} ({demo.setup.bot_name}: {errors[-1]})") from None
        raise
    finally:
        await session.close()


class _Script:
    def __init__(self, session: ApiSession, demo: DemoNetwork, say: Say) -> None:
        self.api = session
        self.demo = demo
        self.say = say
        self.bot = demo.setup.bot_id
        self.bot_name = demo.setup.bot_name
        self.inbox: list[Json] = []  # every message object message.receive returned
        self.claimed: dict[str, int] = {}  # kind -> the bot's messages of it a step took

    async def run(self) -> None:
        await self.befriend()
        await self.wait_bot_messages(1, "the bot's greeting")
        await self.send("hello DemoBot, can you read me?")
        await self.wait_bot_messages(1, f"{self.bot_name}'s answer to a message")
        await self.send("please send me a file")
        await self.receive_file()
        await self.place_call()
        await self.show_history()

    # ------------------------------------------------------------------ steps

    async def befriend(self) -> None:
        started = time.monotonic()
        sent = as_object(await self.api.call(
            "contact.request", id=self.bot,
            message=f"hi {self.bot_name}, it's the demo user"), "contact.request")
        self.say(f'request  you -> {self.bot_name}: "{text_of(sent, "message")}" '
                 f"(stored on {number_of(sent, 'stored_on'):.0f} DHT nodes)")
        await self.api.wait_event("contact.accepted", lambda d: d.get("contact") == self.bot,
                                  STEP, f"{self.bot_name} accepting the contact request")
        self.say(f"accepted {self.bot_name} accepted the request after "
                 f"{time.monotonic() - started:.1f} s; you are contacts")
        link = as_object(await self.api.call("connect", contact=self.bot, timeout=STEP,
                                             rpc_timeout=STEP + 10), "connect")
        local, remote = as_object(link.get("local"), "local"), as_object(link.get("remote"),
                                                                         "remote")
        self.say(f"connect  {text_of(link, 'path')}: {text_of(local, 'type')} "
                 f"{text_of(local, 'address')} <-> {text_of(remote, 'type')} "
                 f"{text_of(remote, 'address')} in {number_of(link, 'connect_ms'):.0f} ms "
                 "(DTLS, fingerprints signed by both identities)")

    async def send(self, text: str) -> None:
        started = time.monotonic()
        try:
            sent = as_object(await self.api.call("message.send", to=self.bot, text=text,
                                                 wait=True, timeout=STEP, rpc_timeout=STEP + 10),
                             "message.send")
        except Exception as exc:
            raise DemoError(f'"{text}" got no delivery receipt: {exc}') from None
        delivered = time.monotonic() - started
        seq = number_of(sent, "seq")
        await self.api.wait_event(
            "receipt", lambda d: d.get("contact") == self.bot and number_of(d, "read") >= seq,
            STEP, f'the read receipt of "{text}"')
        read = time.monotonic() - started
        self.say(f'message  you -> {self.bot_name}: "{_short(text)}"  ✓ delivered after '
                 f"{delivered * 1000:.0f} ms, ✓✓ read after {read * 1000:.0f} ms")

    async def wait_bot_messages(self, count: int, what: str,
                                kind: str = "text") -> list[Json]:
        """The next ``count`` messages of ``kind`` from the bot that no earlier step took
        (each printed as it arrives)."""
        deadline = time.monotonic() + STEP
        while True:
            claimed = self.claimed.get(kind, 0)
            new = [m for m in self.inbox
                   if text_of(m, "from") == self.bot and text_of(m, "kind") == kind][claimed:]
            if len(new) >= count:
                self.claimed[kind] = claimed + count
                return new[:count]
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"{what}: no message from {self.bot_name} within "
                                f"{STEP:.0f} s")
            for message in as_list(await self.api.call("message.receive",
                                                       wait=min(left, 5.0)),
                                   "message.receive"):
                self.inbox.append(message)
                name = self.bot_name if text_of(message, "from") == self.bot else "someone"
                self.say(f'message  {name} -> you: "{_short(text_of(message, "text"))}"')

    async def receive_file(self) -> None:
        # the bot's answer, its offer (a message of kind "file") and the SHA-256 it saw
        await self.wait_bot_messages(1, f"{self.bot_name}'s answer to the file request")
        await self.wait_bot_messages(1, f"{self.bot_name}'s file offer", kind="file")
        await self.wait_bot_messages(1, f"{self.bot_name}'s message with the SHA-256")
        offer = await self.api.wait_event("file.offer", lambda d: d.get("contact") == self.bot,
                                          STEP, f"{self.bot_name}'s file")
        file_id, name = text_of(offer, "id"), text_of(offer, "name")
        done = await self.api.wait_event(
            "file.complete", lambda d: d.get("id") == file_id and d.get("direction") == "in",
            STEP, f"the transfer of {name}")
        if done.get("error"):
            raise DemoError(f"the transfer of {name} failed: {done.get('error')}")
        took = number_of(done, "_time") - number_of(offer, "_time")
        downloads = self.demo.setup.workdir / "downloads"
        downloads.mkdir(mode=0o700, exist_ok=True)
        saved = as_object(await self.api.call("file.get", id=file_id, dest=str(downloads)),
                          "file.get")
        path = Path(text_of(saved, "path"))
        ours = hashlib.sha256(path.read_bytes()).hexdigest()
        theirs = next((digest for sent, digest in reversed(self.demo.bot.log.files)
                       if sent == name), "")
        self.say(f"file     {self.bot_name} sent {name} ({number_of(offer, 'size'):.0f} bytes): "
                 f"offered, downloaded and hash-checked in {took * 1000:.0f} ms; saved as "
                 f"{path.name}")
        self.say(f"file     SHA-256 on {self.bot_name}'s side: {theirs or '(none)'}")
        self.say(f"file     SHA-256 on your side:      {ours}")
        if ours != theirs:
            raise DemoError(f"{name} differs between {self.bot_name}'s side and yours")

    async def place_call(self) -> None:
        workdir = self.demo.setup.workdir
        recording = workdir / "you-heard.wav"
        start = len(self.api.events)
        started = time.monotonic()
        placed = as_object(await self.api.call(
            "call.start", to=self.bot, audio_in=f"tone:{USER_TONE_HZ:g}",
            audio_out=str(recording)), "call.start")
        call_id = text_of(placed, "id")
        states: list[str] = [text_of(placed, "state")]

        def change(data: Json) -> bool:
            if data.get("id") != call_id:
                return False
            state = text_of(data, "state")
            if state and state != states[-1]:
                states.append(state)
            return state in ("active", "ended")

        reached = await self.api.wait_event("call.state", change, STEP,
                                            f"{self.bot_name} answering the call", start)
        if reached.get("state") == "ended":
            raise DemoError(f"the call ended before it was answered: {reached.get('reason')}")
        self.say(f"call     you -> {self.bot_name}: {', '.join(states)} after "
                 f"{time.monotonic() - started:.1f} s (SRTP over DTLS)")
        ours = await self._sas(call_id)
        theirs = await self._bot_sas(call_id)
        self.say(f'call     SAS on your side:      "{ours[0]}" ({ours[1]})')
        self.say(f'call     SAS on {self.bot_name}\'s side: "{theirs.sas_words}" '
                 f"({theirs.sas_number})")
        if ours != (theirs.sas_words, theirs.sas_number):
            raise DemoError("the SAS differs between the two sides (someone in the middle?)")
        heard = await self._hear(call_id)
        await self.api.call("call.hangup", id=call_id)
        self.say(f"call     {heard:.1f} s of {self.bot_name}'s audio; you hung up")
        frequency = dominant_frequency(recording)
        self.say(f"call     you heard {frequency:.1f} Hz for {audio_duration(recording):.1f} s "
                 f"({self.bot_name} sends {self.demo.bot.tone_hz:.0f} Hz; tolerance "
                 f"{TONE_TOLERANCE_HZ:.0f} Hz)")
        if abs(frequency - self.demo.bot.tone_hz) > TONE_TOLERANCE_HZ:
            raise DemoError(f"you heard {frequency:.1f} Hz, not {self.demo.bot.tone_hz:.0f} Hz")
        await self.wait_bot_messages(1, f"{self.bot_name}'s report of the call")
        if theirs.heard_hz is None:
            raise DemoError(f"{self.bot_name} could not measure what it heard")
        self.say(f"call     {self.bot_name} heard {theirs.heard_hz:.1f} Hz for "
                 f"{theirs.heard_s:.1f} s (you send {USER_TONE_HZ:.0f} Hz)")
        if abs(theirs.heard_hz - USER_TONE_HZ) > TONE_TOLERANCE_HZ:
            raise DemoError(f"{self.bot_name} heard {theirs.heard_hz:.1f} Hz, not "
                            f"{USER_TONE_HZ:.0f} Hz")

    async def _sas(self, call_id: str) -> tuple[str, str]:
        deadline = time.monotonic() + STEP
        while True:
            status = as_object(await self.api.call("call.status", id=call_id), "call.status")
            sas = status.get("sas")
            if isinstance(sas, dict) and text_of(sas, "words"):
                return text_of(sas, "words"), text_of(sas, "number")
            if time.monotonic() > deadline:
                raise DemoError(f"your daemon showed no SAS within {STEP:.0f} s")
            await asyncio.sleep(0.1)

    async def _bot_sas(self, call_id: str) -> BotCall:
        deadline = time.monotonic() + STEP
        while True:
            record = next((c for c in self.demo.bot.log.calls if c.id == call_id), None)
            if record is not None and record.sas_words:
                return record
            if time.monotonic() > deadline:
                raise DemoError(f"{self.bot_name} saw no SAS for the call within {STEP:.0f} s")
            await asyncio.sleep(0.1)

    async def _hear(self, call_id: str) -> float:
        """Wait for CALL_AUDIO_S seconds of the bot's audio; the seconds heard."""
        deadline = time.monotonic() + STEP
        while True:
            status = as_object(await self.api.call("call.status", id=call_id), "call.status")
            heard = number_of(status, "received_audio_s")
            if heard >= CALL_AUDIO_S:
                return heard
            if text_of(status, "state") == "ended" or time.monotonic() > deadline:
                raise DemoError(f"only {heard:.1f} s of {self.bot_name}'s audio arrived "
                                f"(call {text_of(status, 'state')})")
            await asyncio.sleep(0.1)

    async def show_history(self) -> None:
        """The conversation as the user's daemon keeps it, each message with the mark its
        sender's daemon shows (✓ delivered, ✓✓ read); every one must be read."""
        deadline = time.monotonic() + STEP
        while True:
            ours = as_list(await self.api.call("message.history", contact=self.bot,
                                               limit=100), "message.history")
            theirs = as_list(await self.demo.bot.session.call(
                "message.history", contact=self.demo.setup.user_id, limit=100),
                "the bot's message.history")
            by_seq = {number_of(m, "seq"): m for m in theirs
                      if text_of(m, "from") == self.bot}
            marks = [_mark(m) if text_of(m, "from") != self.bot
                     else _mark(by_seq.get(number_of(m, "seq"), {})) for m in ours]
            if all(mark == "✓✓" for mark in marks) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        self.say(f"history  your conversation with {self.bot_name}, as your daemon stores it "
                 "(marks from the sender's daemon: ✓ delivered, ✓✓ read):")
        for message, mark in zip(ours, marks, strict=True):
            who = self.bot_name if text_of(message, "from") == self.bot else "you"
            stamp = time.strftime("%H:%M:%S", time.localtime(number_of(message, "timestamp")))
            self.say(f"         {stamp} {who:<8} {_short(text_of(message, 'text'))} {mark}")
        mine = sum(1 for m in ours if text_of(m, "from") != self.bot)
        self.say(f"history  {len(ours)} messages ({mine} yours, {len(ours) - mine} "
                 f"{self.bot_name}'s); {marks.count('✓✓')} of {len(marks)} delivered and read")
        if marks.count("✓✓") != len(marks):
            raise DemoError("not every message shows ✓✓ (delivered and read) on its "
                            "sender's side")
