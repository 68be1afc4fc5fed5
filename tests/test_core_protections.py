"""Protections of the DHT core, each driven through the node or store it protects.

Every test here fails when the check it names is removed (issue 11, items 4, 8 and 16).
"""

from __future__ import annotations

import random

import pytest

from dhtchat.core.contacts import Pair, Purpose, ReplayGuard
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.events import GetCompleted
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.ids import node_id_from_public_key
from dhtchat.core.node import DhtNode
from dhtchat.core.records import Record, RecordType, make_app_record, make_record
from dhtchat.core.storage import RecordStore
from dhtchat.core.stun import binding_request
from dhtchat.core.wire import (
    Envelope,
    GetValues,
    Ping,
    Pong,
    Store,
    Stored,
    StoreStatus,
    Values,
    decode,
    encode_envelope,
    pack,
    response_signed_bytes,
)
from tests.test_security import (
    NOW,
    RawPeer,
    contact_request,
    make_storer,
    owner,
    signed_foreign,
)

ALICE = SigningIdentity.from_seed(b"alice-seed-for-core-protections!")
BOB = SigningIdentity.from_seed(b"bob-seed-for-core-protections!!!")
MALLORY = SigningIdentity.from_seed(b"mallory-seed-core-protections!!!")


# ---------------------------------------------------------------- item 4: mailbox squatting

def test_a_third_key_cannot_write_a_pairs_mailbox_slot() -> None:
    """Mallory saw slot 0 of Alice -> Bob (its owner key is public on the DHT) and fills the
    next slots under that key as namespace; the storer refuses every one, and Alice's own
    write of the slot still succeeds."""
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    pair = Pair.derive(ALICE, BOB.public_key)
    channel = pair.channel_signer(Purpose.MAILBOX, ALICE.public_key, 0).public_key
    rng = random.Random(4)
    for index in range(1, 4):
        salt = index.to_bytes(8, "big")
        squat = signed_foreign(MALLORY, RecordType.MAILBOX, channel, salt, b"junk")
        assert squat.key == pair.slot_key(Purpose.MAILBOX, ALICE.public_key, 0, salt)
        assert peer.body(Store(squat)) == Stored(StoreStatus.INVALID)
        honest = pair.seal_record(Purpose.MAILBOX, 0, b"hello Bob", seq=1,
                                  expires=int(NOW) + 3600, random_bytes=rng.randbytes,
                                  salt=salt)
        assert peer.body(Store(honest)) == Stored(StoreStatus.OK)
        assert node.store.records(squat.key, NOW) == [honest]
    # and nobody can even build one with make_record
    with pytest.raises(LocalProtocolError):
        make_record(MALLORY, RecordType.MAILBOX, b"\x00" * 8, b"junk", seq=1,
                    expires=int(NOW) + 60, namespace=channel)


def test_squatters_cannot_exhaust_a_slots_owner_places() -> None:
    """The attack of item 4 end to end: with a 4-owner cap, four squatters would leave the
    real sender QUOTA if they could write; they cannot, so the sender's write lands."""
    node = make_storer(max_owners_per_key=4)
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    pair = Pair.derive(ALICE, BOB.public_key)
    channel = pair.channel_signer(Purpose.MAILBOX, ALICE.public_key, 0).public_key
    salt = (7).to_bytes(8, "big")
    statuses = {peer.body(Store(signed_foreign(owner(50 + i), RecordType.MAILBOX, channel,
                                               salt, b"junk")))
                for i in range(4)}
    assert statuses == {Stored(StoreStatus.INVALID)}
    honest = pair.seal_record(Purpose.MAILBOX, 0, b"hi", seq=1, expires=int(NOW) + 3600,
                              random_bytes=random.Random(1).randbytes, salt=salt)
    assert peer.body(Store(honest)) == Stored(StoreStatus.OK)
    assert node.store.records(honest.key, NOW) == [honest]


# ---------------------------------------------------------------- item 8: STUN via DHT tokens

def test_a_valid_dht_token_counts_as_receiving_for_stun() -> None:
    """An IP that presented our write token gets aioice's bare Binding request answered (it has
    shown it receives there); before that, and for a token-less requester, nothing."""
    node = make_storer()
    bare = binding_request(bytes(12))
    peer = RawPeer(node, ("203.0.113.5", 5000))
    assert node.stun.answer(bare, ("203.0.113.5", 6000), NOW) is None
    peer.get_token()  # a padded, token-less ping: proves nothing yet
    assert node.stun.answer(bare, ("203.0.113.5", 6000), NOW) is None
    assert isinstance(peer.body(Ping()), Pong)  # now with the token
    answer = node.stun.answer(bare, ("203.0.113.5", 6000), NOW)
    assert answer is not None and len(answer) == 32
    assert node.stun.answer(bare, ("203.0.113.6", 6000), NOW) is None  # another IP


# ---------------------------------------------------------------- item 16: node reply path

def _reader_with_one_storer() -> tuple[DhtNode, SigningIdentity, tuple[str, int]]:
    reader = DhtNode(owner(7), rng=random.Random(7), now=NOW)
    storer_key = owner(8)
    address = ("10.0.0.1", 4000)
    reader.table.add(node_id_from_public_key(storer_key.public_key), address, NOW)
    return reader, storer_key, address


def _answer_gets(reader: DhtNode, storer_key: SigningIdentity, address: tuple[str, int],
                 records: list[Record], qid: int) -> GetCompleted:
    """Answer every GetValues the reader sends with ``records`` (signed by the storer) until
    the get completes; returns its completion."""
    now = NOW
    for _ in range(20):
        for data, dst in reader.datagrams_to_send(now):
            envelope = decode(data).envelope
            if dst != address or not isinstance(envelope.body, GetValues):
                continue
            reply = Values(records, len(records), False, [])
            envelope_bytes = encode_envelope(
                Envelope(envelope.tid, storer_key.public_key, 0, b"t" * 16, reply))
            signature = storer_key.sign(response_signed_bytes(reader.node_id, envelope_bytes))
            now += 0.01
            reader.receive_datagram(pack(envelope_bytes, signature), address, now)
        while (event := reader.next_event()) is not None:
            if isinstance(event, GetCompleted) and event.query_id == qid:
                return event
        now += 1.0
        reader.handle_timer(now)
    raise AssertionError("the get never completed")


def test_a_get_drops_a_storers_record_for_another_key() -> None:
    """A malicious storer answers a get with someone else's valid record next to the real
    one: only the record bound to the asked key reaches the caller."""
    reader, storer_key, address = _reader_with_one_storer()
    honest = make_app_record(owner(1), "k", b"the real value", seq=1, expires=int(NOW) + 600)
    impostor = make_app_record(owner(2), "k", b"attacker's valid record", seq=9,
                               expires=int(NOW) + 600)
    assert impostor.key != honest.key
    qid = reader.get(honest.key, NOW)
    done = _answer_gets(reader, storer_key, address, [impostor, honest], qid)
    assert done.records == (honest,)
    assert reader.stats["misbehaved"] >= 1


def test_a_get_filtered_by_owner_drops_the_other_owners() -> None:
    """Under an inbox key many owners are valid; a get for one owner returns only its."""
    reader, storer_key, address = _reader_with_one_storer()
    inbox = owner(3).public_key
    alice, bob = contact_request(owner(4), inbox), contact_request(owner(5), inbox)
    assert alice.key == bob.key
    qid = reader.get(alice.key, NOW, owner=alice.owner)
    done = _answer_gets(reader, storer_key, address, [bob, alice], qid)
    assert done.records == (alice,)
    qid = reader.get(alice.key, NOW)
    done = _answer_gets(reader, storer_key, address, [bob, alice], qid)
    assert sorted(done.records, key=lambda r: r.owner) == sorted([alice, bob],
                                                                  key=lambda r: r.owner)


# ---------------------------------------------------------------- item 16: per-/24 rate limit

def test_requests_are_rate_limited_per_subnet() -> None:
    """100 sources of one /24, each far below its own limit, share the /24's burst (50); a
    source in another /24 is still served."""
    node = make_storer(rate_per_ip=1000.0, burst_per_ip=1000.0, rate_per_subnet=1.0,
                       burst_per_subnet=50.0)
    served = 0
    for i in range(100):
        peer = RawPeer(node, (f"203.0.113.{i + 1}", 5000), seed=i)
        for _ in range(2):
            _size, replies = peer.request(Ping(), pad_to=400)
            served += len(replies)
    assert served == 50
    assert node.stats["rate_limited"] == 150
    outsider = RawPeer(node, ("198.51.100.1", 5000), seed=1000)
    assert isinstance(outsider.body(Ping(), pad_to=400), Pong)


def test_requests_are_rate_limited_per_ip() -> None:
    node = make_storer(rate_per_ip=1.0, burst_per_ip=10.0)
    flooder = RawPeer(node, ("203.0.113.1", 5000), seed=1)
    served = sum(len(flooder.request(Ping(), pad_to=400)[1]) for _ in range(30))
    assert served == 10
    neighbour = RawPeer(node, ("203.0.113.2", 5000), seed=2)  # same /24, other IP
    assert isinstance(neighbour.body(Ping(), pad_to=400), Pong)


# ---------------------------------------------------------------- item 16: owners per key

def test_the_257th_owner_under_one_key_is_refused() -> None:
    store = RecordStore()
    inbox = owner(3).public_key
    statuses = []
    held: list[Record] = []
    for i in range(257):
        rec = make_record(owner(10_000 + i), RecordType.CONTACT_REQUEST, b"", b"x" * 9,
                          seq=1, expires=int(NOW) + 600, namespace=inbox)
        held.append(rec)
        statuses.append(store.put(rec, 200, f"10.{i // 250}.{i % 250}.0/24", NOW))
    assert statuses[:256] == [StoreStatus.OK] * 256
    assert statuses[256] is StoreStatus.QUOTA
    assert len(store.records(held[0].key, NOW)) == 256
    # an owner already held may still update its record, and other keys are unaffected
    update = make_record(owner(10_000), RecordType.CONTACT_REQUEST, b"", b"y" * 9, seq=2,
                         expires=int(NOW) + 600, namespace=inbox)
    assert store.put(update, 200, "10.0.0.0/24", NOW) is StoreStatus.OK
    elsewhere = make_record(owner(10_256), RecordType.CONTACT_REQUEST, b"", b"x" * 9, seq=1,
                            expires=int(NOW) + 600, namespace=owner(4).public_key)
    assert store.put(elsewhere, 200, "10.9.0.0/24", NOW) is StoreStatus.OK


# ---------------------------------------------------------------- item 16: future-dated signals

def test_a_signal_dated_too_far_in_the_future_is_refused() -> None:
    guard = ReplayGuard(max_age=120)
    with pytest.raises(RemoteProtocolError, match="accepted within"):
        guard.check(b"a", "offer", b"s1", int((NOW + 121) * 1000), NOW)
    with pytest.raises(RemoteProtocolError, match="accepted within"):
        guard.check(b"a", "offer", b"s2", int((NOW + 10**6) * 1000), NOW)
    guard.check(b"a", "offer", b"s3", int((NOW + 119) * 1000), NOW)  # within the skew


def test_a_future_dated_signal_cannot_be_replayed_later() -> None:
    """Accepted at the edge of the future window, the message stays remembered until it is
    too old, so no second of the next five minutes accepts it again."""
    guard = ReplayGuard(max_age=120)
    created_ms = int((NOW + 119) * 1000)
    guard.check(b"a", "offer", b"s1", created_ms, NOW)
    for second in range(1, 300):
        with pytest.raises(RemoteProtocolError):
            guard.check(b"a", "offer", b"s1", created_ms, NOW + second)
        guard.check(b"b", "offer", second.to_bytes(4, "big"), int((NOW + second) * 1000),
                    NOW + second)  # other traffic, which drives the eviction
