"""X3DH + Double Ratchet sessions (dhtchat.messaging.session): security properties and races."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import secrets
import time
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nacl.signing
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dhtchat.core.identity import SigningIdentity
from dhtchat.messaging.session import (
    MAX_SKIP,
    PREKEY_TARGET,
    SPK_ROTATION_SECONDS,
    Conversation,
    PrekeyStore,
    Session,
    SessionError,
    is_initial_message,
    parse_bundle,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Person:
    seed: bytes
    ik: bytes
    store: PrekeyStore


def person() -> Person:
    seed = secrets.token_bytes(32)
    return Person(seed, SigningIdentity.from_seed(seed).public_key,
                  PrekeyStore.create(seed, time.time()))


async def established() -> tuple[Person, Person, Session, Session]:
    """Alice initiated, Bob accepted and replied, Alice decrypted the reply."""
    alice, bob = person(), person()
    sa, wire = await Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"hello bob")
    sb, pt = await Session.accept(bob.store, alice.ik, wire)
    assert pt == b"hello bob"
    assert await sa.decrypt(await sb.encrypt(b"hello alice")) == b"hello alice"
    return alice, bob, sa, sb


def reencode(wire: bytes, **changes: int | bytes) -> bytes:
    """Rewrite header fields of a wire message (black-box: msgpack array)."""
    fields = msgspec.msgpack.decode(wire)
    names = (
        ["tag", "dh", "pn", "n", "ct"]
        if fields[0] == 1
        else ["tag", "ik", "ek", "spk", "opk", "dh", "pn", "n", "ct"]
    )
    for name, value in changes.items():
        fields[names.index(name)] = value
    return msgspec.msgpack.encode(fields)


# --- prekeys and bundles ---------------------------------------------------------------------


def test_bundle_identity_is_the_users_ed25519_key_and_fits() -> None:
    p = person()
    data = p.store.bundle()
    assert len(data) <= 700, len(data)
    b = parse_bundle(data)
    assert b.identity_key == p.ik == p.store.identity_key
    assert len(b.pre_keys) == 12
    # the signed prekey signature is a plain Ed25519 signature by the user's key
    nacl.signing.VerifyKey(p.ik).verify(b"\x05" + b.signed_pre_key, b.signed_pre_key_sig)
    assert len(parse_bundle(p.store.bundle(16)).pre_keys) == 16
    assert len(p.store.bundle(16)) <= 700


def test_parse_bundle_validates_sizes() -> None:
    data = person().store.bundle()
    fields = msgspec.msgpack.decode(data)
    for i, bad in [(1, b"\1" * 31), (2, b"\1" * 33), (3, b"\1" * 63), (4, [b"\1" * 31])]:
        mutated = list(fields)
        mutated[i] = bad
        with pytest.raises(SessionError):
            parse_bundle(msgspec.msgpack.encode(mutated))
    with pytest.raises(SessionError):
        parse_bundle(msgspec.msgpack.encode([*fields[:4], [b"\1" * 32] * 17]))
    with pytest.raises(SessionError):
        parse_bundle(data[:-1])


def test_initiate_checks_identity_and_signed_prekey_signature() -> None:
    alice, bob, carol = person(), person(), person()
    with pytest.raises(SessionError, match="identity"):
        run(Session.initiate(alice.store, carol.ik, bob.store.bundle(), b"x"))
    fields = msgspec.msgpack.decode(bob.store.bundle())
    fields[3] = bytes([fields[3][0] ^ 1]) + fields[3][1:]
    with pytest.raises(SessionError, match="signature"):
        run(Session.initiate(alice.store, bob.ik, msgspec.msgpack.encode(fields), b"x"))
    fields = msgspec.msgpack.decode(bob.store.bundle())
    fields[4] = []
    with pytest.raises(SessionError, match="one-time"):
        run(Session.initiate(alice.store, bob.ik, msgspec.msgpack.encode(fields), b"x"))


def test_accept_checks_sender_identity_and_consumes_prekey() -> None:
    alice, bob, carol = person(), person(), person()
    _, wire = run(Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"x"))
    opk = msgspec.msgpack.decode(wire)[4]
    with pytest.raises(SessionError, match="identity"):
        run(Session.accept(bob.store, carol.ik, wire))
    assert bob.store.one_time_prekeys_left() == PREKEY_TARGET
    run(Session.accept(bob.store, alice.ik, wire))
    assert bob.store.one_time_prekeys_left() == PREKEY_TARGET - 1
    assert opk not in parse_bundle(bob.store.bundle(16)).pre_keys


def test_forged_initial_message_does_not_burn_the_prekey() -> None:
    alice, bob = person(), person()
    _, wire = run(Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"genuine"))
    ct = msgspec.msgpack.decode(wire)[8]
    forged = reencode(wire, ct=bytes([ct[0] ^ 1]) + ct[1:])
    with pytest.raises(SessionError):
        run(Session.accept(bob.store, alice.ik, forged))
    assert run(Session.accept(bob.store, alice.ik, wire))[1] == b"genuine"


def test_maintain_rotates_signed_prekey_and_replenishes() -> None:
    alice, bob = person(), person()
    now = time.time()
    assert bob.store.maintain(now) is False
    spk0 = parse_bundle(bob.store.bundle()).signed_pre_key
    # two initial messages in flight against the current signed prekey
    _, early = run(Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"early"))
    _, late = run(Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"late"))
    assert bob.store.maintain(now + 3600) is False  # nothing consumed, no rotation due
    assert bob.store.maintain(now + SPK_ROTATION_SECONDS + 1) is True
    assert parse_bundle(bob.store.bundle()).signed_pre_key != spk0
    assert bob.store.maintain(now + SPK_ROTATION_SECONDS + 3600) is False
    # the previous signed prekey still serves in-flight messages
    assert run(Session.accept(bob.store, alice.ik, early))[1] == b"early"
    assert bob.store.one_time_prekeys_left() == PREKEY_TARGET - 1
    bob.store.maintain(now + SPK_ROTATION_SECONDS + 7200)
    assert bob.store.one_time_prekeys_left() == PREKEY_TARGET
    # after a second rotation it is gone
    assert bob.store.maintain(now + 2 * SPK_ROTATION_SECONDS + 2) is True
    with pytest.raises(SessionError, match="signed pre key"):
        run(Session.accept(bob.store, alice.ik, late))


def test_prekey_store_round_trip_keeps_consumption_and_hides_seed() -> None:
    alice, bob = person(), person()
    _, wire = run(Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"x"))
    run(Session.accept(bob.store, alice.ik, wire))
    data = bob.store.to_json()
    assert bob.seed.hex() not in data and json.dumps("".join(map(chr, bob.seed)))[1:-1] not in data
    restored = PrekeyStore.from_json(bob.seed, data)
    assert restored.bundle() == bob.store.bundle()
    assert restored.one_time_prekeys_left() == PREKEY_TARGET - 1
    with pytest.raises(SessionError):  # replayed initial message after restart
        run(Session.accept(restored, alice.ik, wire))
    with pytest.raises(ValueError, match="different identity"):
        PrekeyStore.from_json(alice.seed, data)


# --- replay, DoS, tampering ----------------------------------------------------------------


def test_replay_is_rejected_including_across_persistence() -> None:
    async def go() -> None:
        *_, sa, sb = await established()
        w1 = await sa.encrypt(b"one")
        assert await sb.decrypt(w1) == b"one"
        with pytest.raises(SessionError, match="replay"):
            await sb.decrypt(w1)
        restored = Session.from_json(sb.to_json())
        with pytest.raises(SessionError, match="replay"):
            await restored.decrypt(w1)
        # skipped-then-used keys are single-use too
        w2, w3 = await sa.encrypt(b"two"), await sa.encrypt(b"three")
        assert await restored.decrypt(w3) == b"three"
        assert await restored.decrypt(w2) == b"two"
        again = Session.from_json(restored.to_json())
        for w in (w1, w2, w3):
            with pytest.raises(SessionError):
                await again.decrypt(w)
        assert await again.decrypt(await sa.encrypt(b"four")) == b"four"

    run(go())


def test_replayed_initial_message_is_rejected() -> None:
    async def go() -> None:
        alice, bob = person(), person()
        _, wire = await Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"first")
        sb, _ = await Session.accept(bob.store, alice.ik, wire)
        # a second session from the same initial message: prekey consumed
        with pytest.raises(SessionError, match="pre key"):
            await Session.accept(bob.store, alice.ik, wire)
        # into the session it created: duplicate
        with pytest.raises(SessionError, match="replay"):
            await sb.decrypt(wire)
        with pytest.raises(SessionError):
            await Session.from_json(sb.to_json()).decrypt(wire)
        # and through a Conversation, also after a round trip of everything
        conv = Conversation(bob.store, bob.ik, alice.ik)
        _, w0 = await Session.initiate(alice.store, bob.ik, bob.store.bundle(), b"c0")
        assert await conv.decrypt(w0) == b"c0"
        with pytest.raises(SessionError):
            await conv.decrypt(w0)
        store2 = PrekeyStore.from_json(bob.seed, bob.store.to_json())
        conv2 = Conversation.from_json(store2, conv.to_json())
        with pytest.raises(SessionError):
            await conv2.decrypt(w0)
        conv3 = Conversation(store2, bob.ik, alice.ik)  # even with the session forgotten
        with pytest.raises(SessionError, match="pre key"):
            await conv3.decrypt(w0)

    run(go())


def test_huge_chain_jump_is_rejected_before_any_kdf_work() -> None:
    async def go() -> None:
        *_, sa, sb = await established()
        # baseline: a legitimate jump of MAX_SKIP - 1 keys (the work we refuse to do 1000x of)
        # (How fast the refusal is, against this jump, is benchmarks/session_reject.py.)
        wires = [await sa.encrypt(b"m") for _ in range(MAX_SKIP)]
        assert await sb.decrypt(wires[-1]) == b"m"
        assert sb.skipped_message_keys == MAX_SKIP - 1

        legit = await sa.encrypt(b"after")
        forged_same_chain = reencode(legit, n=10**6)
        forged_new_chain = reencode(legit, dh=secrets.token_bytes(32), pn=10**6)
        forged_new_chain_n = reencode(legit, dh=secrets.token_bytes(32), pn=0, n=10**6)
        before = sb.to_json()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the library only *warns* for a huge pn
            for forged in (forged_same_chain, forged_new_chain, forged_new_chain_n):
                with pytest.raises(SessionError, match="skip"):
                    await sb.decrypt(forged)
                assert sb.skipped_message_keys == MAX_SKIP - 1  # no key was derived
        assert sb.to_json() == before
        assert await sb.decrypt(legit) == b"after"
        assert await sa.decrypt(await sb.encrypt(b"still fine")) == b"still fine"

    run(go())


def test_jump_bound_is_exactly_max_skip() -> None:
    async def go() -> None:
        *_, sa, sb = await established()
        fresh = await sa.encrypt(b"x")  # new chain for Bob: expected index 0
        n0 = msgspec.msgpack.decode(fresh)[3]
        wires = [await sa.encrypt(b"y") for _ in range(MAX_SKIP + 1)]
        with pytest.raises(SessionError, match="skip"):
            await sb.decrypt(wires[-1])  # index n0 + MAX_SKIP + 1
        assert msgspec.msgpack.decode(wires[-2])[3] == n0 + MAX_SKIP
        assert await sb.decrypt(wires[-2]) == b"y"  # a jump of exactly MAX_SKIP is fine

    run(go())


def test_out_of_order_delivery_and_bounded_skipped_keys() -> None:
    async def go() -> None:
        *_, sa, sb = await established()
        rng = random.Random(7)
        msgs = [(f"m{i}".encode(), await sa.encrypt(f"m{i}".encode())) for i in range(300)]
        order = list(range(300))
        rng.shuffle(order)
        for i in order:
            assert await sb.decrypt(msgs[i][1]) == msgs[i][0]
        assert sb.skipped_message_keys == 0

        # two chains with 800 skipped keys each: only the newest MAX_SKIP keys are kept
        first = [await sa.encrypt(b"a%d" % i) for i in range(801)]
        assert await sb.decrypt(first[-1]) == b"a800"
        assert await sa.decrypt(await sb.encrypt(b"turn")) == b"turn"
        second = [await sa.encrypt(b"b%d" % i) for i in range(801)]
        assert await sb.decrypt(second[-1]) == b"b800"
        assert sb.skipped_message_keys == MAX_SKIP
        with pytest.raises(SessionError):
            await sb.decrypt(first[0])  # evicted
        assert await sb.decrypt(first[799]) == b"a799"  # kept
        assert await sb.decrypt(second[0]) == b"b0"

    run(go())


def test_tampering_anywhere_is_rejected() -> None:
    async def go() -> None:
        _, bob, sa, sb = await established()
        wire = await sa.encrypt(b"tamper with me")
        before = sb.to_json()
        for i in range(len(wire)):
            for bit in (0, 7):
                bad = wire[:i] + bytes([wire[i] ^ (1 << bit)]) + wire[i + 1 :]
                with pytest.raises(SessionError):
                    await sb.decrypt(bad)
        with pytest.raises(SessionError):
            await sb.decrypt(reencode(wire, pn=5))  # header field outside the ciphertext
        assert sb.to_json() == before
        assert await sb.decrypt(wire) == b"tamper with me"

        carol = person()
        _, init = await Session.initiate(carol.store, bob.ik, bob.store.bundle(), b"hi")
        for i in range(0, len(init), 2):
            bad = init[:i] + bytes([init[i] ^ 0x10]) + init[i + 1 :]
            with pytest.raises(SessionError):
                await Session.accept(bob.store, carol.ik, bad)
        assert (await Session.accept(bob.store, carol.ik, init))[1] == b"hi"

    run(go())


@functools.cache
def _fuzz_fixture() -> tuple[Person, Person, Session, Conversation, bytes]:
    async def go() -> tuple[Person, Person, Session, Conversation, bytes]:
        alice, bob, sa, sb = await established()
        conv = Conversation(bob.store, bob.ik, alice.ik)
        return alice, bob, sb, conv, await sa.encrypt(b"template")

    return run(go())


def _check_only_session_errors(data: bytes) -> None:
    alice, bob, sb, conv, _ = _fuzz_fixture()
    before, prekeys = sb.to_json(), bob.store.one_time_prekeys_left()

    async def go() -> None:
        for attempt in (
            sb.decrypt(data),
            Session.accept(bob.store, alice.ik, data),
            conv.decrypt(data),
        ):
            with pytest.raises(SessionError):
                await attempt
        with pytest.raises(SessionError):
            parse_bundle(data)
        is_initial_message(data)

    run(go())
    assert sb.to_json() == before and bob.store.one_time_prekeys_left() == prekeys


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_fuzz_garbage_raises_session_error_only(data: bytes) -> None:
    _check_only_session_errors(data)


_key = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.sampled_from(
        [b"\0" * 32, b"\1" + b"\0" * 31, b"\xff" * 32, b"\xec" + b"\xff" * 30 + b"\x7f"]
    ),
)
_u32 = st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1))


@st.composite
def _structured(draw: st.DrawFn) -> bytes:
    alice, bob, _, _, template = _fuzz_fixture()
    t = msgspec.msgpack.decode(template)
    bundle = parse_bundle(bob.store.bundle())
    real_opk = sorted(bundle.pre_keys)[0]
    dh = draw(st.one_of(st.just(t[1]), _key))
    ct = draw(st.one_of(st.just(t[4]), st.binary(min_size=48, max_size=120)))
    if draw(st.booleans()):
        forged = msgspec.msgpack.encode([1, dh, draw(_u32), draw(_u32), ct])
        assume(forged != template)  # the genuine message would (rightly) decrypt
        return forged
    ik = draw(st.one_of(st.just(alice.ik), _key))
    spk = draw(st.one_of(st.just(bundle.signed_pre_key), _key))
    opk = draw(st.one_of(st.just(real_opk), _key))
    return msgspec.msgpack.encode([2, ik, draw(_key), spk, opk, dh, draw(_u32), draw(_u32), ct])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_structured())
def test_fuzz_well_formed_forgeries_raise_session_error_only(data: bytes) -> None:
    _check_only_session_errors(data)


# --- forward and post-compromise secrecy ---------------------------------------------------


def test_forward_secrecy_state_copy_cannot_decrypt_earlier_messages() -> None:
    async def go() -> None:
        *_, sa, sb = await established()
        w1 = await sa.encrypt(b"secret 1")
        w2 = await sa.encrypt(b"secret 2")
        assert await sb.decrypt(w1) == b"secret 1"
        assert await sb.decrypt(w2) == b"secret 2"
        stolen = Session.from_json(sb.to_json())  # later state copy
        for w in (w1, w2):
            with pytest.raises(SessionError):
                await stolen.decrypt(w)
        # also after a DH ratchet step: the old chain's keys are gone
        assert await sa.decrypt(await sb.encrypt(b"r")) == b"r"
        w3 = await sa.encrypt(b"secret 3")
        assert await sb.decrypt(w3) == b"secret 3"
        stolen = Session.from_json(sb.to_json())
        for w in (w1, w2, w3):
            with pytest.raises(SessionError):
                await stolen.decrypt(w)

    run(go())


def test_post_compromise_security_after_one_round_trip() -> None:
    """A passive attacker copies Bob's full state at time T (after Bob's last reply reached
    Alice). It reads Alice's messages until Bob has answered with a fresh ratchet key and Alice
    used it: Alice->Bob (readable), Bob->Alice, then Alice's new messages are not."""

    async def go() -> None:
        *_, sa, sb = await established()
        assert await sb.decrypt(await sa.encrypt(b"warm-up")) == b"warm-up"
        assert await sa.decrypt(await sb.encrypt(b"bob's last")) == b"bob's last"

        attacker = Session.from_json(sb.to_json())  # compromise at T
        frozen = sb.to_json()
        before = [await sa.encrypt(b"before %d" % i) for i in range(3)]
        for i, w in enumerate(before):
            assert await sb.decrypt(w) == b"before %d" % i
            assert await attacker.decrypt(w) == b"before %d" % i  # compromised

        assert await sa.decrypt(await sb.encrypt(b"bob replies")) == b"bob replies"

        after = [await sa.encrypt(b"after %d" % i) for i in range(3)]
        for i, w in enumerate(after):
            assert await sb.decrypt(w) == b"after %d" % i
            with pytest.raises(SessionError):
                await attacker.decrypt(w)  # the attacker's evolving copy
            with pytest.raises(SessionError):
                await Session.from_json(frozen).decrypt(w)  # or the copy as taken at T
        # and Bob's side stays healed for later turns
        assert await sa.decrypt(await sb.encrypt(b"ok")) == b"ok"
        w = await sa.encrypt(b"later")
        assert await sb.decrypt(w) == b"later"
        with pytest.raises(SessionError):
            await attacker.decrypt(w)

    run(go())


def test_post_compromise_when_bob_had_not_sent_on_his_ratchet_key_yet() -> None:
    """If T falls right after Bob *received* (his new ratchet key is in the stolen state and
    Alice has not seen it yet), healing takes the round trip that starts after Alice uses it."""

    async def go() -> None:
        *_, sa, sb = await established()
        assert await sb.decrypt(await sa.encrypt(b"x")) == b"x"
        attacker = Session.from_json(sb.to_json())
        w = await sa.encrypt(b"a1")
        assert await sb.decrypt(w) == b"a1" and await attacker.decrypt(w) == b"a1"
        assert await sa.decrypt(await sb.encrypt(b"b1")) == b"b1"  # uses the stolen key
        w = await sa.encrypt(b"a2")
        assert await sb.decrypt(w) == b"a2" and await attacker.decrypt(w) == b"a2"
        assert await sa.decrypt(await sb.encrypt(b"b2")) == b"b2"  # fresh key, unknown
        w = await sa.encrypt(b"a3")
        assert await sb.decrypt(w) == b"a3"
        with pytest.raises(SessionError):
            await attacker.decrypt(w)

    run(go())


# --- conversations -------------------------------------------------------------------------


def test_conversation_needs_bundle_only_without_session() -> None:
    async def go() -> None:
        alice, bob = person(), person()
        ca = Conversation(alice.store, alice.ik, bob.ik)
        cb = Conversation(bob.store, bob.ik, alice.ik)
        assert not ca.established
        with pytest.raises(SessionError, match="need the contact's prekey bundle"):
            await ca.encrypt(b"x", None)
        w = await ca.encrypt(b"x", bob.store.bundle())
        assert ca.established
        assert await cb.decrypt(w) == b"x"
        assert cb.established
        assert await ca.decrypt(await cb.encrypt(b"y", None)) == b"y"

    run(go())


def test_conversation_survives_lost_first_message() -> None:
    async def go() -> None:
        alice, bob = person(), person()
        ca = Conversation(alice.store, alice.ik, bob.ik)
        cb = Conversation(bob.store, bob.ik, alice.ik)
        lost = await ca.encrypt(b"lost", bob.store.bundle())
        second = await ca.encrypt(b"second", None)
        assert is_initial_message(lost) and is_initial_message(second)
        assert await cb.decrypt(second) == b"second"
        reply = await cb.encrypt(b"reply", None)
        assert not is_initial_message(reply)
        assert is_initial_message(await ca.encrypt(b"third", None))  # no reply seen yet
        assert await ca.decrypt(reply) == b"reply"
        fourth = await ca.encrypt(b"fourth", None)
        assert not is_initial_message(fourth)
        assert await cb.decrypt(lost) == b"lost"  # turns up late
        assert await cb.decrypt(fourth) == b"fourth"
        with pytest.raises(SessionError):
            await cb.decrypt(second)
        assert ca.current_session_id == cb.current_session_id

    run(go())


async def _simultaneous(seed: int) -> None:
    rng = random.Random(seed)
    alice, bob = person(), person()
    conv = {
        "a": Conversation(alice.store, alice.ik, bob.ik),
        "b": Conversation(bob.store, bob.ik, alice.ik),
    }
    bundles = {"a": bob.store.bundle(), "b": alice.store.bundle()}
    flight: list[tuple[str, bytes, bytes]] = []  # (recipient, plaintext, wire)
    counter = 0

    async def send(who: str) -> None:
        nonlocal counter
        counter += 1
        pt = f"{who}{counter}".encode()
        wire = await conv[who].encrypt(pt, bundles[who])
        flight.append(("b" if who == "a" else "a", pt, wire))

    async def deliver(index: int) -> None:
        to, pt, wire = flight.pop(index)
        assert await conv[to].decrypt(wire) == pt

    async def deliver_all_shuffled() -> None:
        while flight:
            await deliver(rng.randrange(len(flight)))

    # both initiate before seeing the other's message (1-2 initial messages each)
    for who in ("a", "b"):
        for _ in range(rng.randint(1, 2)):
            await send(who)
    assert conv["a"].current_session_id != conv["b"].current_session_id
    await deliver_all_shuffled()
    # one crossing exchange: both send, then deliver in any order
    await send("a")
    await send("b")
    await deliver_all_shuffled()
    assert conv["a"].current_session_id == conv["b"].current_session_id
    winner = max(alice.ik, bob.ik)
    current = conv["a"]._current
    assert current is not None and current.initiator_key == winner
    # 50 more each way, randomly interleaved and reordered
    sent = {"a": 0, "b": 0}
    while sent["a"] < 50 or sent["b"] < 50 or flight:
        choices = [w for w in ("a", "b") if sent[w] < 50]
        if flight and (not choices or rng.random() < 0.5):
            await deliver(rng.randrange(len(flight)))
        else:
            who = rng.choice(choices)
            sent[who] += 1
            await send(who)
    assert conv["a"].current_session_id == conv["b"].current_session_id


@pytest.mark.parametrize("seed", range(12))
def test_conversation_simultaneous_initiation_converges(seed: int) -> None:
    run(_simultaneous(seed))


@pytest.mark.parametrize("loser_has_larger_key", [False, True])
def test_conversation_recovers_when_peer_lost_its_sessions(loser_has_larger_key: bool) -> None:
    """Bob loses his conversation state (e.g. restored an old backup) and starts a new session:
    Alice must switch to it even if the old session's initiator key ranks higher."""

    async def go() -> None:
        alice, bob = person(), person()
        while (bob.ik > alice.ik) != loser_has_larger_key:
            bob = person()
        ca = Conversation(alice.store, alice.ik, bob.ik)
        cb = Conversation(bob.store, bob.ik, alice.ik)
        assert await cb.decrypt(await ca.encrypt(b"hi", bob.store.bundle())) == b"hi"
        assert await ca.decrypt(await cb.encrypt(b"hey", None)) == b"hey"
        cb = Conversation(bob.store, bob.ik, alice.ik)  # Bob forgot everything
        assert await ca.decrypt(await cb.encrypt(b"again", alice.store.bundle())) == b"again"
        for i in range(5):
            assert await cb.decrypt(await ca.encrypt(b"a%d" % i, None)) == b"a%d" % i
            assert await ca.decrypt(await cb.encrypt(b"b%d" % i, None)) == b"b%d" % i
        assert ca.current_session_id == cb.current_session_id

    run(go())


def test_persistence_mid_conversation() -> None:
    async def go() -> None:
        rng = random.Random(3)
        alice, bob = person(), person()
        people = {"a": alice, "b": bob}
        convs = {
            "a": Conversation(alice.store, alice.ik, bob.ik),
            "b": Conversation(bob.store, bob.ik, alice.ik),
        }
        flight: list[tuple[str, bytes, bytes]] = []

        def reload(who: str) -> None:
            p = people[who]
            p.store = PrekeyStore.from_json(p.seed, p.store.to_json())
            convs[who] = Conversation.from_json(p.store, convs[who].to_json())

        w = await convs["a"].encrypt(b"a0", bob.store.bundle())
        flight.append(("b", b"a0", w))
        w = await convs["b"].encrypt(b"b0", alice.store.bundle())  # simultaneous, too
        flight.append(("a", b"b0", w))
        for i in range(120):
            if rng.random() < 0.3:
                reload(rng.choice("ab"))
            if flight and rng.random() < 0.5:
                to, pt, wire = flight.pop(rng.randrange(len(flight)))
                assert await convs[to].decrypt(wire) == pt
                with pytest.raises(SessionError):
                    await convs[to].decrypt(wire)
            else:
                who = rng.choice("ab")
                pt = f"{who}{i}".encode()
                flight.append(("b" if who == "a" else "a", pt, await convs[who].encrypt(pt, None)))
        for to, pt, wire in flight:
            reload(to)
            assert await convs[to].decrypt(wire) == pt
        assert await convs["b"].decrypt(await convs["a"].encrypt(b"end", None)) == b"end"

    run(go())


def test_corrupt_state_raises_session_error() -> None:
    for data in ("", "[]", "{}", '{"v": 1}', json.dumps({"v": 1, "ratchet": {}})):
        with pytest.raises(SessionError):
            Session.from_json(data)
    p = person()
    for data in ('{"v": 1}', "{}", "[]"):
        with pytest.raises(SessionError):
            Conversation.from_json(p.store, data)


# --- throughput ----------------------------------------------------------------------------


def test_ratchet_throughput_1kb() -> None:
    async def go() -> tuple[float, float]:
        *_, sa, sb = await established()
        msg = secrets.token_bytes(1024)
        n = 1000
        t0 = time.perf_counter()
        for _ in range(n):
            assert await sb.decrypt(await sa.encrypt(msg)) == msg
        one_way = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n):  # alternate: a DH ratchet step on every message
            s, r = (sa, sb) if i % 2 == 0 else (sb, sa)
            assert await r.decrypt(await s.encrypt(msg)) == msg
        ping_pong = n / (time.perf_counter() - t0)
        return one_way, ping_pong

    one_way, ping_pong = run(go())
    print(
        f"\nratchet encrypt+decrypt, 1 KB: {one_way:.0f}/s same direction, "
        f"{ping_pong:.0f}/s alternating (DH step each message)"
    )
    assert one_way > 50 and ping_pong > 20
