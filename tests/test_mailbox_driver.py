"""The mailbox driver (dhtchat.app.mailbox.Mailboxes) on real histories and sealed slot records,
with an in-memory DHT: the lookups of the window after a full one run while that one's frames
are delivered, a run of frames reaches the messenger as one batch, and the read index is
saved after them."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from dhtchat.app.mailbox import Mailboxes
from dhtchat.core.contacts import Pair
from dhtchat.core.events import PutCompleted
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import Record
from dhtchat.messaging.mailbox import MAILBOX_FIRST_WINDOW
from dhtchat.net.udp import UdpDhtNode
from dhtchat.store.history import History


@dataclass
class MemoryDht:
    """What the driver uses of a node: put stores, get finds (after a turn of the loop)."""

    records: dict[bytes, Record] = field(default_factory=dict)
    asked: list[bytes] = field(default_factory=list)  # keys looked up, in order

    async def put(self, record: Record, *, republish: bool = False) -> PutCompleted:
        self.records[record.key] = record
        return PutCompleted(query_id=0, key=record.key, stored=3, attempted=3)

    async def get(self, key: bytes, *, owner: bytes | None = None) -> list[Record]:
        self.asked.append(key)
        await asyncio.sleep(0)
        record = self.records.get(key)
        return [record] if record is not None and record.owner == owner else []


def test_frames_are_delivered_in_batches_while_the_next_window_is_looked_up(
        tmp_path: Path) -> None:
    alice = SigningIdentity.from_seed(secrets.token_bytes(32))
    bob = SigningIdentity.from_seed(secrets.token_bytes(32))
    dht = MemoryDht()
    node = cast(UdpDhtNode, dht)
    frames = [f"frame {i}".encode() * 20 for i in range(10)]
    batches: list[list[bytes]] = []
    asked_when_delivering: list[int] = []

    async def deliver(contact: bytes, batch: list[bytes]) -> None:
        assert contact == alice.public_key
        await asyncio.sleep(0)  # the lookups asked for have started by now
        asked_when_delivering.append(len(dht.asked))
        batches.append(batch)

    async def nothing(_contact: bytes, _batch: list[bytes]) -> None:
        raise AssertionError("Alice reads nothing here")

    async def scenario() -> None:
        alice_history = History(tmp_path / "alice.db", secrets.token_bytes(32))
        bob_history = History(tmp_path / "bob.db", secrets.token_bytes(32))
        try:
            sender = Mailboxes(alice_history, lambda: node,
                               lambda _c: Pair.derive(alice, bob.public_key), nothing)
            for frame in frames:
                assert await sender.store(bob.public_key, 0, frame)
            reader = Mailboxes(bob_history, lambda: node,
                               lambda _c: Pair.derive(bob, alice.public_key), deliver)
            assert await reader.poll(alice.public_key) == len(frames)
            assert bob_history.conversation(alice.public_key).mailbox_in_index == 10
        finally:
            alice_history.close()
            bob_history.close()

    asyncio.run(scenario())
    # Windows of 4 and 8 slots: the first full, so the second was asked for before its
    # frames went out; the second has empty slots (10, 11) and ends the poll.
    assert [len(b) for b in batches] == [MAILBOX_FIRST_WINDOW, 6]
    assert [f for b in batches for f in b] == frames
    assert asked_when_delivering == [4 + 8, 4 + 8]
