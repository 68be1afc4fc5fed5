"""The per-contact stream machines (dhtchat.messaging.outbox) on a manual clock: sequencing,
cumulative acks, retransmits, the reorder window and duplicates, and crashes between any two
steps (the machines rebuilt from what was persisted). Runs in seconds, no daemons."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtchat.messaging.outbox import (
    ACK_DELAY,
    RETRANSMIT_AFTER,
    Acked,
    Inbox,
    Offer,
    Outbox,
    Queued,
    SendAck,
)


def _payload(seq: int) -> bytes:
    return b"payload %d" % seq


def _ready(outbox: Outbox, count: int) -> list[int]:
    """Queue, commit and frame ``count`` payloads; returns their sequence numbers."""
    seqs = [outbox.queue(_payload) for _ in range(count)]
    outbox.committed()
    for entry in outbox.to_encrypt():
        outbox.framed(entry.seq, b"frame:" + entry.payload)
    return seqs


# ---------------------------------------------------------------------------- outbox


def test_sequence_numbers_are_consecutive_and_persisted_next_seq_continues() -> None:
    outbox = Outbox(next_seq=5, acked=4)
    assert [outbox.queue(_payload) for _ in range(3)] == [5, 6, 7]
    assert outbox.next_seq == 8
    assert [q.seq for q in outbox.uncommitted()] == [5, 6, 7]
    assert outbox.payload(6) == b"payload 6"


def test_nothing_is_sent_before_the_payload_and_its_frame_are_committed() -> None:
    outbox = Outbox()
    seq = outbox.queue(_payload)
    assert outbox.to_encrypt() == []  # not committed: not even encrypted
    with pytest.raises(ValueError, match="before it was committed"):
        outbox.framed(seq, b"frame")
    assert outbox.transmit(0.0, force=True) == []
    assert not outbox.needs_frames()
    outbox.committed()
    assert outbox.to_encrypt() == [Queued(seq, b"payload 1")] and outbox.needs_frames()
    assert outbox.transmit(0.0, force=True) == []  # committed, but no frame yet
    assert not outbox.has_frames()
    outbox.framed(seq, b"frame")
    assert outbox.has_frames() and not outbox.needs_frames()
    assert [(s.seq, s.frame, s.attempt) for s in outbox.transmit(0.0)] == [(1, b"frame", 0)]


def test_a_transaction_may_commit_payloads_and_frames_together() -> None:
    outbox = Outbox()
    outbox.queue(_payload)
    assert outbox.to_encrypt() == []  # not committed yet ...
    entry = outbox.to_encrypt(uncommitted=True)  # ... but it may be encrypted for the commit
    assert [e.seq for e in entry] == [1] and outbox.holds(entry[0])
    outbox.committed()  # the payload and its frame in one transaction
    outbox.framed(1, b"frame")
    assert [s.seq for s in outbox.transmit(0.0)] == [1]
    outbox.rollback()
    outbox.on_ack(1)
    assert not outbox.holds(entry[0])  # acknowledged: a late frame is not recorded
    outbox.queue(_payload)
    assert not outbox.holds(Queued(2, b"another payload"))


def test_a_failed_commit_forgets_the_payloads_and_reuses_their_numbers() -> None:
    outbox = Outbox()
    _ready(outbox, 2)
    assert [outbox.queue(_payload) for _ in range(2)] == [3, 4]
    assert outbox.rollback() == [3, 4]
    assert outbox.seqs() == [1, 2] and outbox.next_seq == 3
    assert outbox.queue(_payload) == 3  # no gap the contact would wait for


def test_frames_are_retransmitted_only_after_the_timeout_or_when_forced() -> None:
    outbox = Outbox()
    _ready(outbox, 3)
    assert [s.seq for s in outbox.transmit(100.0)] == [1, 2, 3]
    assert outbox.transmit(100.0 + RETRANSMIT_AFTER - 0.01) == []
    assert outbox.next_deadline() == 100.0 + RETRANSMIT_AFTER
    again = outbox.transmit(100.0 + RETRANSMIT_AFTER)
    assert [(s.seq, s.attempt) for s in again] == [(1, 1), (2, 1), (3, 1)]
    assert [s.seq for s in outbox.transmit(100.0 + RETRANSMIT_AFTER, force=True)] == [1, 2, 3]


def test_a_cumulative_ack_removes_everything_up_to_it_and_stale_acks_nothing() -> None:
    outbox = Outbox()
    _ready(outbox, 5)
    outbox.transmit(0.0)
    assert outbox.on_ack(3) == Acked(3, (1, 2, 3))
    assert outbox.seqs() == [4, 5] and outbox.acked == 3
    assert outbox.on_ack(2) is None  # an old ack, reordered
    assert outbox.on_ack(3) is None
    assert [s.seq for s in outbox.transmit(RETRANSMIT_AFTER)] == [4, 5]


def test_an_ack_beyond_what_was_committed_is_capped() -> None:
    outbox = Outbox()
    _ready(outbox, 2)
    outbox.queue(_payload)  # 3: queued, not committed
    assert outbox.on_ack(1000) == Acked(2, (1, 2))
    assert outbox.seqs() == [3] and outbox.acked == 2


def test_a_session_reset_drops_every_frame() -> None:
    outbox = Outbox()
    _ready(outbox, 2)
    outbox.transmit(0.0)
    outbox.reset()
    assert outbox.transmit(0.0, force=True) == []
    assert [q.seq for q in outbox.to_encrypt()] == [1, 2]
    assert outbox.next_deadline() is None


def test_restore_continues_from_the_persisted_state() -> None:
    outbox = Outbox.restore(7, 4, [Queued(6, b"b", b"fb"), Queued(5, b"a", None)])
    assert outbox.seqs() == [5, 6] and outbox.next_seq == 7 and outbox.acked == 4
    assert outbox.to_encrypt() == [Queued(5, b"a")]
    assert [s.seq for s in outbox.transmit(0.0)] == [6]  # sent again after a restart
    # Counters that contradict the rows yield to them.
    odd = Outbox.restore(3, 9, [Queued(5, b"a", b"f")])
    assert odd.next_seq == 6 and odd.acked == 4
    with pytest.raises(ValueError):
        Outbox.restore(3, 0, [Queued(1, b"a"), Queued(1, b"b")])


# ---------------------------------------------------------------------------- inbox


def test_duplicates_are_recognised_below_ahead_and_in_progress() -> None:
    inbox = Inbox(next_expected=3, stored=[5])
    assert inbox.offer(2, 0.0) is Offer.DUPLICATE  # below the in-order position
    assert inbox.offer(5, 0.0) is Offer.DUPLICATE  # stored out of order
    assert inbox.offer(4, 0.0) is Offer.ACCEPT
    assert inbox.offer(4, 0.0) is Offer.DUPLICATE  # admitted, being stored
    inbox.abandon(4)  # it did not decrypt: a retransmission is admitted again
    assert inbox.offer(4, 0.0) is Offer.ACCEPT
    assert inbox.offer(0, 0.0) is Offer.CONTROL


def test_frames_beyond_the_window_are_not_admitted() -> None:
    inbox = Inbox(next_expected=10, window=4)
    assert inbox.offer(13, 0.0) is Offer.ACCEPT
    assert inbox.offer(14, 0.0) is Offer.TOO_FAR
    assert inbox.ack_deadline() is None  # nothing stored, nothing to acknowledge


def test_out_of_order_payloads_are_delivered_in_order() -> None:
    inbox = Inbox()
    for seq in (3, 2, 1):
        assert inbox.offer(seq, 0.0) is Offer.ACCEPT
    assert inbox.next_after([3]) == 1
    assert inbox.stored([3], 0.0) == []
    assert inbox.stored([2], 0.0) == []
    assert inbox.next_after([1]) == 4
    assert inbox.stored([1], 0.0) == [1, 2, 3]
    assert inbox.ack == 3 and inbox.next_expected == 4


def test_the_ack_waits_ack_delay_once_per_burst_and_again_for_a_duplicate() -> None:
    inbox = Inbox()
    inbox.offer(1, 10.0)
    inbox.stored([1], 10.0)
    inbox.offer(2, 10.01)
    inbox.stored([2], 10.01)
    assert inbox.ack_deadline() == 10.0 + ACK_DELAY  # the burst's first payload decides
    assert inbox.poll_ack(10.0 + ACK_DELAY / 2) is None
    assert inbox.poll_ack(10.0 + ACK_DELAY) == SendAck(2)
    assert inbox.poll_ack(11.0) is None  # one ack per burst
    assert inbox.offer(1, 20.0) is Offer.DUPLICATE  # our ack was lost: acknowledge again
    assert inbox.poll_ack(20.0 + ACK_DELAY) == SendAck(2)
    inbox.offer(3, 30.0)
    inbox.stored([3], 30.0)
    assert inbox.acked_now() == SendAck(3) and inbox.ack_deadline() is None
    inbox.request_ack(40.0)  # a read receipt to carry: the same ack again, delayed
    assert inbox.poll_ack(40.0) is None and inbox.poll_ack(40.0 + ACK_DELAY) == SendAck(3)


def test_the_window_is_rebuilt_from_what_was_stored() -> None:
    inbox = Inbox(next_expected=4, stored=[1, 4, 5, 7])
    assert inbox.next_expected == 6  # 4 and 5 were stored before the crash, in order
    assert inbox.offer(7, 0.0) is Offer.DUPLICATE
    assert inbox.offer(6, 0.0) is Offer.ACCEPT
    assert inbox.stored([6], 0.0) == [6, 7]


# ------------------------------------------------------- both ends, a lossy network, crashes


@dataclass
class _SenderDisk:
    """What the sending driver persists (the outbox rows and the conversation counters)."""

    next_seq: int = 1
    acked: int = 0
    rows: dict[int, tuple[bytes, bytes | None]] = field(default_factory=dict)


@dataclass
class _ReceiverDisk:
    """What the receiving driver persists (the stored messages and the in-order position)."""

    next_in: int = 1
    stored: dict[int, bytes] = field(default_factory=dict)


@dataclass
class _World:
    """Two drivers like the messenger's around the machines, a network that loses,
    duplicates and reorders, and a manual clock."""

    messages: list[bytes]
    now: float = 0.0
    sender_disk: _SenderDisk = field(default_factory=_SenderDisk)
    receiver_disk: _ReceiverDisk = field(default_factory=_ReceiverDisk)
    to_receiver: list[bytes] = field(default_factory=list)  # frames in flight
    to_sender: list[int] = field(default_factory=list)  # acks in flight
    accepted: list[int] = field(default_factory=list)  # admitted, decrypted, not committed
    sent_count: int = 0  # messages whose send returned (committed)
    writes: dict[int, int] = field(default_factory=dict)  # seq -> times the receiver stored it
    plain: dict[int, bytes] = field(default_factory=dict)  # decrypted, not committed

    def __post_init__(self) -> None:
        self.outbox = self._restore_outbox()
        self.inbox = self._restore_inbox()

    def _restore_outbox(self) -> Outbox:
        disk = self.sender_disk
        return Outbox.restore(disk.next_seq, disk.acked,
                              [Queued(s, p, f) for s, (p, f) in disk.rows.items()])

    def _restore_inbox(self) -> Inbox:
        disk = self.receiver_disk
        return Inbox(disk.next_in, disk.stored)

    # sender steps
    def queue(self) -> None:
        if self.sent_count + len(self.outbox.uncommitted()) < len(self.messages):
            index = self.sent_count + len(self.outbox.uncommitted())
            self.outbox.queue(lambda seq: b"%d:" % seq + self.messages[index])

    def commit_queued(self) -> None:
        pending = self.outbox.uncommitted()
        for entry in pending:
            self.sender_disk.rows[entry.seq] = (entry.payload, None)
        self.sender_disk.next_seq = self.outbox.next_seq
        self.outbox.committed()
        self.sent_count += len(pending)

    def encrypt(self) -> None:
        for entry in self.outbox.to_encrypt():
            frame = b"F" + entry.payload
            self.sender_disk.rows[entry.seq] = (entry.payload, frame)
            self.outbox.framed(entry.seq, frame)

    def transmit(self) -> None:
        self.to_receiver += [s.frame for s in self.outbox.transmit(self.now)]

    def take_ack(self, index: int) -> None:
        if self.to_sender:
            ack = self.to_sender.pop(index % len(self.to_sender))
            # The crash-safety promise: an ack covers only what the receiver committed.
            assert all(s in self.receiver_disk.stored for s in range(1, ack + 1)), ack
            acked = self.outbox.on_ack(ack)
            if acked is not None:
                for seq in acked.seqs:
                    del self.sender_disk.rows[seq]
                self.sender_disk.acked = acked.through

    def crash_sender(self) -> None:
        self.outbox = self._restore_outbox()  # uncommitted sends are lost: never returned

    # receiver steps
    def arrive(self, index: int) -> None:
        if not self.to_receiver:
            return
        frame = self.to_receiver.pop(index % len(self.to_receiver))
        payload = frame[1:]
        seq = int(payload.split(b":")[0])
        if self.inbox.offer(seq, self.now) is Offer.ACCEPT:
            self.accepted.append(seq)
            self.plain[seq] = payload

    def commit_received(self) -> None:
        if not self.accepted:
            return
        seqs, self.accepted = self.accepted, []
        disk = self.receiver_disk
        disk.next_in = self.inbox.next_after(seqs)
        for seq in seqs:
            disk.stored[seq] = self.plain.pop(seq)
            self.writes[seq] = self.writes.get(seq, 0) + 1
        self.inbox.stored(seqs, self.now)

    def ack(self) -> None:
        sent = self.inbox.poll_ack(self.now)
        if sent is not None:
            self.to_sender.append(sent.ack)

    def crash_receiver(self) -> None:
        self.accepted = []
        self.plain.clear()
        self.inbox = self._restore_inbox()

    # the network
    def lose(self, index: int) -> None:
        if self.to_receiver:
            self.to_receiver.pop(index % len(self.to_receiver))

    def duplicate(self, index: int) -> None:
        if self.to_receiver:
            self.to_receiver.append(self.to_receiver[index % len(self.to_receiver)])

    def lose_ack(self, index: int) -> None:
        if self.to_sender:
            self.to_sender.pop(index % len(self.to_sender))

    def tick(self, seconds: float) -> None:
        self.now += seconds

    def fail_commit(self) -> None:
        """The transaction of the queued sends failed (their senders get the error)."""
        self.outbox.rollback()

    def settle(self, reverse: bool = False, twice: bool = False, each: bool = False,
               crash: bool = False) -> None:
        """The network heals (frames may still arrive in reverse order, each twice, the
        receiver committing each one, and crashing after every commit): run until every
        message is acknowledged."""
        for _ in range(20 * len(self.messages) + 100):
            while self.sent_count < len(self.messages):
                self.queue()
                self.commit_queued()
            self.encrypt()
            self.transmit()
            if twice:
                self.to_receiver = [f for f in self.to_receiver for _ in (0, 1)]
            while self.to_receiver:
                self.arrive(-1 if reverse else 0)
                if each or crash:
                    self.commit_received()
                if crash:
                    self.crash_receiver()
            self.commit_received()
            self.tick(ACK_DELAY)
            self.ack()
            if crash and not self.to_sender:  # the crash took the pending ack
                self.to_sender.append(self.inbox.acked_now().ack)
            while self.to_sender:
                self.take_ack(0)
            if not len(self.outbox):
                return
            self.tick(RETRANSMIT_AFTER)
        raise AssertionError("not settled")

    def check(self) -> None:
        disk = self.receiver_disk
        expected = [b"%d:" % (i + 1) + m for i, m in enumerate(self.messages)]
        in_order = [disk.stored[s] for s in range(1, disk.next_in)]
        assert in_order == expected  # every message, in order, each once
        assert disk.next_in == len(self.messages) + 1 and set(disk.stored) == set(
            range(1, len(self.messages) + 1))
        assert set(self.writes.values()) == {1}  # no message was stored twice
        assert not self.sender_disk.rows and not len(self.outbox)


_STEPS = st.lists(st.tuples(st.sampled_from([
    "queue", "commit_queued", "encrypt", "transmit", "take_ack", "crash_sender",
    "arrive", "commit_received", "ack", "crash_receiver", "lose", "duplicate", "lose_ack",
    "tick", "tick_long", "fail_commit"]), st.integers(0, 50)), max_size=150)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(count=st.integers(1, 12), steps=_STEPS, reverse=st.booleans(), twice=st.booleans(),
       each=st.booleans(), crash=st.booleans())
def test_exactly_once_in_order_through_loss_duplicates_reordering_and_crashes(
        count: int, steps: list[tuple[str, int]], reverse: bool, twice: bool, each: bool,
        crash: bool) -> None:
    world = _World([b"message %d" % i for i in range(count)])
    for name, index in steps:
        if name == "tick":
            world.tick(ACK_DELAY)
        elif name == "tick_long":
            world.tick(RETRANSMIT_AFTER)
        elif name in ("take_ack", "arrive", "lose", "duplicate", "lose_ack"):
            getattr(world, name)(index)
        else:
            getattr(world, name)()
    world.settle(reverse, twice, each, crash)
    world.check()


def test_a_lost_frame_is_retransmitted_and_the_later_ones_wait_for_it() -> None:
    world = _World([b"a", b"b", b"c"])
    for _ in range(3):
        world.queue()
    world.commit_queued()
    world.encrypt()
    world.transmit()
    world.lose(0)  # seq 1 is lost
    world.arrive(0)
    world.arrive(0)
    world.commit_received()
    assert world.inbox.ack == 0  # 2 and 3 are stored but wait for 1
    world.tick(RETRANSMIT_AFTER)
    world.transmit()
    world.arrive(0)  # the retransmission of 1 (2 and 3 again are duplicates)
    world.commit_received()
    assert world.inbox.ack == 3
    world.settle()
    world.check()


def test_a_receiver_crash_after_the_commit_is_answered_by_the_retransmission() -> None:
    world = _World([b"only"])
    world.queue()
    world.commit_queued()
    world.encrypt()
    world.transmit()
    world.arrive(0)
    world.commit_received()
    world.crash_receiver()  # before the ack went out
    assert world.to_sender == []
    world.tick(RETRANSMIT_AFTER)
    world.transmit()
    world.arrive(0)
    assert world.accepted == []  # a duplicate: not stored again ...
    world.tick(ACK_DELAY)
    world.ack()
    assert world.to_sender == [1]  # ... but acknowledged
    world.settle()
    world.check()


def test_a_sender_crash_before_the_commit_loses_only_the_unreturned_send() -> None:
    world = _World([b"first", b"second"])
    world.queue()
    world.crash_sender()  # the send never returned: the client sends it again
    assert world.sent_count == 0 and world.outbox.next_seq == 1
    world.settle()
    world.check()


# ---------------------------------------------------------------- the indexes (a model check)

class _NaiveOutbox:
    """The outbox's answers computed by scanning every entry (what the indexes replace)."""

    def __init__(self) -> None:
        self.entries: dict[int, dict[str, object]] = {}
        self.next_seq, self.acked, self.committed_next = 1, 0, 1

    def due(self, now: float, after: float) -> list[int]:
        return [s for s, e in self.entries.items() if e["frame"] is not None and (
            e["sent_at"] is None or now - float(e["sent_at"]) >= after)]  # type: ignore[arg-type]


# Weighted so that most runs queue, commit, frame, send and acknowledge several entries.
_OP = st.sampled_from(["queue", "commit", "encrypt", "transmit"] * 3
                      + ["ack", "ack", "rollback", "reset", "tick", "tick", "back"])
_OPS = st.lists(st.tuples(_OP, st.integers(0, 6)), min_size=5, max_size=80)


@given(ops=_OPS)
@settings(max_examples=1000, deadline=None)
def test_the_indexed_outbox_answers_as_a_scan_of_every_entry_would(
        ops: list[tuple[str, int]]) -> None:
    """Random operations (including a clock that goes back): every question the driver asks
    gets the answer a scan of all entries gives."""
    outbox, model, now = Outbox(retransmit_after=3.0), _NaiveOutbox(), 100.0
    for op, arg in ops:
        if op == "queue":
            for _ in range(arg + 1):
                seq = outbox.queue(lambda s: b"p%d" % s)
                model.entries[seq] = {"committed": False, "frame": None, "sent_at": None}
        elif op == "commit":
            outbox.committed()
            for e in model.entries.values():
                e["committed"] = True
            model.committed_next = outbox.next_seq
        elif op == "rollback":
            dropped = outbox.rollback()
            assert dropped == [s for s, e in model.entries.items() if not e["committed"]]
            for seq in dropped:
                del model.entries[seq]
        elif op == "encrypt":
            for entry in outbox.to_encrypt()[:arg + 1]:
                outbox.framed(entry.seq, b"f" + entry.payload)
                model.entries[entry.seq]["frame"] = b"f" + entry.payload
        elif op == "transmit":
            expected = model.due(now, 3.0)
            sent = outbox.transmit(now, force=arg == 6)
            if arg == 6:
                expected = [s for s, e in model.entries.items() if e["frame"] is not None]
            assert [f.seq for f in sent] == expected
            for frame in sent:
                model.entries[frame.seq]["sent_at"] = now
        elif op == "ack":
            through = min(outbox.acked + arg + 1, model.committed_next - 1)
            outbox.on_ack(outbox.acked + arg + 1)
            for seq in [s for s in model.entries if s <= through]:
                del model.entries[seq]
        elif op == "reset":
            outbox.reset()
            for e in model.entries.values():
                e["frame"], e["sent_at"] = None, None
        elif op == "tick":
            now += arg
        else:
            now -= arg
        assert outbox.seqs() == list(model.entries)
        assert [q.seq for q in outbox.to_encrypt()] == [
            s for s, e in model.entries.items() if e["committed"] and e["frame"] is None]
        assert [q.seq for q in outbox.to_encrypt(uncommitted=True)] == [
            s for s, e in model.entries.items() if e["frame"] is None]
        assert [q.seq for q in outbox.uncommitted()] == [
            s for s, e in model.entries.items() if not e["committed"]]
        assert outbox.has_frames() == any(e["frame"] is not None for e in model.entries.values())
        assert outbox.needs_frames() == any(
            e["committed"] and e["frame"] is None for e in model.entries.values())
        times = [float(e["sent_at"]) for e in model.entries.values()  # type: ignore[arg-type]
                 if e["sent_at"] is not None]
        assert outbox.next_deadline() == (min(times) + 3.0 if times else None)
        assert outbox.due(now) == model.due(now, 3.0)


def test_a_clock_that_goes_back_does_not_hide_the_earliest_retransmission() -> None:
    outbox = Outbox(retransmit_after=3.0)
    for _ in range(2):
        outbox.queue(lambda s: b"p%d" % s)
    outbox.committed()
    outbox.framed(1, b"f1")
    assert [f.seq for f in outbox.transmit(100.0)] == [1]
    outbox.framed(2, b"f2")
    assert [f.seq for f in outbox.transmit(90.0)] == [2]  # the clock went back 10 s
    assert outbox.next_deadline() == 93.0
    assert outbox.due(93.0) == [2]
    assert outbox.due(103.0) == [1, 2]
