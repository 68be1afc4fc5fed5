"""Direct unit tests of the proof of work, the rate limiter, the record store, records,
contacts, the SAS, the crypto sessions and the DHT node.

They kill mutants the mutation run (benchmarks/mutation.py, docs/benchmarks.md "Mutation
testing") found surviving: each pins one security decision at its boundary.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random

import msgspec
import pytest

from dhtchat.core.contacts import (
    Pair,
    ReplayGuard,
    make_contact_request,
    open_contact_request,
)
from dhtchat.core.errors import InvalidRecord, LocalProtocolError, RemoteProtocolError
from dhtchat.core.events import Event, GetCompleted, PeerMisbehaved, ValueFound
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.node import DhtConfig, DhtNode
from dhtchat.core.pow import REQUEST_POW_BITS, pow_ok, solve_pow
from dhtchat.core.ratelimit import TokenBuckets
from dhtchat.core.records import (
    CLOCK_SKEW_ALLOWANCE,
    MAX_VALUE_BYTES,
    Record,
    RecordType,
    app_salt,
    encoded_size,
    make_app_record,
    make_record,
    policy_for,
    record_key,
    validate_record,
)
from dhtchat.core.sas import MAX_NONCE_BYTES, MIN_NONCE_BYTES, commitment
from dhtchat.core.storage import RecordStore
from dhtchat.core.wire import (
    MAX_DATAGRAM_BYTES,
    Envelope,
    Error,
    ErrorCode,
    GetValues,
    Listen,
    Listening,
    Nodes,
    Ping,
    Push,
    RequestBody,
    ResponseBody,
    Store,
    Stored,
    StoreStatus,
    Values,
    decode,
    encode_envelope,
    encode_request,
    pack,
    response_signed_bytes,
)
from dhtchat.messaging.session import (
    BUNDLE_PREKEYS,
    MAX_BUNDLE_PREKEYS,
    MAX_PLAINTEXT,
    MAX_SKIP,
    SPK_ROTATION_SECONDS,
    Conversation,
    PrekeyStore,
    Session,
    SessionError,
    is_initial_message,
    parse_bundle,
)
from tests.support import deterministic_bytes, node_key

SUBJECT = bytes(range(64))
SEALED = b"sealed request"


def _leading_zero_bits(counter: int) -> int:
    digest = hashlib.blake2b(b"dhtchat/pow/v1" + SUBJECT + counter.to_bytes(8, "big") + SEALED,
                             digest_size=32).digest()
    value = int.from_bytes(digest, "big")
    return 256 - value.bit_length()


def test_solved_counter_has_exactly_the_claimed_leading_zeros_and_is_the_first() -> None:
    for bits in (1, 4, 8):
        counter = solve_pow(SUBJECT, SEALED, bits)
        assert _leading_zero_bits(counter) >= bits
        assert pow_ok(SUBJECT, SEALED, counter, bits)
        assert all(_leading_zero_bits(c) < bits for c in range(counter))  # the first one
        assert all(not pow_ok(SUBJECT, SEALED, c, bits) for c in range(counter))


def test_proof_of_work_is_bound_to_subject_sealed_part_and_difficulty() -> None:
    bits = 10
    counter = solve_pow(SUBJECT, SEALED, bits)
    zeros = _leading_zero_bits(counter)
    assert pow_ok(SUBJECT, SEALED, counter, zeros)
    assert not pow_ok(SUBJECT, SEALED, counter, zeros + 1)  # one bit more is not solved
    assert not pow_ok(bytes(64), SEALED, counter, bits) or _other_solves(bytes(64), SEALED,
                                                                         counter, bits)
    assert not pow_ok(SUBJECT, SEALED + b"x", counter, bits) or _other_solves(
        SUBJECT, SEALED + b"x", counter, bits)
    assert pow_ok(SUBJECT, SEALED, 12345, 0)  # difficulty zero accepts anything
    assert pow_ok(SUBJECT, SEALED, 12345, -1)


def _other_solves(subject: bytes, sealed: bytes, counter: int, bits: int) -> bool:
    digest = hashlib.blake2b(b"dhtchat/pow/v1" + subject + counter.to_bytes(8, "big") + sealed,
                             digest_size=32).digest()
    return int.from_bytes(digest, "big") >> (256 - bits) == 0


def test_unsolved_counters_fail_at_the_difficulty() -> None:
    bits = 6
    refused = [c for c in range(200) if _leading_zero_bits(c) < bits]
    accepted = [c for c in range(200) if _leading_zero_bits(c) >= bits]
    assert refused and accepted
    assert all(not pow_ok(SUBJECT, SEALED, c, bits) for c in refused)
    assert all(pow_ok(SUBJECT, SEALED, c, bits) for c in accepted)


def test_token_bucket_burst_cost_and_refill_boundaries() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0)
    assert [buckets.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("b", 100.0)  # another key has its own bucket
    assert not buckets.allow("a", 100.4)  # 0.8 tokens refilled: not enough for 1
    assert buckets.allow("a", 100.5)  # exactly 1.0 token (0.8 + 0.2): allowed at equality
    assert not buckets.allow("a", 100.5)
    assert buckets.allow("a", 200.0, cost=3.0)  # refill caps at burst 3 ...
    assert not buckets.allow("a", 200.0, cost=0.5)  # ... not more
    assert not buckets.allow("c", 300.0, cost=3.5)  # a cost above the burst never passes
    assert buckets.allow("c", 300.0, cost=3.0)  # and the refused one took nothing


def test_token_bucket_clock_going_backwards_gives_no_tokens() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0)
    assert buckets.allow("a", 100.0)
    assert not buckets.allow("a", 50.0)
    assert not buckets.allow("a", 100.5)  # the stamp stayed at 100: only 0.5 refilled
    assert buckets.allow("a", 101.0)


def test_token_bucket_memory_is_bounded_and_evicts_the_oldest_eighth() -> None:
    buckets = TokenBuckets(rate=0.0, burst=1.0, max_keys=16)
    for i in range(16):
        assert buckets.allow(f"k{i}", float(i))
    assert len(buckets) == 16
    assert buckets.allow("new", 100.0)
    assert len(buckets) == 15  # 17 keys, the oldest 17 // 8 = 2 forgotten
    assert buckets.allow("k0", 101.0)  # forgotten: starts full again
    assert not buckets.allow("k5", 102.0)  # kept: still empty (rate 0)
    assert not buckets.allow("new", 103.0)
    small = TokenBuckets(rate=0.0, burst=1.0, max_keys=2)
    for key in ("a", "b", "c"):
        assert small.allow(key, 1.0)
    assert len(small) == 2  # at least one is evicted even when an eighth rounds to zero
    assert not small.allow("c", 2.0)


def _record(namespace: bytes, owner: bytes, seq: int, value: bytes = b"v",
            expires: int = 1000) -> Record:
    return Record(type=RecordType.PRESENCE, owner=owner, namespace=namespace, salt=b"",
                  seq=seq, expires=expires, value=value, signature=bytes(64))


def key(namespace: bytes) -> bytes:
    return record_key(RecordType.PRESENCE, namespace, b"")


K, O1, O2 = b"k" * 32, b"a" * 32, b"b" * 32


def test_store_rollback_conflict_and_refresh() -> None:
    store = RecordStore()
    assert store.put(_record(K, O1, 5), 10, "s1", 0.0) == StoreStatus.OK
    assert store.put(_record(K, O1, 4), 10, "s1", 0.0) == StoreStatus.ROLLBACK
    assert store.put(_record(K, O1, 5, b"other"), 10, "s1", 0.0) == StoreStatus.ROLLBACK
    assert store.put(_record(K, O1, 5), 10, "s1", 0.0) == StoreStatus.OK
    assert (store.record_count, store.byte_count) == (1, 10)
    assert store.put(_record(K, O1, 6, b"new"), 20, "s1", 0.0) == StoreStatus.OK
    assert store.records(key(K), 0.0) == [_record(K, O1, 6, b"new")]
    assert (store.record_count, store.byte_count) == (1, 20)
    assert store.subnet_usage("s1") == (1, 20)


def test_store_quotas_at_their_exact_limits() -> None:
    store = RecordStore(quota_records_per_subnet=2, quota_bytes_per_subnet=100, max_records=3,
                        max_bytes=150, max_owners_per_key=2)
    assert store.put(_record(K, O1, 1), 60, "s1", 0.0) == StoreStatus.OK
    assert store.put(_record(K, O2, 1), 40, "s1", 0.0) == StoreStatus.OK  # exactly 100 bytes
    assert store.put(_record(b"x" * 32, O1, 1), 1, "s1", 0.0) == StoreStatus.QUOTA  # 3rd rec
    assert store.put(_record(K, b"c" * 32, 1), 1, "s2", 0.0) == StoreStatus.QUOTA  # 3rd owner
    # replacing its own record is measured as if the old one were gone
    assert store.put(_record(K, O1, 2), 60, "s1", 0.0) == StoreStatus.OK
    assert store.put(_record(K, O1, 3), 61, "s1", 0.0) == StoreStatus.QUOTA  # 101 bytes
    assert store.put(_record(b"y" * 32, O1, 1), 50, "s2", 0.0) == StoreStatus.OK  # 150 total
    assert store.put(_record(b"z" * 32, O1, 1), 1, "s3", 0.0) == StoreStatus.QUOTA  # max recs
    assert (store.record_count, store.byte_count) == (3, 150)
    assert store.subnet_usage("s1") == (2, 100)
    assert store.subnet_usage("s2") == (1, 50)
    bytes_only = RecordStore(max_bytes=100)
    assert bytes_only.put(_record(K, O1, 1), 100, "s1", 0.0) == StoreStatus.OK
    assert bytes_only.put(_record(K, O2, 1), 1, "s2", 0.0) == StoreStatus.QUOTA


def test_store_moving_a_record_to_another_subnet_recharges_it() -> None:
    store = RecordStore(quota_records_per_subnet=1, quota_bytes_per_subnet=100)
    assert store.put(_record(K, O1, 1), 80, "s1", 0.0) == StoreStatus.OK
    assert store.put(_record(K, O1, 2), 80, "s2", 0.0) == StoreStatus.OK
    assert store.subnet_usage("s1") == (0, 0)
    assert store.subnet_usage("s2") == (1, 80)
    assert store.put(_record(b"x" * 32, O1, 1), 10, "s1", 0.0) == StoreStatus.OK


def test_store_expiry_boundary_and_owner_filter() -> None:
    store = RecordStore()
    assert store.put(_record(K, O2, 1, expires=100), 5, "s1", 0.0) == StoreStatus.OK
    assert store.put(_record(K, O1, 1, expires=200), 5, "s1", 0.0) == StoreStatus.OK
    assert [r.owner for r in store.records(key(K), 50.0)] == [O1, O2]  # sorted by owner
    assert store.records(key(K), 50.0, owner=O2) == [_record(K, O2, 1, expires=100)]
    assert store.records(key(K), 100.0, owner=O2) == []  # expires at its timestamp
    assert store.records(key(K), 100.0) == [_record(K, O1, 1, expires=200)]
    assert store.records(key(b"none" * 8), 0.0) == []
    assert store.expire(99.0) == 0
    assert store.expire(100.0) == 1
    assert (store.record_count, store.byte_count) == (1, 5)
    assert store.held_keys() == [key(K)]
    assert store.expire(200.0) == 1
    assert store.held_keys() == []
    assert store.subnet_usage("s1") == (0, 0)


# ------------------------------------------------------------------ records.py (issue 11 item 17)

ALICE_ID = SigningIdentity.from_seed(bytes([1]) * 32)
BOB_ID = SigningIdentity.from_seed(bytes([2]) * 32)
NOW = 1_700_000_000


def test_record_key_and_app_salt_are_the_documented_domain_separated_hashes() -> None:
    owner = ALICE_ID.public_key
    expected = hashlib.blake2b(b"dhtchat/record-key/v1" + b"\x00\x06" + owner + b"salt",
                               digest_size=32).digest()
    assert record_key(RecordType.CONTACT_REQUEST, owner, b"salt") == expected
    assert app_salt("k\u00e9y") == hashlib.blake2b(b"dhtchat/app-key/v1" + "k\u00e9y".encode(),
                                                   digest_size=32).digest()


def test_make_record_type_range_is_exactly_16_bits() -> None:
    for type_ in (0, 0xFFFF):
        record = make_record(ALICE_ID, type_, b"", b"v", seq=0, expires=NOW + 60)
        validate_record(record, record.key, NOW)
    for type_ in (-1, 0x10000):
        with pytest.raises(LocalProtocolError):
            make_record(ALICE_ID, type_, b"", b"v", seq=0, expires=NOW + 60)


def test_make_record_namespace_rules() -> None:
    own = make_record(ALICE_ID, RecordType.APP, b"", b"v", seq=1, expires=NOW + 60,
                      namespace=ALICE_ID.public_key)
    assert own.namespace == b""  # the owner's own key is stored as the empty namespace
    validate_record(own, record_key(RecordType.APP, ALICE_ID.public_key, b""), NOW)
    with pytest.raises(LocalProtocolError):  # an owner-only type in someone else's space
        make_record(ALICE_ID, RecordType.APP, b"", b"v", seq=1, expires=NOW + 60,
                    namespace=BOB_ID.public_key)
    with pytest.raises(LocalProtocolError):  # an open-write type, but not a 32-byte key
        make_record(ALICE_ID, RecordType.MAILBOX, b"", b"v", seq=1, expires=NOW + 60,
                    namespace=b"short")


def test_validate_record_checks_the_signature_by_default() -> None:
    good = make_record(ALICE_ID, RecordType.APP, b"s", b"v", seq=1, expires=NOW + 60)
    forged = msgspec.structs.replace(good, value=b"w")
    validate_record(forged, forged.key, NOW, verify_signature_=False)
    with pytest.raises(InvalidRecord, match="signature"):
        validate_record(forged, forged.key, NOW)


def _signed_raw(type_: int, namespace: bytes, value: bytes = b"v", expires: int = NOW + 60,
                signer: SigningIdentity = ALICE_ID) -> Record:
    """A correctly signed record that make_record would refuse to build."""
    unsigned = Record(type_, signer.public_key, namespace, b"", 1, expires, value, bytes(64))
    return msgspec.structs.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))


def test_validate_record_refuses_foreign_or_malformed_namespaces() -> None:
    foreign = _signed_raw(RecordType.APP, BOB_ID.public_key)  # owner-only type, Bob's space
    with pytest.raises(InvalidRecord, match="namespace"):
        validate_record(foreign, foreign.key, NOW)
    short = _signed_raw(RecordType.CONTACT_REQUEST, b"\x01" * 31)  # open-write, 31 bytes
    with pytest.raises(InvalidRecord, match="namespace"):
        validate_record(short, short.key, NOW)
    own = _signed_raw(RecordType.CONTACT_REQUEST, ALICE_ID.public_key)  # must be spelled b""
    with pytest.raises(InvalidRecord, match="namespace"):
        validate_record(own, own.key, NOW)
    mailbox = _signed_raw(RecordType.MAILBOX, BOB_ID.public_key)  # owner-only since item 4
    with pytest.raises(InvalidRecord, match="namespace"):
        validate_record(mailbox, mailbox.key, NOW)


def test_validate_record_value_size_and_expiry_boundaries() -> None:
    full = _signed_raw(RecordType.APP, b"", value=bytes(MAX_VALUE_BYTES))
    validate_record(full, full.key, NOW)  # exactly the maximum is allowed
    at_now = _signed_raw(RecordType.APP, b"", expires=NOW)
    with pytest.raises(InvalidRecord, match="expired"):
        validate_record(at_now, at_now.key, NOW)
    validate_record(at_now, at_now.key, NOW - 1)
    limit = NOW + policy_for(RecordType.APP).max_ttl + CLOCK_SKEW_ALLOWANCE
    longest = _signed_raw(RecordType.APP, b"", expires=limit)
    validate_record(longest, longest.key, NOW)  # the skew allowance is inclusive ...
    too_long = _signed_raw(RecordType.APP, b"", expires=limit + 1)
    with pytest.raises(InvalidRecord, match="lifetime"):
        validate_record(too_long, too_long.key, NOW)  # ... and added, not subtracted


# Counters solving REQUEST_POW_BITS for subject bob || alice (precomputed with solve_pow).
_POW_EMPTY_SEALED, _POW_SEALED_X = 25976, 309691


def test_contact_request_needs_a_sealed_part_after_its_counter() -> None:
    subject = BOB_ID.public_key + ALICE_ID.public_key
    assert pow_ok(subject, b"", _POW_EMPTY_SEALED, REQUEST_POW_BITS)
    assert pow_ok(subject, b"x", _POW_SEALED_X, REQUEST_POW_BITS)
    counter_only = _signed_raw(RecordType.CONTACT_REQUEST, BOB_ID.public_key,
                               value=_POW_EMPTY_SEALED.to_bytes(8, "big"))
    with pytest.raises(InvalidRecord, match="proof of work"):
        validate_record(counter_only, counter_only.key, NOW)
    one_byte = _signed_raw(RecordType.CONTACT_REQUEST, BOB_ID.public_key,
                           value=_POW_SEALED_X.to_bytes(8, "big") + b"x")
    validate_record(one_byte, one_byte.key, NOW)
    unsolved = _signed_raw(RecordType.CONTACT_REQUEST, BOB_ID.public_key,
                           value=(_POW_SEALED_X + 1).to_bytes(8, "big") + b"x")
    with pytest.raises(InvalidRecord, match="proof of work"):
        validate_record(unsolved, unsolved.key, NOW)


# ----------------------------------------------------------------- contacts.py (issue 11 item 17)

# Pair secret of the seeds 0x01*32 and 0x02*32: BLAKE2b(domain || X25519 || low key || high key).
_PAIR_1_2 = "ce7c43424ef66ebdb0d96751c5a3ef83f56d738ff52997fe855751a2e90810a9"


def test_pair_secret_is_the_known_answer_and_needs_the_private_key() -> None:
    secret = Pair.derive(ALICE_ID, BOB_ID.public_key).secret
    assert secret.hex() == _PAIR_1_2
    assert Pair.derive(BOB_ID, ALICE_ID.public_key).secret == secret
    low, high = sorted((ALICE_ID.public_key, BOB_ID.public_key))
    assert secret != hashlib.blake2b(b"dhtchat/pair/v1" + low + high, digest_size=32).digest()


def test_replay_guard_age_window_is_inclusive_on_both_sides() -> None:
    guard = ReplayGuard(max_age=120)
    guard.check(b"s", "offer", b"a", 1_000_000, 1120.0)  # exactly max_age old
    guard.check(b"s", "offer", b"b", 1_120_000, 1000.0)  # exactly max_age in the future
    with pytest.raises(RemoteProtocolError):
        guard.check(b"s", "offer", b"c", 999_999, 1120.0)
    with pytest.raises(RemoteProtocolError):
        guard.check(b"s", "offer", b"d", 1_120_001, 1000.0)


def test_replay_guard_remembers_within_the_window_and_at_capacity() -> None:
    guard = ReplayGuard(max_age=120, capacity=2)
    guard.check(b"s", "offer", b"a", 1_000_000, 1000.0)
    with pytest.raises(RemoteProtocolError, match="replayed"):
        guard.check(b"s", "offer", b"a", 1_000_000, 1001.0)  # still remembered a second later
    guard.check(b"s", "offer", b"b", 1_000_000, 1001.0)  # two entries: exactly the capacity
    with pytest.raises(RemoteProtocolError, match="replayed"):
        guard.check(b"s", "offer", b"a", 1_000_000, 1002.0)
    guard.check(b"s", "offer", b"c", 1_000_000, 1002.0)  # over capacity: the oldest goes ...
    with pytest.raises(RemoteProtocolError, match="replayed"):
        guard.check(b"s", "offer", b"c", 1_000_000, 1003.0)  # ... never the newest


# ---------------------------------------------------------------------------- contact requests
# Survivors of the contacts.py run that changed a security decision (docs/benchmarks.md).



def test_a_request_rewrapped_in_another_envelope_is_refused() -> None:
    """The sealed body names its envelope key: a storer (or anyone) who re-wraps a real
    request under a fresh envelope key of its own, paying the proof of work again, gets a
    request the recipient refuses (kills `or` -> `and` in the recipient/envelope check)."""
    alice, bob = SigningIdentity.from_seed(b"\x0a" * 32), SigningIdentity.from_seed(b"\x0b" * 32)
    real = make_contact_request(alice, bob.public_key, name="Alice", message="hi", now=NOW,
                                random_bytes=deterministic_bytes(1), pow_bits=4)
    assert open_contact_request(bob, real, NOW, pow_bits=4).sender == alice.public_key
    sealed = real.value[8:]
    thief = SigningIdentity.from_seed(b"\x0c" * 32)
    counter = solve_pow(bob.public_key + thief.public_key, sealed, 4)
    rewrapped = make_record(thief, RecordType.CONTACT_REQUEST, b"",
                            counter.to_bytes(8, "big") + sealed, seq=0,
                            expires=int(NOW) + 3600, namespace=bob.public_key)
    with pytest.raises(RemoteProtocolError, match="another envelope"):
        open_contact_request(bob, rewrapped, NOW, pow_bits=4)


def test_a_request_dated_more_than_ten_minutes_ahead_is_refused() -> None:
    alice, bob = SigningIdentity.from_seed(b"\x0a" * 32), SigningIdentity.from_seed(b"\x0b" * 32)
    edge = make_contact_request(alice, bob.public_key, name="A", message="", now=NOW + 600,
                                random_bytes=deterministic_bytes(2), pow_bits=4)
    assert open_contact_request(bob, edge, NOW, pow_bits=4).created == NOW + 600  # inclusive
    ahead = make_contact_request(alice, bob.public_key, name="A", message="", now=NOW + 601,
                                 random_bytes=deterministic_bytes(3), pow_bits=4)
    with pytest.raises(RemoteProtocolError, match="future"):
        open_contact_request(bob, ahead, NOW, pow_bits=4)


def test_the_sas_commitment_takes_only_nonces_of_the_allowed_length() -> None:
    assert len(commitment(bytes(MAX_NONCE_BYTES))) == 32
    assert len(commitment(bytes(MIN_NONCE_BYTES))) == 32
    for size in (MIN_NONCE_BYTES - 1, MAX_NONCE_BYTES + 1):
        with pytest.raises(LocalProtocolError):
            commitment(bytes(size))


# --- messaging/session.py ------------------------------------------------------------------


def _person(seed_byte: int, now: float = 1000.0) -> tuple[bytes, bytes, PrekeyStore]:
    seed = bytes([seed_byte]) * 32
    return seed, SigningIdentity.from_seed(seed).public_key, PrekeyStore.create(seed, now)


def _rewrite(wire: bytes, **changes: int | bytes) -> bytes:
    """Rewrite header fields of a wire message (a msgpack array, see the session module)."""
    fields = msgspec.msgpack.decode(wire)
    names = (["tag", "dh", "pn", "n", "ct"] if fields[0] == 1
             else ["tag", "ik", "ek", "spk", "opk", "dh", "pn", "n", "ct"])
    for name, value in changes.items():
        fields[names.index(name)] = value
    return msgspec.msgpack.encode(fields)


def test_message_and_bundle_size_bounds_are_exact() -> None:
    _, _, store = _person(1)
    _, other, _ = _person(2)
    limit = MAX_PLAINTEXT + 1024
    with pytest.raises(SessionError, match="malformed"):
        asyncio.run(Session.accept(store, other, b"\xc1" * limit))
    with pytest.raises(SessionError, match="too large"):
        asyncio.run(Session.accept(store, other, b"\xc1" * (limit + 1)))
    with pytest.raises(SessionError, match="malformed"):
        parse_bundle(b"\xc1" * 2048)
    with pytest.raises(SessionError, match="too large"):
        parse_bundle(b"\xc1" * 2049)
    assert not is_initial_message(b"\xc1" * 40)
    assert not is_initial_message(b"\xc1" * (limit + 1))


def test_the_largest_plaintext_goes_through_and_one_byte_more_is_refused() -> None:
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        sa, first = await Session.initiate(alice_store, bob, bob_store.bundle(), b"hi")
        sb, _ = await Session.accept(bob_store, alice, first)
        largest = b"x" * MAX_PLAINTEXT
        assert await sb.decrypt(await sa.encrypt(largest)) == largest
        with pytest.raises(SessionError, match="too large"):
            await sa.encrypt(largest + b"x")

    asyncio.run(go())


def test_the_associated_data_encodes_both_identity_keys_as_ed25519() -> None:
    """X3DH AD = Encode(IK_A) || Encode(IK_B) with the 0xED prefix of an Ed25519 key."""
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        sa, first = await Session.initiate(alice_store, bob, bob_store.bundle(), b"hi")
        sb, _ = await Session.accept(bob_store, alice, first)
        expected = (b"\xed" + alice + b"\xed" + bob).hex()
        assert json.loads(sa.to_json())["ad"] == expected
        assert json.loads(sb.to_json())["ad"] == expected

    asyncio.run(go())


def test_a_previous_chain_jump_over_max_skip_is_refused_before_any_receiving_chain() -> None:
    """The initiator has no receiving chain until the first reply: a header claiming
    pn = MAX_SKIP + 1 on a new ratchet key is refused as a jump, counted from 0."""
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        sa, first = await Session.initiate(alice_store, bob, bob_store.bundle(), b"hi")
        sb, _ = await Session.accept(bob_store, alice, first)
        reply = await sb.encrypt(b"reply")
        with pytest.raises(SessionError, match="skip"):
            await sa.decrypt(_rewrite(reply, pn=MAX_SKIP + 1))
        assert await sa.decrypt(reply) == b"reply"

    asyncio.run(go())


def test_an_initial_message_with_another_sessions_x3dh_header_is_refused() -> None:
    """The X3DH header is not in the AD, so the session checks it itself: a rewritten
    ephemeral key, or our own initial message reflected under the peer's identity key."""
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        sa, first = await Session.initiate(alice_store, bob, bob_store.bundle(), b"hi")
        sb, _ = await Session.accept(bob_store, alice, first)
        second = await sa.encrypt(b"second")
        assert is_initial_message(second)  # no reply yet: the header is still attached
        with pytest.raises(SessionError, match="another session"):
            await sb.decrypt(_rewrite(second, ek=bytes(range(32))))
        with pytest.raises(SessionError, match="another session"):
            await sa.decrypt(_rewrite(second, ik=bob))
        assert await sb.decrypt(second) == b"second"

    asyncio.run(go())


def test_a_conversation_accepts_a_new_session_the_peer_started_after_losing_its_state() -> None:
    """An initial message is routed by its ephemeral key: a new one is a new session even
    when the peer already has a session it started (kills `and` -> `or` in that match)."""
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        cb = Conversation(bob_store, bob, alice)
        ca = Conversation(alice_store, alice, bob)
        assert await cb.decrypt(await ca.encrypt(b"one", bob_store.bundle())) == b"one"
        ca = Conversation(alice_store, alice, bob)  # Alice forgot everything
        assert await cb.decrypt(await ca.encrypt(b"two", bob_store.bundle())) == b"two"
        assert cb.current_session_id == ca.current_session_id

    asyncio.run(go())


def test_bundles_keep_their_prekey_bounds_and_the_per_contact_order() -> None:
    _, me, store = _person(1)
    full = parse_bundle(store.bundle())
    assert len(full.pre_keys) == BUNDLE_PREKEYS
    assert not parse_bundle(store.bundle(0)).pre_keys
    contact = bytes(range(32))
    assert not msgspec.msgpack.decode(store.bundle_for(contact, 0))[4]
    for make in (store.bundle, functools.partial(store.bundle_for, contact)):
        assert len(parse_bundle(make(MAX_BUNDLE_PREKEYS)).pre_keys) == MAX_BUNDLE_PREKEYS
        for bad in (-1, MAX_BUNDLE_PREKEYS + 1):
            with pytest.raises(ValueError, match="max_prekeys"):
                make(bad)
    shown = msgspec.msgpack.decode(store.bundle_for(contact, MAX_BUNDLE_PREKEYS))
    assert shown[1:4] == [me, full.signed_pre_key, full.signed_pre_key_sig]
    ranked = shown[4]

    def rank(pk: bytes) -> bytes:
        return hashlib.blake2b(b"dhtchat/opk-order/v1" + contact + pk, digest_size=16).digest()

    assert ranked == sorted(ranked, key=rank) != sorted(ranked)
    assert msgspec.msgpack.decode(store.bundle_for(contact))[4] == ranked[:BUNDLE_PREKEYS]
    assert msgspec.msgpack.decode(store.bundle_for(bytes(32)))[4] != ranked[:BUNDLE_PREKEYS]


def test_a_restored_prekey_store_rotates_its_signed_prekey_on_schedule() -> None:
    seed, _, store = _person(1, now=1000.0)
    store = PrekeyStore.from_json(seed, store.to_json())
    spk = parse_bundle(store.bundle()).signed_pre_key
    store.maintain(1000.0 + SPK_ROTATION_SECONDS - 1)
    assert parse_bundle(store.bundle()).signed_pre_key == spk
    assert store.maintain(1000.0 + SPK_ROTATION_SECONDS)  # exactly 7 days: rotated
    assert parse_bundle(store.bundle()).signed_pre_key != spk


def test_an_unacknowledged_session_keeps_its_x3dh_header_across_persistence() -> None:
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        sa, _lost = await Session.initiate(alice_store, bob, bob_store.bundle(), b"lost")
        restored = Session.from_json(sa.to_json())
        assert not restored.acknowledged
        again = await restored.encrypt(b"again")
        assert is_initial_message(again)
        _, plaintext = await Session.accept(bob_store, alice, again)
        assert plaintext == b"again"

    asyncio.run(go())


def test_restart_stops_sending_on_the_current_session_and_survives_persistence() -> None:
    """After restart the old session is not preferred again until the contact answers on it,
    even when its initiator's key ranks higher (both sides then converge on the new one)."""
    async def go() -> None:
        people = sorted((_person(1), _person(2)), key=lambda p: p[1])
        (_, alice, alice_store), (_, bob, bob_store) = people  # bob's key ranks higher
        ca = Conversation(alice_store, alice, bob)
        cb = Conversation(bob_store, bob, alice)
        assert await ca.decrypt(await cb.encrypt(b"hi", alice_store.bundle())) == b"hi"
        assert await cb.decrypt(await ca.encrypt(b"hey", None)) == b"hey"
        ca.restart()
        assert not ca.established
        with pytest.raises(SessionError, match="bundle"):
            await ca.encrypt(b"x", None)
        ca = Conversation.from_json(alice_store, ca.to_json())
        assert not ca.established
        fresh = await ca.encrypt(b"new", bob_store.bundle())
        assert is_initial_message(fresh)
        assert await cb.decrypt(fresh) == b"new"
        assert await ca.decrypt(await cb.encrypt(b"ok", None)) == b"ok"
        assert ca.current_session_id == cb.current_session_id

    asyncio.run(go())


def test_a_restored_conversation_keeps_sending_on_its_current_session() -> None:
    async def go() -> None:
        _, alice, alice_store = _person(1)
        _, bob, bob_store = _person(2)
        ca = Conversation(alice_store, alice, bob)
        cb = Conversation(bob_store, bob, alice)
        to_bob = await ca.encrypt(b"a", bob_store.bundle())
        assert await ca.decrypt(await cb.encrypt(b"b", alice_store.bundle())) == b"b"
        assert await cb.decrypt(to_bob) == b"a"  # simultaneous: two sessions each
        current = ca.current_session_id
        assert current is not None
        assert Conversation.from_json(alice_store, ca.to_json()).current_session_id == current

    asyncio.run(go())


# --- core/node.py: request handling and the checks on values in replies ---------------------

NODE_NOW = 1_700_000_000.0
CENTER = ("10.200.0.1", 4000)


def _signed(peer: SigningIdentity, requester_id: bytes, tid: bytes, body: ResponseBody) -> bytes:
    envelope = encode_envelope(Envelope(tid, peer.public_key, 0, b"t" * 16, body))
    return pack(envelope, peer.sign(response_signed_bytes(requester_id, envelope)))


def _star(count: int, config: DhtConfig | None = None
          ) -> tuple[DhtNode, list[SigningIdentity], list[tuple[str, int]]]:
    """A node whose table holds ``count`` peers; the test answers for them by hand."""
    center = DhtNode(node_key(1), rng=random.Random(1), now=NODE_NOW, config=config)
    keys = [node_key(100 + i) for i in range(count)]
    addresses = [(f"10.0.{i}.1", 4000) for i in range(count)]
    for key, address in zip(keys, addresses, strict=True):
        center.table.add(DhtNode(key, rng=random.Random(0), now=NODE_NOW).node_id, address,
                         NODE_NOW)
    return center, keys, addresses


def _events(node: DhtNode) -> list[Event]:
    out = []
    while (event := node.next_event()) is not None:
        out.append(event)
    return out


def _app_record(seq: int, signer_seed: int = 900) -> Record:
    return make_app_record(node_key(signer_seed), "topic", b"v%d" % seq, seq=seq,
                           expires=int(NODE_NOW) + 600)


def test_a_get_refuses_forged_and_older_records_in_replies() -> None:
    """Each storer's reply is checked: a record with a bad signature is refused and reported,
    an older seq never replaces a newer one, and a newer one always replaces an older one."""
    center, keys, addresses = _star(3, DhtConfig(alpha=3))
    old, new = _app_record(1), _app_record(2)
    forged = msgspec.structs.replace(_app_record(3), signature=bytes(64))
    qid = center.get(new.key, NODE_NOW)
    sent = {a: decode(d).envelope.tid for d, a in center.datagrams_to_send(NODE_NOW)}
    assert set(sent) == set(addresses)
    pages = {addresses[0]: [forged, old], addresses[1]: [new], addresses[2]: [old]}
    for key, address in zip(keys, addresses, strict=True):
        reply = Values(pages[address], len(pages[address]), False, [])
        center.receive_datagram(_signed(key, center.node_id, sent[address], reply), address,
                                NODE_NOW)
    events = _events(center)
    done = next(e for e in events if isinstance(e, GetCompleted) and e.query_id == qid)
    assert done.records == (new,)
    bad = [e for e in events if isinstance(e, PeerMisbehaved)]
    assert [e.address for e in bad] == [addresses[0]]
    assert "invalid record in reply" in bad[0].reason


def test_a_get_follows_at_most_256_pages_from_one_storer() -> None:
    """A storer claiming a huge total gets exactly the page budget of requests, with the
    offset advancing by the records it returned."""
    center, keys, _ = _star(1)
    record = _app_record(1)
    center.get(record.key, NODE_NOW)
    now = NODE_NOW
    offsets = []
    for _ in range(300):
        out = [(d, a) for d, a in center.datagrams_to_send(now)
               if isinstance(decode(d).envelope.body, GetValues)]
        if not out:
            break
        for data, address in out:
            request = decode(data).envelope
            assert isinstance(request.body, GetValues)
            offsets.append(request.body.offset)
            assert request.body.owner == b""  # no owner filter asked for
            reply = Values([record], 100_000, False, [])
            now += 0.001
            center.receive_datagram(_signed(keys[0], center.node_id, request.tid, reply),
                                    address, now)
    assert offsets == list(range(257))  # the first request, then 256 pages
    assert center.stats["page_budget_exhausted"] == 1


def _get_requests(node: DhtNode, now: float) -> list[tuple[bytes, tuple[str, int]]]:
    out = node.datagrams_to_send(now)
    return [(decode(d).envelope.tid, a) for d, a in out
            if isinstance(decode(d).envelope.body, GetValues)]


def test_a_reply_or_a_page_from_another_node_than_the_one_asked_is_refused() -> None:
    center, keys, _ = _star(1)
    record = _app_record(1)
    impostor = node_key(555)
    qid = center.get(record.key, NODE_NOW)
    ((tid, address),) = _get_requests(center, NODE_NOW)
    first = Values([record], 2, False, [])  # "there is one more": a page will follow
    center.receive_datagram(_signed(impostor, center.node_id, tid, first), address, NODE_NOW)
    events = _events(center)
    assert [(e.address, e.reason) for e in events if isinstance(e, PeerMisbehaved)] == [
        (address, "responder is not the node we asked")]
    done = next(e for e in events if isinstance(e, GetCompleted))
    assert done.query_id == qid and done.records == ()  # the asked node is failed
    center.receive_datagram(_signed(keys[0], center.node_id, tid, first), address, NODE_NOW)
    assert center.stats["responses_unmatched"] == 1  # its transaction is gone

    center.get(record.key, NODE_NOW + 1)
    ((tid, address),) = _get_requests(center, NODE_NOW + 1)
    center.receive_datagram(_signed(keys[0], center.node_id, tid, first), address,
                            NODE_NOW + 1)
    ((page_tid, _),) = _get_requests(center, NODE_NOW + 1)
    page = Values([], 2, False, [])
    center.receive_datagram(_signed(impostor, center.node_id, page_tid, page), address,
                            NODE_NOW + 1)
    assert any(isinstance(e, PeerMisbehaved) and e.reason == "responder is not the node we asked"
               for e in _events(center))


def test_an_empty_page_from_a_storer_claiming_more_is_not_asked_for_again() -> None:
    center, keys, _ = _star(1)
    center.get(_app_record(1).key, NODE_NOW)
    ((tid, address),) = _get_requests(center, NODE_NOW)
    center.receive_datagram(_signed(keys[0], center.node_id, tid, Values([], 5, False, [])),
                            address, NODE_NOW)
    assert _get_requests(center, NODE_NOW) == []
    assert any(isinstance(e, GetCompleted) for e in _events(center))


def _token(node: DhtNode, address: tuple[str, int], now: float) -> bytes:
    node.receive_datagram(encode_request(b"tokentid", node_key(7).public_key, 0, b"", Ping(),
                                         200), address, now)
    replies = [decode(d).envelope for d, a in node.datagrams_to_send(now)
               if a == address and decode(d).envelope.tid == b"tokentid"]
    assert len(replies) == 1
    return replies[0].token


def _ask(node: DhtNode, address: tuple[str, int], body: RequestBody, now: float,
         token: bytes | None = None) -> object:
    if token is None:
        token = _token(node, address, now)
    node.receive_datagram(encode_request(b"requests", node_key(8).public_key, 0, token, body,
                                         200), address, now)
    replies = [decode(d).envelope for d, a in node.datagrams_to_send(now)
               if a == address and decode(d).envelope.tid == b"requests"]
    assert len(replies) == 1
    return replies[0].body


def test_the_write_token_is_keyed_by_the_nodes_secret() -> None:
    one = DhtNode(node_key(1), rng=random.Random(1), now=NODE_NOW)
    two = DhtNode(node_key(2), rng=random.Random(2), now=NODE_NOW)
    token = _token(one, CENTER, NODE_NOW)
    assert len(token) == 16
    assert token != _token(two, CENTER, NODE_NOW)  # unkeyed, any node could mint it
    assert token == _token(one, CENTER, NODE_NOW + 1)  # same epoch, same address


def test_listener_limits_per_key_and_in_total_and_pushes_only_for_new_records() -> None:
    node = DhtNode(node_key(1), rng=random.Random(1), now=NODE_NOW,
                   config=DhtConfig(max_listeners_per_key=2, max_listeners=3))
    key = _app_record(1).key
    other = bytes(32)
    a1, a2, a3, a4, writer = [(f"10.1.{i}.1", 4000) for i in range(5)]
    assert isinstance(_ask(node, a1, Listen(key), NODE_NOW), Listening)
    assert isinstance(_ask(node, a2, Listen(key), NODE_NOW), Listening)
    full = _ask(node, a3, Listen(key), NODE_NOW)
    assert isinstance(full, Error) and full.code == ErrorCode.OVERLOADED
    assert isinstance(_ask(node, a1, Listen(key), NODE_NOW), Listening)  # renewal is fine
    assert isinstance(_ask(node, a3, Listen(other), NODE_NOW), Listening)  # 3 in total
    full = _ask(node, a4, Listen(bytes([1]) * 32), NODE_NOW)
    assert isinstance(full, Error) and full.code == ErrorCode.OVERLOADED
    assert isinstance(_ask(node, a4, Listen(key), NODE_NOW, token=b""), Error)  # no token

    def store(record: Record) -> list[tuple[str, int]]:
        token = _token(node, writer, NODE_NOW + 1)
        node.receive_datagram(encode_request(b"storetid", node_key(9).public_key, 0, token,
                                             Store(record), 200), writer, NODE_NOW + 1)
        out = node.datagrams_to_send(NODE_NOW + 1)
        assert any(a == writer and isinstance(decode(d).envelope.body, Stored)
                   for d, a in out)
        return sorted(a for d, a in out if isinstance(decode(d).envelope.body, Push))

    assert store(_app_record(2)) == [a1, a2]  # both key listeners, after a3 was turned away
    assert store(_app_record(2)) == []  # the same record again: no push
    assert store(_app_record(1)) == []  # an older one: refused, no push
    assert store(_app_record(3)) == [a1, a2]


def test_each_subnet_has_its_own_request_budget() -> None:
    config = DhtConfig(rate_per_ip=1.0, burst_per_ip=1.0, rate_per_subnet=1.0,
                       burst_per_subnet=2.0)
    node = DhtNode(node_key(1), rng=random.Random(1), now=NODE_NOW, config=config)
    for i in range(6):
        node.receive_datagram(encode_request(b"ping%04d" % i, node_key(7).public_key, 0, b"",
                                             Ping(), 200), (f"10.2.{i}.1", 4000), NODE_NOW)
    out = node.datagrams_to_send(NODE_NOW)
    assert sum(decode(d).envelope.tid.startswith(b"ping") for d, _ in out) == 6
    assert node.stats["rate_limited"] == 0
    for i in range(2):  # a second host of subnet 0 still fits, a third does not
        node.receive_datagram(encode_request(b"more%04d" % i, node_key(7).public_key, 0, b"",
                                             Ping(), 200), (f"10.2.0.{i + 2}", 4000), NODE_NOW)
    assert node.stats["rate_limited"] == 1


def test_a_listener_takes_only_signed_pushes_for_its_key_on_its_subscription() -> None:
    center, keys, addresses = _star(1)
    record = _app_record(1)
    qid = center.listen(record.key, NODE_NOW)
    listen_tid = None
    for _ in range(10):
        out = center.datagrams_to_send(NODE_NOW)
        if not out:
            break
        for data, address in out:
            request = decode(data).envelope
            reply: ResponseBody
            if isinstance(request.body, Listen):
                listen_tid, reply = request.tid, Listening(120)
            elif isinstance(request.body, GetValues):
                reply = Values([], 0, False, [])
            else:
                reply = Nodes([])
            center.receive_datagram(_signed(keys[0], center.node_id, request.tid, reply),
                                    address, NODE_NOW)
    assert listen_tid is not None
    _events(center)

    def push(tid: bytes, key: bytes, pushed: Record) -> list[Event]:
        center.receive_datagram(_signed(keys[0], center.node_id, tid, Push(key, pushed)),
                                addresses[0], NODE_NOW + 1)
        return _events(center)

    elsewhere = _app_record(1, signer_seed=901)  # valid, but for another key
    assert push(listen_tid, elsewhere.key, elsewhere) == []
    assert center.stats["pushes_unmatched"] == 1
    assert push(b"othertid", record.key, record) == []
    assert center.stats["pushes_unmatched"] == 2
    forged = msgspec.structs.replace(_app_record(2), signature=bytes(64))
    events = push(listen_tid, record.key, forged)
    assert len(events) == 1 and isinstance(events[0], PeerMisbehaved)
    assert events[0].address == addresses[0] and "invalid pushed record" in events[0].reason
    found = push(listen_tid, record.key, record)
    assert found == [ValueFound(query_id=qid, key=record.key, record=record,
                                source=addresses[0])]


def test_a_values_page_never_outgrows_a_datagram() -> None:
    """The byte budget of a Values page (node.py `_values_for`): near-maximum records under
    one key are split across pages, each within one datagram, and the pages cover them all.
    (Kills the open budget survivors, e.g. `budget += size`.) The records are put in the
    node's store directly: the store indexes by key and the reply path is what is tested."""
    node = DhtNode(node_key(1), rng=random.Random(1), now=NODE_NOW)
    inbox = node_key(949).public_key  # an open-write key: many owners under one key
    records = []
    for seed in range(6):
        record = make_record(node_key(950 + seed), RecordType.CONTACT_REQUEST, b"",
                             bytes([seed]) * MAX_VALUE_BYTES, seq=0,
                             expires=int(NODE_NOW) + 600, namespace=inbox)
        assert node.store.put(record, encoded_size(record), f"10.9.{seed}", NODE_NOW) \
            is StoreStatus.OK
        records.append(record)
    key = records[0].key
    assert all(r.key == key for r in records)
    asker = ("10.2.0.1", 4000)
    seen: list[Record] = []
    offset = 0
    while offset < len(records):
        now = NODE_NOW + offset  # a fresh request budget each page
        node.receive_datagram(encode_request(b"requests", node_key(8).public_key, 0,
                                             _token(node, asker, now),
                                             GetValues(key, offset=offset), 200), asker, now)
        out = [d for d, a in node.datagrams_to_send(now)
               if a == asker and decode(d).envelope.tid == b"requests"]
        assert len(out) == 1 and len(out[0]) <= MAX_DATAGRAM_BYTES
        page = decode(out[0]).envelope.body
        assert isinstance(page, Values) and page.total == len(records)
        assert 1 <= len(page.records) < len(records)  # near-maximum records need pages
        seen += page.records
        offset += len(page.records)
    assert sorted(r.owner for r in seen) == sorted(r.owner for r in records)
