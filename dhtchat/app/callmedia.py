"""The media side of a call: its state, inputs and outputs, the aiortc connection, stats.

Theory of operation (the signalling that drives it is :mod:`dhtchat.app.calls`): a
:class:`Call` is one call as this daemon sees it, its protocol state in a
:class:`dhtchat.core.calls.CallMachine`. :class:`CallMediaEngine` opens a call's inputs before
any ringing (a missing device fails at once), builds the RTCPeerConnection with our stored
DTLS certificate for that contact (so its fingerprint is stable), swaps the sent tracks for
mute, camera off and hold (silence rather than no track, so RTP keeps flowing), reads the
media statistics, and closes everything when the call ends. A group call is a mesh of 1:1
legs: one microphone per conference, relayed to every leg.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dhtchat.app.events import EventLog
from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.media import (
    AudioSink,
    MediaError,
    ToneTrack,
    open_audio_input,
    open_video_input,
    parse_media_spec,
)
from dhtchat.app.services import Spawner
from dhtchat.core.calls import CallMachine
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.identity import encode_user_id
from dhtchat.core.sas import Sas
from dhtchat.store.calls import CallStore

_FINGERPRINT: Final = re.compile(r"^a=fingerprint:sha-256 ([0-9A-Fa-f:]+)\s*$", re.MULTILINE)


def sdp_fingerprint(sdp: str) -> str:
    """The SHA-256 DTLS fingerprint an SDP announces (RemoteProtocolError if none)."""
    match = _FINGERPRINT.search(sdp)
    if match is None:
        raise RemoteProtocolError("the media description has no sha-256 DTLS fingerprint")
    return match.group(1)


def _is_file(spec: str) -> bool:
    """A file input (looped in a call); devices and generated sources are not seekable."""
    return parse_media_spec(spec).kind == "file"


def _leg_output(spec: str, peer: bytes) -> str:
    """The output of one leg of a group call: a recording file gets the peer's id in its
    name (``heard.wav`` -> ``heard-ID12.wav``); devices and ``null`` are shared."""
    if spec == "null" or spec.partition(":")[0] in ("tone", "pulse", "alsa", "v4l2", "lavfi"):
        return spec
    stem, dot, suffix = spec.rpartition(".")
    tag = encode_user_id(peer)[:12]
    return f"{stem}-{tag}.{suffix}" if dot else f"{spec}-{tag}"


@dataclass
class CallMedia:
    """What a call sends and where received audio goes (specs as in dhtchat.app.media)."""

    audio_in: str = "silence"
    audio_out: str = "null"
    video_in: str | None = None


@dataclass(eq=False)
class Call:
    """One call as this daemon sees it."""

    machine: CallMachine
    contact: bytes
    media: CallMedia = field(default_factory=CallMedia)
    pc: RTCPeerConnection | None = None
    sink: AudioSink | None = None
    video_task: asyncio.Task[None] | None = None  # consumes received video
    video_frames: int = 0  # received video frames
    senders: dict[str, RTCRtpSender] = field(default_factory=dict)  # by kind
    muted: bool = False
    camera_off: bool = False
    held: bool = False  # we put the call on hold
    remote_held: bool = False  # the contact put it on hold
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    remote_sdp: str = ""
    sas: Sas | None = None
    remote_fingerprint: str = ""
    media_up_at: float | None = None
    path: str = ""  # "direct" or "relay" once the media connection is up
    warning: str = ""  # e.g. the contact's call key changed since it was verified
    answering: bool = False  # answer() has started (it awaits before the state changes)
    conference: bytes = b""  # a group call: the legs of one mesh share this id
    participants: tuple[bytes, ...] = ()  # a group call: its initiator, then the others
    events: EventLog | None = None  # where its changes are reported (events.subscribe)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_stats: tuple[float, int, int] | None = None  # (time, bytes sent, packets received)

    @property
    def call_id(self) -> bytes:
        """The call's id."""
        return self.machine.call_id

    def notify(self) -> None:
        """Wake whoever waits for a change of this call (and tell event subscribers)."""
        self.changed.set()
        if self.events is not None:
            self.events.emit("call.state", id=self.call_id.hex(),
                             contact=encode_user_id(self.contact), state=self.machine.state,
                             reason=self.machine.reason,
                             sas=self.sas.text if self.sas is not None else None)
        self.changed = asyncio.Event()


class CallMediaEngine:
    """Inputs, outputs and peer connections of one daemon's calls."""

    def __init__(self, store: CallStore, tasks: Spawner) -> None:
        self._store = store
        self._tasks = tasks
        # One shared input per group call (every leg gets its own subscription of it).
        self._inputs: dict[bytes, tuple[MediaRelay, list[MediaStreamTrack]]] = {}

    def open(self, call: Call) -> None:
        """Open inputs and the output now, so a missing device fails before any ringing."""
        tracks: list[MediaStreamTrack] = []
        try:
            if call.conference:
                tracks.append(self._conference_input(call.conference, call.media))
                call.sink = AudioSink(_leg_output(call.media.audio_out, call.contact))
                call.tracks = tracks
                return
            tracks.append(open_audio_input(call.media.audio_in,
                                           loop=_is_file(call.media.audio_in)))
            if call.machine.video and call.media.video_in:
                tracks.append(open_video_input(call.media.video_in,
                                               loop=_is_file(call.media.video_in)))
            call.sink = AudioSink(call.media.audio_out)
        except MediaError:
            for track in tracks:
                track.stop()
            raise
        call.tracks = tracks

    def _conference_input(self, conference: bytes, media: CallMedia) -> MediaStreamTrack:
        """Our microphone for one more leg of a group call: one source, one subscription
        per leg (a device can be opened only once)."""
        if conference not in self._inputs:
            self._inputs[conference] = (MediaRelay(), [open_audio_input(
                media.audio_in, loop=_is_file(media.audio_in))])
        relay, sources = self._inputs[conference]
        return relay.subscribe(sources[0], buffered=False)

    def release(self, conference: bytes) -> None:
        """Close the shared input of a group call we left."""
        relay_tracks = self._inputs.pop(conference, None)
        if relay_tracks is not None:
            for track in relay_tracks[1]:
                track.stop()

    def certificate(self, contact: bytes) -> RTCCertificate:
        """Our DTLS certificate for calls with this contact: kept (in the encrypted history),
        so its fingerprint is stable and a contact who verified us notices a change; one per
        contact, so a network observer cannot link our calls with different people."""
        stored = self._store.certificate(contact)
        if stored is not None:
            key = serialization.load_pem_private_key(stored[0], password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return RTCCertificate(key=key, cert=x509.load_pem_x509_certificate(stored[1]))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = generate_certificate(key)  # aiortc's: a self-signed P-256 certificate
        self._store.save_certificate(
            contact,
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))
        return RTCCertificate(key=key, cert=cert)

    def peer_connection(self, call: Call, config: RTCConfiguration,
                        on_lost: Callable[[Call, str], Awaitable[None]]) -> RTCPeerConnection:
        """The call's media connection with its tracks; ``on_lost`` runs when it fails or
        closes while the call is active."""
        pc = RTCPeerConnection(config)
        # aiortc has no API for it: replace the fresh certificate it made (before any
        # transport is created, so every DTLS transport of this call uses ours).
        setattr(pc, "_RTCPeerConnection__certificates",  # noqa: B010 - a name-mangled private
                [self.certificate(call.contact)])
        call.pc = pc
        for track in call.tracks:
            call.senders[track.kind] = pc.addTrack(track)
        if call.machine.video and not any(t.kind == "video" for t in call.tracks):
            pc.addTransceiver("video", direction="recvonly")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and call.sink is not None:
                self._tasks.spawn(call.sink.start(track))
            elif track.kind == "video":
                call.video_task = self._tasks.spawn(self._consume_video(call, track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and call.machine.state == "active":
                await on_lost(call, f"media connection {pc.connectionState}")

        return pc

    async def _consume_video(self, call: Call, track: MediaStreamTrack) -> None:
        """Receive the contact's video (counted; this build does not display it)."""
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            call.video_frames += 1

    async def close(self, call: Call) -> bool:
        """Stop the call's inputs and output and close its connection; whether anything
        was open."""
        pc, call.pc = call.pc, None
        tracks, call.tracks = call.tracks, []
        for track in tracks:
            track.stop()
        if call.sink is not None:
            await call.sink.stop()
        if call.video_task is not None:
            call.video_task.cancel()
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()
        return pc is not None or bool(tracks)

    # ------------------------------------------------------------------ in-call controls

    @staticmethod
    def require(call: Call) -> None:
        """LocalProtocolError unless the call has media (connecting or active)."""
        if call.machine.state not in ("connecting", "active") or call.pc is None:
            raise LocalProtocolError(f"the call is {call.machine.state}")

    @staticmethod
    def apply_audio(call: Call) -> None:
        """Send the microphone, or silence while muted or held."""
        sender = call.senders.get("audio")
        source = next((t for t in call.tracks if t.kind == "audio"), None)
        if sender is None or source is None:
            return
        silent = call.muted or call.held
        # Silence, not no track: RTP keeps flowing (NAT bindings, consent, the peer's stats).
        sender.replaceTrack(ToneTrack(0.0) if silent else source)

    @staticmethod
    def apply_video(call: Call) -> None:
        """Send the camera, or nothing while it is off or the call is held."""
        sender = call.senders.get("video")
        source = next((t for t in call.tracks if t.kind == "video"), None)
        if sender is None or source is None:
            return
        sender.replaceTrack(None if call.camera_off or call.held else source)

    @staticmethod
    async def stats(call: Call) -> JsonObject:
        """RTT, jitter, loss and bitrates of the call's media (empty before media)."""
        pc = call.pc
        if pc is None or call.media_up_at is None:
            return {}
        report = await pc.getStats()
        rtt_ms: float | None = None
        jitter_ms: float | None = None
        packets_lost = packets_received = bytes_sent = 0
        for item in report.values():
            kind = getattr(item, "type", "")
            if kind == "inbound-rtp" and getattr(item, "kind", "") == "audio":
                packets_received += item.packetsReceived
                packets_lost += max(0, item.packetsLost)
                jitter_ms = round(item.jitter / 48.0, 2)  # RTP units at 48 kHz
            elif kind == "remote-inbound-rtp" and item.roundTripTime is not None:
                rtt_ms = round(item.roundTripTime * 1000, 1)
            elif kind == "outbound-rtp":
                bytes_sent += item.bytesSent
        total = packets_received + packets_lost
        out: JsonObject = {
            "rtt_ms": rtt_ms, "jitter_ms": jitter_ms, "packets_lost": packets_lost,
            "packets_received": packets_received, "bytes_sent": bytes_sent,
            "loss_percent": round(100.0 * packets_lost / total, 2) if total else 0.0}
        now = time.monotonic()
        if call.last_stats is not None:
            then, sent, received = call.last_stats
            span = max(now - then, 1e-3)
            out["send_kbps"] = round((bytes_sent - sent) * 8 / span / 1000, 1)
            out["receive_packets_per_s"] = round((packets_received - received) / span, 1)
        call.last_stats = (now, bytes_sent, packets_received)
        out["duration_s"] = round(time.time() - call.media_up_at, 1)
        return out
