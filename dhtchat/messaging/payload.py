"""The wire structs of 1:1 messaging: what travels inside the ratchet, and the frame around it.

Theory of operation (docs/protocol.md, "Messaging"): every message, receipt and control
signal is one :class:`Payload`, msgpack-encoded as an array with its class tag, encrypted
by the pair's Double Ratchet and wrapped in a :class:`Frame` whose sequence number sits
outside the ciphertext (0: an unsequenced control). Stored outbox rows hold these exact
bytes and peers decode them, so field order and defaults are the protocol: new fields go
last, and nothing is ever renumbered. Sans-IO: structs, limits and codecs only.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "GROUP_KINDS",
    "MAX_TEXT_BYTES",
    "MAX_TIMER",
    "SEQUENCED",
    "Frame",
    "Payload",
    "encoder",
    "frame_decoder",
    "payload_decoder",
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
payload_decoder: Final = msgspec.msgpack.Decoder(Payload)
encoder: Final = msgspec.msgpack.Encoder()
