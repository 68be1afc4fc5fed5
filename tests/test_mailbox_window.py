"""Reading a DHT mailbox costs few lookups when it is empty and still reads a backlog whole:
the first window is 4 slots (MAILBOX_FIRST_WINDOW) and each full window doubles the next one.
In-process daemons over a real loopback DHT, DHT mailboxes only."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.profile import Profile
from dhtchat.core.identity import SigningIdentity
from tests.daemons import next_host

BACKLOG = 10
IDLE_POLL_LOOKUPS = 4  # what polling an idle contact may cost (it was 32)


async def _daemon(tmp: Path, n: int, bootstrap: list[tuple[str, int]]) -> Daemon:
    options = DaemonOptions(port=0, host=next_host(), bootstrap=bootstrap,
                            ice_addresses=["127.0.0.1"], auto_connect=False)
    daemon = Daemon(Profile(tmp / f"d{n}"),
                    SigningIdentity.from_seed(bytes([n + 150]) * 32), options)
    await daemon.start()
    return daemon


def test_idle_poll_is_one_small_window_and_a_backlog_is_read_whole(tmp_path: Path) -> None:
    async def scenario() -> None:
        alice = await _daemon(tmp_path, 1, [])
        assert alice.node is not None
        others = [await _daemon(tmp_path, n, [alice.node.address]) for n in (2, 3, 4, 5)]
        bob = others[0]
        everyone = [alice, *others]
        try:
            deadline = time.monotonic() + 60
            while not all(d.joined for d in everyone):
                assert time.monotonic() < deadline, "joins"
                await asyncio.sleep(0.1)
            alice.contacts.put(bob.identity.public_key, name="bob", state="accepted")
            bob.contacts.put(alice.identity.public_key, name="alice", state="accepted")
            alice._link(bob.identity.public_key)
            bob._link(alice.identity.public_key)
            assert alice.messenger is not None and bob.messenger is not None
            assert alice.history is not None and bob.history is not None and bob.node is not None
            # Only this test's polls read Alice's mailbox: Bob's maintenance loop waits
            # MAILBOX_POLL after the last poll, and that is now forever.
            bob.messenger._state(alice.identity.public_key).mailbox_polled = math.inf

            slot_gets: list[int] = []
            real_get = bob.node.get

            async def counting_get(key: bytes, **kwargs: Any) -> Any:
                if kwargs.get("owner") is not None:  # mailbox slots are read with an owner
                    slot_gets.append(1)
                return await real_get(key, **kwargs)
            bob.node.get = counting_get  # type: ignore[method-assign]

            handled = await bob.messenger.poll_mailbox(alice.identity.public_key)
            assert (handled, len(slot_gets)) == (0, IDLE_POLL_LOOKUPS)

            # Bob publishes his prekeys; Alice writes a backlog while Bob does not read.
            await bob.messenger.maintenance([alice.identity.public_key])
            texts = [f"backlog {i}" for i in range(BACKLOG)]
            for text in texts:
                await alice.messenger.send_text(bob.identity.public_key, text)
            deadline = time.monotonic() + 120
            while not all(e.mailbox_stored for e in alice.history.outbox(bob.identity.public_key)):
                assert time.monotonic() < deadline, "Alice's frames were not stored"
                await alice.messenger.maintenance([bob.identity.public_key])
                await asyncio.sleep(0.2)

            slot_gets.clear()
            handled = await bob.messenger.poll_mailbox(alice.identity.public_key)
            assert handled == BACKLOG
            assert [m.text for m in bob.history.history(
                alice.identity.public_key, 100) if not m.outgoing] == texts
            # Windows of 4 and 8 cover the 10 frames and the empty slots after them (one
            # more get when a lookup missed a filled slot and it was asked again).
            assert 3 * IDLE_POLL_LOOKUPS <= len(slot_gets) <= 3 * IDLE_POLL_LOOKUPS + 2

            slot_gets.clear()
            assert await bob.messenger.poll_mailbox(alice.identity.public_key) == 0
            assert len(slot_gets) == IDLE_POLL_LOOKUPS
        finally:
            await asyncio.gather(*(d.stop() for d in everyone))

    asyncio.run(scenario())
