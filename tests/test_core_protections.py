"""Protections of the DHT core, each driven through the node or store it protects.

Every test here fails when the check it names is removed (issue 11, items 4, 8 and 16).
"""

from __future__ import annotations

import random

import pytest

from dhtchat.core.contacts import Pair, Purpose
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import RecordType, make_record
from dhtchat.core.wire import Store, Stored, StoreStatus
from tests.test_security import NOW, RawPeer, make_storer, owner, signed_foreign

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
