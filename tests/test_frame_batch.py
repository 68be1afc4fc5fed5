"""Frame batches on the data channel (dhtchat.messaging.payload): a burst of frames travels
as a few large messages, decoded back into the same frames in the same order."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtchat.messaging.payload import (
    BATCH_BYTES,
    BATCH_MARK,
    MAX_BATCH_FRAMES,
    Frame,
    batch_frames,
    encoder,
    pack_frames,
    unpack_frames,
)


def frame(seq: int, size: int = 1100) -> bytes:
    return encoder.encode(Frame(seq, bytes([seq % 256]) * size))


def test_a_lone_frame_travels_bare() -> None:
    one = frame(1)
    assert pack_frames([one]) == one
    assert unpack_frames(one) == [one]


def test_a_burst_of_1_kib_frames_becomes_messages_of_at_most_16_kib() -> None:
    frames = [frame(seq) for seq in range(1, 101)]
    groups = batch_frames(frames)
    assert [len(g) for g in groups] == [14] * 7 + [2]  # 100 frames of 1,105 B: 14 per 16 KiB
    messages = [pack_frames(group) for group in groups]
    assert all(len(m) <= BATCH_BYTES + 3 * 14 + 4 for m in messages)  # bin headers
    assert [f for m in messages for f in unpack_frames(m)] == frames


def test_a_frame_larger_than_a_batch_goes_alone() -> None:
    big, small = frame(2, BATCH_BYTES + 10), frame(3)
    assert batch_frames([frame(1), big, small]) == [[frame(1)], [big], [small]]


def test_a_batch_holds_at_most_max_batch_frames() -> None:
    tiny = [frame(seq, 1) for seq in range(MAX_BATCH_FRAMES + 5)]
    groups = batch_frames(tiny)
    assert [len(g) for g in groups] == [MAX_BATCH_FRAMES, 5]


@pytest.mark.parametrize("message", [
    BATCH_MARK,  # nothing after the mark
    BATCH_MARK + b"\xff\x00",  # not msgpack
    BATCH_MARK + encoder.encode([]),  # an empty batch
    BATCH_MARK + encoder.encode(["text", "not", "bytes"]),
    BATCH_MARK + encoder.encode([b"x"] * (MAX_BATCH_FRAMES + 1)),  # too many frames
])
def test_a_malformed_batch_is_refused(message: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        unpack_frames(message)


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=80),
       st.integers(min_value=1, max_value=20000))
def test_batches_keep_every_frame_in_order_within_the_limit(frames: list[bytes],
                                                            limit: int) -> None:
    groups = batch_frames(frames, limit)
    assert [f for g in groups for f in g] == frames
    for group in groups:
        assert group
        assert len(group) == 1 or sum(map(len, group)) <= limit
        assert len(group) <= MAX_BATCH_FRAMES
