"""The mailbox machines (dhtchat.messaging.mailbox) on a manual clock, without a DHT: the slot
layout other nodes depend on, windowed reading, lookups that miss, holes that fill late or
expire, duplicate and reordered fetch answers, and a reader rebuilt from its persisted state
after a crash between any two steps. A model-based hypothesis test throws all of these at
once and checks that no frame is lost, corrupted or invented."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtchat.core.errors import LocalProtocolError
from dhtchat.messaging.mailbox import (
    HOLE_GRACE,
    HOLE_MEMORY,
    MAILBOX_FIRST_WINDOW,
    MAILBOX_PART,
    MAILBOX_SCAN_LIMIT,
    MAILBOX_TTL,
    MAILBOX_WINDOW,
    MAX_HOLES,
    POLL_ACTION_BOUND,
    POLL_STEP_BOUND,
    TOMBSTONE,
    TOMBSTONE_TTL,
    Action,
    Deliver,
    Fetch,
    MailboxReader,
    MailboxWriter,
    PollDone,
    PutSlot,
    SaveHoles,
    SaveIndex,
    Slot,
    SlotContent,
    decode_holes,
    encode_holes,
    reserve,
    slot_count,
    slot_salt,
    slot_stored,
    split,
)

T0 = 1_700_000_000.0  # the manual clock's start


@dataclass
class Board:
    """The DHT as the mailbox sees it: per slot the newest (seq, value) stored (a storer
    keeps the record with the highest sequence number)."""

    slots: dict[int, tuple[int, bytes]] = field(default_factory=dict)

    def write(self, puts: list[PutSlot]) -> None:
        for put in puts:
            if put.index not in self.slots or self.slots[put.index][0] < put.seq:
                self.slots[put.index] = (put.seq, put.value)

    def read(self, slot: int) -> SlotContent:
        return self.slots[slot][1] if slot in self.slots else Slot.EMPTY


@dataclass
class Stored:
    """What the driver persisted (the history's conversation row and meta table)."""

    index: int = 0
    holes: dict[int, float] = field(default_factory=dict)

    def reader(self) -> MailboxReader:
        return MailboxReader(self.index, self.holes)


@dataclass
class Run:
    delivered: list[bytes] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    fetches: list[tuple[int, ...]] = field(default_factory=list)
    done: PollDone | None = None


def drive(reader: MailboxReader, board: Board, stored: Stored, now: float, *,
          grace: float = HOLE_GRACE,
          answer: Callable[[int, int], SlotContent | None] | None = None,
          order: Callable[[tuple[int, ...]], list[int]] | None = None,
          crash_after: int | None = None, lazy: bool = False) -> Run:
    """One poll, the way the driver does it. ``answer(slot, nth fetch of it)`` overrides
    what a fetch returns (None: the board's value); ``order`` permutes a Fetch's answers;
    ``crash_after`` stops after that many actions were performed (the process died);
    ``lazy`` holds the answers back (read when asked for) and reports one only when
    :meth:`MailboxReader.needs_answers` says the poll cannot go on without it."""
    run = Run()
    asked: dict[int, int] = {}
    held: list[tuple[int, SlotContent]] = []
    reader.poll(now, hole_grace=grace)
    for _ in range(POLL_STEP_BOUND):
        if crash_after is not None and len(run.actions) >= crash_after:
            return run
        if lazy and reader.needs_answers():
            assert held, "the reader waits for an answer it never asked for"
            assert reader.fetched(*held.pop(0))
            continue
        action = reader.next_action()
        run.actions.append(action)
        match action:
            case Fetch(slots):
                run.fetches.append(slots)
                for slot in (order(slots) if order else list(slots)):
                    asked[slot] = asked.get(slot, 0) + 1
                    content = answer(slot, asked[slot]) if answer else None
                    held.append((slot, board.read(slot) if content is None else content))
                while held and not lazy:
                    assert reader.fetched(*held.pop(0))
            case Deliver(frame):
                run.delivered.append(frame)
            case SaveHoles(holes):
                stored.holes = dict(holes)
            case SaveIndex(index):
                assert index >= stored.index, "the read index went back"
                stored.index = index
            case PollDone():
                assert len(run.actions) <= POLL_ACTION_BOUND
                run.done = action
                return run
    raise AssertionError("the poll did not finish within POLL_STEP_BOUND steps")


def frames(count: int, size: int = 10) -> list[bytes]:
    return [i.to_bytes(2, "big") * size for i in range(count)]


def write_all(board: Board, writer: MailboxWriter, payloads: list[bytes], now: float,
              start: int = 0, skip: frozenset[int] = frozenset()) -> list[int]:
    """Reserve slots for each frame in order and store all but the ``skip`` ones; the
    first slot of each."""
    starts = []
    for n, frame in enumerate(payloads):
        first, start = reserve(start, frame)
        starts.append(first)
        if n not in skip:
            board.write(writer.frame_puts(first, frame, now))
    return starts


# ---------------------------------------------------------------------- layout and writing


def test_the_slot_layout_is_what_other_nodes_read() -> None:
    """Stored mailboxes and other nodes depend on these bytes: a Part is the msgpack array
    [index, count, data], 800 frame bytes per slot; a tombstone is one empty value; slot i's
    salt is i as 8 big-endian bytes; holes persist as JSON."""
    frame = bytes(range(256)) * 4  # 1024 bytes: two parts
    assert split(frame) == [msgspec.msgpack.encode([0, 2, frame[:800]]),
                            msgspec.msgpack.encode([1, 2, frame[800:]])]
    assert split(b"x") == [msgspec.msgpack.encode([0, 1, b"x"])]
    assert split(TOMBSTONE) == [b""]
    assert slot_salt(5) == b"\0" * 7 + b"\5"
    assert encode_holes({7: 1.5}) == b'{"7": 1.5}'
    assert decode_holes(b'{"7": 1.5}') == {7: 1.5}
    assert decode_holes(None) == decode_holes(b"not json") == decode_holes(b"[1]") == {}


@given(st.integers(1, 6 * MAILBOX_PART))
def test_tombstones_cover_exactly_the_slots_of_the_frame(size: int) -> None:
    frame = b"f" * size
    assert slot_count(len(frame)) == len(split(frame))
    writer = MailboxWriter()
    puts = writer.tombstone_puts(10, len(frame), T0)
    assert [p.index for p in puts] == [10 + i for i in range(len(split(frame)))]


def test_reserved_slots_follow_each_other_in_sequence_order() -> None:
    start = 0
    ranges = []
    for frame in (b"a", b"b" * 801, TOMBSTONE, b"c" * 1600):
        first, start = reserve(start, frame)
        ranges.append((first, start))
    assert ranges == [(0, 1), (1, 3), (3, 4), (4, 6)]
    with pytest.raises(LocalProtocolError):
        reserve(-1, b"a")


def test_a_tombstone_replaces_the_frame_even_when_the_clock_steps_back() -> None:
    writer, board = MailboxWriter(), Board()
    board.write(writer.frame_puts(0, b"frame", T0))
    board.write(writer.tombstone_puts(0, 5, T0 - 3600))
    assert board.read(0) == TOMBSTONE
    seqs = [p.seq for p in writer.frame_puts(1, b"y" * 2000, T0 - 7200)]
    assert seqs == sorted(set(seqs)) and seqs[0] > board.slots[0][0]


def test_frames_live_seven_days_and_tombstones_one() -> None:
    writer = MailboxWriter()
    assert {p.expires for p in writer.frame_puts(0, b"x" * 900, T0)} == {int(T0) + MAILBOX_TTL}
    assert {p.expires for p in writer.tombstone_puts(0, 900, T0)} == {
        int(T0) + TOMBSTONE_TTL}
    assert writer.frame_puts(3, TOMBSTONE, T0)[0].expires == int(T0) + TOMBSTONE_TTL
    assert writer.frame_puts(3, b"x", T0)[0].salt == slot_salt(3)


def test_a_slot_counts_as_stored_on_three_storers_or_all_that_were_asked() -> None:
    assert slot_stored(3, 20) and slot_stored(2, 2) and slot_stored(1, 1)
    assert not slot_stored(2, 20) and not slot_stored(0, 0) and not slot_stored(1, 2)


# ---------------------------------------------------------------------- windowed reading


def test_an_idle_poll_reads_one_small_window() -> None:
    stored = Stored(index=7)
    run = drive(stored.reader(), Board(), stored, T0)
    assert run.fetches == [(7, 8, 9, 10)]
    assert run.done == PollDone(0, 7) and run.delivered == []
    assert stored == Stored(index=7)


def test_each_full_window_doubles_up_to_the_limit_and_a_backlog_continues() -> None:
    board, stored = Board(), Stored()
    payloads = frames(2 * MAILBOX_SCAN_LIMIT, size=3)
    write_all(board, MailboxWriter(), payloads, T0)
    reader = stored.reader()
    run = drive(reader, board, stored, T0)
    widths = [len(f) for f in run.fetches]
    assert widths[:5] == [MAILBOX_FIRST_WINDOW, 8, 16, MAILBOX_WINDOW, MAILBOX_WINDOW]
    assert set(widths[3:]) == {MAILBOX_WINDOW}
    scanned = sum(widths)  # windows are read while fewer than the limit were scanned
    assert scanned - MAILBOX_WINDOW < MAILBOX_SCAN_LIMIT <= scanned
    assert run.done == PollDone(scanned, None)
    assert run.delivered == payloads[:scanned]
    assert stored.index == reader.index == scanned
    run = drive(reader, board, stored, T0 + 15)  # the next poll goes on from there
    assert run.fetches[0] == (scanned, scanned + 1, scanned + 2, scanned + 3)
    assert run.delivered == payloads[scanned:2 * scanned]


def test_a_backlog_of_ten_costs_three_windows() -> None:
    board, stored = Board(), Stored()
    payloads = frames(10)
    write_all(board, MailboxWriter(), payloads, T0)
    run = drive(stored.reader(), board, stored, T0)
    assert run.delivered == payloads
    assert [len(f) for f in run.fetches] == [4, 8]  # the second window has the empty slot
    assert run.done == PollDone(10, 10) and stored.index == 10


def test_the_window_after_a_full_one_is_asked_for_before_its_frames_are_handed_out() -> None:
    """Its lookups run while the driver delivers; the windows are the ones read without
    the head start, and a window with an empty slot has no successor asked for."""
    board, stored = Board(), Stored()
    payloads = frames(40)
    write_all(board, MailboxWriter(), payloads, T0)
    run = drive(stored.reader(), board, stored, T0, lazy=True)
    assert run.delivered == payloads and run.done == PollDone(40, 40)
    # The last window (slots 28-59) has empty slots: the poll ends in it, nothing more
    # was asked for.
    assert [len(f) for f in run.fetches] == [4, 8, 16, 32]
    kinds = [type(a).__name__ for a in run.actions]
    fetches = [n for n, kind in enumerate(kinds) if kind == "Fetch"]
    delivers = [n for n, kind in enumerate(kinds) if kind == "Deliver"]
    # Answers are reported one at a time, in slot order, and each frame is handed out as
    # soon as its slot is in; the next window is asked for as soon as the last slot of a
    # full one is in, ahead of that slot's frame (and of all the next window's).
    assert [sum(d < f for d in delivers) for f in fetches] == [0, 3, 11, 27]


def test_filled_slots_are_handed_out_as_reported_and_an_empty_one_waits_for_the_window(
        ) -> None:
    board, stored = Board(), Stored()
    payloads = frames(4)
    write_all(board, MailboxWriter(), payloads, T0)
    reader = stored.reader()
    reader.poll(T0)
    assert reader.next_action() == Fetch((0, 1, 2, 3))
    assert reader.needs_answers()
    assert reader.fetched(1, board.read(1))
    assert reader.needs_answers()  # slot 0 comes first
    assert reader.fetched(0, board.read(0))
    assert [reader.next_action() for _ in range(4)] == [
        Deliver(payloads[0], 0), SaveIndex(1), Deliver(payloads[1], 1), SaveIndex(2)]
    assert reader.fetched(2, Slot.EMPTY)  # a lookup that missed
    assert reader.needs_answers()  # judged once slot 3 is in
    assert reader.fetched(3, board.read(3))
    assert not reader.needs_answers()
    assert reader.next_action() == Fetch((2,))  # filled after it: asked again
    assert reader.fetched(2, board.read(2))
    assert [reader.next_action() for _ in range(4)] == [
        Deliver(payloads[2], 2), SaveIndex(3), Deliver(payloads[3], 3), SaveIndex(4)]


def test_answers_held_until_the_reader_needs_them_give_the_same_reading() -> None:
    board, stored, writer = Board(), Stored(), MailboxWriter()
    payloads = [b"a" * 1000, b"hole", *frames(30, size=300)]  # slots 0-1, 2, 3-32
    write_all(board, writer, payloads, T0, skip=frozenset({1}))
    reader = stored.reader()

    def miss(slot: int, nth: int) -> SlotContent | None:
        return Slot.EMPTY if slot == 4 and nth == 1 else None
    assert drive(reader, board, stored, T0, lazy=True).delivered == payloads[:1]
    run = drive(reader, board, stored, T0 + HOLE_GRACE, lazy=True, answer=miss,
                order=lambda s: list(reversed(s)))
    assert run.delivered == payloads[2:] and stored.holes == {2: T0 + HOLE_GRACE}
    board.write(writer.frame_puts(2, payloads[1], T0 + 200))
    assert drive(reader, board, stored, T0 + 300, lazy=True).delivered == [payloads[1]]
    assert stored.holes == {}


def test_a_frame_split_over_a_window_boundary_is_put_together() -> None:
    board, stored = Board(), Stored()
    payloads = [b"a", b"b", bytes(range(256)) * 9, b"c"]  # 2304 bytes: slots 2, 3 and 4
    write_all(board, MailboxWriter(), payloads, T0)
    run = drive(stored.reader(), board, stored, T0)
    assert run.delivered == payloads
    assert [a.slot for a in run.actions if isinstance(a, Deliver)] == [0, 1, 2, 5]
    # The index moves past a frame only once all its parts were read.
    saves = [a.index for a in run.actions if isinstance(a, SaveIndex)]
    assert saves == [1, 2, 5, 6]


def test_tombstones_bad_records_and_stray_parts_are_passed_over() -> None:
    """A frame acknowledged (tombstoned) while it was being read leaves stray later parts:
    they are dropped, never glued to the next frame."""
    board, stored = Board(), Stored()
    writer = MailboxWriter()
    write_all(board, writer, [b"old", b"x" * 1700, b"new"], T0)  # slots 0, 1-3, 4
    board.write(writer.tombstone_puts(0, 3, T0))
    board.write(writer.tombstone_puts(1, 1, T0))  # part 0 only: parts 1 and 2 are left
    board.slots[5] = (0, b"\xc1garbage")
    board.slots[6] = (0, msgspec.msgpack.encode([0, 1, b"unreadable"]))
    board.slots[7] = (0, msgspec.msgpack.encode([0, 1, b"after"]))

    def unreadable(slot: int, _nth: int) -> SlotContent | None:
        return Slot.UNREADABLE if slot == 6 else None
    run = drive(stored.reader(), board, stored, T0, answer=unreadable)
    assert run.delivered == [b"new", b"after"]
    assert stored.index == 8


# ---------------------------------------------------------------------- loss and holes


def test_a_lookup_that_missed_is_asked_again_before_anything_is_skipped() -> None:
    board, stored = Board(), Stored()
    payloads = frames(3)
    write_all(board, MailboxWriter(), payloads, T0)

    def miss_once(slot: int, nth: int) -> SlotContent | None:
        return Slot.EMPTY if slot == 0 and nth == 1 else None
    run = drive(stored.reader(), board, stored, T0, answer=miss_once,
                grace=0.0)  # even with no grace at all
    assert run.fetches[:2] == [(0, 1, 2, 3), (0,)]
    assert run.delivered == payloads and stored.holes == {}


def test_a_hole_waits_for_the_grace_then_is_skipped_and_read_when_it_fills() -> None:
    board, stored, writer = Board(), Stored(), MailboxWriter()
    payloads = [b"one" * 300, b"two"]  # "one" takes slots 0-1
    write_all(board, writer, payloads, T0, skip=frozenset({0}))  # its puts keep failing
    reader = stored.reader()
    run = drive(reader, board, stored, T0)
    assert run.done == PollDone(0, 0) and run.delivered == []
    run = drive(reader, board, stored, T0 + HOLE_GRACE - 1)
    assert run.delivered == [] and stored.index == 0
    run = drive(reader, board, stored, T0 + HOLE_GRACE)  # both its slots at once
    assert run.delivered == [b"two"]
    holes = {0: T0 + HOLE_GRACE, 1: T0 + HOLE_GRACE}
    assert stored.holes == holes
    kinds = [type(a) for a in run.actions]
    assert kinds.index(SaveHoles) < kinds.index(SaveIndex)  # remembered before passed over
    run = drive(reader, board, stored, T0 + HOLE_GRACE + 15)
    assert run.delivered == [] and stored.holes == holes  # still awaited
    board.write(writer.frame_puts(0, payloads[0], T0 + 900))
    run = drive(reader, board, stored, T0 + 1000)
    assert run.delivered == [payloads[0]] and stored.holes == {}
    delivered = [a for a in run.actions if isinstance(a, Deliver)]
    assert delivered == [Deliver(payloads[0], 0, recovered=True)]
    assert drive(reader, board, stored, T0 + 1015).delivered == []


def test_a_frame_missing_a_middle_part_is_read_again_from_its_first_slot() -> None:
    board, stored, writer = Board(), Stored(), MailboxWriter()
    payloads = [bytes(range(256)) * 9, b"next"]  # slots 0-2, then 3
    write_all(board, writer, payloads, T0)
    del board.slots[1]  # that put failed
    reader = stored.reader()
    assert drive(reader, board, stored, T0).delivered == []
    assert drive(reader, board, stored, T0 + HOLE_GRACE).delivered == [b"next"]
    assert stored.holes == {0: T0 + HOLE_GRACE}  # the frame's first slot, not the empty one
    board.write(writer.frame_puts(0, payloads[0], T0 + 300))
    assert drive(reader, board, stored, T0 + 300).delivered == [payloads[0]]


def test_a_hole_never_filled_is_forgotten_after_a_day() -> None:
    board, writer = Board(), MailboxWriter()
    stored = Stored(index=1, holes={0: T0})
    reader = stored.reader()
    assert drive(reader, board, stored, T0 + HOLE_MEMORY - 1).fetches[0] == (0,)
    assert stored.holes == {0: T0}
    run = drive(reader, board, stored, T0 + HOLE_MEMORY)
    assert stored.holes == {} and SaveHoles({}) in run.actions
    board.write(writer.frame_puts(0, b"too late", T0 + HOLE_MEMORY))
    run = drive(reader, board, stored, T0 + HOLE_MEMORY + 15)
    assert run.delivered == [] and run.fetches == [(1, 2, 3, 4)]


def test_a_hole_half_filled_is_kept_and_a_tombstoned_one_dropped() -> None:
    board, writer = Board(), MailboxWriter()
    board.write(writer.frame_puts(0, b"z" * 1000, T0)[:1])
    board.write(writer.tombstone_puts(5, 1, T0))
    stored = Stored(index=9, holes={0: T0, 5: T0})
    run = drive(stored.reader(), board, stored, T0 + 60)
    assert run.fetches[:3] == [(0,), (1,), (5,)]
    assert stored.holes == {0: T0} and run.delivered == []


def test_at_most_max_holes_are_remembered_the_oldest_forgotten() -> None:
    board, writer = Board(), MailboxWriter()
    count = MAX_HOLES + 3
    # Frames in the odd slots only: every even slot is a hole.
    for i in range(count):
        board.write(writer.frame_puts(2 * i + 1, bytes([i + 1]), T0))
    stored = Stored()
    reader = stored.reader()
    drive(reader, board, stored, T0)  # sees the first hole
    now = T0
    for _ in range(2 * count):  # each poll passes (at least) one more hole
        now += HOLE_GRACE
        drive(reader, board, stored, now)
        assert len(stored.holes) <= MAX_HOLES
    assert stored.index == 2 * count
    assert sorted(stored.holes) == [2 * i for i in range(count - MAX_HOLES, count)]


# ---------------------------------------------------------------------- duplicates, order, misuse


def test_answers_in_any_order_give_the_same_reading() -> None:
    board, payloads = Board(), frames(9, size=900)
    write_all(board, MailboxWriter(), payloads, T0)
    stored = Stored()
    run = drive(stored.reader(), board, stored, T0, order=lambda s: list(reversed(s)))
    assert run.delivered == payloads


def test_answers_not_awaited_are_ignored() -> None:
    board, stored = Board(), Stored()
    write_all(board, MailboxWriter(), frames(2), T0)
    reader = stored.reader()
    assert not reader.fetched(0, b"before any poll")
    reader.poll(T0)
    action = reader.next_action()
    assert action == Fetch((0, 1, 2, 3))
    with pytest.raises(LocalProtocolError):
        reader.next_action()  # answers first
    forged = msgspec.msgpack.encode([0, 1, b"forged"])
    assert not reader.fetched(9, forged)  # never asked for
    for slot in action.slots:
        assert reader.fetched(slot, board.read(slot))
        assert not reader.fetched(slot, forged)  # reported twice: the first answer counts
    delivered = []
    for _ in range(20):
        action = reader.next_action()
        if isinstance(action, Deliver):
            delivered.append(action.frame)
        if isinstance(action, PollDone):
            break
    assert delivered == frames(2)
    with pytest.raises(LocalProtocolError):
        reader.next_action()  # no poll
    with pytest.raises(LocalProtocolError):
        MailboxReader(-1)


# ---------------------------------------------------------------------- crashes


def test_a_delivery_that_failed_is_read_again_by_the_next_poll() -> None:
    board, stored = Board(), Stored()
    payloads = frames(3)
    write_all(board, MailboxWriter(), payloads, T0)
    reader = stored.reader()
    run = drive(reader, board, stored, T0, crash_after=4)  # dies in the second Deliver
    assert run.delivered == payloads[:2] and reader.polling
    assert reader.index == stored.index == 1
    run = drive(reader, board, stored, T0 + 1)  # the same reader, its poll abandoned
    assert run.delivered == payloads[1:]


def _scenario(board: Board, writer: MailboxWriter) -> list[bytes]:
    """Frames at slots 0-1, a hole at 2 skipped and then filled, frames after it."""
    payloads = [b"a" * 1000, b"hole", b"c", b"d" * 2000]
    write_all(board, writer, payloads, T0, skip=frozenset({1}))
    return payloads


def test_a_reader_rebuilt_after_a_crash_at_any_step_loses_no_frame() -> None:
    # How many actions the whole scenario takes without a crash.
    board, writer, stored = Board(), MailboxWriter(), Stored()
    payloads = _scenario(board, writer)
    reader = stored.reader()
    drive(reader, board, stored, T0)
    total = len(drive(reader, board, stored, T0 + HOLE_GRACE).actions)
    assert total > 8
    for crash_after in range(total + 1):
        board, writer, stored = Board(), MailboxWriter(), Stored()
        _scenario(board, writer)
        reader = stored.reader()
        seen = drive(reader, board, stored, T0).delivered
        seen += drive(reader, board, stored, T0 + HOLE_GRACE, crash_after=crash_after).delivered
        reader = stored.reader()  # the process restarts from what was saved
        board.write(writer.frame_puts(2, payloads[1], T0 + 200))
        now = T0 + 300
        for _ in range(4):  # a restarted reader waits out the grace again
            seen += drive(reader, board, stored, now).delivered
            now += HOLE_GRACE
        assert set(seen) == set(payloads), f"crash after {crash_after} actions: {seen}"


# ---------------------------------------------------------------------- everything at once


@dataclass
class Model:
    payloads: list[bytes]
    late: dict[int, int]  # frame -> poll after which its put finally succeeds
    never: set[int]  # frames whose puts never succeed


@st.composite
def models(draw: st.DrawFn) -> Model:
    sizes = draw(st.lists(st.integers(1, 3 * MAILBOX_PART), min_size=1, max_size=10))
    payloads = [bytes([n + 1]) * size for n, size in enumerate(sizes)]
    failing = draw(st.sets(st.integers(0, len(sizes) - 1), max_size=4))
    late = {n: draw(st.integers(0, 11)) for n in sorted(failing) if draw(st.booleans())}
    never = failing - set(late)
    # A poll that finds its whole first window empty stops there (idle polls stay cheap), so
    # a run of that many slots never stored holds up what follows until the sender stores
    # it (it retries every frame not stored): such frames are stored late in the model.
    run: list[int] = []
    for n in [*range(len(sizes)), None]:
        if n is not None and n in never:
            run.append(n)
            continue
        if sum(slot_count(sizes[m]) for m in run) >= MAILBOX_FIRST_WINDOW:
            late.update(dict.fromkeys(run, 11))
            never -= set(run)
        run = []
    return Model(payloads, late, never)


def _missing(misses: frozenset[tuple[int, int]]) -> Callable[[int, int], SlotContent | None]:
    def answer(slot: int, nth: int) -> SlotContent | None:
        return Slot.EMPTY if (slot, nth) in misses else None
    return answer


@dataclass(frozen=True)
class Step:
    """One poll of the lossy phase."""

    clock: float  # seconds since the last poll
    misses: frozenset[tuple[int, int]]  # (slot, nth fetch of it in the poll) that miss
    crash_after: int | None  # actions performed before the process dies, if it does
    reverse: bool  # a Fetch's answers come in reverse order
    lazy: bool  # answers are held back until the reader cannot go on without them
    acknowledge: bool  # afterwards the sender tombstones every frame delivered


steps = st.builds(Step, st.floats(30, 90),
                  st.frozensets(st.tuples(st.integers(0, 40), st.integers(1, 2)), max_size=6),
                  st.none() | st.integers(0, 30), st.booleans(), st.booleans(),
                  st.booleans())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models(), lossy=st.lists(steps, min_size=12, max_size=12))
def test_lossy_reordered_duplicated_crashing_reading_loses_and_invents_nothing(
        model: Model, lossy: list[Step]) -> None:
    """Polls every 30-90 s while lookups miss, answers come in any order, frames are stored
    late or never, delivered frames are tombstoned, and the reader crashes; then a calm
    phase. Every frame stored is delivered (at least once), none that was not."""
    board, writer, stored = Board(), MailboxWriter(), Stored()
    skip = frozenset(model.late) | frozenset(model.never)
    starts = write_all(board, writer, model.payloads, T0, skip=skip)
    reader = stored.reader()
    seen: list[bytes] = []
    now = T0
    for poll, step in enumerate(lossy):
        now += step.clock
        for n, after in model.late.items():
            if after == poll:
                board.write(writer.frame_puts(starts[n], model.payloads[n], now))
        run = drive(reader, board, stored, now, crash_after=step.crash_after,
                    answer=_missing(step.misses),
                    order=(lambda s: list(reversed(s))) if step.reverse else None,
                    lazy=step.lazy)
        seen += run.delivered
        if run.done is None:
            reader = stored.reader()  # restarted from what was saved
        if step.acknowledge:
            for n, frame in enumerate(model.payloads):  # the sender tombstones what arrived
                if frame in seen:
                    board.write(writer.tombstone_puts(starts[n], len(frame), now))
        assert len(stored.holes) <= MAX_HOLES
        assert set(seen) <= set(model.payloads)
    for _ in range(8):  # calm: no loss, no crash
        now += 61
        seen += drive(reader, board, stored, now).delivered
    expected = {f for n, f in enumerate(model.payloads) if n not in model.never}
    assert set(seen) == expected
    assert stored.index <= reserve(starts[-1], model.payloads[-1])[1]
