"""The per-contact message stream, sans-IO: sequencing, cumulative acks, retransmit timing,
the receive reorder window and duplicate suppression.

Theory of operation
-------------------
Each direction of a contact pair is a stream of numbered payloads (the TCP/SCTP idea, end to
end across restarts). :class:`Outbox` is the sending half: :meth:`Outbox.queue` gives a payload
the next sequence number; the driver encrypts it into a *frame*; :meth:`Outbox.transmit`
says which frames go out now (never sent in this run, or unacknowledged for
``retransmit_after`` seconds); a cumulative ack ("I have every payload up to N",
:meth:`Outbox.on_ack`) removes them. :class:`Inbox` is the receiving half: it admits each
sequence number once (:meth:`Inbox.offer`), only inside a window of ``window`` numbers past
the next expected one, advances the in-order position over what is stored, and says when the
cumulative ack is due (``ack_delay`` after the first unacknowledged payload, one ack per
burst).

In the manner of h11 the machines do no I/O and read no clock: ``now`` is passed in, and they
return what to do (:class:`SendFrame`, :class:`Acked`, :class:`SendAck`, :class:`Offer`
verdicts, delivered sequence numbers). The driver (:mod:`dhtchat.app.messenger`) persists.

Crash safety is explicit: the machines only act on what the driver reports *committed*.

* Sender: ``queue`` -> commit the payload and the next sequence number -> ``committed`` ->
  encrypt -> commit the frame with the ratchet state that produced it -> ``framed`` -> only
  now may :meth:`Outbox.transmit` hand the frame out. An uncommitted payload is never sent
  (a crash cannot lose a message the peer has, or leave a gap the peer waits for), and a
  frame is never sent before its ratchet state is durable (a restart cannot encrypt with the
  same message key twice). :meth:`Outbox.uncommitted` is what the next transaction must
  write, in order; :meth:`Outbox.rollback` forgets it if that transaction failed.
* Receiver: ``offer`` -> decrypt -> commit the payload, the ratchet state and the new
  in-order position (:meth:`Inbox.next_after`) in one transaction -> ``stored``. Only stored
  payloads count towards the ack, so an ack never covers a payload a crash could lose; a
  crash after the commit and before the ack is answered by the sender's retransmission,
  which :meth:`Inbox.offer` recognises as a duplicate (and re-acks).

Both halves are rebuilt after a restart from exactly the persisted state
(:meth:`Outbox.restore`, :class:`Inbox` with the stored out-of-order numbers).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

RETRANSMIT_AFTER: Final = 10.0  # an unacknowledged frame goes again after this long
ACK_DELAY: Final = 0.05  # the cumulative ack waits this long, so a burst gets one ack
MAX_REORDER: Final = 1000  # frames further ahead of the next expected one are not admitted


@dataclass(frozen=True)
class Queued:
    """A payload in the outbox: its sequence number, bytes and (once committed) frame."""

    seq: int
    payload: bytes
    frame: bytes | None = None


@dataclass(frozen=True)
class SendFrame:
    """Send this committed frame now (``attempt`` 0: the first time in this run)."""

    seq: int
    frame: bytes
    attempt: int


@dataclass(frozen=True)
class Acked:
    """The contact acknowledged every payload up to ``through`` (``seqs`` left the outbox)."""

    through: int
    seqs: tuple[int, ...]


@dataclass(frozen=True)
class SendAck:
    """Send the cumulative ack ``ack`` (every payload up to it is stored)."""

    ack: int


class Offer(enum.Enum):
    """What to do with an arriving frame's sequence number."""

    CONTROL = "control"  # seq 0: unsequenced (ack, read, typing...), always handled
    ACCEPT = "accept"  # new: decrypt and store it, then report stored() or abandon()
    DUPLICATE = "duplicate"  # already stored or being stored: drop it (an ack is due again)
    TOO_FAR = "too_far"  # beyond the window: drop it, the sender retransmits it later


@dataclass
class _Entry:
    seq: int
    payload: bytes
    committed: bool = False
    frame: bytes | None = None  # committed with the ratchet state that produced it
    sent_at: float | None = None  # last transmission in this run
    sends: int = 0


class Outbox:
    """The sending half of one contact's stream."""

    def __init__(self, next_seq: int = 1, acked: int = 0, *,
                 retransmit_after: float = RETRANSMIT_AFTER) -> None:
        if next_seq < 1 or not 0 <= acked < next_seq:
            raise ValueError("need 0 <= acked < next_seq")
        self._entries: dict[int, _Entry] = {}  # insertion order is sequence order
        # Indexes over the entries, so that each call costs what it returns, not the size of
        # the outbox (thousands of entries while a burst is out). Dicts as ordered sets:
        self._uncommitted: dict[int, None] = {}  # by sequence number (always the newest)
        self._unframed: dict[int, None] = {}  # no frame yet, by sequence number
        self._unsent: dict[int, None] = {}  # framed, not sent in this run
        self._sent: dict[int, None] = {}  # framed and sent, by the time of the last send
        self._next_seq = next_seq
        self._committed_next = next_seq  # the next_seq a restart would see
        self.acked = acked
        self.retransmit_after = retransmit_after

    @classmethod
    def restore(cls, next_seq: int, acked: int, entries: Iterable[Queued], *,
                retransmit_after: float = RETRANSMIT_AFTER) -> Outbox:
        """The outbox as persisted: the next sequence number, the highest ack and the
        unacknowledged entries (with their frames where committed)."""
        ordered = sorted(entries, key=lambda e: e.seq)
        if len({e.seq for e in ordered}) != len(ordered) or (ordered and ordered[0].seq < 1):
            raise ValueError("outbox entries need distinct sequence numbers >= 1")
        if ordered:  # the entries are the truth: the counters cannot contradict them
            next_seq = max(next_seq, ordered[-1].seq + 1)
            acked = min(acked, ordered[0].seq - 1)
        outbox = cls(next_seq, max(0, min(acked, next_seq - 1)),
                     retransmit_after=retransmit_after)
        for entry in ordered:
            outbox._entries[entry.seq] = _Entry(entry.seq, entry.payload, True, entry.frame)
            if entry.frame is None:
                outbox._unframed[entry.seq] = None
            else:
                outbox._unsent[entry.seq] = None
        return outbox

    @property
    def next_seq(self) -> int:
        """The sequence number the next :meth:`queue` gives (persist it with the payloads)."""
        return self._next_seq

    def __len__(self) -> int:
        return len(self._entries)

    def seqs(self) -> list[int]:
        """Unacknowledged sequence numbers, in order."""
        return list(self._entries)

    def queue(self, build: Callable[[int], bytes]) -> int:
        """Give the next sequence number to the payload ``build(seq)``; it is uncommitted
        until :meth:`committed`."""
        seq = self._next_seq
        self._entries[seq] = _Entry(seq, build(seq))
        self._uncommitted[seq] = None
        self._unframed[seq] = None
        self._next_seq += 1
        return seq

    def uncommitted(self) -> list[Queued]:
        """Queued payloads the next transaction must write (with ``next_seq``), in order."""
        return [Queued(seq, self._entries[seq].payload) for seq in self._uncommitted]

    def committed(self, through: int | None = None) -> None:
        """The transaction holding the payloads up to ``through`` (default: all) committed."""
        last = self._next_seq - 1 if through is None else through
        for seq in list(self._uncommitted):
            if seq > last:
                break
            self._entries[seq].committed = True
            del self._uncommitted[seq]
        self._committed_next = max(self._committed_next, min(last + 1, self._next_seq))

    def rollback(self) -> list[int]:
        """The transaction failed: forget every uncommitted payload (they are the newest);
        returns their sequence numbers."""
        dropped = list(self._uncommitted)
        for seq in dropped:
            del self._entries[seq]
            self._unframed.pop(seq, None)
        self._uncommitted.clear()
        self._next_seq = self._committed_next
        return dropped

    def to_encrypt(self, *, uncommitted: bool = False) -> list[Queued]:
        """Committed payloads without a frame, in order (encrypt them in this order);
        ``uncommitted``: queued ones too, for a transaction that commits the payloads and
        their frames together (:meth:`framed` after it)."""
        entries = (self._entries[seq] for seq in self._unframed)
        return [Queued(e.seq, e.payload) for e in entries if e.committed or uncommitted]

    def needs_frames(self) -> bool:
        """Whether a committed payload waits for its frame."""
        return any(self._entries[seq].committed for seq in self._unframed)

    def has_frames(self) -> bool:
        """Whether an unacknowledged payload has its frame."""
        return len(self._entries) > len(self._unframed)

    def holds(self, entry: Queued) -> bool:
        """Whether ``entry`` is still queued as it was (not acknowledged, not rolled back and
        its number given to another payload)."""
        current = self._entries.get(entry.seq)
        return current is not None and current.payload is entry.payload

    def framed(self, seq: int, frame: bytes) -> None:
        """The frame of ``seq`` was committed together with the ratchet state."""
        entry = self._entries.get(seq)
        if entry is None:
            return  # acknowledged meanwhile (a reset raced an ack)
        if not entry.committed:
            raise ValueError(f"payload {seq} framed before it was committed")
        if entry.frame is None:
            del self._unframed[seq]
            self._unsent[seq] = None
        entry.frame = frame

    def payload(self, seq: int) -> bytes:
        """The payload of an unacknowledged sequence number."""
        return self._entries[seq].payload

    def frame(self, seq: int) -> bytes | None:
        """The committed frame of an unacknowledged payload, if any."""
        entry = self._entries.get(seq)
        return None if entry is None else entry.frame

    def due(self, now: float, *, force: bool = False) -> list[int]:
        """Framed payloads to transmit now: never sent in this run, or sent
        ``retransmit_after`` ago without an ack (``force``: every framed one)."""
        if force:
            return [e.seq for e in self._entries.values() if e.frame is not None]
        overdue = []
        for seq in self._sent:  # oldest send first: stop at the first one not due
            sent_at = self._entries[seq].sent_at
            if sent_at is None or now - sent_at < self.retransmit_after:
                break
            overdue.append(seq)
        if not overdue:
            return list(self._unsent)
        return sorted([*self._unsent, *overdue])

    def sent(self, seq: int, now: float) -> int:
        """``seq`` was transmitted at ``now``; returns how many times before (0: first)."""
        entry = self._entries[seq]
        attempt = entry.sends
        entry.sends += 1
        entry.sent_at = now
        self._unsent.pop(seq, None)
        self._sent.pop(seq, None)
        newest = next(reversed(self._sent), None)
        self._sent[seq] = None  # now the newest send...
        if newest is not None and (self._entries[newest].sent_at or 0.0) > now:
            # ... unless the clock went back: keep the order by time of the last send
            order = sorted(self._sent, key=lambda s: self._entries[s].sent_at or 0.0)
            self._sent = dict.fromkeys(order)
        return attempt

    def transmit(self, now: float, *, force: bool = False) -> list[SendFrame]:
        """:meth:`due` frames, marked as sent at ``now``."""
        out = []
        for seq in self.due(now, force=force):
            frame = self._entries[seq].frame
            assert frame is not None
            out.append(SendFrame(seq, frame, self.sent(seq, now)))
        return out

    def next_deadline(self) -> float | None:
        """When the earliest sent, unacknowledged frame is due again (None: nothing sent)."""
        oldest = next(iter(self._sent), None)
        if oldest is None:
            return None
        sent_at = self._entries[oldest].sent_at
        assert sent_at is not None  # (an entry in _sent was sent)
        return sent_at + self.retransmit_after

    def on_ack(self, ack: int) -> Acked | None:
        """A cumulative ack arrived; it cannot cover what was never committed (a confused
        or hostile peer), so it is capped there. None if it acknowledges nothing new."""
        ack = min(ack, self._committed_next - 1)
        if ack <= self.acked:
            return None
        self.acked = ack
        gone: list[int] = []
        for seq in self._entries:  # in sequence order: the acknowledged ones come first
            if seq > ack:
                break
            gone.append(seq)
        for seq in gone:
            del self._entries[seq]
            self._unframed.pop(seq, None)
            self._unsent.pop(seq, None)
            self._sent.pop(seq, None)
        return Acked(ack, tuple(gone))

    def reset(self) -> None:
        """The contact lost our session: every frame is dropped (encrypt them again, then
        send them as new)."""
        for entry in self._entries.values():
            entry.frame = None
            entry.sent_at = None
            entry.sends = 0
        self._unframed = dict.fromkeys(self._entries)
        self._unsent.clear()
        self._sent.clear()


class Inbox:
    """The receiving half of one contact's stream."""

    def __init__(self, next_expected: int = 1, stored: Iterable[int] = (), *,
                 window: int = MAX_REORDER, ack_delay: float = ACK_DELAY) -> None:
        if next_expected < 1 or window < 1:
            raise ValueError("need next_expected >= 1 and window >= 1")
        self._next = next_expected
        self._ahead = {s for s in stored if s >= next_expected}  # stored out of order
        self._pending: set[int] = set()  # admitted, not yet stored or abandoned
        self.window = window
        self.ack_delay = ack_delay
        self._ack_at: float | None = None
        self._advance()

    @property
    def next_expected(self) -> int:
        """The lowest sequence number not stored yet."""
        return self._next

    @property
    def ack(self) -> int:
        """The cumulative ack: every payload up to it is stored."""
        return self._next - 1

    def offer(self, seq: int, now: float) -> Offer:
        """An arriving frame's sequence number: admit it once, inside the window."""
        if seq == 0:
            return Offer.CONTROL
        if seq < self._next or seq in self._ahead or seq in self._pending:
            self._want_ack(now)  # a retransmission: our ack was lost (or is on its way)
            return Offer.DUPLICATE
        if seq >= self._next + self.window:
            return Offer.TOO_FAR
        self._pending.add(seq)
        return Offer.ACCEPT

    def abandon(self, seq: int) -> None:
        """An admitted frame was not stored (it did not decrypt, or the commit failed)."""
        self._pending.discard(seq)

    def next_after(self, seqs: Iterable[int]) -> int:
        """The in-order position once ``seqs`` are stored too (commit it with them)."""
        have = self._ahead | set(seqs)
        position = self._next
        while position in have:
            position += 1
        return position

    def stored(self, seqs: Iterable[int], now: float) -> list[int]:
        """These admitted payloads were committed; returns the sequence numbers that became
        deliverable in order (an ack is due ``ack_delay`` from now)."""
        before = self._next
        for seq in seqs:
            self._pending.discard(seq)
            if seq >= self._next:
                self._ahead.add(seq)
        self._advance()
        self._want_ack(now)
        return list(range(before, self._next))

    def _advance(self) -> None:
        while self._next in self._ahead:
            self._ahead.discard(self._next)
            self._next += 1

    def request_ack(self, now: float) -> None:
        """The driver has more to say in the ack (a read receipt): send it ``ack_delay``
        from now, with whatever else arrives meanwhile."""
        self._want_ack(now)

    def _want_ack(self, now: float) -> None:
        if self._ack_at is None:
            self._ack_at = now + self.ack_delay

    def ack_deadline(self) -> float | None:
        """When the pending ack is due (None: none pending)."""
        return self._ack_at

    def poll_ack(self, now: float) -> SendAck | None:
        """The cumulative ack, if one is due at ``now``."""
        if self._ack_at is None or now < self._ack_at:
            return None
        self._ack_at = None
        return SendAck(self.ack)

    def acked_now(self) -> SendAck:
        """An ack sent for another reason (a connection came up, a read receipt): it covers
        everything stored, so no delayed one is pending any more."""
        self._ack_at = None
        return SendAck(self.ack)
