"""Call signalling state machine (sans-IO): one object per call, one per side.

Theory of operation (the SIP INVITE dialog of RFC 3261 §13-§15, reduced to what a 1:1 call
between two authenticated peers needs; the state-table style of h11):

* The caller sends ``invite`` (with the media offer and whether video is wanted). The callee
  answers ``ringing`` at once (its user is being alerted), then ``accept`` (with the media
  answer), ``decline`` or ``busy``. Either side may send ``hangup`` at any time: before the
  call is accepted it cancels it (the callee records a missed call).
* Signalling travels inside the contact's Double Ratchet over the authenticated data channel
  (see docs/protocol.md, "Calls"), so every action comes from the contact; the machine still
  refuses actions that make no sense in the current state (a :class:`RemoteProtocolError`,
  the call is not affected) and refuses our own illegal moves (a :class:`LocalProtocolError`).
* Time comes in as ``now``: an unanswered invite ends after ``ring_timeout`` seconds
  ("no answer" for the caller, "missed" for the callee); the driver calls :meth:`tick`.

States: ``inviting`` → ``ringing`` → ``connecting`` → ``active`` → ``ended``; the callee
starts in ``ringing``. ``ended`` carries the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, cast

from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError

RING_TIMEOUT: Final = 45.0

Action = Literal["invite", "ringing", "accept", "decline", "busy", "hangup"]
ACTIONS: Final[tuple[str, ...]] = ("invite", "ringing", "accept", "decline", "busy", "hangup")
State = Literal["inviting", "ringing", "connecting", "active", "ended"]
Direction = Literal["outgoing", "incoming"]

# (direction, state, action) -> next state, for actions we send ...
_SEND: Final[dict[tuple[Direction, State, Action], State]] = {
    ("incoming", "ringing", "accept"): "connecting",
    ("incoming", "ringing", "decline"): "ended",
    ("incoming", "ringing", "busy"): "ended",
}
# ... and for actions the contact sends.
_RECEIVE: Final[dict[tuple[Direction, State, Action], State]] = {
    ("outgoing", "inviting", "ringing"): "ringing",
    ("outgoing", "inviting", "accept"): "connecting",
    ("outgoing", "ringing", "accept"): "connecting",
    ("outgoing", "inviting", "decline"): "ended",
    ("outgoing", "ringing", "decline"): "ended",
    ("outgoing", "inviting", "busy"): "ended",
    ("outgoing", "ringing", "busy"): "ended",
}
_END_REASONS: Final[dict[str, str]] = {
    "decline": "declined", "busy": "busy",
}


@dataclass
class CallMachine:
    """The signalling state of one call on one side."""

    call_id: bytes
    direction: Direction
    started: float
    video: bool = False
    ring_timeout: float = RING_TIMEOUT
    state: State = field(init=False)
    reason: str = field(default="", init=False)
    answered_at: float | None = field(default=None, init=False)
    ended_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if len(self.call_id) != 16:
            raise LocalProtocolError("a call id is 16 bytes")
        self.state = "inviting" if self.direction == "outgoing" else "ringing"

    @property
    def ended(self) -> bool:
        """Whether the call is over."""
        return self.state == "ended"

    @property
    def missed(self) -> bool:
        """An incoming call that ended before we accepted it (and not by our decline)."""
        return self.direction == "incoming" and self.answered_at is None \
            and self.reason in ("missed", "cancelled by the caller")

    def send(self, action: Action, now: float) -> None:
        """Record an action we are about to send (raises if it is not allowed now)."""
        if action == "hangup":
            self._end("hung up" if self.answered_at is not None else "cancelled", now)
            return
        if action == "ringing" and self.direction == "incoming" and self.state == "ringing":
            return  # the alert: no state change
        key = (self.direction, self.state, action)
        if key not in _SEND:
            raise LocalProtocolError(f"cannot {action} a call that is {self.state}")
        self.state = _SEND[key]
        if action == "accept":
            self.answered_at = now
        elif self.state == "ended":
            self.reason = _END_REASONS.get(action, action)
            self.ended_at = now

    def receive(self, action: str, now: float) -> None:
        """Apply an action from the contact (raises :class:`RemoteProtocolError` if it makes
        no sense now; the call is unchanged then)."""
        if action not in ACTIONS:
            raise RemoteProtocolError(f"unknown call action {action!r}")
        if self.state == "ended":
            raise RemoteProtocolError(f"{action} for a call that already ended")
        if action == "hangup":
            if self.answered_at is None and self.direction == "incoming":
                self._end("cancelled by the caller", now)
            else:
                self._end("hung up by the contact" if self.answered_at is not None
                          else "cancelled by the contact", now)
            return
        key = (self.direction, self.state, cast(Action, action))
        if key not in _RECEIVE:
            raise RemoteProtocolError(f"{action} for a call that is {self.state}")
        self.state = _RECEIVE[key]
        if action == "accept":
            self.answered_at = now
        elif self.state == "ended":
            self.reason = _END_REASONS.get(action, action)
            self.ended_at = now

    def media_up(self, now: float) -> None:
        """The media connection is established."""
        if self.state != "connecting":
            raise LocalProtocolError(f"media up for a call that is {self.state}")
        self.state = "active"

    def fail(self, reason: str, now: float) -> None:
        """The media connection failed (or anything else ended the call locally)."""
        self._end(reason, now)

    def tick(self, now: float) -> bool:
        """Apply the ring timeout; returns True if the call just ended."""
        if self.state in ("inviting", "ringing") and now - self.started >= self.ring_timeout:
            self._end("no answer" if self.direction == "outgoing" else "missed", now)
            return True
        return False

    def _end(self, reason: str, now: float) -> None:
        if self.state != "ended":
            self.state = "ended"
            self.reason = reason
            self.ended_at = now
