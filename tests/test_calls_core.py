"""The call signalling state machine, driven with a manual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtchat.core.calls import ACTIONS, RING_TIMEOUT, CallMachine
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError

CALL = bytes(16)


def test_answered_call_and_hangup() -> None:
    caller = CallMachine(CALL, "outgoing", started=100.0, video=True)
    callee = CallMachine(CALL, "incoming", started=100.1, video=True)
    assert (caller.state, callee.state) == ("inviting", "ringing")
    callee.send("ringing", 100.2)
    caller.receive("ringing", 100.3)
    assert caller.state == "ringing"
    callee.send("accept", 105.0)
    caller.receive("accept", 105.1)
    assert caller.state == callee.state == "connecting"
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
    caller = CallMachine(CALL, "outgoing", started=0.0)
    callee = CallMachine(CALL, "incoming", started=0.0)
    assert not caller.tick(RING_TIMEOUT - 0.1)
    assert caller.tick(RING_TIMEOUT) and callee.tick(RING_TIMEOUT)
    assert caller.reason == "no answer" and callee.reason == "missed" and callee.missed

    for action, reason in (("decline", "declined"), ("busy", "busy")):
        caller = CallMachine(CALL, "outgoing", started=0.0)
        callee = CallMachine(CALL, "incoming", started=0.0)
        callee.send(action, 1.0)  # type: ignore[arg-type]
        caller.receive(action, 1.1)
        assert caller.reason == callee.reason == reason
        assert not callee.missed  # we chose not to answer

    caller = CallMachine(CALL, "outgoing", started=0.0)
    callee = CallMachine(CALL, "incoming", started=0.0)
    caller.send("hangup", 3.0)
    callee.receive("hangup", 3.1)
    assert caller.reason == "cancelled" and callee.missed


def test_illegal_moves_are_refused_and_change_nothing() -> None:
    caller = CallMachine(CALL, "outgoing", started=0.0)
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
        CallMachine(b"short", "outgoing", started=0.0)


@given(st.lists(st.sampled_from([*ACTIONS, "bogus"]), max_size=12),
       st.sampled_from(["outgoing", "incoming"]))
def test_any_sequence_of_remote_actions_is_handled(actions: list[str], direction: str) -> None:
    """Whatever the contact sends, the machine either moves or raises RemoteProtocolError;
    once ended it stays ended."""
    machine = CallMachine(CALL, direction, started=0.0)  # type: ignore[arg-type]
    was_ended = False
    for n, action in enumerate(actions):
        before = (machine.state, machine.reason)
        try:
            machine.receive(action, float(n))
        except RemoteProtocolError:
            assert (machine.state, machine.reason) == before
        if was_ended:
            assert machine.ended
        was_ended = machine.ended
