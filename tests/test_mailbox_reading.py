"""Reading DHT mailboxes. A poll costs few lookups when the mailbox is empty and still reads a
backlog whole: the first window is 4 slots (MAILBOX_FIRST_WINDOW) and each full window doubles
the next one. A slot skipped as a hole is read again when its frame arrives late. In-process
daemons over a real loopback DHT, DHT mailboxes only."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app import messenger as messenger_module
from dhtchat.app.daemon import Daemon
from tests.daemons import befriend, start_in_process, wait_joined

BACKLOG = 10
IDLE_POLL_LOOKUPS = 4  # what polling an idle contact may cost (it was 32)


async def _linked_pair(tmp: Path) -> tuple[Daemon, Daemon, list[Daemon]]:
    """Alice and Bob, contacts of each other, in a 5-node DHT; Bob's maintenance loop never
    reads Alice's mailbox (it waits MAILBOX_POLL after the last poll, and that is now
    forever), so only the test's polls do."""
    alice = await start_in_process(tmp, 1, 151, [])
    assert alice.node is not None
    others = [await start_in_process(tmp, n, n + 150, [alice.node.address])
              for n in (2, 3, 4, 5)]
    bob = others[0]
    everyone = [alice, *others]
    await wait_joined(everyone)
    befriend(alice, bob, "alice", "bob")
    assert alice.messenger is not None and bob.messenger is not None
    bob.messenger.stream.state(alice.identity.public_key).mailbox_polled = math.inf
    await bob.messenger.maintenance([alice.identity.public_key])  # publishes his prekeys
    return alice, bob, everyone


def _received(bob: Daemon, alice: Daemon) -> list[str]:
    assert bob.history is not None
    return [m.text for m in bob.history.history(alice.identity.public_key, 100)
            if not m.outgoing]


async def _until_stored(alice: Daemon, bob: Daemon, seqs: int) -> None:
    """Wait until Alice's first ``seqs`` outbox entries for Bob are in the mailbox."""
    assert alice.messenger is not None and alice.history is not None
    deadline = time.monotonic() + 120
    while not all(e.mailbox_stored for e in alice.history.outbox(bob.identity.public_key)
                  [:seqs]):
        assert time.monotonic() < deadline, "Alice's frames were not stored"
        await alice.messenger.maintenance([bob.identity.public_key])
        await asyncio.sleep(0.2)


def test_idle_poll_is_one_small_window_and_a_backlog_is_read_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        alice, bob, everyone = await _linked_pair(tmp_path)
        assert alice.messenger is not None and bob.messenger is not None
        assert bob.node is not None
        try:
            slot_gets: list[int] = []
            real_get = bob.node.get

            async def counting_get(key: bytes, **kwargs: Any) -> Any:
                if kwargs.get("owner") is not None:  # mailbox slots are read with an owner
                    slot_gets.append(1)
                return await real_get(key, **kwargs)
            bob.node.get = counting_get  # type: ignore[method-assign]

            handled = await bob.messenger.poll_mailbox(alice.identity.public_key)
            assert (handled, len(slot_gets)) == (0, IDLE_POLL_LOOKUPS)

            # Alice writes a backlog while Bob does not read.
            texts = [f"backlog {i}" for i in range(BACKLOG)]
            for text in texts:
                await alice.messenger.send_text(bob.identity.public_key, text)
            await _until_stored(alice, bob, BACKLOG)

            slot_gets.clear()
            handled = await bob.messenger.poll_mailbox(alice.identity.public_key)
            assert handled == BACKLOG
            assert _received(bob, alice) == texts
            # Windows of 4 and 8 cover the 10 frames and the empty slots after them (one
            # more get when a lookup missed a filled slot and it was asked again).
            assert 3 * IDLE_POLL_LOOKUPS <= len(slot_gets) <= 3 * IDLE_POLL_LOOKUPS + 2

            slot_gets.clear()
            assert await bob.messenger.poll_mailbox(alice.identity.public_key) == 0
            assert len(slot_gets) == IDLE_POLL_LOOKUPS
        finally:
            await asyncio.gather(*(d.stop() for d in everyone))

    asyncio.run(scenario())


def test_a_skipped_slot_filled_late_is_still_read(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Alice's put of "one" keeps failing while "two" lands in the next slot; Bob skips the
    hole after HOLE_GRACE and reads "two". When "one" is finally stored in its slot, Bob's
    next poll reads it and both are shown (before, "one" sat in a slot nobody read, and "two"
    waited for it forever)."""
    async def scenario() -> None:
        alice, bob, everyone = await _linked_pair(tmp_path)
        assert alice.messenger is not None and bob.messenger is not None
        bob_key, alice_key = bob.identity.public_key, alice.identity.public_key
        try:
            failing: list[int] = []  # the sequence number whose puts fail, once known
            released = asyncio.Event()
            real_put = alice.messenger._to_mailbox

            async def flaky_put(contact: bytes, seq: int, frame: bytes,
                                index: int | None = None) -> bool:
                if seq > 0 and not failing:
                    failing.append(seq)
                if failing and seq == failing[0] and not released.is_set():
                    return False  # as if no storer answered
                return await real_put(contact, seq, frame, index=index)
            alice.messenger._to_mailbox = flaky_put  # type: ignore[method-assign]

            await alice.messenger.send_text(bob_key, "one")
            await alice.messenger.send_text(bob_key, "two")
            assert alice.history is not None
            deadline = time.monotonic() + 120
            while not any(e.mailbox_stored for e in alice.history.outbox(bob_key)):
                assert time.monotonic() < deadline, "two was not stored"
                await alice.messenger.maintenance([bob_key])
                await asyncio.sleep(0.2)
            assert [e.mailbox_stored for e in alice.history.outbox(bob_key)] == [False, True]

            assert await bob.messenger.poll_mailbox(alice_key) == 0  # a hole: wait
            monkeypatch.setattr(messenger_module, "HOLE_GRACE", 0.0)
            assert await bob.messenger.poll_mailbox(alice_key) == 1  # skipped; "two" read
            assert _received(bob, alice) == []  # "two" waits for "one"

            released.set()
            await alice.messenger.flush(bob_key, force=True)  # "one" into its own slot
            await _until_stored(alice, bob, 2)
            deadline = time.monotonic() + 60
            while sorted(_received(bob, alice)) != ["one", "two"]:
                assert time.monotonic() < deadline, f"got {_received(bob, alice)}"
                await bob.messenger.poll_mailbox(alice_key)
                await asyncio.sleep(0.2)
            # Alice's outbox empties: Bob acknowledged both.
            deadline = time.monotonic() + 60
            while alice.history.outbox(bob_key):
                assert time.monotonic() < deadline, "not acknowledged"
                await alice.messenger.maintenance([bob_key])
                await asyncio.sleep(0.2)
        finally:
            await asyncio.gather(*(d.stop() for d in everyone))

    asyncio.run(scenario())
