"""Call media: generated tones, sinks, device errors and a real aiortc loopback call."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from dhtchat.app.media import (
    SAMPLE_RATE,
    AudioSink,
    MediaError,
    ToneTrack,
    audio_duration,
    available_codecs,
    dominant_frequency,
    open_audio_input,
    open_video_input,
    parse_media_spec,
)
from dhtchat.core.contacts import sdp_security
from dhtchat.core.sas import compute_sas
from dhtchat.net.webrtc import configuration, restrict_host_addresses

RECORD_SECONDS = 3.0


@pytest.fixture
def loopback_ice() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    try:
        yield
    finally:
        restrict_host_addresses(None)


def write_tone_wav(path: Path, frequency: float, seconds: float, rate: int = 22_050) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * frequency * t) * 12_000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def candidate_addresses(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


def test_tone_track_frames_and_pacing() -> None:
    async def run() -> tuple[list[int], float]:
        track = ToneTrack(1000)
        start = time.monotonic()
        frames = [await track.recv() for _ in range(26)]
        elapsed = time.monotonic() - start
        track.stop()
        for frame in frames:
            assert frame.samples == 960
            assert frame.sample_rate == SAMPLE_RATE
            assert frame.time_base is not None and frame.time_base * SAMPLE_RATE == 1
        return [frame.pts or 0 for frame in frames], elapsed

    pts, elapsed = asyncio.run(run())
    assert pts == [960 * i for i in range(26)]
    # Frame n is due n * 20 ms after the first: paced, not rushed. (No upper bound: how
    # late a loaded machine delivers is speed, not behaviour.)
    assert elapsed >= 0.48


def test_tone_through_a_wav_sink(tmp_path: Path) -> None:
    async def run() -> AudioSink:
        track, sink = ToneTrack(440), AudioSink(str(tmp_path / "tone.wav"))
        await sink.start(track)
        await asyncio.sleep(0.5)
        await sink.stop()
        await sink.stop()  # idempotent
        track.stop()
        return sink

    sink = asyncio.run(run())
    assert sink.first_frame.is_set()
    assert abs(dominant_frequency(tmp_path / "tone.wav") - 440) < 1
    assert audio_duration(tmp_path / "tone.wav") == pytest.approx(sink.duration)
    assert 0.45 <= sink.duration <= 0.6


def test_a_failing_output_is_abandoned_not_fatal(tmp_path: Path) -> None:
    async def run() -> AudioSink:
        track, sink = ToneTrack(440), AudioSink(str(tmp_path / "tone.wav"))

        def broken(frame: object) -> None:
            raise OSError(5, "Input/output error")

        sink._write = broken  # type: ignore[method-assign]  # a device that went away
        await sink.start(track)
        await asyncio.sleep(0.2)
        await sink.stop()
        track.stop()
        return sink

    sink = asyncio.run(run())
    assert sink.error is not None
    assert "Input/output error" in str(sink.error)
    assert sink.frames >= 5  # the track was still drained


def test_file_input_loops_into_an_opus_file(tmp_path: Path) -> None:
    source = tmp_path / "source.wav"
    write_tone_wav(source, 660, 0.3)

    async def run() -> AudioSink:
        track = open_audio_input(str(source), loop=True)
        sink = AudioSink(str(tmp_path / "copy.ogg"))
        await sink.start(track)
        await asyncio.sleep(1.0)  # longer than the file: it must loop
        await sink.stop()
        track.stop()
        return sink

    sink = asyncio.run(run())
    assert sink.duration > 0.6
    assert abs(dominant_frequency(tmp_path / "copy.ogg") - 660) < 5


def test_specs() -> None:
    assert str(parse_media_spec("tone:440")) == "tone:440"
    assert parse_media_spec("alsa:hw:0").target == "hw:0"
    assert parse_media_spec("alsa:hw:0").format == "alsa"
    assert parse_media_spec("pulse:").target == "default"
    assert parse_media_spec("v4l2:/dev/video0").format == "v4l2"
    assert parse_media_spec("./a:b.wav").kind == "file"
    assert parse_media_spec("null").kind == "null"
    assert parse_media_spec("silence").frequency_hz == 0
    for bad in ("", "tone:", "tone:-1", "tone:30000", "tone:nan", "v4l2:"):
        with pytest.raises(MediaError):
            parse_media_spec(bad)


@pytest.mark.parametrize(("opener", "spec", "words"), [
    (open_audio_input, "alsa:dhtchat_no_such_device", "alsa device"),
    (open_audio_input, "pulse:dhtchat_no_such_sink", "pulse"),
    (open_video_input, "v4l2:/dev/dhtchat-no-camera", "No such file"),
    (open_audio_input, "/nonexistent/voice.wav", "no such media file"),
    (open_audio_input, "v4l2:/dev/video0", "camera"),
    (open_audio_input, "null", "output"),
    (open_video_input, "tone:440", "not a video input"),
])
def test_missing_inputs_raise_media_error(opener: object, spec: str, words: str) -> None:
    assert callable(opener)
    with pytest.raises(MediaError, match=words):
        opener(spec)


def test_inputs_without_the_wanted_stream(tmp_path: Path) -> None:
    source = tmp_path / "audio.wav"
    write_tone_wav(source, 440, 0.1)
    with pytest.raises(MediaError, match="no video"):
        open_video_input(str(source))
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(MediaError, match="cannot open"):
        open_audio_input(str(tmp_path / "junk.wav"))
    with pytest.raises(MediaError):
        dominant_frequency(tmp_path / "missing.wav")


@pytest.mark.parametrize("spec", ["alsa:dhtchat_no_such_device", "pulse:default", "tone:440",
                                  "v4l2:/dev/video0", "/nonexistent/dir/out.wav", "out.mp4"])
def test_missing_outputs_raise_media_error(spec: str) -> None:
    with pytest.raises(MediaError):
        AudioSink(spec)


def test_video_test_pattern() -> None:
    async def run() -> tuple[int, int]:
        track = open_video_input("lavfi:testsrc=size=160x120:rate=15")
        try:
            frame = await asyncio.wait_for(track.recv(), 5)
        finally:
            track.stop()
        return frame.width, frame.height  # type: ignore[union-attr]

    assert asyncio.run(run()) == (160, 120)
    assert "audio/opus" in available_codecs()["audio"]
    assert "video/VP8" in available_codecs()["video"]


async def loopback_call(tmp_path: Path) -> tuple[AudioSink, AudioSink, str, str]:
    """Alice sends 440 Hz and Bob 1000 Hz; each records what arrives for RECORD_SECONDS."""
    alice = RTCPeerConnection(configuration(None, None, relay_only=False))
    bob = RTCPeerConnection(configuration(None, None, relay_only=False))
    alice_tone, bob_tone = ToneTrack(440), ToneTrack(1000)
    alice_hears = AudioSink(str(tmp_path / "alice-hears.wav"))
    bob_hears = AudioSink(str(tmp_path / "bob-hears.wav"))
    pending: list[asyncio.Task[None]] = []
    alice.on("track", lambda track: pending.append(
        asyncio.ensure_future(alice_hears.start(track))))
    bob.on("track", lambda track: pending.append(
        asyncio.ensure_future(bob_hears.start(track))))
    try:
        alice.addTrack(alice_tone)
        await alice.setLocalDescription(await alice.createOffer())
        offer = alice.localDescription
        await bob.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
        bob.addTrack(bob_tone)
        await bob.setLocalDescription(await bob.createAnswer())
        answer = bob.localDescription
        await alice.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
        await asyncio.wait_for(asyncio.gather(alice_hears.first_frame.wait(),
                                              bob_hears.first_frame.wait()), 10)
        await asyncio.sleep(RECORD_SECONDS)
    finally:
        await asyncio.gather(*pending, return_exceptions=True)
        await alice_hears.stop()
        await bob_hears.stop()
        alice_tone.stop()
        bob_tone.stop()
        await alice.close()
        await bob.close()
    return alice_hears, bob_hears, offer.sdp, answer.sdp


@pytest.mark.timeout(30)
def test_loopback_call_carries_both_tones(tmp_path: Path, loopback_ice: None) -> None:
    alice_hears, bob_hears, offer, answer = asyncio.run(loopback_call(tmp_path))
    # nothing left the machine: only loopback host candidates were offered
    assert candidate_addresses(offer) == {"127.0.0.1"}
    assert candidate_addresses(answer) == {"127.0.0.1"}
    assert "opus/48000" in offer.lower()
    # both sides derive the same SAS from aiortc's real fingerprints
    alice_id, bob_id = b"A" * 32, b"B" * 32
    alice_fp, bob_fp = sdp_security(offer).fingerprint, sdp_security(answer).fingerprint
    assert alice_fp != bob_fp
    assert compute_sas(local_identity=alice_id, local_fingerprint=alice_fp,
                       remote_identity=bob_id, remote_fingerprint="sha-256 " + bob_fp) == \
        compute_sas(local_identity=bob_id, local_fingerprint=bob_fp,
                    remote_identity=alice_id, remote_fingerprint=alice_fp.lower())

    for sink, path, frequency in ((alice_hears, "alice-hears.wav", 1000),
                                  (bob_hears, "bob-hears.wav", 440)):
        assert abs(dominant_frequency(tmp_path / path) - frequency) <= 10
        duration = audio_duration(tmp_path / path)
        assert duration == pytest.approx(sink.duration, abs=0.05)
        # the first frame arrived, then RECORD_SECONDS of audio (minus jitter at the ends)
        assert duration >= 0.9 * RECORD_SECONDS
        assert duration <= RECORD_SECONDS + 0.5
