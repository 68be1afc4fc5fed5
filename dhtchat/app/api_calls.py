"""The ``call.*`` methods of the daemon API (docs/api.md §3.18): place, answer and end calls,
read their state and statistics, and verify a contact by the call's SAS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dhtchat.app.calls import Call, CallManager, CallMedia
from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.params import (
    CallAnswerParams,
    CallAutoAnswerParams,
    CallControlParams,
    CallIdParams,
    CallListParams,
    CallStartParams,
    CallVerifyParams,
    CallWaitParams,
    MediaParams,
)
from dhtchat.app.rpc import CONNECTION_FAILED, INVALID_PARAMS, RpcError
from dhtchat.core.identity import encode_user_id
from dhtchat.core.sas import sas_from_number, sas_from_words
from dhtchat.store.contacts import ContactEntry

if TYPE_CHECKING:
    from dhtchat.app.daemon import Daemon

log = logging.getLogger("dhtchat.api")


class CallApi:
    """The call handlers of one daemon's :class:`~dhtchat.app.api.Api`."""

    def __init__(self, daemon: Daemon,
                 accepted_contact: Callable[[str], ContactEntry]) -> None:
        """``accepted_contact(name or id)``: the accepted contact meant, else RpcError."""
        self.daemon = daemon
        self.accepted_contact = accepted_contact

    @property
    def calls(self) -> CallManager:
        """The daemon's calls."""
        return self.daemon.calls

    def _call(self, call_id: str | None) -> Call:
        found: Call = self.calls.find(bytes.fromhex(call_id) if call_id else None)
        return found

    async def call_start(self, p: CallStartParams) -> JsonObject:
        """Call a contact, or 2-4 contacts as a group call; returns once the invites are
        sent."""
        calls = self.calls
        media = _media(p)
        try:
            if isinstance(p.to, list):  # a group call
                if not 2 <= len(p.to) <= 4:
                    raise RpcError(INVALID_PARAMS, "a group call takes 2 to 4 contacts")
                keys = [self.accepted_contact(t).public_key for t in p.to]
                legs = await calls.place_group(keys, media)
                return {"conference": legs[0].conference.hex(),
                        "calls": [calls.as_json(leg) for leg in legs]}
            entry = self.accepted_contact(p.to)
            call = await calls.place(entry.public_key, media, video=p.video)
        except (ConnectionError, TimeoutError) as exc:  # the contact cannot be reached
            raise RpcError(CONNECTION_FAILED, f"call failed: {exc}") from None
        out: JsonObject = calls.as_json(call)
        return out

    async def call_answer(self, p: CallAnswerParams) -> JsonObject:
        """Answer the ringing call."""
        call = self._call(p.id)
        await self.calls.answer(call, _media(p))
        out: JsonObject = self.calls.as_json(call)
        return out

    async def call_decline(self, p: CallIdParams) -> JsonObject:
        """Decline the ringing call."""
        call = self._call(p.id)
        await self.calls.decline(call)
        out: JsonObject = self.calls.as_json(call)
        return out

    async def call_hangup(self, p: CallIdParams) -> JsonObject:
        """Hang up."""
        call = self._call(p.id)
        await self.calls.hangup(call)
        out: JsonObject = self.calls.as_json(call)
        return out

    async def call_status(self, p: CallIdParams) -> JsonObject:
        """A call with its SAS and media statistics."""
        call = self._call(p.id)
        out: JsonObject = self.calls.as_json(call)
        out["stats"] = await self.calls.stats(call)
        return out

    async def call_wait(self, p: CallWaitParams) -> JsonObject | None:
        """Wait until a call changes, or, without id, until one rings; returns the call
        (None on timeout)."""
        calls = self.calls
        if p.id is None:
            ringing = calls.current
            if ringing is None or ringing.machine.state != "ringing" \
                    or ringing.machine.direction != "incoming":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(calls.incoming.wait(), p.timeout)
                ringing = calls.current
            return calls.as_json(ringing) if ringing is not None else None
        call = self._call(p.id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.changed.wait(), p.timeout)
        out: JsonObject = calls.as_json(call)
        return out

    async def call_list(self, p: CallListParams) -> list[JsonObject]:
        """The call log, newest first."""
        rows: list[JsonObject] = self.calls.log(p.limit)
        suspicious = {call_id.hex() for call_id in self.calls.store.suspicious()}
        for row in rows:
            row["suspicious"] = row["id"] in suspicious
        return rows

    async def call_verify(self, p: CallVerifyParams) -> JsonObject:
        """Mark a contact verified after comparing the SAS of a call (``sas``: the words or
        digits the contact read out, checked against our last call)."""
        entry = self.accepted_contact(p.contact)
        calls = [c for c in self.calls.calls.values()
                 if c.contact == entry.public_key and c.sas is not None]
        if not calls:
            raise RpcError(INVALID_PARAMS, "no call with this contact showed a SAS since the "
                           "daemon started; call first and compare the words")
        last = max(calls, key=lambda c: c.machine.started)
        shown = last.sas
        assert shown is not None  # (the calls above all have one)
        if p.differ:  # the user compared the words and they differ: never a typo
            log.warning("WARNING: the SAS of the call with %s differed", entry.name)
            self.calls.store.mark_suspicious(last.call_id, time.time())
            self.daemon.contacts.unverify(entry.public_key)
            return {"contact": encode_user_id(entry.public_key), "name": entry.name,
                    "verified": False, "suspicious": True, "sas": shown.text}
        if p.sas is not None:
            spoken = str(p.sas)
            heard = sas_from_number(spoken) if spoken.replace(" ", "").isdigit() \
                else sas_from_words(spoken)
            if heard != shown:  # a typo as likely as an attacker: nothing is marked yet
                raise RpcError(INVALID_PARAMS, f"the words do not match the ones shown here "
                               f"({shown.text}): check them for a typo and try again; if the "
                               "words your contact reads really differ, say so with "
                               "differ (`call verify NAME --differ`)")
        self.daemon.contacts.mark_verified(entry.public_key, entry.name, time.time(),
                                           last.remote_fingerprint)
        return {"contact": encode_user_id(entry.public_key), "name": entry.name,
                "verified": True, "sas": shown.text}

    async def call_control(self, p: CallControlParams) -> JsonObject:
        """Mute, hold or camera during a call (for a group call every leg)."""
        calls = self.calls
        call = self._call(p.id)
        for leg in calls.legs(call.conference) if call.conference else [call]:
            if p.mute is not None:
                await calls.set_mute(leg, p.mute)
            if p.hold is not None:
                await calls.set_hold(leg, p.hold)
            if p.camera is not None:
                await calls.set_camera(leg, p.camera)
        out: JsonObject = calls.as_json(call)
        return out

    async def call_auto_answer(self, p: CallAutoAnswerParams) -> JsonObject:
        """Answer every incoming call with these media (headless use)."""
        calls = self.calls
        calls.auto_answer = _media(p) if p.enabled else None
        return {"auto_answer": calls.auto_answer is not None}


def _media(p: MediaParams) -> CallMedia:
    return CallMedia(p.audio_in or "silence", p.audio_out or "null", p.video_in)
