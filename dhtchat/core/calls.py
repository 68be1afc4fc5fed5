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
* The SAS nonces (:mod:`dhtchat.core.sas`, a ZRTP-style hash commitment, RFC 6189
  §4.4.1.1): each machine is given its own fresh random ``nonce`` (injected). The caller
  sends :attr:`CallMachine.commitment` in the invite; the callee's machine is built with
  that commitment and sends its own nonce in ``accept``; the caller may :meth:`reveal` its
  nonce only after that accept; the callee checks the reveal with :meth:`receive_reveal`.
  A violation of this order, a missing nonce or a reveal that does not open the commitment
  ends the call (the error says why; the driver hangs up), and an answered call whose
  caller never reveals ends after ``reveal_timeout``. :attr:`sas_nonces` gives the two
  nonces once both are known.

States: ``inviting`` → ``ringing`` → ``connecting`` → ``active`` → ``ended``; the callee
starts in ``ringing``. ``ended`` carries the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, cast

from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.sas import (
    COMMITMENT_BYTES,
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    check_commitment,
    commitment,
)

RING_TIMEOUT: Final = 45.0
REVEAL_TIMEOUT: Final = 20.0
"""Seconds after our accept within which the caller must reveal its SAS nonce."""

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
    nonce: bytes = field(kw_only=True, repr=False)
    """Our SAS nonce: fresh random bytes for this call, 16-64 (required)."""
    peer_commitment: bytes = field(default=b"", kw_only=True)
    """Incoming: the caller's commitment to its nonce, from the invite (required)."""
    reveal_timeout: float = field(default=REVEAL_TIMEOUT, kw_only=True)
    state: State = field(init=False)
    reason: str = field(default="", init=False)
    answered_at: float | None = field(default=None, init=False)
    ended_at: float | None = field(default=None, init=False)
    peer_nonce: bytes = field(default=b"", init=False, repr=False)
    revealed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if len(self.call_id) != 16:
            raise LocalProtocolError("a call id is 16 bytes")
        if not MIN_NONCE_BYTES <= len(self.nonce) <= MAX_NONCE_BYTES:
            raise LocalProtocolError(
                f"a call needs a random SAS nonce of {MIN_NONCE_BYTES}-{MAX_NONCE_BYTES} bytes")
        if self.direction == "incoming" and len(self.peer_commitment) != COMMITMENT_BYTES:
            raise RemoteProtocolError("the invite carries no commitment to a SAS nonce")
        self.state = "inviting" if self.direction == "outgoing" else "ringing"

    @property
    def commitment(self) -> bytes:
        """Outgoing: the commitment to our nonce, for the invite."""
        if self.direction != "outgoing":
            raise LocalProtocolError("only the caller commits to its SAS nonce")
        return commitment(self.nonce)

    @property
    def sas_nonces(self) -> tuple[bytes, bytes] | None:
        """``(caller's nonce, callee's nonce)`` once both are known (the callee: after a
        reveal that opened the commitment), else None."""
        if not self.peer_nonce or self.answered_at is None:
            return None
        if self.direction == "outgoing":
            return self.nonce, self.peer_nonce
        return self.peer_nonce, self.nonce

    @property
    def awaiting_reveal(self) -> bool:
        """Incoming and accepted, but the caller has not revealed its nonce yet."""
        return self.direction == "incoming" and self.answered_at is not None \
            and not self.peer_nonce and not self.ended

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

    def receive(self, action: str, now: float, *, nonce: bytes = b"") -> None:
        """Apply an action from the contact (raises :class:`RemoteProtocolError` if it makes
        no sense now; the call is unchanged then). ``nonce`` is the callee's SAS nonce that
        an ``accept`` carries: an accept without a valid one ends the call (and raises)."""
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
        if action == "accept" and not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            self._end("refused: the answer carries no valid SAS nonce", now)
            raise RemoteProtocolError(self.reason)
        self.state = _RECEIVE[key]
        if action == "accept":
            self.answered_at = now
            self.peer_nonce = nonce
        elif self.state == "ended":
            self.reason = _END_REASONS.get(action, action)
            self.ended_at = now

    def reveal(self, now: float) -> bytes:
        """Outgoing: our nonce, to send now that the callee's nonce has arrived (raises
        :class:`LocalProtocolError` before the accept: revealing earlier would let a callee
        in the middle choose its nonce knowing ours)."""
        if self.direction != "outgoing" or self.answered_at is None or self.ended:
            raise LocalProtocolError(f"cannot reveal the SAS nonce of a call that is "
                                     f"{self.state}")
        self.revealed = True
        return self.nonce

    def receive_reveal(self, nonce: bytes, now: float) -> None:
        """Incoming: the caller's revealed nonce. Raises :class:`RemoteProtocolError`; a
        reveal before our accept or one that does not open the invite's commitment ends the
        call (a repeated or late one changes nothing)."""
        if self.direction != "incoming":
            raise RemoteProtocolError("only the caller reveals a SAS nonce")
        if self.ended:
            raise RemoteProtocolError("SAS nonce for a call that already ended")
        if self.peer_nonce:
            raise RemoteProtocolError("the caller revealed its SAS nonce already")
        if self.answered_at is None:
            self._end("refused: the caller revealed its SAS nonce before our answer", now)
            raise RemoteProtocolError(self.reason)
        try:
            check_commitment(self.peer_commitment, nonce)
        except RemoteProtocolError:
            self._end("refused: the caller's SAS nonce does not open its commitment "
                      "(possible man in the middle)", now)
            raise RemoteProtocolError(self.reason) from None
        self.peer_nonce = nonce

    def media_up(self, now: float) -> None:
        """The media connection is established."""
        if self.state != "connecting":
            raise LocalProtocolError(f"media up for a call that is {self.state}")
        self.state = "active"

    def fail(self, reason: str, now: float) -> None:
        """The media connection failed (or anything else ended the call locally)."""
        self._end(reason, now)

    def tick(self, now: float) -> bool:
        """Apply the ring and reveal timeouts; returns True if the call just ended."""
        if self.state in ("inviting", "ringing") and now - self.started >= self.ring_timeout:
            self._end("no answer" if self.direction == "outgoing" else "missed", now)
            return True
        if self.awaiting_reveal and self.answered_at is not None \
                and now - self.answered_at >= self.reveal_timeout:
            self._end("refused: the caller did not reveal its SAS nonce", now)
            return True
        return False

    def _end(self, reason: str, now: float) -> None:
        if self.state != "ended":
            self.state = "ended"
            self.reason = reason
            self.ended_at = now
