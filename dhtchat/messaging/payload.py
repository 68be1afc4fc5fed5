"""The wire structs of 1:1 messaging: what travels inside the ratchet, and the frame around it.

Theory of operation (docs/protocol.md, "Messaging"): every message, receipt and control
signal is one :class:`Payload`, msgpack-encoded as an array with its class tag, encrypted
by the pair's Double Ratchet and wrapped in a :class:`Frame` whose sequence number sits
outside the ciphertext (0: an unsequenced control). Stored outbox rows hold these exact
bytes and peers decode them, so field order and defaults are the protocol: new fields go
last, and nothing is ever renumbered. Sans-IO: structs, limits and codecs only.

On the data channel a burst of frames travels as one message, a *frame batch*: the byte
``BATCH_MARK`` and a msgpack array of encoded frames (:func:`pack_frames`), up to
``BATCH_BYTES``. SCTP carries a message in chunks of ~1,160 bytes and acknowledges each, so
one frame of a 1 KiB text alone takes two chunks, and a batch of 16 takes 17: half the chunks,
acknowledgements and per-message work of sending them one by one. A lone frame goes bare
(its first byte is 0x92, a msgpack array of two); file chunks start with 0x01.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "BATCH_BYTES",
    "BATCH_MARK",
    "GROUP_KINDS",
    "MAX_TEXT_BYTES",
    "MAX_TIMER",
    "SEQUENCED",
    "Frame",
    "Payload",
    "batch_frames",
    "encoder",
    "frame_decoder",
    "pack_frames",
    "payload_decoder",
    "unpack_frames",
]

MAX_TEXT_BYTES: Final = 64 * 1024
MAX_TIMER: Final = 365 * 24 * 3600
SEQUENCED: Final = ("text", "file", "timer", "group_update", "group_text", "group_leave")
GROUP_KINDS: Final = ("group_update", "group_text", "group_leave")


class Payload(msgspec.Struct, array_like=True, frozen=True, tag=True):
    """What travels inside the ratchet."""

    kind: Literal["text", "ack", "read", "typing", "file", "file_request", "file_done",
                  "file_end", "timer", "group_update", "group_text", "group_leave", "reset", "call",
                  "goodbye"]
    seq: int = 0  # > 0 for sequenced kinds (text, file)
    id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    sent_at: float = 0.0
    text: str = ""
    ack: int = 0  # cumulative: every message up to this seq arrived
    read: int = 0  # the contact's ``receive`` showed every message up to this seq
    file_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    name: Annotated[str, msgspec.Meta(max_length=255)] = ""
    size: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    sha256: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    key: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    offset: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    timer: Annotated[int, msgspec.Meta(ge=0, le=MAX_TIMER)] = 0  # disappearing after N s
    group_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    group: Annotated[bytes, msgspec.Meta(max_length=48 * 1024)] = b""  # signed GroupState
    # A group message: its author, the author's id and time for it, and the author's
    # signature, so the admin can relay it unchanged (see dhtchat.app.groups).
    author: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    origin_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    origin_time: float = 0.0
    signature: Annotated[bytes, msgspec.Meta(max_length=64)] = b""
    # A call signal (dhtchat.app.calls): the call, the action, video wanted, the caller's
    # commitment to its SAS nonce (invite) and the nonce itself (revealed after accept).
    call_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    call_action: Annotated[str, msgspec.Meta(max_length=16)] = ""
    video: bool = False
    commitment: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    nonce: Annotated[bytes, msgspec.Meta(max_length=64)] = b""
    conference: Annotated[bytes, msgspec.Meta(max_length=16)] = b""  # a group call's id
    participants: Annotated[list[Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]],
                            msgspec.Meta(max_length=8)] = []
    # The call's SAS scheme (dhtchat.core.sas.SAS_VERSION); last, so older decoders ignore it.
    sas_version: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0


class Frame(msgspec.Struct, array_like=True, frozen=True):
    """A ratchet ciphertext with its sequence number outside (0: unsequenced control)."""

    seq: Annotated[int, msgspec.Meta(ge=0, le=2**62)]
    body: Annotated[bytes, msgspec.Meta(max_length=MAX_TEXT_BYTES + 4096)]


frame_decoder: Final = msgspec.msgpack.Decoder(Frame)

BATCH_MARK: Final = b"\x02"  # first byte of a frame batch on the data channel
BATCH_BYTES: Final = 16 * 1024  # a batch is cut before it grows past this
MAX_BATCH_FRAMES: Final = 256  # ... and a peer's batch of more frames is refused
_MAX_FRAME_BYTES: Final = MAX_TEXT_BYTES + 8192
FrameList = Annotated[list[Annotated[bytes, msgspec.Meta(max_length=_MAX_FRAME_BYTES)]],
                      msgspec.Meta(min_length=1, max_length=MAX_BATCH_FRAMES)]
_batch_decoder: Final = msgspec.msgpack.Decoder(FrameList)


def pack_frames(frames: list[bytes]) -> bytes:
    """One data-channel message for encoded frames (the lone frame itself for one)."""
    if len(frames) == 1:
        return frames[0]
    return BATCH_MARK + encoder.encode(frames)


def batch_frames(frames: list[bytes], limit: int = BATCH_BYTES) -> list[list[bytes]]:
    """Cut encoded frames, in order, into groups of at most ``limit`` bytes (a frame larger
    than that alone) and ``MAX_BATCH_FRAMES`` frames: one :func:`pack_frames` each."""
    groups: list[list[bytes]] = []
    size = limit + 1
    for frame in frames:
        if size + len(frame) > limit or len(groups[-1]) >= MAX_BATCH_FRAMES:
            groups.append([])
            size = 0
        groups[-1].append(frame)
        size += len(frame)
    return groups


def unpack_frames(message: bytes) -> list[bytes]:
    """The encoded frames of a data-channel message (a batch or a lone frame); raises
    msgspec.DecodeError / ValidationError for a malformed batch."""
    if message[:1] != BATCH_MARK:
        return [message]
    frames: list[bytes] = _batch_decoder.decode(message[1:])
    return frames
payload_decoder: Final = msgspec.msgpack.Decoder(Payload)
encoder: Final = msgspec.msgpack.Encoder()
