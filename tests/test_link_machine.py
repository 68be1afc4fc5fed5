"""The per-contact connection machine (dhtchat.core.link) on a manual clock: glare, backoff,
keepalive silence, presence and goodbye rules. No sockets, no event loop: runs in seconds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.contacts import Presence
from dhtchat.core.link import (
    AUTO_OFFER_DEFER,
    KEEPALIVE_TIMEOUT,
    MAX_BACKOFF,
    PRESENCE_FRESH,
    PRESENCE_POLL,
    RECONNECT_GRACE,
    LinkMachine,
)

SMALL, LARGE = b"\x01" * 32, b"\xfe" * 32
S1, S2 = b"\x11" * 16, b"\x22" * 16


def presence(session: bytes, published: int, *, online: bool = True) -> Presence:
    return Presence(session, published, False, online, b"\x00" * 64)


def machine(ours: bytes = SMALL, theirs: bytes = LARGE, *, wanted: bool = True) -> LinkMachine:
    return LinkMachine(theirs, ours, wanted=wanted)


def online_machine(now: float, ours: bytes = SMALL, theirs: bytes = LARGE) -> LinkMachine:
    m = machine(ours, theirs)
    assert m.on_presence(presence(S1, int(now)), now).accepted
    return m


# ---------------------------------------------------------------------- glare


def _exchange(a: LinkMachine, b: LinkMachine, a_first: bool) -> tuple[bool, bool]:
    """Both offered; each side gets the other's offer (in the given order) and acts on it.
    Returns (a answered, b answered)."""
    offers = {id(a): b.session, id(b): a.session}
    answered = {id(a): False, id(b): False}
    for m in ((a, b) if a_first else (b, a)):
        if m.on_offer(1000) == "answer":
            m.begin_answer(offers[id(m)], 1000)
            answered[id(m)] = True
    return answered[id(a)], answered[id(b)]


@pytest.mark.parametrize("a_first", [True, False])
def test_glare_the_larger_key_keeps_its_offer_whichever_offer_lands_first(a_first: bool) -> None:
    a, b = machine(LARGE, SMALL), machine(SMALL, LARGE)
    a.begin_offer(S1, 10.0)
    b.begin_offer(S2, 10.0)
    a_answered, b_answered = _exchange(a, b, a_first)
    assert (a_answered, b_answered) == (False, True)  # exactly one side answers: the smaller
    assert a.session == b.session == S1  # both work on the larger key's offer
    assert a.accepts_answer(S1) and not a.accepts_answer(S2)
    assert b.status == "connecting" and not b.offering


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.booleans())
def test_glare_always_ends_on_one_offer(key_a: bytes, key_b: bytes, a_first: bool) -> None:
    if key_a == key_b:
        return
    a, b = machine(key_a, key_b), machine(key_b, key_a)
    a.begin_offer(S1, 0.0)
    b.begin_offer(S2, 0.0)
    answers = _exchange(a, b, a_first)
    assert sum(answers) == 1
    assert a.session == b.session
    offerer = a if not answers[0] else b
    assert offerer.accepts_answer(offerer.session)


def test_an_offer_when_not_offering_is_answered_even_by_the_larger_key() -> None:
    m = machine(LARGE, SMALL)
    assert m.on_offer(1000) == "answer"  # idle: a restarted contact's offer, or theirs first
    m.begin_offer(S1, 0.0)
    m.answered()  # our offer got its answer; ICE under way: a new offer is a restart
    assert m.on_offer(1000) == "answer"


def test_the_losers_dropped_offer_delivered_late_is_stale() -> None:
    """Glare: Bob (smaller key) dropped his offer (made at 1000 ms on his clock) and answered
    Alice's (at 1200 ms). His offer reaches Alice only after his answer did: it must not make
    her drop the connection being set up for an offer nobody waits for any more."""
    alice = machine(LARGE, SMALL)
    alice.begin_offer(S1, 1.0)
    assert alice.on_answer(S1, 1200)
    alice.answered()
    assert alice.on_offer(1000) == "stale"
    assert alice.session == S1
    assert alice.on_offer(5000) == "answer"  # a later offer (Bob restarted) is answered
    alice.begin_answer(S2, 5000)
    assert alice.on_offer(4000) == "stale"
    alice.on_presence(presence(S2, 10), 10.0)
    alice.on_presence(presence(S1, 11), 11.0)  # a new run of Bob's: its clock may be behind
    assert alice.on_offer(4000) == "answer"
    bob = machine(SMALL, LARGE)
    bob.begin_answer(S1, 1100)  # answering Alice's offer made at 1100 ms on her clock
    assert bob.on_offer(1050) == "stale"  # an older offer of hers, delivered late
    assert bob.on_offer(1100) == "answer"


def test_an_answer_counts_only_for_our_pending_offer() -> None:
    m = machine()
    m.begin_offer(S1, 0.0)
    assert m.accepts_answer(S1) and not m.accepts_answer(S2)
    assert not m.on_answer(S2, 10)
    assert m.their_latest_ms == 0  # an answer to someone else's offer changes nothing
    m.answered()
    assert not m.accepts_answer(S1)


# ---------------------------------------------------------------------- backoff


def test_backoff_doubles_to_the_cap_and_a_connection_resets_it() -> None:
    m = online_machine(0.0)
    now, waits = 0.0, []
    for _ in range(9):
        m.begin_offer(S1, now)
        m.failed("no answer", now)
        waits.append(m.next_attempt - now)
        assert m.status == "offline" and m.reason == "no answer"
        assert not m.should_offer(m.next_attempt - 0.01, idle=True)
        now = m.next_attempt
        assert m.should_offer(now, idle=True)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    m.connected(now, now)
    assert m.backoff == 1.0
    m.failed("again", now)
    assert m.next_attempt - now == 1.0


def test_a_lost_connection_waits_at_least_the_reconnect_grace() -> None:
    m = online_machine(100.0)
    m.connected(100.0, 100.0)
    assert m.lost("path broken", 110.0, 110.0)
    assert m.next_attempt == 110.0 + RECONNECT_GRACE
    assert not m.should_offer(110.0 + RECONNECT_GRACE - 0.1, idle=True)
    assert m.should_offer(110.0 + RECONNECT_GRACE, idle=True)
    assert not m.lost("twice", 111.0, 111.0)  # no longer connected: nothing changes


def test_a_new_daemon_run_retries_at_once() -> None:
    m = online_machine(0.0)
    m.failed("no answer", 0.0)
    m.failed("no answer", 1.0)
    assert m.next_attempt == 3.0
    same = m.on_presence(presence(S1, 2), 2.0)  # the same run republishing: keep waiting
    assert same.accepted and m.next_attempt == 3.0
    update = m.on_presence(presence(S2, 2), 2.0)
    assert not update.accepted  # not newer than the last one seen: ignored
    update = m.on_presence(presence(S2, 3), 2.5)
    assert update.accepted and update.wake
    assert m.next_attempt == 0.0 and m.should_offer(2.5, idle=True)


def test_the_larger_key_defers_automatic_offers_the_smaller_does_not() -> None:
    small = online_machine(0.0, SMALL, LARGE)
    large = online_machine(0.0, LARGE, SMALL)
    assert small.should_offer(0.0, idle=True)
    assert not large.should_offer(0.0, idle=True)
    assert not large.should_offer(AUTO_OFFER_DEFER - 0.1, idle=True)
    assert large.should_offer(AUTO_OFFER_DEFER, idle=True)
    assert not small.should_offer(1.0, idle=False)  # an attempt under way


def test_presence_polls_come_every_presence_poll_while_waiting() -> None:
    m = machine()
    assert m.should_poll_presence(100.0, idle=True)
    assert not m.should_poll_presence(100.0 + PRESENCE_POLL - 1, idle=True)
    assert m.should_poll_presence(100.0 + PRESENCE_POLL, idle=True)
    m.connected(200.0, 200.0)
    assert not m.should_poll_presence(1000.0, idle=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["fail", "connect", "lose"]), max_size=40),
       st.lists(st.integers(min_value=0, max_value=100), min_size=40, max_size=40))
def test_backoff_stays_within_bounds(events: list[str], steps: list[int]) -> None:
    m = online_machine(0.0)
    now = 0.0
    for event, step in zip(events, steps, strict=False):
        now += step
        if event == "fail":
            m.failed("x", now)
            assert 1.0 <= m.next_attempt - now <= MAX_BACKOFF
        elif event == "connect":
            m.connected(now, now)
            assert m.backoff == 1.0
        elif m.lost("x", now, now):
            assert RECONNECT_GRACE <= m.next_attempt - now <= MAX_BACKOFF
        assert 1.0 <= m.backoff <= MAX_BACKOFF


# ---------------------------------------------------------------------- keepalive


def test_keepalive_silence_makes_the_contact_unreachable() -> None:
    m = online_machine(0.0)
    m.new_connection()
    m.connected(0.0, 50.0)
    m.hear(51.0, keepalive=True)
    assert not m.silent_too_long(51.0 + KEEPALIVE_TIMEOUT)
    assert m.silent_too_long(51.0 + KEEPALIVE_TIMEOUT + 0.01)
    assert m.lost("nothing heard", 60.0, 57.0)
    assert m.last_seen == 60.0 - (57.0 - 51.0)  # wall time of the last frame
    assert m.unreachable(60.0) and m.online(60.0)
    assert m.on_presence(presence(S2, 70), 70.0).accepted  # the contact restarted
    assert not m.unreachable(70.0)


def test_a_contact_that_never_sent_a_keepalive_is_not_timed_out() -> None:
    m = online_machine(0.0)
    m.new_connection()
    m.connected(0.0, 0.0)
    m.hear(1.0)  # data frames, but no keepalive channel (an older version)
    assert not m.silent_too_long(1000.0)
    m.hear(1001.0, keepalive=True)
    assert m.silent_too_long(1001.0 + KEEPALIVE_TIMEOUT + 1)
    m.new_connection()  # a new connection starts unproven again
    assert not m.silent_too_long(5000.0)


# ---------------------------------------------------------------------- presence and goodbyes


def test_an_older_presence_does_not_undo_a_goodbye() -> None:
    m = machine()
    assert m.on_presence(presence(S1, 100), 100.0).accepted
    assert m.on_presence(presence(S1, 110, online=False), 110.0).accepted
    assert not m.on_presence(presence(S1, 100), 111.0).accepted
    assert not m.online(111.0)


def test_a_presence_goes_stale() -> None:
    m = online_machine(0.0)
    assert m.online(PRESENCE_FRESH - 1)
    assert not m.online(PRESENCE_FRESH)


def test_right_after_a_restart_the_old_goodbye_does_not_fail_the_offer() -> None:
    """Bob's old run S1 said goodbye over the connection; Alice offers right after Bob
    restarted, before his new run's presence reached her, and only then does S1's offline
    presence arrive through the DHT: the offer must wait for S2's answer, not fail."""
    m = online_machine(100.0)
    m.connected(100.0, 100.0)
    assert m.said_goodbye() == ""  # not offering: nothing to abort
    m.closed("bob ended the connection")
    assert not m.online(200.0)  # S1 said goodbye
    m.begin_offer(S1, 200.0)
    late_goodbye = m.on_presence(presence(S1, 199, online=False), 200.5)
    assert late_goodbye.accepted and late_goodbye.abort == ""
    assert m.offering  # still waiting for an answer (from the restarted run)


def test_the_goodbye_of_a_run_that_said_so_never_fails_an_offer() -> None:
    """Bob's run S1 said goodbye over the connection, and Alice offers within the same second
    (its DHT goodbye carries that second too): it is still no news about who reads the offer."""
    m = online_machine(100.0)
    m.connected(100.0, 100.0)
    m.said_goodbye()
    m.closed("bob ended the connection")
    m.begin_offer(S2, 200.5)
    update = m.on_presence(presence(S1, 200, online=False), 200.9)
    assert update.accepted and update.abort == ""


def test_an_old_goodbye_seen_first_during_the_offer_does_not_fail_it() -> None:
    """The goodbye was published before the offer started (Bob stopped, then restarted):
    it tells nothing about who reads the offer now."""
    m = online_machine(100.0)
    m.begin_offer(S2, 300.0)
    update = m.on_presence(presence(S1, 250, online=False), 300.2)
    assert update.accepted and update.abort == ""


def test_a_goodbye_after_the_offer_started_fails_it() -> None:
    m = online_machine(100.0)
    m.begin_offer(S2, 300.0)
    update = m.on_presence(presence(S1, 301, online=False), 301.0)
    assert update.abort == "went offline"
    m.answered()  # not offering any more: nothing to abort
    assert m.on_presence(presence(S1, 302, online=False), 302.0).abort == ""


def test_a_goodbye_over_the_connection_aborts_a_pending_offer() -> None:
    m = online_machine(100.0)
    m.begin_offer(S2, 300.0)
    assert m.said_goodbye() == "is stopping"
    assert m.gone_session == S1 and not m.online(300.0)
