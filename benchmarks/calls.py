#!/usr/bin/env python3
"""Calls benchmark: in-process daemons on a loopback DHT place voice calls to each other.

Usage::

    python benchmarks/calls.py                          # defaults: about 2 minutes
    python benchmarks/calls.py --calls 30 --cold 5 --seconds 20 --bursts 40 --json out.json

One process runs ``--daemons`` :class:`dhtchat.app.daemon.Daemon` objects (default 4), each
with its own DHT node on its own loopback /24 (``127.2.N.1``), bootstrapped through the
first; the last two (Alice and Bob) are accepted contacts with ``auto_connect`` on and media
candidates on 127.0.0.1. Nothing leaves loopback. Measured, in this order:

1. **Raw aiortc references** (before any daemon starts): two ``RTCPeerConnection``s in this
   process exchanging SDP directly (no STUN server), sending the same generated tones:
   ``--calls`` setups (create both peers -> first decoded audio frame on each side), one
   burst run (mouth-to-ear, below) and ``--seconds`` of a running audio pair (CPU).
2. **Call setup** (``--calls`` calls, data connection already up): from the start of
   :meth:`CallManager.place` to the first decoded audio frame at the caller (the callee's
   answer audio) and at the callee (the caller's audio). The callee answers automatically.
   Phases (``place()`` returned = invite sent, media connected) are reported too. The first
   call is also reported on its own (codecs and threads start on first use).
3. **Mouth-to-ear** (one call, ``--bursts`` bursts each way): each side sends silence with
   100 ms bursts of a 1 kHz tone every 0.5 s; the sender records the event-loop time at which
   the first frame of a burst was handed to aiortc (the track's ``recv()`` returned it), the
   receiver the time at which the first loud decoded frame came out of aiortc's remote track
   (RMS over a threshold). Latency = receive time - hand-off time. It covers Opus encoding,
   SRTP, the UDP loopback, aiortc's receive jitter buffer (it holds 4 frames = 80 ms before
   releasing one) and decoding. It does **not** include what a real sound card adds:
   capture buffering before the hand-off and playout buffering after the receive.
4. **CPU**: ``--seconds`` with the daemons idle (connected, no call), then ``--seconds`` of an
   active call (tones both ways); process CPU time (user + system, all threads) over wall
   time, in % of one core. Call cost = active - idle, per call end = half of it (both ends
   live in this process).
5. **Cold calls** (``--cold``, default 3): both daemons close their data connection first (and
   stop wanting it), so :meth:`place` has to open it through the DHT rendezvous (offer and
   answer as DHT records, ICE, DTLS, SCTP) before the invite can go out.

Ratios dhtchat / raw are printed for setup (p50), mouth-to-ear (p50) and CPU per call.
``--json OUT`` writes every number, every sample and the machine (CPUs, load average).
The daemons are stopped and the work directory is removed at the end, also on errors, Ctrl-C
and SIGTERM.

The benchmark gives each daemon a :class:`CallManager` subclass that only replaces
``_open_media`` (which track a call sends and which sink receives); signalling, SAS, the
media peer connection and everything else are the daemon's own code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiortc  # noqa: E402
import av  # noqa: E402
import numpy as np  # noqa: E402
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection  # noqa: E402

from dhtchat.app.calls import Call, CallManager, CallMedia, CallStore  # noqa: E402
from dhtchat.app.daemon import Daemon, DaemonOptions  # noqa: E402
from dhtchat.app.media import PTIME, AudioSink, ToneTrack, open_audio_input  # noqa: E402
from dhtchat.app.profile import Profile  # noqa: E402
from dhtchat.core.identity import SigningIdentity  # noqa: E402
from dhtchat.net.webrtc import restrict_host_addresses  # noqa: E402

BURST_SPEC: Final = "bench:bursts"
"""The audio input spec the benchmark's call manager turns into a :class:`BurstTrack`."""
BURST_HZ: Final = 1000.0
BURST_FRAMES: Final = 5  # 100 ms
PERIOD_FRAMES: Final = 25  # a burst every 0.5 s
WARMUP_FRAMES: Final = 50  # 1 s of silence first
LOUD_RMS: Final = 0.05 * 32767  # a decoded s16 frame louder than -26 dBFS is "tone"
STEP_TIMEOUT: Final = 30.0  # any single wait (connection, first frame, hang-up)
FRAMES_PER_S: Final = round(1 / PTIME)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summary(values_s: list[float]) -> dict[str, Any]:
    """p50/p95/min/max/mean in ms of samples in seconds."""
    if not values_s:
        return {"n": 0}
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95),
            "min_ms": min(ms), "max_ms": max(ms), "mean_ms": sum(ms) / len(ms),
            "samples_ms": [round(v, 2) for v in ms]}


async def until(predicate: Callable[[], bool], what: str,
                timeout: float = STEP_TIMEOUT, period: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(period)


# ------------------------------------------------------------------------ tracks and probes


class BurstTrack(ToneTrack):
    """Silence with ``bursts`` bursts of a 1 kHz tone (``BURST_FRAMES`` frames every
    ``PERIOD_FRAMES``, after ``WARMUP_FRAMES``), paced like :class:`ToneTrack`. ``sent`` holds
    the event-loop time at which each burst's first frame was handed to the consumer."""

    def __init__(self, bursts: int) -> None:
        super().__init__(BURST_HZ)
        self.bursts = bursts
        self.sent: list[float] = []
        self._index = 0

    @property
    def frames_needed(self) -> int:
        return WARMUP_FRAMES + self.bursts * PERIOD_FRAMES

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # paced; its samples are the tone
        k = self._index - WARMUP_FRAMES
        self._index += 1
        if 0 <= k < self.bursts * PERIOD_FRAMES and k % PERIOD_FRAMES < BURST_FRAMES:
            if k % PERIOD_FRAMES == 0:
                self.sent.append(asyncio.get_running_loop().time())
            return frame
        silent = av.AudioFrame.from_ndarray(np.zeros((1, frame.samples), dtype=np.int16),
                                            format="s16", layout="mono")
        silent.sample_rate = frame.sample_rate
        silent.pts = frame.pts
        silent.time_base = frame.time_base
        return silent


class ProbeTrack(MediaStreamTrack):
    """Passes a received audio track through and notes when loud stretches start."""

    kind = "audio"

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.inner = inner
        self.onsets: list[float] = []  # event-loop time of each first loud frame
        self.frames = 0
        self._loud = False

    async def recv(self) -> av.AudioFrame:
        frame = await self.inner.recv()
        now = asyncio.get_running_loop().time()
        assert isinstance(frame, av.AudioFrame)
        self.frames += 1
        samples = frame.to_ndarray().astype(np.float64)
        loud = float(np.sqrt(np.mean(samples * samples))) > LOUD_RMS
        if loud and not self._loud:
            self.onsets.append(now)
        self._loud = loud
        return frame

    def stop(self) -> None:
        super().stop()
        self.inner.stop()


class ProbeSink(AudioSink):
    """A ``null`` :class:`AudioSink` whose track goes through a :class:`ProbeTrack`."""

    def __init__(self) -> None:
        super().__init__("null")
        self.probe: ProbeTrack | None = None

    async def start(self, track: MediaStreamTrack) -> None:
        self.probe = ProbeTrack(track)
        await super().start(self.probe)


@dataclass
class Opened:
    """What the benchmark's call manager opened for one call."""

    track: MediaStreamTrack
    sink: ProbeSink


class BenchCallManager(CallManager):
    """The daemon's call manager, with benchmark inputs (tones or :class:`BurstTrack`) and
    :class:`ProbeSink` outputs. Nothing else differs."""

    bursts = 0
    opened: dict[bytes, Opened]

    def __init__(self, daemon: Daemon) -> None:
        assert daemon.history is not None and daemon.messenger is not None
        super().__init__(CallStore(daemon.history), daemon, daemon.messenger, tasks=daemon,
                         names=daemon.name_of, events=daemon.events)
        self.opened = {}

    def _open_media(self, call: Call) -> None:
        spec = call.media.audio_in
        track = BurstTrack(self.bursts) if spec == BURST_SPEC else open_audio_input(spec)
        sink = ProbeSink()
        call.tracks, call.sink = [track], sink
        self.opened[call.call_id] = Opened(track, sink)


def latencies(sent: list[float], onsets: list[float]) -> tuple[list[float], int]:
    """Pair each detected onset with the latest burst handed over before it (within one
    period); returns the latencies and how many onsets matched no burst."""
    out: list[float] = []
    unmatched = 0
    used: set[int] = set()
    for onset in onsets:
        before = [i for i, t in enumerate(sent) if t <= onset]
        if not before or before[-1] in used or onset - sent[before[-1]] > PERIOD_FRAMES * PTIME:
            unmatched += 1
            continue
        used.add(before[-1])
        out.append(onset - sent[before[-1]])
    return out, unmatched


def burst_result(sent: list[float], onsets: list[float]) -> dict[str, Any]:
    values, unmatched = latencies(sent, onsets)
    return {"sent": len(sent), "detected": len(onsets), "matched": len(values),
            "unmatched": unmatched, **summary(values)}


class CpuClock:
    """Process CPU (user + system, all threads) and wall time over an interval."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.cpu = time.process_time()
        self.usage = resource.getrusage(resource.RUSAGE_SELF)

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        cpu = time.process_time() - self.cpu
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"wall_s": wall, "cpu_s": cpu,
                "user_s": usage.ru_utime - self.usage.ru_utime,
                "system_s": usage.ru_stime - self.usage.ru_stime,
                "percent_core": 100.0 * cpu / wall if wall > 0 else 0.0}


# ------------------------------------------------------------------------ raw aiortc


class RawPair:
    """Two aiortc peers in this process, one audio track each way, SDP exchanged directly."""

    def __init__(self, track_a: MediaStreamTrack, track_b: MediaStreamTrack) -> None:
        config = RTCConfiguration(iceServers=[])
        self.pcs = (RTCPeerConnection(config), RTCPeerConnection(config))
        self.tracks = (track_a, track_b)
        self.sinks = (ProbeSink(), ProbeSink())
        self._tasks: set[asyncio.Task[None]] = set()
        for pc, track, sink in zip(self.pcs, self.tracks, self.sinks, strict=True):
            pc.addTrack(track)
            pc.on("track", self._starter(sink))

    def _starter(self, sink: ProbeSink) -> Callable[[MediaStreamTrack], None]:
        def on_track(track: MediaStreamTrack) -> None:
            task = asyncio.ensure_future(sink.start(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return on_track

    async def connect(self) -> None:
        a, b = self.pcs
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        for sink in self.sinks:
            await sink.stop()
        for pc in self.pcs:
            with contextlib.suppress(Exception):
                await pc.close()


async def raw_setup(calls: int) -> dict[str, Any]:
    """Create two peers, exchange SDP, until the first decoded frame on each side."""
    loop = asyncio.get_running_loop()
    first_a: list[float] = []
    first_b: list[float] = []
    for _ in range(calls):
        started = loop.time()
        pair = RawPair(ToneTrack(440.0), ToneTrack(1000.0))
        try:
            await pair.connect()
            sinks = pair.sinks
            await until(lambda: all(s.first_frame_at is not None for s in sinks),  # noqa: B023
                        "raw aiortc first frames")
            a_sink, b_sink = sinks
            assert a_sink.first_frame_at is not None and b_sink.first_frame_at is not None
            first_a.append(a_sink.first_frame_at - started)
            first_b.append(b_sink.first_frame_at - started)
        finally:
            await pair.close()
    return {"offerer": summary(first_a), "answerer": summary(first_b),
            "both": summary(first_a + first_b)}


async def raw_bursts(bursts: int) -> dict[str, Any]:
    pair = RawPair(BurstTrack(bursts), BurstTrack(bursts))
    try:
        await pair.connect()
        a_track, b_track = pair.tracks
        assert isinstance(a_track, BurstTrack) and isinstance(b_track, BurstTrack)
        await until(lambda: len(a_track.sent) >= bursts and len(b_track.sent) >= bursts,
                    "raw bursts", timeout=STEP_TIMEOUT + bursts * PERIOD_FRAMES * PTIME)
        await asyncio.sleep(PERIOD_FRAMES * PTIME)  # the last burst arrives
        a_probe, b_probe = (sink.probe for sink in pair.sinks)
        assert a_probe is not None and b_probe is not None
        a_to_b = burst_result(a_track.sent, b_probe.onsets)
        b_to_a = burst_result(b_track.sent, a_probe.onsets)
    finally:
        await pair.close()
    values = [v / 1000 for v in a_to_b.get("samples_ms", []) + b_to_a.get("samples_ms", [])]
    return {"a_to_b": a_to_b, "b_to_a": b_to_a, "both": summary(values)}


async def raw_cpu(seconds: float) -> dict[str, Any]:
    pair = RawPair(ToneTrack(440.0), ToneTrack(1000.0))
    try:
        await pair.connect()
        await until(lambda: all(s.first_frame_at is not None for s in pair.sinks),
                    "raw aiortc first frames")
        await asyncio.sleep(1.0)  # settle
        frames = [s.frames for s in pair.sinks]
        clock = CpuClock()
        await asyncio.sleep(seconds)
        out: dict[str, Any] = clock.result()
        out["frames_received"] = [s.frames - f for s, f in zip(pair.sinks, frames, strict=True)]
    finally:
        await pair.close()
    return out


# ------------------------------------------------------------------------ daemons


@dataclass
class Network:
    """In-process daemons on a loopback DHT; Alice and Bob are contacts."""

    root: Path
    count: int
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def alice(self) -> Daemon:
        return self.daemons[-2]

    @property
    def bob(self) -> Daemon:
        return self.daemons[-1]

    @staticmethod
    def host(index: int) -> str:
        """``127.2.N.1``: one /24 per daemon (DHT nodes limit contacts and storage per /24),
        outside the 127.0.x.1 range tests.daemons.next_host hands out to tests."""
        return f"127.2.{index + 1}.1"

    async def start(self) -> None:
        for n in range(self.count):
            bootstrap = [self.daemons[0].node.address] if self.daemons and \
                self.daemons[0].node is not None else []
            options = DaemonOptions(port=0, host=self.host(n), bootstrap=bootstrap,
                                    ice_addresses=["127.0.0.1"], auto_connect=True)
            daemon = Daemon(Profile(self.root / f"d{n}"),
                            SigningIdentity.from_seed(bytes([n + 101]) * 32), options)
            self.daemons.append(daemon)  # stopped by stop() even if start fails
            await daemon.start()
            daemon.running.calls = BenchCallManager(daemon)
        await until(lambda: all(d.joined for d in self.daemons), "the DHT joins", 60)
        alice, bob = self.alice, self.bob
        alice.contacts.put(bob.identity.public_key, name="Bob", state="accepted")
        bob.contacts.put(alice.identity.public_key, name="Alice", state="accepted")
        alice.link_contact(bob.identity.public_key)
        bob.link_contact(alice.identity.public_key)

    def connected(self) -> bool:
        a = self.alice.links.get(self.bob.identity.public_key)
        b = self.bob.links.get(self.alice.identity.public_key)
        return a is not None and b is not None and a.status == "connected" \
            and b.status == "connected"

    async def disconnect(self) -> None:
        """Close the Alice-Bob data connection on both sides and stop auto-connecting it."""
        for x, y in ((self.alice, self.bob), (self.bob, self.alice)):
            link = x.links[y.identity.public_key]
            link.wanted = False
            if link.attempt is not None and not link.attempt.done():
                link.attempt.cancel()
            await x.connections.close_connection(link, "benchmark: cold call",
                                                 status="offline")

    async def stop(self) -> None:
        if self.daemons:
            await asyncio.wait_for(
                asyncio.gather(*(d.stop() for d in self.daemons), return_exceptions=True),
                60)


def manager(daemon: Daemon) -> BenchCallManager:
    assert isinstance(daemon.calls, BenchCallManager)
    return daemon.calls


@dataclass
class CallSample:
    """One placed call, as both ends saw it."""

    caller: Call
    callee: Call
    caller_opened: Opened
    callee_opened: Opened
    placed_s: float  # place() returned (the invite was sent)
    media_up_s: float | None  # the caller's media connection up (from wall clock)
    caller_first_s: float  # first decoded frame at the caller (the callee's audio)
    callee_first_s: float  # first decoded frame at the callee


async def place_call(net: Network, audio_in: str, answer_in: str) -> CallSample:
    """Alice calls Bob (who answers automatically) until both have received a frame."""
    alice, bob = manager(net.alice), manager(net.bob)
    bob.auto_answer = CallMedia(answer_in, "null")
    loop = asyncio.get_running_loop()
    started, started_wall = loop.time(), time.time()
    call = await alice.place(net.bob.identity.public_key, CallMedia(audio_in, "null"))
    placed = loop.time() - started
    await until(lambda: call.call_id in bob.calls, "the invite at the callee")
    callee = bob.calls[call.call_id]
    mine = alice.opened[call.call_id]
    await until(lambda: call.call_id in bob.opened or callee.machine.ended, "the answer")
    if call.call_id not in bob.opened:
        raise RuntimeError(f"the callee did not answer: {callee.machine.reason}")
    theirs = bob.opened[call.call_id]

    def both_heard() -> bool:
        if call.machine.ended or callee.machine.ended:
            raise RuntimeError(f"the call ended: {call.machine.reason or callee.machine.reason}")
        return mine.sink.first_frame_at is not None and theirs.sink.first_frame_at is not None

    await until(both_heard, "the first audio frames")
    assert mine.sink.first_frame_at is not None and theirs.sink.first_frame_at is not None
    return CallSample(call, callee, mine, theirs, placed,
                      call.media_up_at - started_wall if call.media_up_at else None,
                      mine.sink.first_frame_at - started, theirs.sink.first_frame_at - started)


async def hang_up(net: Network, sample: CallSample) -> None:
    await manager(net.alice).hangup(sample.caller)
    await until(lambda: sample.callee.machine.ended, "the hang-up at the callee")
    await until(lambda: manager(net.bob).current is None and manager(net.alice).current is None,
                "both managers idle")


def setup_result(samples: list[CallSample]) -> dict[str, Any]:
    return {"caller_first_frame": summary([s.caller_first_s for s in samples]),
            "callee_first_frame": summary([s.callee_first_s for s in samples]),
            "invite_sent": summary([s.placed_s for s in samples]),
            "media_connected": summary([s.media_up_s for s in samples
                                        if s.media_up_s is not None])}


async def bench_setup(net: Network, calls: int) -> dict[str, Any]:
    samples: list[CallSample] = []
    for i in range(calls):
        sample = await place_call(net, "tone:440", "tone:1000")
        samples.append(sample)
        log(f"  call {i + 1}/{calls}: caller hears after {sample.caller_first_s * 1000:.0f} ms,"
            f" callee after {sample.callee_first_s * 1000:.0f} ms")
        await hang_up(net, sample)
        await asyncio.sleep(0.2)
    out: dict[str, Any] = {"calls": calls, "all": setup_result(samples),
                           "first": setup_result(samples[:1])}
    if len(samples) > 1:
        out["after_first"] = setup_result(samples[1:])
    return out


async def bench_cold(net: Network, calls: int) -> dict[str, Any]:
    samples: list[CallSample] = []
    connect_ms: list[float | None] = []
    link = net.alice.links[net.bob.identity.public_key]
    for i in range(calls):
        await net.disconnect()
        await asyncio.sleep(0.5)
        if net.connected():
            raise RuntimeError("the data connection is still up after closing it")
        link.connect_ms = None  # set again by the connection place() opens
        sample = await place_call(net, "tone:440", "tone:1000")
        samples.append(sample)
        connect_ms.append(link.connect_ms)  # the data connection place() opened
        log(f"  cold call {i + 1}/{calls}: caller hears after "
            f"{sample.caller_first_s * 1000:.0f} ms (data connection {link.connect_ms} ms)")
        await hang_up(net, sample)
    for daemon, other in ((net.alice, net.bob), (net.bob, net.alice)):
        daemon.links[other.identity.public_key].wanted = True  # as auto_connect had it
    return {"calls": calls, "data_connection_ms": connect_ms, **setup_result(samples)}


async def bench_bursts(net: Network, bursts: int) -> dict[str, Any]:
    for daemon in (net.alice, net.bob):
        manager(daemon).bursts = bursts
    sample = await place_call(net, BURST_SPEC, BURST_SPEC)
    mine, theirs = sample.caller_opened.track, sample.callee_opened.track
    assert isinstance(mine, BurstTrack) and isinstance(theirs, BurstTrack)
    try:
        await until(lambda: len(mine.sent) >= bursts and len(theirs.sent) >= bursts,
                    "the bursts", timeout=STEP_TIMEOUT + bursts * PERIOD_FRAMES * PTIME)
        await asyncio.sleep(PERIOD_FRAMES * PTIME)  # the last burst arrives
    finally:
        await hang_up(net, sample)
    caller_probe = sample.caller_opened.sink.probe
    callee_probe = sample.callee_opened.sink.probe
    assert caller_probe is not None and callee_probe is not None
    to_callee = burst_result(mine.sent, callee_probe.onsets)
    to_caller = burst_result(theirs.sent, caller_probe.onsets)
    values = [v / 1000 for v in to_callee.get("samples_ms", []) + to_caller.get("samples_ms", [])]
    return {"caller_to_callee": to_callee, "callee_to_caller": to_caller,
            "both": summary(values)}


async def bench_cpu(net: Network, seconds: float) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    clock = CpuClock()
    await asyncio.sleep(seconds)
    idle = clock.result()
    sample = await place_call(net, "tone:440", "tone:1000")
    try:
        await asyncio.sleep(1.0)  # settle
        sinks = (sample.caller_opened.sink, sample.callee_opened.sink)
        frames = [s.frames for s in sinks]
        clock = CpuClock()
        await asyncio.sleep(seconds)
        active: dict[str, Any] = clock.result()
        active["frames_received"] = [s.frames - f for s, f in zip(sinks, frames, strict=True)]
        stats = await manager(net.alice).stats(sample.caller)
    finally:
        await hang_up(net, sample)
    call_percent = active["percent_core"] - idle["percent_core"]
    return {"idle": idle, "active": active, "stats": stats,
            "call_percent_core": call_percent, "per_end_percent_core": call_percent / 2}


# ------------------------------------------------------------------------ report


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def ms(result: dict[str, Any] | None) -> str:
    if not result or not result.get("n"):
        return "-"
    return (f"{result['p50_ms']:.0f} / {result['p95_ms']:.0f} / {result['min_ms']:.0f} / "
            f"{result['max_ms']:.0f}")


def report(results: dict[str, Any]) -> None:
    raw = results.get("raw", {})
    setup = results.get("setup", {})
    rows: list[tuple[str, str, str]] = []
    raw_both = (raw.get("setup") or {}).get("both")
    if setup:
        every = setup["all"]
        rows.append((f"setup, dial -> caller's first frame ({setup['calls']} calls)",
                     ms(every["caller_first_frame"]),
                     ratio(every["caller_first_frame"].get("p50_ms"),
                           (raw_both or {}).get("p50_ms"))))
        rows.append(("setup, dial -> callee's first frame", ms(every["callee_first_frame"]),
                     ratio(every["callee_first_frame"].get("p50_ms"),
                           (raw_both or {}).get("p50_ms"))))
        rows.append(("  phase: place() returned (invite sent)", ms(every["invite_sent"]), ""))
        rows.append(("  phase: caller's media connected", ms(every["media_connected"]), ""))
        rows.append(("  first call only (caller / callee)",
                     f"{setup['first']['caller_first_frame']['p50_ms']:.0f} / "
                     f"{setup['first']['callee_first_frame']['p50_ms']:.0f}", ""))
        if "after_first" in setup:
            rows.append(("  calls 2.. (caller's first frame)",
                         ms(setup["after_first"]["caller_first_frame"]), ""))
    cold = results.get("cold")
    if cold:
        rows.append((f"cold setup, no data connection ({cold['calls']} calls): caller",
                     ms(cold["caller_first_frame"]),
                     ratio(cold["caller_first_frame"].get("p50_ms"),
                           (raw_both or {}).get("p50_ms"))))
        rows.append(("cold setup: callee", ms(cold["callee_first_frame"]), ""))
        rows.append(("  phase: place() returned (connection + invite)",
                     ms(cold["invite_sent"]), ""))
        opened = [v for v in cold["data_connection_ms"] if v is not None]
        if opened:
            rows.append(("  of which: data connection opened (DHT rendezvous)",
                         ms(summary([v / 1000 for v in opened])), ""))
    if raw_both:
        rows.append((f"raw aiortc setup, peers created -> first frame "
                     f"({raw['setup']['offerer']['n']} pairs, both sides)", ms(raw_both), ""))
    m2e = results.get("mouth_to_ear")
    raw_m2e = (raw.get("bursts") or {}).get("both")
    if m2e:
        both = m2e["both"]
        rows.append((f"mouth-to-ear estimate, both directions ({both.get('n', 0)} bursts)",
                     ms(both), ratio(both.get("p50_ms"), (raw_m2e or {}).get("p50_ms"))))
    if raw_m2e:
        rows.append(("raw aiortc mouth-to-ear estimate", ms(raw_m2e), ""))
    cpu = results.get("cpu")
    raw_cpu_result = raw.get("cpu")
    if cpu:
        idle, active = cpu["idle"], cpu["active"]
        raw_per_end = raw_cpu_result["percent_core"] / 2 if raw_cpu_result else None
        rows.append((f"CPU, {len(results['daemons'])} daemons idle (connected, no call)",
                     f"{idle['percent_core']:.2f} %", ""))
        rows.append(("CPU, same daemons with one active call", f"{active['percent_core']:.2f} %",
                     ""))
        rows.append(("CPU per call, both ends (active - idle)",
                     f"{cpu['call_percent_core']:.2f} %",
                     ratio(cpu["call_percent_core"],
                           raw_cpu_result["percent_core"] if raw_cpu_result else None)))
        rows.append(("CPU per call end", f"{cpu['per_end_percent_core']:.2f} %",
                     ratio(cpu["per_end_percent_core"], raw_per_end)))
    if raw_cpu_result:
        rows.append(("raw aiortc audio pair, both ends / per end",
                     f"{raw_cpu_result['percent_core']:.2f} / "
                     f"{raw_cpu_result['percent_core'] / 2:.2f} %", ""))
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'metric (ms: p50 / p95 / min / max; CPU: % of one core)':<{width}}  "
          f"{'value':>22}  dhtchat / raw")
    print("-" * (width + 40))
    for name, value, rat in rows:
        print(f"{name:<{width}}  {value:>22}  {rat}")
    if m2e:
        for key in ("caller_to_callee", "callee_to_caller"):
            part = m2e[key]
            print(f"bursts {key.replace('_', ' ')}: sent {part['sent']}, detected "
                  f"{part['detected']}, matched {part['matched']}, p50 "
                  f"{part.get('p50_ms', float('nan')):.0f} ms")
    if cpu:
        print(f"frames received during the CPU window (caller, callee): "
              f"{cpu['active']['frames_received']} (expected ~{FRAMES_PER_S}/s each)")
    print("raw = two aiortc RTCPeerConnections in this process, SDP exchanged directly, same "
          "generated tones, no STUN server")
    print("mouth-to-ear = hand-off of a burst's first frame to aiortc -> first loud decoded "
          "frame out of aiortc (Opus, SRTP, loopback UDP, aiortc's 4-frame receive jitter "
          "buffer, decoding). It EXCLUDES what real devices add: capture buffering before the "
          "hand-off and playout/jitter buffering of the sound card after the receive "
          "(at least one device period each way, plus the sound server's buffer; both depend "
          "on the device and its configuration): add them, or measure with a loopback cable, "
          "for a device-to-device figure.")


async def run(options: argparse.Namespace, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "aiortc": aiortc.__version__,
                    "pyav": av.__version__, "loadavg_start": os.getloadavg()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    raw: dict[str, Any] = {}
    results["raw"] = raw
    restrict_host_addresses(["127.0.0.1"])
    try:
        log(f"raw aiortc: {options.calls} setups, {options.bursts} bursts, "
            f"{options.seconds:g} s of audio")
        raw["setup"] = await raw_setup(options.calls)
        if options.bursts:
            raw["bursts"] = await raw_bursts(options.bursts)
        if options.seconds:
            raw["cpu"] = await raw_cpu(options.seconds)
    finally:
        restrict_host_addresses(None)
    net = Network(root, options.daemons)
    results["daemons"] = [Network.host(n) for n in range(options.daemons)]
    try:
        log(f"starting {options.daemons} daemons on {', '.join(results['daemons'])}")
        await net.start()
        await until(net.connected, "the data connection (auto-connect)", 60)
        log(f"setup: {options.calls} calls (data connection up)")
        results["setup"] = await bench_setup(net, options.calls)
        if options.bursts:
            log(f"mouth-to-ear: {options.bursts} bursts each way")
            results["mouth_to_ear"] = await bench_bursts(net, options.bursts)
        if options.seconds:
            log(f"CPU: {options.seconds:g} s idle, {options.seconds:g} s in a call")
            results["cpu"] = await bench_cpu(net, options.seconds)
        if options.cold:
            log(f"cold setup: {options.cold} calls without a data connection")
            results["cold"] = await bench_cold(net, options.cold)
    finally:
        log("stopping the daemons")
        await net.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results


async def run_cancellable(options: argparse.Namespace, root: Path) -> dict[str, Any]:
    """:func:`run`, cancelled (so cleanup runs) on SIGTERM as asyncio.run does on Ctrl-C."""
    task = asyncio.ensure_future(run(options, root))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def bounded(low: float, high: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
        def parse(text: str) -> Any:
            value = kind(text)
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"must be in {low:g}..{high:g}")
            return value
        return parse

    parser.add_argument("--calls", type=bounded(1, 1000, int), default=10,
                        help="calls (and raw aiortc setups) for the setup time (default 10)")
    parser.add_argument("--cold", type=bounded(0, 100, int), default=3,
                        help="calls placed with the data connection closed first (default 3)")
    parser.add_argument("--seconds", type=bounded(0, 600, float), default=10.0,
                        help="seconds of each CPU measurement: idle, in a call, raw aiortc "
                             "(default 10; 0 skips)")
    parser.add_argument("--bursts", type=bounded(0, 1000, int), default=20,
                        help="tone bursts each way for mouth-to-ear, one per 0.5 s "
                             "(default 20; 0 skips)")
    parser.add_argument("--daemons", type=bounded(2, 16, int), default=4,
                        help="in-process daemons on the loopback DHT, two of them call "
                             "(default 4)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # "incoming voice call ... (answer with: dhtchat answer)" at every call; failures raise
    logging.getLogger("dhtchat.calls").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="dhtchat-bench-calls-"))
    log(f"work directory {root} (removed at the end)")
    started = time.monotonic()
    try:
        results = asyncio.run(run_cancellable(options, root))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; daemons stopped")
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["wall_s"] = time.monotonic() - started
    report(results)
    load = results["machine"]
    print(f"total wall time {results['wall_s']:.0f} s on {os.cpu_count()} CPUs; load average "
          f"{load['loadavg_start'][0]:.2f} at the start, {load['loadavg_end'][0]:.2f} at the end")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
