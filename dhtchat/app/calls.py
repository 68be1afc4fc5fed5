"""Voice and video calls: signalling over the contact's authenticated channel, media on a
second aiortc connection, a short authentication string (SAS) both people can compare.

Theory of operation (docs/protocol.md, "Calls"; the SIP INVITE dialog of RFC 3261 reduced to
two authenticated peers; SRTP keyed by DTLS, RFC 5764; SAS as in ZRTP, RFC 6189 §7):

* A call needs the contact's data connection (:meth:`Daemon.connect` opens it through the DHT
  rendezvous when there is none, so an incoming call to a daemon that was not connected
  arrives through the DHT ``listen`` path). Call signalling (``invite`` with the media offer,
  ``ringing``, ``accept`` with the answer, ``decline``, ``busy``, ``hangup``) is a control
  payload inside the contact's Double Ratchet on that channel: it comes from the contact and
  nobody else can read or alter it. :class:`dhtchat.core.calls.CallMachine` keeps the state.
* The media go over a separate RTCPeerConnection per call (Opus audio; VP8/H.264 video),
  SRTP keyed by its own DTLS handshake. Its DTLS fingerprints travel inside that
  authenticated signalling, so a substituted fingerprint makes the DTLS handshake fail before
  any media flows. Both sides also show a SAS computed from both fingerprints and both
  identities (:mod:`dhtchat.core.sas`) and two nonces, one from each side (the caller's
  committed in the invite and revealed after the callee's arrived in the accept), so nobody
  in the middle can choose her values to make the words match: equal words mean nobody sits
  in the middle even if the signalling path were compromised.
* A call to a contact whose daemon is known to be offline (it said goodbye, or its last
  presence is stale) fails at once with "NAME is offline (last seen …)" instead of waiting
  for the connection timeout; when nothing is known yet the call tries to connect.
* One call at a time per daemon: a second invite gets ``busy``. An invite not answered
  within the ring timeout ends as "no answer" (caller) / "missed" (callee). Every call is
  logged in the history database (``calls`` table; ``call list``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Final, Protocol

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from dhtchat.app.callmedia import Call, CallMedia, CallMediaEngine, sdp_fingerprint
from dhtchat.app.events import EventLog
from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.media import MediaError
from dhtchat.app.services import Names, PeerStatus, Spawner
from dhtchat.core.calls import CallMachine
from dhtchat.core.errors import LocalProtocolError, NotFound, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id, verify_signature
from dhtchat.core.sas import SAS_VERSION, compute_sas, parse_fingerprint
from dhtchat.net.webrtc import enlarge_ice_socket_buffers, selected_pair
from dhtchat.store.calls import CallRecord, CallStore
from dhtchat.store.contacts import ContactStore

__all__ = ["Call", "CallManager", "CallMedia", "CallPeers", "CallRecord", "CallSignals",
           "CallStore", "fingerprint_signed_bytes", "sdp_fingerprint"]

log = logging.getLogger("dhtchat.calls")

MEDIA_TIMEOUT: Final = 30.0  # accept -> media connected
CONNECT_TIMEOUT: Final = 30.0  # the data connection a call needs
TICK: Final = 0.5
INVITE_REPEATS: Final = 5
INVITE_REPEAT_AFTER: Final = 2.0
MAX_PARTICIPANTS: Final = 5  # a group call is a full mesh: n(n-1)/2 connections
_FINGERPRINT_SIGNATURE: Final = b"dhtchat/call-fingerprint/v1"


def fingerprint_signed_bytes(call_id: bytes, action: str, fingerprint: str) -> bytes:
    """What the sender of an invite or accept signs with its identity key: the call, the
    action and the DTLS fingerprint its SDP announces (RFC 8122 binding, by identity)."""
    return b"|".join((_FINGERPRINT_SIGNATURE, call_id, action.encode(),
                      parse_fingerprint(fingerprint)))


class CallPeers(Protocol):
    """What calls need of the daemon: who we are, our contacts, their connections."""

    @property
    def identity(self) -> SigningIdentity:
        """Our identity (signs the DTLS fingerprints, enters the SAS)."""
        ...

    @property
    def contacts(self) -> ContactStore:
        """The contact list (who may be in a group call, verified call keys)."""
        ...

    async def connect(self, public_key: bytes, timeout: float) -> object:
        """Open the data connection to a contact (raises when it cannot)."""
        ...

    async def rtc_configuration(self) -> RTCConfiguration:
        """ICE servers for a call's media connection."""
        ...

    def link_of(self, public_key: bytes) -> PeerStatus | None:
        """What is known of a contact's daemon (None: nothing)."""
        ...


class CallSignals(Protocol):
    """Sends call signalling inside the contact's ratchet (the messenger)."""

    async def send_call(self, contact: bytes, action: str, call_id: bytes, *, sdp: str = "",
                        video: bool = False, commitment: bytes = b"", nonce: bytes = b"",
                        conference: bytes = b"", participants: tuple[bytes, ...] = (),
                        signature: bytes = b"") -> bool:
        """Send one signal over the live data channel; False if it could not go."""
        ...


class CallManager:
    """The calls of one daemon: at most one at a time (or the legs of one group call)."""

    def __init__(self, store: CallStore, peers: CallPeers, signals: CallSignals, *,
                 tasks: Spawner, names: Names, events: EventLog) -> None:
        """``store`` keeps the call log and certificates, ``peers`` connects contacts,
        ``signals`` carries the signalling, ``tasks`` runs background work, ``names`` gives
        the names shown in logs and the API, ``events`` tells API clients of ringing and
        state changes."""
        self.events = events
        self.calls: dict[bytes, Call] = {}
        self.auto_answer: CallMedia | None = None
        self.incoming = asyncio.Event()  # set when a call starts ringing here
        self.refused_invites = 0  # invites refused before ringing (e.g. an older SAS scheme)
        self.store = store
        self.media = CallMediaEngine(store, tasks)
        self._peers = peers
        self._signals = signals
        self._tasks = tasks
        self._name = names
        self._ticker: asyncio.Task[None] | None = None
        # Group calls we take part in, with their media settings.
        self._joined: dict[bytes, CallMedia] = {}
        self._placing: set[tuple[bytes, bytes]] = set()  # (conference, peer) legs we call

    # ------------------------------------------------------------------ queries

    @property
    def current(self) -> Call | None:
        """The call in progress (ringing, connecting or active), if any (for a group call:
        one of its legs)."""
        return next((c for c in self.calls.values() if not c.machine.ended), None)

    def legs(self, conference: bytes) -> list[Call]:
        """The calls of a group call that are not over."""
        return [c for c in self.calls.values()
                if c.conference == conference and not c.machine.ended]

    def _busy_for(self, conference: bytes) -> bool:
        """Whether a new call (of ``conference``, or b"" for 1:1) collides with ours."""
        return any(not c.machine.ended and (not conference or c.conference != conference)
                   for c in self.calls.values())

    def find(self, call_id: bytes | None) -> Call:
        """A call by id, or the current one."""
        call = self.calls.get(call_id) if call_id else self.current
        if call is None:
            raise NotFound("no such call" if call_id else "no call in progress")
        return call

    def log(self, limit: int) -> list[JsonObject]:
        """The call log, newest first."""
        return [{"id": r.call_id.hex(), "contact": encode_user_id(r.contact),
                 "name": self._name(r.contact), "direction": r.direction, "video": r.video,
                 "started": r.started, "answered": r.answered, "ended": r.ended,
                 "reason": r.reason, "missed": r.missed}
                for r in self.store.log(limit)]

    def as_json(self, call: Call) -> JsonObject:
        """API form of a call."""
        machine = call.machine
        out: JsonObject = {
            "id": call.call_id.hex(),
            "contact": encode_user_id(call.contact),
            "name": self._name(call.contact),
            "direction": machine.direction,
            "video": machine.video,
            "state": machine.state,
            "reason": machine.reason,
            "started": machine.started,
            "answered": machine.answered_at,
            "ended": machine.ended_at,
            "sas": None,
        }
        if call.sas is not None:
            out["sas"] = {"words": call.sas.text, "number": call.sas.number}
        if call.sink is not None:
            out["received_audio_s"] = round(call.sink.duration, 2)
        if call.path:
            out["path"] = call.path
        if call.warning:
            out["warning"] = call.warning
        out.update(muted=call.muted, camera_off=call.camera_off, held=call.held,
                   remote_held=call.remote_held)
        if machine.video:
            out["received_video_frames"] = call.video_frames
        if call.conference:
            out["conference"] = call.conference.hex()
            out["participants"] = [encode_user_id(p) for p in call.participants]
        return out

    # ------------------------------------------------------------------ placing a call

    async def place(self, contact: bytes, media: CallMedia, *, video: bool = False,
                    conference: bytes = b"", participants: tuple[bytes, ...] = ()) -> Call:
        """Open the inputs, make sure the contact is connected, send the invite."""
        if self._busy_for(conference):
            raise LocalProtocolError("already in a call; hang up first")
        offline = self._known_offline(contact)
        if offline:
            raise ConnectionError(offline)
        call = Call(CallMachine(secrets.token_bytes(16), "outgoing", time.time(), video=video,
                                nonce=secrets.token_bytes(16)),
                    contact, media, conference=conference, participants=participants,
                    events=self.events)
        self._open_media(call)
        self.calls[call.call_id] = call
        try:
            await self._peers.connect(contact, CONNECT_TIMEOUT)
            pc = await self._peer_connection(call)
            await pc.setLocalDescription(await pc.createOffer())
            enlarge_ice_socket_buffers(pc)
            sent = await self._signal(call, "invite", sdp=pc.localDescription.sdp,
                                      commitment=call.machine.commitment,
                                      participants=participants)
            if not sent:
                raise ConnectionError("the connection to the contact closed")
        except BaseException as exc:
            reason = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
            await self._end(call, f"failed: {reason}")
            raise
        self._log_call(call)
        self._ensure_ticker()
        self._tasks.spawn(self._repeat_invite(call, pc.localDescription.sdp))
        log.info("calling %s (call %s)", self._name(contact), call.call_id.hex()[:8])
        return call

    def _known_offline(self, contact: bytes) -> str:
        """Why a call to ``contact`` cannot connect now, from what its presence says: its
        daemon said goodbye, or its last presence is stale. "" when it may be reachable
        (connected, online, or nothing heard yet)."""
        link = self._peers.link_of(contact)
        if link is None or link.presence is None or link.online or link.status != "offline":
            return ""
        last = max(float(link.presence.published), link.connected_at)
        ago = max(0.0, time.time() - last)
        when = (f"{ago:.0f} s ago" if ago < 120 else f"{ago / 60:.0f} min ago" if ago < 7200
                else f"{ago / 3600:.0f} h ago" if ago < 172800
                else time.strftime("%Y-%m-%d %H:%M", time.localtime(last)))
        return (f"{self._name(contact)} is offline (last seen {when}); the call was not "
                "placed: try again once they are online")

    async def _repeat_invite(self, call: Call, sdp: str) -> None:
        """Signals are not retransmitted by the messenger (a data connection replaced at the
        wrong moment loses one): send the invite again until the callee says it rings."""
        for _ in range(INVITE_REPEATS):
            await asyncio.sleep(INVITE_REPEAT_AFTER)
            if call.machine.state != "inviting":
                return
            await self._signal(call, "invite", sdp=sdp, commitment=call.machine.commitment,
                               participants=call.participants)

    async def place_group(self, contacts: list[bytes], media: CallMedia) -> list[Call]:
        """A group voice call (full mesh, at most MAX_PARTICIPANTS): we call everyone; each
        participant who answers calls the others whose key is larger than its own."""
        me = self._peers.identity.public_key
        everyone = (me, *sorted(set(contacts) - {me}))  # the initiator first
        if len(everyone) > MAX_PARTICIPANTS:
            raise LocalProtocolError(f"a group call has at most {MAX_PARTICIPANTS} people")
        if len(everyone) < 3:
            raise LocalProtocolError("a group call needs at least two other people")
        if self._busy_for(b"\x00"):
            raise LocalProtocolError("already in a call; hang up first")
        conference = secrets.token_bytes(16)
        self._joined[conference] = media
        results = await asyncio.gather(*(
            self.place(contact, media, conference=conference, participants=everyone)
            for contact in everyone if contact != me), return_exceptions=True)
        calls = [r for r in results if isinstance(r, Call)]
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a leg of the group call failed: %s", result)
        if not calls:
            self._leave(conference)
            raise ConnectionError("nobody in the group call could be reached")
        return calls

    async def _join_mesh(self, call: Call) -> None:
        """We answered a leg of a group call: answer its other ringing legs and call the
        participants it is our turn to call (those with a larger key than ours, except the
        one who started it, who called everyone)."""
        media = self._joined.get(call.conference)
        if media is None:
            return  # we hung up meanwhile
        for other in self.legs(call.conference):
            if other.machine.direction == "incoming" and other.machine.state == "ringing":
                with contextlib.suppress(MediaError, LocalProtocolError):
                    await self.answer(other, media)
        me = self._peers.identity.public_key
        have = {c.contact for c in self.legs(call.conference)}
        initiator = call.participants[0]
        for peer in call.participants[1:]:
            key = (call.conference, peer)
            if peer > me and peer not in have and key not in self._placing \
                    and peer != initiator and self._callable(peer):
                self._placing.add(key)  # before the task runs: _join_mesh runs per leg
                self._tasks.spawn(self._place_leg(call, peer, media))

    def _callable(self, peer: bytes) -> bool:
        entry = self._peers.contacts.get(peer)
        if entry is None or entry.state != "accepted":
            log.warning("group call: %s is not a contact of ours; no leg to it",
                        encode_user_id(peer)[:12])
            return False
        return True

    async def _place_leg(self, call: Call, peer: bytes, media: CallMedia) -> None:
        try:
            if call.conference not in self._joined:
                return  # we hung up meanwhile
            await self.place(peer, media, video=call.machine.video,
                             conference=call.conference, participants=call.participants)
        except Exception as exc:  # media, signalling, or an RpcError from connect
            log.warning("group call: no leg to %s: %s", encode_user_id(peer)[:12], exc)

    def _leave(self, conference: bytes) -> None:
        self._joined.pop(conference, None)
        self._placing = {key for key in self._placing if key[0] != conference}
        self.media.release(conference)

    # ------------------------------------------------------------------ answering

    async def answer(self, call: Call, media: CallMedia) -> Call:
        """Accept a ringing incoming call with these inputs/outputs."""
        if call.machine.direction != "incoming" or call.machine.state != "ringing":
            raise LocalProtocolError(f"cannot answer a call that is {call.machine.state}")
        if call.answering:  # e.g. the auto-answer and a group call's join at once
            raise LocalProtocolError("the call is being answered already")
        call.answering = True
        call.media = media
        try:
            self._open_media(call)
        except MediaError:
            call.answering = False  # the user may answer again with other devices
            raise
        try:
            pc = await self._peer_connection(call)
            await pc.setRemoteDescription(RTCSessionDescription(call.remote_sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            enlarge_ice_socket_buffers(pc)
            call.machine.send("accept", time.time())
            # Our fresh nonce, sent after we saw the caller's commitment (sas.py).
            if not await self._signal(call, "accept", sdp=pc.localDescription.sdp,
                                      nonce=call.machine.nonce):
                raise ConnectionError("the connection to the contact closed")
        except (MediaError, LocalProtocolError):
            raise
        except Exception as exc:
            await self._end(call, f"failed: {exc or exc.__class__.__name__}")
            raise LocalProtocolError(f"could not answer: {exc}") from None
        self._update_sas(call)
        self._log_call(call)
        self._ensure_ticker()  # the reveal timeout
        call.notify()
        self._tasks.spawn(self._await_media(call))
        if call.conference:
            self._joined.setdefault(call.conference, media)
            self._tasks.spawn(self._join_mesh(call))
        return call

    async def decline(self, call: Call) -> None:
        """Refuse a ringing incoming call."""
        call.machine.send("decline", time.time())
        await self._signal(call, "decline")
        await self._end(call, "declined")

    async def hangup(self, call: Call) -> None:
        """End a call (cancels it before it was answered); for a group call, every leg."""
        legs = self.legs(call.conference) if call.conference else [call]
        if call.conference:
            self._joined.pop(call.conference, None)  # no new legs
        for leg in legs:
            if leg.machine.ended:
                continue
            leg.machine.send("hangup", time.time())
            await self._signal(leg, "hangup")
            await self._end(leg, leg.machine.reason)

    # ------------------------------------------------------------------ signalling in

    async def on_signal(self, contact: bytes, action: str, call_id: bytes, *, sdp: str = "",
                        video: bool = False, committed: bytes = b"", nonce: bytes = b"",
                        conference: bytes = b"", participants: tuple[bytes, ...] = (),
                        signature: bytes = b"", sas_version: int = 0) -> None:
        """A call payload from a contact (already authenticated and decrypted)."""
        now = time.time()
        call = self.calls.get(call_id)
        if action in ("invite", "accept"):
            try:
                signed = fingerprint_signed_bytes(call_id, action, sdp_fingerprint(sdp))
            except RemoteProtocolError as exc:
                log.warning("refused a call %s from %s: %s", action,
                            self._name(contact), exc)
                return
            if not verify_signature(contact, signed, signature):
                log.warning("refused a call %s from %s: its DTLS fingerprint is not signed "
                            "by the contact's identity key", action, self._name(contact))
                if call is not None:
                    await self._fail(call, "the answer's DTLS fingerprint is not signed by "
                                     "the contact (possible man in the middle)")
                return
        if action == "invite":
            if sas_version < SAS_VERSION:
                self.refused_invites += 1
                log.warning("refused a call from %s: it runs an older dhtchat whose call SAS "
                            "is computed differently (the words would not match); both sides "
                            "need this version", self._name(contact))
                return
            me = self._peers.identity.public_key
            if conference and (len(conference) != 16 or contact not in participants
                               or me not in participants
                               or len(participants) > MAX_PARTICIPANTS):
                log.warning("refused a malformed group call invite from %s",
                            self._name(contact))
                return
            if len(set(participants)) != len(participants):
                return
            await self._on_invite(contact, call_id, sdp, video, committed, call,
                                  conference if participants else b"", participants)
            return
        if call is None or call.contact != contact:
            log.info("ignored a call %s for an unknown call", action)
            return
        if action == "nonce":
            await self._on_nonce(call, nonce)
            return
        if action in ("hold", "resume"):
            if call.machine.state in ("connecting", "active"):
                call.remote_held = action == "hold"
                call.notify()
            return
        was_over = call.machine.ended
        try:
            call.machine.receive(action, now, nonce=nonce)
        except RemoteProtocolError as exc:
            if call.machine.ended and not was_over:  # a violation that ended the call
                await self._refuse(call, str(exc))
            else:
                log.info("ignored a call message: %s", exc)
            return
        call.notify()
        if call.machine.ended:
            await self._end(call, call.machine.reason)
        elif action == "accept":
            await self._on_accept(call, sdp)

    async def _on_invite(self, contact: bytes, call_id: bytes, sdp: str, video: bool,
                         committed: bytes, existing: Call | None, conference: bytes,
                         participants: tuple[bytes, ...]) -> None:
        if existing is not None:  # a repeated invite: our "ringing" may have been lost
            if existing.contact == contact and existing.machine.state == "ringing":
                await self._signal(existing, "ringing")
            return
        try:  # our nonce is drawn now, after the caller committed to its own
            machine = CallMachine(call_id, "incoming", time.time(), video=video,
                                  nonce=secrets.token_bytes(16), peer_commitment=committed)
        except RemoteProtocolError as exc:
            log.warning("refused a call from %s: %s", self._name(contact), exc)
            return
        call = Call(machine, contact, remote_sdp=sdp, conference=conference,
                    participants=participants, events=self.events)
        try:
            call.remote_fingerprint = sdp_fingerprint(sdp)
        except RemoteProtocolError as exc:
            log.warning("refused a call from %s: %s", self._name(contact), exc)
            return
        if self._busy_for(conference):
            self.calls[call_id] = call
            machine.send("busy", time.time())
            machine.reason = "missed (busy)"  # for our log: someone called while we talked
            await self._signal(call, "busy")
            await self._end(call, machine.reason)
            return
        self.calls[call_id] = call
        self._log_call(call)
        await self._signal(call, "ringing")
        if conference and conference in self._joined:  # another leg of a call we are in
            try:
                await self.answer(call, self._joined[conference])
            except (MediaError, LocalProtocolError) as exc:
                log.warning("group call: could not take the leg from %s: %s",
                            self._name(contact), exc)
            return
        log.warning("incoming %s%s call from %s (answer with: dhtchat answer)",
                    "group " if conference else "", "video" if video else "voice",
                    self._name(contact))
        self.incoming.set()
        self.incoming = asyncio.Event()
        self.events.emit("call.ringing", **self.as_json(call))
        self._ensure_ticker()
        if self.auto_answer is not None:
            try:
                await self.answer(call, self.auto_answer)
            except (MediaError, LocalProtocolError) as exc:
                log.warning("could not answer automatically: %s", exc)
                await self.decline(call)

    async def _on_accept(self, call: Call, sdp: str) -> None:
        assert call.pc is not None
        try:
            call.remote_fingerprint = sdp_fingerprint(sdp)
            await call.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        except (RemoteProtocolError, ValueError) as exc:
            await self._fail(call, f"bad answer: {exc}")
            return
        if call.machine.ended:  # hung up (or rang out) while the answer was being applied
            return
        # Reveal only now that the callee's nonce is in: the SAS is fixed for both sides.
        await self._signal(call, "nonce", nonce=call.machine.reveal(time.time()))
        self._update_sas(call)
        self._log_call(call)
        self._tasks.spawn(self._await_media(call))

    async def _on_nonce(self, call: Call, nonce: bytes) -> None:
        was_over = call.machine.ended
        try:
            call.machine.receive_reveal(nonce, time.time())
        except RemoteProtocolError as exc:
            if call.machine.ended and not was_over:
                await self._refuse(call, str(exc))
            else:
                log.info("ignored a SAS nonce: %s", exc)
            return
        self._update_sas(call)
        call.notify()

    async def _refuse(self, call: Call, reason: str) -> None:
        """The contact broke the call protocol (its machine ended the call): hang up."""
        log.warning("call with %s: %s", self._name(call.contact), reason)
        await self._signal(call, "hangup")
        await self._end(call, reason)

    # ------------------------------------------------------------------ media

    def _open_media(self, call: Call) -> None:
        """Open the call's inputs and output (a missing device fails before any ringing)."""
        self.media.open(call)

    async def _peer_connection(self, call: Call) -> RTCPeerConnection:
        config = await self._peers.rtc_configuration()
        return self.media.peer_connection(call, config, self._end)

    # ------------------------------------------------------------------ in-call controls

    async def set_mute(self, call: Call, muted: bool) -> None:
        """Send silence instead of the microphone (or the microphone again)."""
        self.media.require(call)
        call.muted = muted
        self.media.apply_audio(call)
        call.notify()

    async def set_camera(self, call: Call, on: bool) -> None:
        """Stop or resume sending our video (a video call with a camera only)."""
        self.media.require(call)
        if "video" not in call.senders:
            raise LocalProtocolError("this call sends no video")
        call.camera_off = not on
        self.media.apply_video(call)
        call.notify()

    async def set_hold(self, call: Call, held: bool) -> None:
        """Hold: send nothing from the microphone or camera and tell the contact; resume
        undoes it. The connection stays up."""
        self.media.require(call)
        call.held = held
        self.media.apply_audio(call)
        self.media.apply_video(call)
        await self._signal(call, "hold" if held else "resume")
        call.notify()

    async def _await_media(self, call: Call) -> None:
        pc = call.pc
        assert pc is not None
        deadline = time.monotonic() + MEDIA_TIMEOUT
        while pc.connectionState != "connected":
            if call.machine.ended:
                return
            if pc.connectionState == "failed" or time.monotonic() > deadline:
                dtls = {t.sender.transport.state for t in pc.getTransceivers()
                        if t.sender.transport is not None}
                reason = ("DTLS handshake failed: the certificate does not match the "
                          "fingerprint in the call's signalling (possible man in the middle)"
                          if "failed" in dtls else
                          f"media connection did not come up (ICE {pc.iceConnectionState})")
                await self._fail(call, reason)
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(LocalProtocolError):
            call.machine.media_up(time.time())
        call.media_up_at = time.time()
        pair = selected_pair(pc)
        call.path = pair.path if pair is not None else ""
        log.info("call with %s connected (%s); SAS %s", self._name(call.contact),
                 call.path or "path unknown", call.sas.text if call.sas else "pending")
        call.notify()

    def _update_sas(self, call: Call) -> None:
        pc = call.pc
        if pc is None or pc.localDescription is None or not call.remote_fingerprint:
            return
        nonces = call.machine.sas_nonces
        if nonces is None:
            return  # the callee waits for the caller's reveal
        call.sas = compute_sas(
            local_identity=self._peers.identity.public_key,
            local_fingerprint=sdp_fingerprint(pc.localDescription.sdp),
            remote_identity=call.contact, remote_fingerprint=call.remote_fingerprint,
            offer_nonce=nonces[0], answer_nonce=nonces[1])
        pinned = self._peers.contacts.verified_fingerprint(call.contact)
        if pinned and parse_fingerprint(pinned) != parse_fingerprint(call.remote_fingerprint):
            call.warning = (f"{self._name(call.contact)}'s call key changed since you "
                            "verified them: compare the words again before trusting this "
                            "call (they are no longer marked verified)")
            log.warning("WARNING: %s", call.warning)
            self._peers.contacts.unverify(call.contact)

    async def stats(self, call: Call) -> JsonObject:
        """RTT, jitter, loss and bitrates of the call's media (empty before media)."""
        return await self.media.stats(call)

    # ------------------------------------------------------------------ plumbing

    async def _signal(self, call: Call, action: str, *, sdp: str = "",
                      commitment: bytes = b"", nonce: bytes = b"",
                      participants: tuple[bytes, ...] = ()) -> bool:
        signature = b""
        if sdp:  # invite/accept: bind the DTLS fingerprint to our identity
            signature = self._peers.identity.sign(fingerprint_signed_bytes(
                call.call_id, action, sdp_fingerprint(sdp)))
        return await self._signals.send_call(call.contact, action, call.call_id, sdp=sdp,
                                         signature=signature,
                                         video=call.machine.video, commitment=commitment,
                                         nonce=nonce, conference=call.conference,
                                         participants=participants)

    async def _fail(self, call: Call, reason: str) -> None:
        if not call.machine.ended:
            log.warning("call with %s failed: %s", self._name(call.contact), reason)
            call.machine.fail(reason, time.time())
            await self._signal(call, "hangup")
        await self._end(call, reason)

    async def _end(self, call: Call, reason: str) -> None:
        if not call.machine.ended:
            call.machine.fail(reason, time.time())
        self._log_call(call)
        call.notify()
        if await self.media.close(call):
            log.info("call with %s ended: %s", self._name(call.contact),
                     call.machine.reason)
        if call.conference and not self.legs(call.conference):
            self._leave(call.conference)

    def _log_call(self, call: Call) -> None:
        machine = call.machine
        self.store.save(CallRecord(call.call_id, call.contact, machine.direction,
                                   machine.video, machine.started, machine.answered_at,
                                   machine.ended_at, machine.reason))

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = self._tasks.spawn(self._tick_loop())

    async def _tick_loop(self) -> None:
        """Ring and reveal timeouts, while any call rings or waits for a reveal."""
        while any(c.machine.state in ("inviting", "ringing") or c.machine.awaiting_reveal
                  for c in self.calls.values()):
            await asyncio.sleep(TICK)
            for call in list(self.calls.values()):
                if call.machine.tick(time.time()):
                    if call.machine.direction == "outgoing" \
                            or call.machine.answered_at is not None:
                        await self._signal(call, "hangup")
                    await self._end(call, call.machine.reason)

    async def close(self) -> None:
        """Hang up everything (daemon stopping)."""
        for call in list(self.calls.values()):
            if not call.machine.ended:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.hangup(call), 2.0)
