"""The call signalling state machine, driven with a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtchat.core.calls import ACTIONS, REVEAL_TIMEOUT, RING_TIMEOUT, CallMachine
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.sas import commitment

CALL = bytes(16)
CALLER_NONCE = bytes(range(16))
CALLEE_NONCE = bytes(range(100, 116))


def pair(started: float = 0.0, **kwargs: object) -> tuple[CallMachine, CallMachine]:
    """A caller and the callee its invite created (with the caller's commitment)."""
    caller = CallMachine(CALL, "outgoing", started=started, nonce=CALLER_NONCE,
                         **kwargs)  # type: ignore[arg-type]
    callee = CallMachine(CALL, "incoming", started=started, nonce=CALLEE_NONCE,
                         peer_commitment=caller.commitment, **kwargs)  # type: ignore[arg-type]
    return caller, callee


def test_answered_call_and_hangup() -> None:
    caller, callee = pair(100.0, video=True)
    assert (caller.state, callee.state) == ("inviting", "ringing")
    callee.send("ringing", 100.2)
    caller.receive("ringing", 100.3)
    assert caller.state == "ringing"
    callee.send("accept", 105.0)
    caller.receive("accept", 105.1, nonce=callee.nonce)
    assert caller.state == callee.state == "connecting"
    assert caller.sas_nonces == (CALLER_NONCE, CALLEE_NONCE)
    assert callee.sas_nonces is None and callee.awaiting_reveal
    callee.receive_reveal(caller.reveal(105.2), 105.3)
    assert callee.sas_nonces == caller.sas_nonces and not callee.awaiting_reveal
    caller.media_up(105.5)
    callee.media_up(105.5)
    assert caller.state == "active"
    assert not caller.tick(105.5 + 10 * RING_TIMEOUT)  # no timeout once answered
    caller.send("hangup", 160.0)
    callee.receive("hangup", 160.1)
    assert caller.reason == "hung up" and callee.reason == "hung up by the contact"
    assert not callee.missed
    with pytest.raises(RemoteProtocolError):
        callee.receive("hangup", 161.0)  # already over


def test_ring_timeout_decline_busy_and_cancel() -> None:
    caller, callee = pair()
    assert not caller.tick(RING_TIMEOUT - 0.1)
    assert caller.tick(RING_TIMEOUT) and callee.tick(RING_TIMEOUT)
    assert caller.reason == "no answer" and callee.reason == "missed" and callee.missed

    for action, reason in (("decline", "declined"), ("busy", "busy")):
        caller, callee = pair()
        callee.send(action, 1.0)  # type: ignore[arg-type]
        caller.receive(action, 1.1)
        assert caller.reason == callee.reason == reason
        assert not callee.missed  # we chose not to answer

    caller, callee = pair()
    caller.send("hangup", 3.0)
    callee.receive("hangup", 3.1)
    assert caller.reason == "cancelled" and callee.missed


def test_illegal_moves_are_refused_and_change_nothing() -> None:
    caller = CallMachine(CALL, "outgoing", started=0.0, nonce=CALLER_NONCE)
    with pytest.raises(LocalProtocolError):
        caller.send("accept", 1.0)  # the caller cannot accept its own call
    with pytest.raises(RemoteProtocolError):
        caller.receive("invite", 1.0)
    with pytest.raises(RemoteProtocolError):
        caller.receive("teleport", 1.0)
    with pytest.raises(LocalProtocolError):
        caller.media_up(1.0)  # not accepted yet
    assert caller.state == "inviting"
    with pytest.raises(LocalProtocolError):
        caller.reveal(1.0)  # never before the callee's nonce arrived
    assert caller.state == "inviting" and not caller.revealed
    with pytest.raises(LocalProtocolError):
        CallMachine(b"short", "outgoing", started=0.0, nonce=CALLER_NONCE)
    for nonce in (b"", b"x" * 15, b"x" * 65):  # the driver must inject a real nonce
        with pytest.raises(LocalProtocolError):
            CallMachine(CALL, "outgoing", started=0.0, nonce=nonce)
    for committed in (b"", b"c" * 31):  # an invite without a commitment is refused
        with pytest.raises(RemoteProtocolError):
            CallMachine(CALL, "incoming", started=0.0, nonce=CALLEE_NONCE,
                        peer_commitment=committed)


def test_a_reveal_that_does_not_open_the_commitment_ends_the_call() -> None:
    caller, callee = pair()
    callee.send("accept", 1.0)
    caller.receive("accept", 1.1, nonce=callee.nonce)
    wrong = bytes(16)
    assert commitment(wrong) != callee.peer_commitment
    with pytest.raises(RemoteProtocolError, match="does not open its commitment"):
        callee.receive_reveal(wrong, 1.2)
    assert callee.ended and "possible man in the middle" in callee.reason
    assert callee.sas_nonces is None
    with pytest.raises(RemoteProtocolError):  # and the right one is too late now
        callee.receive_reveal(caller.reveal(1.3), 1.4)
    assert callee.sas_nonces is None


def test_reveal_order_missing_nonces_and_the_reveal_timeout() -> None:
    caller, callee = pair()
    with pytest.raises(RemoteProtocolError, match="before our answer"):
        callee.receive_reveal(CALLER_NONCE, 0.5)  # before we accepted: refused, call over
    assert callee.ended

    caller, callee = pair()
    callee.send("accept", 1.0)
    with pytest.raises(RemoteProtocolError, match="no valid SAS nonce"):
        caller.receive("accept", 1.1)  # an accept without the callee's nonce
    assert caller.ended and caller.sas_nonces is None

    caller, callee = pair()
    callee.send("accept", 1.0)
    caller.receive("accept", 1.1, nonce=callee.nonce)
    callee.receive_reveal(caller.reveal(1.2), 1.3)
    with pytest.raises(RemoteProtocolError):  # a second reveal changes nothing
        callee.receive_reveal(bytes(16), 1.4)
    assert not callee.ended and callee.sas_nonces == (CALLER_NONCE, CALLEE_NONCE)

    caller, callee = pair()
    callee.send("accept", 1.0)
    assert not callee.tick(1.0 + REVEAL_TIMEOUT - 0.1)
    assert callee.tick(1.0 + REVEAL_TIMEOUT)  # the caller never revealed
    assert callee.ended and "did not reveal" in callee.reason


@given(st.lists(st.sampled_from([*ACTIONS, "bogus"]), max_size=12),
       st.sampled_from(["outgoing", "incoming"]))
def test_any_sequence_of_remote_actions_is_handled(actions: list[str], direction: str) -> None:
    """Whatever the contact sends, the machine either moves or raises RemoteProtocolError
    (the call unchanged, or ended by a SAS nonce violation); once ended it stays ended."""
    machine = pair()[0 if direction == "outgoing" else 1]
    was_ended = False
    for n, action in enumerate(actions):
        before = (machine.state, machine.reason)
        try:
            if action == "bogus" and n % 2:
                machine.receive_reveal(bytes(16), float(n))
            else:
                machine.receive(action, float(n), nonce=CALLEE_NONCE if n % 3 else b"")
        except RemoteProtocolError:
            assert (machine.state, machine.reason) == before \
                or (machine.ended and "SAS nonce" in machine.reason)
        if was_ended:
            assert machine.ended
        was_ended = machine.ended
