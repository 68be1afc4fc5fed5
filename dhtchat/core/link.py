"""The connection state of one contact, without I/O: status, glare, backoff, keepalive, presence.

Theory of operation (docs/protocol.md, "connection setup and glare"; the driver is
``dhtchat/app/links.py``):

* One :class:`LinkMachine` per accepted contact. The driver feeds it what happened (a presence
  record, an offer, an answer, a frame heard, a failure, a goodbye) with the time ``now`` in
  seconds, and asks it what to do (answer or ignore an offer, abort the pending offer, offer
  now, declare the connection dead). The machine never reads a clock and never touches a
  socket; the peer connection itself lives in the driver.
* Status: ``offline`` -> ``connecting`` (our offer or our answer to theirs) -> ``connected``;
  ``online`` is not stored but shown when a fresh presence record says so.
* Glare (both sides offer at once): while our own offer is still waiting for its answer, the
  side with the larger public key keeps its offer and ignores the other one; the smaller side
  drops its offer and answers. An offer the contact made before a message of theirs we already
  acted on (its offer we answer, its answer to ours; times on the contact's own clock) is
  stale: the losing side's dropped offer, delivered late, must not replace the connection
  being set up on the winning one. Any other offer (a restarted contact, a retry) replaces the
  connection under way.
* Backoff: a failed attempt waits ``backoff`` seconds (1 s, doubling to ``MAX_BACKOFF``) before
  the next automatic one; a connection resets it; a lost connection waits at least
  ``RECONNECT_GRACE`` (the contact's goodbye may still be on its way); a presence record of a
  new daemon run retries at once.
* Keepalive: a connection whose contact sends keepalives and from which nothing was heard for
  ``KEEPALIVE_TIMEOUT`` is dead; the contact shows as unreachable (its presence still says
  online) until its current run answers again or says goodbye.
* Goodbyes: an offline presence aborts our pending offer only if it is news: published by a
  run that had not already said goodbye, and not before the offer started. Right after a
  contact restarts, its old goodbye may still be the newest presence seen while the new run
  reads our offer from the DHT; that offer must not fail with "went offline".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from dhtchat.core.contacts import Presence

PRESENCE_TTL: Final = 1800
PRESENCE_FRESH: Final = PRESENCE_TTL + 120  # a presence record older than this is stale
MAX_BACKOFF: Final = 60.0
FIRST_BACKOFF: Final = 1.0
RECONNECT_GRACE: Final = 3.0  # after a connection was lost, before offering again
AUTO_OFFER_DEFER: Final = 20.0  # the larger key's head start for the smaller one
PRESENCE_POLL: Final = 30.0  # a missed presence push is found by a get this often
KEEPALIVE_TIMEOUT: Final = 5.0  # nothing heard for this long: the contact is unreachable

Status = Literal["offline", "online", "connecting", "connected"]
OfferDecision = Literal["answer", "keep_ours", "stale"]


@dataclass(frozen=True)
class PresenceUpdate:
    """What a presence record changes: ``accepted`` (newer than the last one), ``wake`` (run
    the reconnection check now) and ``abort`` (the pending offer's failure reason, or "")."""

    accepted: bool
    wake: bool = False
    abort: str = ""


@dataclass
class LinkMachine:
    """The connection state of one contact (``public_key``) seen from ``our_key``."""

    public_key: bytes
    our_key: bytes
    wanted: bool = False
    status: Status = "offline"
    reason: str = ""
    session: bytes = b""  # the offer/answer exchange under way or connected
    offering: bool = False  # our offer waits for its answer
    offer_started: float = 0.0
    connected_at: float = 0.0
    presence: Presence | None = None
    presence_seen: float = 0.0
    presence_checked: float = 0.0
    gone_session: bytes = b""  # the contact's daemon run that said goodbye
    lost_session: bytes = b""  # the contact's daemon run whose connection died unannounced
    last_seen: float = 0.0  # when that connection last carried anything
    next_attempt: float = 0.0
    backoff: float = FIRST_BACKOFF
    defer_until: float = 0.0  # automatic offers from the larger key wait until then
    their_latest_ms: int = 0  # creation time (their clock) of their newest offer/answer used
    heard: float = 0.0  # monotonic time of the last frame from the contact on this connection
    keepalive_heard: bool = False  # the contact sends keepalives (so their absence counts)

    # ------------------------------------------------------------------ derived state

    def online(self, now: float) -> bool:
        """A fresh presence record says "online", and that run did not say goodbye since."""
        return self.presence is not None and self.presence.online \
            and self.presence.session != self.gone_session \
            and now - self.presence_seen < PRESENCE_FRESH

    def unreachable(self, now: float) -> bool:
        """Not connected, and the connection to the contact's current run was lost without a
        goodbye (its presence record still says online)."""
        return self.status != "connected" and bool(self.lost_session) \
            and self.presence is not None and self.presence.session == self.lost_session \
            and self.online(now)

    @property
    def wins_glare(self) -> bool:
        """Our offer beats theirs when both are under way (the larger key keeps its own)."""
        return self.our_key > self.public_key

    # ------------------------------------------------------------------ presence

    def on_presence(self, presence: Presence, now: float) -> PresenceUpdate:
        """A verified presence record of the contact arrived."""
        old = self.presence
        if old is not None and presence.published <= old.published:
            return PresenceUpdate(accepted=False)
        restarted = old is not None and old.session != presence.session
        self.presence, self.presence_seen = presence, now
        waiting = self.wanted and self.status != "connected"
        if restarted:
            self.their_latest_ms = 0  # a new run (its clock may have moved back): start over
            if waiting:
                self.next_attempt = 0.0  # the contact came back: try again now
        abort = ""
        if not presence.online and self.offering and self.goodbye_is_news(presence):
            abort = "went offline"  # our offer waits for an answer that will not come
        return PresenceUpdate(accepted=True, wake=waiting, abort=abort)

    def goodbye_is_news(self, presence: Presence) -> bool:
        """An offline presence tells something about our pending offer only if its run had not
        already said goodbye and it was published after the offer started; an older goodbye
        may be all we have seen of a contact that restarted and is reading our offer now."""
        return presence.session != self.gone_session \
            and presence.published >= int(self.offer_started)

    def said_goodbye(self) -> str:
        """The contact's daemon run says it stops (over the connection). Returns the reason to
        abort a pending offer with, or ""."""
        if self.presence is not None:
            self.gone_session = self.presence.session
        return "is stopping" if self.offering else ""

    # ------------------------------------------------------------------ offers and answers

    def on_offer(self, created_ms: int) -> OfferDecision:
        """An offer from the contact, made at ``created_ms`` on its clock: answer it (replacing
        whatever is under way), keep our own pending offer (glare, and our key is the larger),
        or ignore it as stale (older than a message of theirs we already acted on)."""
        if created_ms < self.their_latest_ms:
            return "stale"
        if self.offering and self.status == "connecting" and self.wins_glare:
            return "keep_ours"
        return "answer"

    def accepts_answer(self, session: bytes) -> bool:
        """An answer is for us only while our offer with that session waits for one."""
        return self.offering and self.session == session

    def on_answer(self, session: bytes, created_ms: int) -> bool:
        """The contact's answer: True if it is the one our pending offer waits for (then
        their offers made before it are stale)."""
        if not self.accepts_answer(session):
            return False
        self.their_latest_ms = max(self.their_latest_ms, created_ms)
        return True

    def begin_offer(self, session: bytes, now: float) -> None:
        """We start an offer (session chosen by the driver)."""
        self.status, self.reason = "connecting", ""
        self.session, self.offering, self.offer_started = session, True, now

    def answered(self) -> None:
        """Our offer got its answer (or ended); a new offer of theirs is no longer glare."""
        self.offering = False

    def begin_answer(self, session: bytes, created_ms: int) -> None:
        """We answer their offer (made at ``created_ms`` on their clock)."""
        self.status, self.reason = "connecting", ""
        self.session, self.offering = session, False
        self.their_latest_ms = max(self.their_latest_ms, created_ms)

    # ------------------------------------------------------------------ outcomes

    def connected(self, now: float, mono: float) -> None:
        """The data channel is open (``mono``: the keepalive clock, see :meth:`hear`)."""
        self.status, self.reason = "connected", ""
        self.offering = False
        self.defer_until = 0.0
        self.connected_at = now
        self.lost_session = b""
        self.heard = mono
        self.backoff = FIRST_BACKOFF

    def closed(self, reason: str, status: Status = "offline") -> None:
        """The connection (or attempt) was closed; the driver closed the peer connection."""
        self.status = status
        self.reason = reason if status != "connected" else ""

    def failed(self, reason: str, now: float) -> None:
        """An attempt failed: wait ``backoff`` before the next automatic one, doubling it."""
        self.offering = False
        self.closed(reason)
        self.next_attempt = now + self.backoff
        self.backoff = min(MAX_BACKOFF, self.backoff * 2)

    def lost(self, reason: str, now: float, mono: float) -> bool:
        """The connection died without a goodbye. False (nothing changes) unless connected."""
        if self.status != "connected":
            return False
        self.lost_session = self.presence.session if self.presence is not None else b""
        self.last_seen = now - max(0.0, mono - self.heard)
        self.closed(reason)
        # Give the contact's goodbye (offline presence) time to arrive before offering again
        # to a daemon that may have stopped.
        self.next_attempt = now + max(self.backoff, RECONNECT_GRACE)
        return True

    # ------------------------------------------------------------------ keepalive

    def hear(self, mono: float, *, keepalive: bool = False) -> None:
        """A frame arrived from the contact over the connection. The keepalive times
        (``mono``) come from a monotonic clock, so a wall clock step cannot fake silence."""
        self.heard = mono
        if keepalive:
            self.keepalive_heard = True

    def new_connection(self) -> None:
        """A new peer connection: the contact's keepalives have not been heard on it yet."""
        self.keepalive_heard = False

    def silent_too_long(self, mono: float) -> bool:
        """Connected, the contact sends keepalives, and none came for KEEPALIVE_TIMEOUT."""
        return self.status == "connected" and self.keepalive_heard \
            and mono - self.heard > KEEPALIVE_TIMEOUT

    # ------------------------------------------------------------------ automatic offers

    def should_poll_presence(self, now: float, idle: bool) -> bool:
        """Time for a ``get`` of the presence channel (a missed push must not hide a contact);
        records the poll when it says yes."""
        if self.wanted and self.status != "connected" and idle \
                and now - self.presence_checked >= PRESENCE_POLL:
            self.presence_checked = now
            return True
        return False

    def should_offer(self, now: float, idle: bool) -> bool:
        """Time for an automatic offer: wanted, not connected, nothing under way, the backoff
        elapsed and the contact online. The larger key first gives the smaller one
        AUTO_OFFER_DEFER to offer (its auto-connect may be off), so both seldom offer at
        once; if they do, the glare rule keeps one."""
        if not (self.wanted and self.status != "connected" and idle
                and now >= self.next_attempt and self.online(now)):
            return False
        if self.wins_glare:
            if not self.defer_until:
                self.defer_until = now + AUTO_OFFER_DEFER
            if now < self.defer_until:
                return False
        self.defer_until = 0.0
        return True
