"""Audio and video plumbing for calls, on aiortc and PyAV (FFmpeg).

Inputs and outputs are named by a *spec* string, as on the command line
(``--audio-in``/``--audio-out``):

============================  ===============================================================
``tone:440``                  a generated 440 Hz sine (:class:`ToneTrack`), for headless use
``silence``                   a generated silent track
``pulse:NAME`` ``alsa:hw:0``  an FFmpeg input/output device (``pulse:`` alone = the default)
``v4l2:/dev/video0``          a camera (video input only)
``lavfi:testsrc``             an FFmpeg filter graph as a source (e.g. a video test pattern)
``null``                      output only: receive and discard
anything else                 a file path (WAV, OGG/Opus, FLAC, MP3 ... for input; WAV, OGG,
                              Opus or FLAC for output)
============================  ===============================================================

Opening a missing device, a format this FFmpeg build lacks or an unreadable file raises
:class:`MediaError` with a one-line reason (no traceback needed). A generated or file input
is an aiortc :class:`~aiortc.MediaStreamTrack`: hand it to ``RTCPeerConnection.addTrack`` and
``stop()`` it when the call ends (which also closes a device). A received track goes into an
:class:`AudioSink`. :func:`dominant_frequency` and :func:`audio_duration` check recordings in
tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final, Literal

import av
import av.container
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from dhtchat.core.errors import DhtChatError, ErrorCode

if TYPE_CHECKING:  # numpy loads when audio is generated or analysed, not with the daemon
    import numpy as np
    import numpy.typing as npt

SAMPLE_RATE: Final = 48_000
"""Opus runs at 48 kHz; generated audio and recordings use it too."""
PTIME: Final = 0.020
"""20 ms audio frames, as aiortc packetizes them."""
TONE_AMPLITUDE: Final = 0.3

DEVICE_FORMATS: Final[Mapping[str, str]] = {
    "pulse": "pulse", "alsa": "alsa", "v4l2": "v4l2", "lavfi": "lavfi",
}
"""Spec prefix -> FFmpeg device/format name."""
_DEFAULT_DEVICE: Final[Mapping[str, str]] = {"pulse": "default", "alsa": "default"}
_OUTPUT_CODECS: Final[Mapping[str, tuple[str, str]]] = {
    # file suffix -> (FFmpeg muxer, encoder)
    ".wav": ("wav", "pcm_s16le"),
    ".flac": ("flac", "flac"),
    ".ogg": ("ogg", "libopus"),
    ".opus": ("opus", "libopus"),
}
_DEVICE_OUTPUTS: Final = ("pulse", "alsa")
_ALSA_SYSTEM_CONFIG: Final = Path("/usr/share/alsa")


class MediaError(DhtChatError):
    """A media input or output cannot be opened or used (missing device, format or file)."""

    code: ClassVar[ErrorCode] = ErrorCode.INVALID_PARAMS


# ------------------------------------------------------------------------------------- specs


SpecKind = Literal["tone", "device", "file", "null"]


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """A parsed input/output spec."""

    kind: SpecKind
    target: str  # the device name, file path or filter graph ("" for null)
    format: str | None = None  # the FFmpeg device format for kind == "device"
    frequency_hz: float = 0.0  # for kind == "tone"

    def __str__(self) -> str:
        if self.kind == "tone":
            return f"tone:{self.frequency_hz:g}"
        if self.kind == "device":
            return f"{self.format}:{self.target}"
        return self.target or "null"


def parse_media_spec(spec: str) -> MediaSpec:
    """Parse ``tone:440``, ``silence``, ``null``, ``pulse:NAME``, ``alsa:hw:0``,
    ``v4l2:/dev/video0``, ``lavfi:GRAPH`` or a file path."""
    text = spec.strip()
    if not text:
        raise MediaError("empty media spec")
    if text == "null":
        return MediaSpec("null", "")
    if text == "silence":
        return MediaSpec("tone", "", frequency_hz=0.0)
    prefix, colon, rest = text.partition(":")
    if colon and prefix == "tone":
        try:
            frequency = float(rest)
        except ValueError:
            frequency = math.nan
        if not 0 <= frequency < SAMPLE_RATE / 2:
            raise MediaError(f"tone frequency must be 0 to {SAMPLE_RATE // 2} Hz, got {rest!r}")
        return MediaSpec("tone", "", frequency_hz=frequency)
    if colon and prefix in DEVICE_FORMATS:
        target = rest or _DEFAULT_DEVICE.get(prefix, "")
        if not target:
            raise MediaError(f"{prefix}: needs a device name, e.g. {prefix}:/dev/video0")
        return MediaSpec("device", target, format=DEVICE_FORMATS[prefix])
    return MediaSpec("file", text)


def has_ffmpeg_format(name: str) -> bool:
    """Whether this PyAV/FFmpeg build has the (de)muxer or device ``name``."""
    return any(name in entry.split(",") for entry in av.formats_available)


def available_codecs() -> dict[str, list[str]]:
    """The RTP codecs aiortc can negotiate here, by kind (e.g. ``video/VP8``, ``video/H264``)."""
    return {kind: sorted({codec.mimeType for codec in RTCRtpSender.getCapabilities(kind).codecs
                          if codec.mimeType.split("/")[1] not in ("rtx",)})
            for kind in ("audio", "video")}


def _require_format(fmt: str) -> None:
    if not has_ffmpeg_format(fmt):
        devices = sorted(f for f in DEVICE_FORMATS.values() if has_ffmpeg_format(f))
        hint = " (for PulseAudio/PipeWire try alsa:pulse or alsa:default)" if fmt == "pulse" \
            else ""
        raise MediaError(f"this FFmpeg build (PyAV {av.__version__}) has no {fmt!r} device; "
                         f"available: {', '.join(devices) or 'none'}{hint}")
    if fmt == "alsa" and "ALSA_CONFIG_DIR" not in os.environ and \
            "ALSA_CONFIG_PATH" not in os.environ and _ALSA_SYSTEM_CONFIG.is_dir():
        # PyAV's wheels bundle an alsa-lib that looks for its configuration under its build
        # prefix, so no PCM name (not even "default") resolves without this.
        os.environ["ALSA_CONFIG_DIR"] = str(_ALSA_SYSTEM_CONFIG)


def _reason(exc: BaseException, fmt: str | None = None) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
        str(exc) or type(exc).__name__
    if fmt == "alsa":
        reason += " (is there such an ALSA device? `aplay -L` and `arecord -L` list them)"
    return reason


# ------------------------------------------------------------------------------------ inputs


class ToneTrack(MediaStreamTrack):
    """A sine tone as a live mono audio track, paced in real time in 20 ms frames.

    Frame ``pts`` counts samples (``time_base = 1/sample_rate``) and frame ``n`` is released
    ``n * 20 ms`` after the first, so a slow consumer catches up instead of drifting. The
    phase is continuous across frames. ``frequency_hz = 0`` gives silence.
    """

    kind = "audio"

    def __init__(self, frequency_hz: float, sample_rate: int = SAMPLE_RATE,
                 amplitude: float = TONE_AMPLITUDE) -> None:
        super().__init__()
        if not 0 <= frequency_hz < sample_rate / 2:
            raise MediaError(f"tone frequency must be below {sample_rate / 2:g} Hz")
        if sample_rate % 50:
            raise MediaError("the sample rate must be a multiple of 50 Hz (20 ms frames)")
        self.frequency_hz = frequency_hz
        self.sample_rate = sample_rate
        self._amplitude = int(max(0.0, min(1.0, amplitude)) * 32767)
        self._samples_per_frame = int(sample_rate * PTIME)
        self._time_base = fractions.Fraction(1, sample_rate)
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, no earlier than its due time."""
        import numpy as np  # noqa: PLC0415 - see the imports above
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            delay = self._start + self._pts / self.sample_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        index = np.arange(self._pts, self._pts + self._samples_per_frame, dtype=np.float64)
        # the phase modulo one period keeps float precision over hours
        cycles = np.mod(index * self.frequency_hz, self.sample_rate) / self.sample_rate
        samples = np.round(np.sin(2 * np.pi * cycles) * self._amplitude).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += self._samples_per_frame
        return frame


def _open_player(spec: MediaSpec, *, loop: bool = False,
                 options: Mapping[str, str] | None = None) -> MediaPlayer:
    if spec.kind == "device":
        assert spec.format is not None
        _require_format(spec.format)
        what = f"{spec.format} device {spec.target!r}"
    else:
        path = Path(spec.target)
        if not path.is_file():
            raise MediaError(f"no such media file: {spec.target}")
        what = f"media file {spec.target!r}"
    try:
        return MediaPlayer(spec.target, format=spec.format, options=dict(options or {}),
                           loop=loop)
    except AssertionError as exc:  # aiortc asserts that a looped input is seekable
        raise MediaError(f"cannot loop {what}: it is not seekable") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot open {what}: {_reason(exc, spec.format)}") from exc


def _close_player(player: MediaPlayer) -> None:
    for track in (player.audio, player.video):
        if track is not None:
            track.stop()


def open_audio_input(spec: str, *, loop: bool = False,
                     options: Mapping[str, str] | None = None) -> MediaStreamTrack:
    """An audio track to send: a tone, a device or a file (``loop`` repeats a file).

    ``options`` go to FFmpeg (e.g. ``{"sample_rate": "48000"}`` for a device). ``stop()`` the
    track to release the device. Raises :class:`MediaError`.
    """
    parsed = parse_media_spec(spec)
    if parsed.kind == "tone":
        return ToneTrack(parsed.frequency_hz)
    if parsed.kind == "null":
        raise MediaError("null is an output; for a silent input use 'silence'")
    if parsed.format == "v4l2":
        raise MediaError(f"{spec} is a camera, not an audio input")
    player = _open_player(parsed, loop=loop, options=options)
    if player.audio is None:
        _close_player(player)
        raise MediaError(f"{spec} has no audio stream")
    if player.video is not None:
        player.video.stop()  # only the audio is sent; the player runs on for it
    return player.audio


def open_video_input(spec: str, *, loop: bool = False,
                     options: Mapping[str, str] | None = None) -> MediaStreamTrack:
    """A video track to send: ``v4l2:/dev/video0``, ``lavfi:testsrc`` or a video file.

    ``options`` go to FFmpeg, e.g. ``{"video_size": "640x480", "framerate": "30"}``.
    Raises :class:`MediaError`.
    """
    parsed = parse_media_spec(spec)
    if parsed.kind in ("tone", "null"):
        raise MediaError(f"{spec} is not a video input")
    player = _open_player(parsed, loop=loop, options=options)
    if player.video is None:
        _close_player(player)
        raise MediaError(f"{spec} has no video stream")
    if player.audio is not None:
        player.audio.stop()
    return player.video


# ----------------------------------------------------------------------------------- outputs


class AudioSink:
    """Plays or records one received audio track: to a file, a device, or nowhere (``null``).

    The output is opened in the constructor, so a missing device or an unwritable path
    raises :class:`MediaError` before the call is answered. Audio is written gapless at
    48 kHz stereo s16: lost packets shorten the recording rather than leave silence, so its
    duration measures what arrived. Device writes (which block in real time) run on a
    private worker thread.
    """

    def __init__(self, spec: str) -> None:
        self.spec = parse_media_spec(spec)
        self.frames = 0
        self.samples = 0
        self.first_frame_at: float | None = None  # event loop time of the first frame
        self.first_frame = asyncio.Event()
        self.error: MediaError | None = None  # set when writing failed (output abandoned)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        if self.spec.kind in ("tone",):
            raise MediaError(f"{spec} is an input, not an output")
        if self.spec.kind == "device":
            self._open_device()
        elif self.spec.kind == "file":
            self._open_file()

    @property
    def duration(self) -> float:
        """Seconds of audio received so far."""
        return self.samples / SAMPLE_RATE

    def _open_file(self) -> None:
        path = Path(self.spec.target)
        muxer_codec = _OUTPUT_CODECS.get(path.suffix.lower())
        if muxer_codec is None:
            raise MediaError(f"cannot record to {path.name}: use one of "
                             f"{', '.join(sorted(_OUTPUT_CODECS))}")
        if not path.parent.is_dir():
            raise MediaError(f"cannot record to {path}: no such directory")
        self._open(str(path), muxer_codec[0], muxer_codec[1], f"file {str(path)!r}")

    def _open_device(self) -> None:
        fmt = self.spec.format
        assert fmt is not None
        if fmt not in _DEVICE_OUTPUTS:
            raise MediaError(f"{self.spec} cannot play audio; use pulse:NAME or alsa:NAME")
        _require_format(fmt)
        self._open(self.spec.target, fmt, "pcm_s16le", f"{fmt} device {self.spec.target!r}")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dhtchat-audio-out")

    def _open(self, target: str, muxer: str, codec: str, what: str) -> None:
        try:
            container = av.open(target, mode="w", format=muxer)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"cannot open {what}: {_reason(exc, muxer)}") from exc
        try:
            stream = container.add_stream(codec, rate=SAMPLE_RATE, layout="stereo")
            if not isinstance(stream, av.AudioStream) or stream.codec_context.format is None:
                raise ValueError(f"{codec} is not an audio encoder")
            sample_format = stream.codec_context.format
            # libopus wants exactly 20 ms per frame; PCM and FLAC take any size
            frame_size = int(SAMPLE_RATE * PTIME) if codec == "libopus" else None
            self._resampler = av.AudioResampler(format=sample_format.name,
                                                layout="stereo", rate=SAMPLE_RATE,
                                                frame_size=frame_size)
            container.start_encoding()  # a device opens here: fail now, not mid-call
        except (av.FFmpegError, OSError, ValueError) as exc:
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                container.close()
            raise MediaError(f"cannot open {what}: {_reason(exc, muxer)}") from exc
        self._container, self._stream = container, stream

    async def start(self, track: MediaStreamTrack) -> None:
        """Start consuming ``track`` (an audio track from ``RTCPeerConnection`` ``track``)."""
        if track.kind != "audio":
            raise MediaError(f"an audio sink cannot take a {track.kind} track")
        if self._task is not None or self._stopped:
            raise MediaError("this sink already has a track")
        self._task = asyncio.create_task(self._run(track), name=f"audio-sink {self.spec}")

    async def _run(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            if self.first_frame_at is None:
                self.first_frame_at = loop.time()
                self.first_frame.set()
            self.frames += 1
            try:
                if self._container is None:
                    self.samples += frame.samples
                elif self._executor is not None:
                    await loop.run_in_executor(self._executor, self._write, frame)
                else:
                    self._write(frame)
            except (av.FFmpegError, OSError, ValueError) as exc:
                # e.g. a device unplugged mid-call: keep draining the track, write nothing
                self.error = MediaError(f"writing to {self.spec} failed: {_reason(exc)}")
                self._abandon()

    def _write(self, frame: av.AudioFrame | None) -> None:
        container, stream, resampler = self._container, self._stream, self._resampler
        if container is None or stream is None or resampler is None:
            return
        frame_time_base = fractions.Fraction(1, SAMPLE_RATE)
        if frame is not None:
            frame.pts = None  # our own gapless timeline below
        for out in resampler.resample(frame):
            out.pts = self.samples
            out.time_base = frame_time_base
            self.samples += out.samples
            container.mux(stream.encode(out))
        if frame is None:
            container.mux(stream.encode(None))

    def _abandon(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                container.close()

    def _close(self) -> None:
        container = self._container
        if container is None:
            return
        try:
            self._write(None)  # flush the resampler and the encoder
        except (av.FFmpegError, OSError, ValueError):
            pass
        finally:
            self._container = None
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                container.close()

    async def stop(self) -> None:
        """Stop consuming, flush and close the output (idempotent)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._executor is not None:
            # after any write still running on the worker thread
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
            self._executor.shutdown(wait=False)
            self._executor = None
        else:
            self._close()


# ---------------------------------------------------------------------------------- analysis


def _mono(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    import numpy as np  # noqa: PLC0415 - see the imports above
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def _read_mono(path: str | Path) -> tuple[npt.NDArray[np.float32], int]:
    import numpy as np  # noqa: PLC0415 - see the imports above
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"cannot read {path}: {_reason(exc)}") from exc
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[npt.NDArray[np.float32]] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(_mono(out) for out in resampler.resample(frame))
            chunks.extend(_mono(out) for out in resampler.resample(None))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"cannot decode {path}: {_reason(exc)}") from exc
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return samples, rate


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in a file (decoded samples / sample rate)."""
    samples, rate = _read_mono(path)
    return len(samples) / rate


def dominant_frequency(path: str | Path) -> float:
    """The strongest frequency in a recording, in Hz (Hann-windowed FFT, interpolated peak)."""
    import numpy as np  # noqa: PLC0415 - see the imports above
    samples, rate = _read_mono(path)
    if len(samples) < 64:
        raise MediaError(f"{path} holds too little audio for a spectrum")
    windowed = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(windowed))
    spectrum[0] = 0.0  # ignore DC
    peak = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < peak < len(spectrum) - 1:  # parabolic interpolation on the log magnitude
        left, centre, right = np.log(spectrum[peak - 1:peak + 2] + 1e-12)
        denominator = left - 2 * centre + right
        if denominator != 0:
            offset = float(0.5 * (left - right) / denominator)
    return (peak + offset) * rate / len(samples)
