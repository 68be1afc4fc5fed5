"""The offline DHT mailbox of a contact pair: slot layout, windowed reading and holes, sans-IO.

Theory of operation
-------------------
A sender that cannot reach its contact puts each frame into the pair's mailbox: slot ``i`` is
a DHT record under ``pair.slot_key(MAILBOX, sender, MAILBOX_EPOCH, slot_salt(i))``, sealed to
the contact and signed with the pair's mailbox channel key. A frame larger than one record is
split into :class:`Part` values over consecutive slots; the sender *reserves* the slots
(:func:`reserve`) before putting them, so slot order is sequence order. Once the contact has
acknowledged a frame its slots are overwritten with tombstones (an empty value with a short
TTL); record sequence numbers only grow (:class:`MailboxWriter`), so the tombstone replaces the
frame on every storer.

The reader (:class:`MailboxReader`) remembers the first slot it has not consumed (the
*index*) and, per poll, reads a small window of slots at once (most polls find nothing), each
full window twice as wide as the one before (up to :data:`MAILBOX_WINDOW`), and consumes them
in order up to the first empty slot: a filled slot as soon as it is reported (the slots before
it were), an empty one only once the whole window is in (what follows it decides). A window
found full is followed by the next one for sure, so that one is asked for at once, before the
full one's last frames are handed out: its lookups run while the driver delivers, and the
frames of a backlog come out while the lookups of the empty slots that end it still run. A
slot that reads empty while later ones are filled is usually a lookup that missed: it is read
once more. If it stays empty for :data:`HOLE_GRACE` seconds (a put that keeps failing), the
reader skips it so later frames are not held up, and remembers the frame's first slot as a
*hole* (at most :data:`MAX_HOLES`, the oldest forgotten first). Every poll first reads the
holes again: a hole filled late is delivered, one still empty after :data:`HOLE_MEMORY`
seconds is forgotten. Frames may thus be
delivered out of order or twice; the messenger above orders and deduplicates by sequence
number. A poll whose first window is all empty ends there (idle polls stay cheap), so a run
of that many slots never stored holds later frames up until the sender stores them (it
retries every frame not yet stored).

In the manner of h11 the machines do no I/O and read no clock: ``now`` is passed in and the
reader returns actions (:class:`Fetch`, :class:`Deliver`, :class:`SaveHoles`,
:class:`SaveIndex`, :class:`PollDone`) that the driver (:mod:`dhtchat.app.mailbox`) performs
in order, reporting each fetched slot back with :meth:`MailboxReader.fetched` -- at once, or
later while it performs the next actions, until :meth:`MailboxReader.needs_answers` says the
poll cannot go on without them. The persisted
state is the index and the holes; the reader counts a value as committed when it hands out
the action that saves it, and emits those actions only after the frames they move past were
delivered (and a hole before the index that skips it), so a reader rebuilt from the persisted
state after a crash at any step loses no frame (it may deliver one again).
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Final

import msgspec

from dhtchat.core.errors import LocalProtocolError

MAILBOX_EPOCH: Final = 0  # mailbox and prekey channels do not rotate: slots must be findable
MAILBOX_TTL: Final = 7 * 24 * 3600
TOMBSTONE_TTL: Final = 24 * 3600
MAILBOX_PART: Final = 800  # frame bytes per slot (sealed + signed it fits a 1000-byte record)
MAX_PARTS: Final = 128  # 100 KiB per mailbox message
MIN_SLOT_STORERS: Final = 3  # acknowledgements a mailbox slot needs to count as stored
MAILBOX_SCAN_LIMIT: Final = 512  # slots read per poll (a backlog continues at the next poll)
MAILBOX_FIRST_WINDOW: Final = 4  # slots fetched in parallel at first (most polls find none)
MAILBOX_WINDOW: Final = 32  # ... doubling up to this while every slot of a window is filled
HOLE_GRACE: Final = 120.0  # an empty slot followed by filled ones is skipped after this long
HOLE_MEMORY: Final = 24 * 3600.0  # ... and read again at every poll for this long
MAX_HOLES: Final = 16  # skipped frames remembered per contact (the oldest is forgotten)
# Actions one poll can return at most: per remembered hole a fetch per part and a delivery;
# per scanned slot a window share, a second read, a delivery and two saves; a final save and
# PollDone. The driver's loop is bounded by it.
POLL_ACTION_BOUND: Final = MAX_HOLES * (MAX_PARTS + 1) + 5 * MAILBOX_SCAN_LIMIT + 2
# A driver that reports answers only when :meth:`MailboxReader.needs_answers` asks for them
# waits at most once per slot fetched, and every fetched slot came with one of those actions.
POLL_STEP_BOUND: Final = 2 * POLL_ACTION_BOUND

TOMBSTONE: Final = b""


class Part(msgspec.Struct, array_like=True, frozen=True):
    """One mailbox slot's share of a frame."""

    index: Annotated[int, msgspec.Meta(ge=0, le=MAX_PARTS)]
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTS)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAILBOX_PART)]


_encoder = msgspec.msgpack.Encoder()
_part_decoder = msgspec.msgpack.Decoder(Part)


def split(frame: bytes) -> list[bytes]:
    """The slot values of a frame, in slot order (a tombstone stays one empty slot)."""
    if frame == TOMBSTONE:
        return [TOMBSTONE]
    chunks = [frame[i:i + MAILBOX_PART] for i in range(0, len(frame), MAILBOX_PART)] or [b""]
    return [_encoder.encode(Part(i, len(chunks), c)) for i, c in enumerate(chunks)]


def slot_count(frame_bytes: int) -> int:
    """Slots a frame of ``frame_bytes`` bytes occupies (what its tombstones must cover)."""
    return max(1, -(-frame_bytes // MAILBOX_PART))


def slot_salt(index: int) -> bytes:
    """The salt naming slot ``index`` of a mailbox channel (part of the key and the AAD)."""
    return index.to_bytes(8, "big")


def reserve(next_index: int, frame: bytes) -> tuple[int, int]:
    """Slots for ``frame`` from the writer's next free slot: (first slot, next free slot)."""
    if next_index < 0:
        raise LocalProtocolError(f"mailbox slot index {next_index} is negative")
    return next_index, next_index + len(split(frame))


def slot_stored(stored: int, attempted: int) -> bool:
    """Whether a slot put counts as stored: one storer is not enough for a record the reader
    must find by lookup, below MIN_SLOT_STORERS (or all asked, if fewer) it is put again."""
    return stored >= min(MIN_SLOT_STORERS, max(1, attempted))


def encode_holes(holes: Mapping[int, float]) -> bytes:
    """The persisted form of a reader's holes (JSON: first slot -> when it was skipped)."""
    return json.dumps({str(k): v for k, v in holes.items()}).encode()


def decode_holes(raw: bytes | None) -> dict[int, float]:
    """Holes from :func:`encode_holes` (nothing for a missing or unreadable value)."""
    if not raw:
        return {}
    try:
        return {int(k): float(v) for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError, TypeError):
        return {}


# ---------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class PutSlot:
    """Seal ``value`` into slot ``index`` with record sequence ``seq``, expiring at
    ``expires`` (seconds since the epoch), and put it."""

    index: int
    value: bytes
    seq: int
    expires: int

    @property
    def salt(self) -> bytes:
        """The slot's salt (see :func:`slot_salt`)."""
        return slot_salt(self.index)


class MailboxWriter:
    """The puts that write frames and tombstones into slots. One per node: every slot record
    it makes gets a higher sequence number than the one before, even if the clock steps back,
    so a tombstone always replaces the frame it covers."""

    def __init__(self, last_seq: int = 0) -> None:
        self._last_seq = last_seq

    def _seq(self, now: float) -> int:
        self._last_seq = max(self._last_seq + 1, int(now * 1000))
        return self._last_seq

    def frame_puts(self, start: int, frame: bytes, now: float) -> list[PutSlot]:
        """Puts of ``frame`` into its reserved slots from ``start``."""
        ttl = TOMBSTONE_TTL if frame == TOMBSTONE else MAILBOX_TTL
        return [PutSlot(start + i, value, self._seq(now), int(now) + ttl)
                for i, value in enumerate(split(frame))]

    def tombstone_puts(self, start: int, frame_bytes: int, now: float) -> list[PutSlot]:
        """Puts overwriting the slots of a ``frame_bytes``-byte frame from ``start``."""
        return [PutSlot(start + i, TOMBSTONE, self._seq(now), int(now) + TOMBSTONE_TTL)
                for i in range(slot_count(frame_bytes))]


# ---------------------------------------------------------------------- reading


class Slot(enum.Enum):
    """A fetched slot without a value to decode."""

    EMPTY = "empty"  # no record under the slot's key (or the lookup missed it)
    UNREADABLE = "unreadable"  # a record that does not open as the contact's


SlotContent = bytes | Slot  # the opened value of the slot's record, or why there is none


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read these slots (concurrently) and report each with :meth:`MailboxReader.fetched`,
    at the latest when :meth:`MailboxReader.needs_answers` is true."""

    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Deliver:
    """A whole frame, whose first part was in ``slot`` (``recovered``: from a hole)."""

    frame: bytes
    slot: int
    recovered: bool = False


@dataclass(frozen=True, slots=True)
class SaveHoles:
    """Persist the holes (``skipped``: the first slot of a frame just skipped, if any)."""

    holes: Mapping[int, float]
    skipped: int | None = None


@dataclass(frozen=True, slots=True)
class SaveIndex:
    """Persist the first slot not consumed yet."""

    index: int


@dataclass(frozen=True, slots=True)
class PollDone:
    """The poll is over: ``handled`` frames delivered; ``empty`` is the empty slot it stopped
    at (None when it stopped at the scan limit)."""

    handled: int
    empty: int | None


Action = Fetch | Deliver | SaveHoles | SaveIndex | PollDone


def _decode(content: SlotContent | None) -> Part | None:
    if not isinstance(content, bytes) or content == TOMBSTONE:
        return None
    try:
        return _part_decoder.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass
class _Poll:
    now: float
    grace: float
    index: int
    holes: dict[int, float]
    queue: list[tuple[int, float]]  # holes still to read again, in slot order
    out: deque[Action] = field(default_factory=deque)
    waiting: set[int] = field(default_factory=set)
    results: dict[int, SlotContent] = field(default_factory=dict)
    handled: int = 0
    # the hole being read again
    hole: int | None = None
    hole_skipped: float = 0.0
    hole_parts: list[bytes] = field(default_factory=list)
    holes_changed: bool = False
    # the scan
    scanning: bool = False
    scanned: int = 0
    width: int = MAILBOX_FIRST_WINDOW
    window_open: bool = False  # window_slots are being read and consumed
    window_slots: tuple[int, ...] = ()
    complete: bool = False  # ... and all of them were reported (``filled`` is set)
    next_slots: tuple[int, ...] | None = None  # the window after it, asked for in advance
    filled: list[bool] = field(default_factory=list)
    asked_again: bool = False
    parts: list[bytes] = field(default_factory=list)


class MailboxReader:
    """The reading side of one contact's mailbox. Built from the persisted index and holes;
    :meth:`poll` starts a poll, then :meth:`next_action` is called until :class:`PollDone`."""

    def __init__(self, index: int = 0, holes: Mapping[int, float] | None = None) -> None:
        if index < 0:
            raise LocalProtocolError(f"mailbox index {index} is negative")
        self._index = index
        self._holes = dict(holes or {})
        self._empty_since: dict[int, float] = {}  # empty slot -> first seen so (not persisted)
        self._poll: _Poll | None = None

    @property
    def index(self) -> int:
        """The first slot not consumed, as last handed out to be saved."""
        return self._index

    @property
    def holes(self) -> dict[int, float]:
        """Skipped frames still awaited (first slot -> when skipped), as last handed out."""
        return dict(self._holes)

    @property
    def polling(self) -> bool:
        """A poll is under way (:class:`PollDone` not returned yet)."""
        return self._poll is not None

    def poll(self, now: float, *, hole_grace: float = HOLE_GRACE) -> None:
        """Start a poll at time ``now``. An unfinished poll (its driver failed) is abandoned:
        the new one starts again from the committed index and holes."""
        self._poll = _Poll(now, hole_grace, self._index, dict(self._holes),
                           sorted(self._holes.items()))

    def fetched(self, slot: int, content: SlotContent) -> bool:
        """Report a slot a :class:`Fetch` asked for. False (and ignored) for a slot not
        awaited: one reported twice, a late answer, or one never asked for."""
        poll = self._poll
        if poll is None or slot not in poll.waiting:
            return False
        poll.waiting.discard(slot)
        poll.results[slot] = content
        return True

    def next_action(self) -> Action:
        """The next thing for the driver to do."""
        poll = self._poll
        if poll is None:
            raise LocalProtocolError("no mailbox poll is under way")
        self._settle(poll)
        if not poll.out:
            raise LocalProtocolError(f"mailbox slots {sorted(poll.waiting)} not reported")
        action = poll.out.popleft()
        if isinstance(action, SaveIndex):
            self._index = action.index
        elif isinstance(action, SaveHoles):
            self._holes = dict(action.holes)
        elif isinstance(action, PollDone):
            self._poll = None
            self._empty_since = {k: v for k, v in self._empty_since.items()
                                 if k >= self._index}
        return action

    def needs_answers(self) -> bool:
        """Whether the poll cannot go on until more of the slots asked for are reported
        (then report at least one before calling :meth:`next_action`)."""
        poll = self._poll
        if poll is None:
            return False
        self._settle(poll)
        return not poll.out

    # ------------------------------------------------------------------ the steps

    def _settle(self, poll: _Poll) -> None:
        """Advance until there is an action to hand out or a step lacks an answer."""
        while not poll.out and not self._lacks_answer(poll):
            self._advance(poll)

    def _lacks_answer(self, poll: _Poll) -> bool:
        """Whether the next step needs a slot that was asked for and not reported yet."""
        if not poll.scanning:
            return poll.hole is not None and poll.hole + len(poll.hole_parts) in poll.waiting
        if not poll.window_open or poll.index - poll.window_slots[0] >= len(poll.window_slots):
            return False
        if poll.index in poll.waiting:
            return True
        # An empty slot is judged by the slots after it: all of the window must be in.
        return poll.results[poll.index] is Slot.EMPTY and \
            any(s in poll.waiting for s in poll.window_slots)

    def _open_window(self, poll: _Poll, start: int) -> tuple[int, ...]:
        """Ask for the next window of slots from ``start``."""
        slots = tuple(range(start, start + poll.width))
        self._fetch(poll, slots)
        poll.scanned += poll.width
        poll.width = min(2 * poll.width, MAILBOX_WINDOW)
        return slots

    def _fetch(self, poll: _Poll, slots: tuple[int, ...]) -> None:
        poll.waiting.update(slots)
        poll.out.append(Fetch(slots))

    def _advance(self, poll: _Poll) -> None:
        if not poll.scanning:
            self._advance_holes(poll)
        else:
            self._advance_scan(poll)

    def _advance_holes(self, poll: _Poll) -> None:
        """Read the next part of the hole being recovered, or start the next hole."""
        if poll.hole is not None:
            start = poll.hole
            part = None
            content = poll.results.pop(start + len(poll.hole_parts))
            frame: bytes | None = b""  # no frame starts there (tombstone, bad record, ...)
            if content is Slot.EMPTY:
                frame = None  # a part is still missing
            else:
                part = _decode(content)
                if part is not None and part.index == len(poll.hole_parts) and \
                        0 < part.count <= MAX_PARTS:
                    poll.hole_parts.append(part.data)
                    if len(poll.hole_parts) < part.count:
                        self._fetch(poll, (start + len(poll.hole_parts),))
                        return
                    frame = b"".join(poll.hole_parts)
            poll.hole = None
            if frame is None and poll.now - poll.hole_skipped < HOLE_MEMORY:
                return  # still awaited
            del poll.holes[start]
            poll.holes_changed = True
            if frame:
                poll.out.append(Deliver(frame, start, recovered=True))
                poll.handled += 1
            return
        if poll.queue:
            poll.hole, poll.hole_skipped = poll.queue.pop(0)
            poll.hole_parts = []
            self._fetch(poll, (poll.hole,))
            return
        if poll.holes_changed:
            poll.out.append(SaveHoles(dict(poll.holes)))
        poll.scanning = True

    def _advance_scan(self, poll: _Poll) -> None:
        """Ask for the next window, or consume the current one up to the next action: its
        filled slots as they are reported, in slot order; an empty one once all are in."""
        if not poll.window_open:
            if poll.scanned >= MAILBOX_SCAN_LIMIT:
                poll.out.append(PollDone(poll.handled, None))
                return
            self._start_window(poll, self._open_window(poll, poll.index))
            return
        if not poll.complete and not any(s in poll.waiting for s in poll.window_slots):
            self._window_complete(poll)
        while True:
            position = poll.index - poll.window_slots[0]
            if position >= len(poll.window_slots):
                for s in poll.window_slots:
                    poll.results.pop(s, None)
                if poll.next_slots is not None:  # asked for in advance: it starts here
                    self._start_window(poll, poll.next_slots)
                    poll.next_slots = None
                else:
                    poll.window_open = False  # the next window starts at the index
                return
            slot = poll.index
            if slot in poll.waiting:
                return  # not reported yet
            content = poll.results[slot]
            if content is Slot.EMPTY:
                if not poll.complete:
                    return  # judged once the slots after it are in
                later_filled = any(poll.filled[position + 1:])
                if later_filled and not poll.asked_again:
                    poll.asked_again = True  # likely a lookup that missed: ask again
                    self._fetch(poll, (slot,))
                    return
                poll.asked_again = False
                if not later_filled or not self._hole_expired(poll, slot):
                    poll.out.append(PollDone(poll.handled, slot))
                    return
                # The frame may still come (a put that kept failing): read it again at the
                # next polls, from its first slot.
                start = slot - len(poll.parts)
                poll.holes[start] = poll.now
                while len(poll.holes) > MAX_HOLES:
                    del poll.holes[min(poll.holes, key=poll.holes.__getitem__)]
                poll.index += 1
                poll.out.extend((SaveHoles(dict(poll.holes), skipped=start),
                                 SaveIndex(poll.index)))
                return
            poll.asked_again = False
            poll.index += 1
            part = _decode(content)
            if part is None or part.index != len(poll.parts) or part.count > MAX_PARTS:
                poll.parts = []  # a tombstone, or a frame acknowledged while we read it
                if part is None or part.index != 0:
                    poll.out.append(SaveIndex(poll.index))
                    return
            poll.parts.append(part.data)
            if len(poll.parts) < part.count:
                continue  # the rest is in the next slots; the index is saved after it
            first = slot + 1 - len(poll.parts)
            frame, poll.parts = b"".join(poll.parts), []
            poll.out.extend((Deliver(frame, first), SaveIndex(poll.index)))
            poll.handled += 1
            return

    def _start_window(self, poll: _Poll, slots: tuple[int, ...]) -> None:
        poll.window_open, poll.window_slots, poll.complete = True, slots, False
        poll.asked_again = False

    def _window_complete(self, poll: _Poll) -> None:
        """Every slot of the current window was reported (before any was asked again)."""
        poll.complete = True
        poll.filled = [poll.results[s] is not Slot.EMPTY for s in poll.window_slots]
        # Every empty slot followed by a filled one starts its grace now, so a frame of
        # several slots that never came is skipped after one grace, not one per slot.
        last_filled = max((j for j, f in enumerate(poll.filled) if f), default=-1)
        for j in range(last_filled):
            if not poll.filled[j]:
                self._empty_since.setdefault(poll.window_slots[j], poll.now)
        if all(poll.filled) and poll.scanned < MAILBOX_SCAN_LIMIT:
            # Every slot of it will be consumed (only an empty slot stops a poll), so the
            # next window starts right after it: ask for it now.
            poll.next_slots = self._open_window(poll, poll.window_slots[-1] + 1)

    def _hole_expired(self, poll: _Poll, slot: int) -> bool:
        seen = self._empty_since.setdefault(slot, poll.now)
        return poll.now - seen >= poll.grace
