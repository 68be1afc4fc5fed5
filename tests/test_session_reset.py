"""Session reset: when a contact's frames no longer decrypt (here: Bob lost his ratchet state),
the receiver starts a new session and the sender encrypts its queued messages again; nothing
is lost or shown twice. In-process daemons over a real loopback DHT, DHT mailboxes only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from dhtchat.app.daemon import Daemon
from tests.daemons import befriend, start_in_process, wait_joined


def _texts(daemon: Daemon, contact: Daemon) -> list[str]:
    assert daemon.history is not None
    return [m.text for m in daemon.history.history(contact.identity.public_key, 100)
            if not m.outgoing]


def test_lost_ratchet_state_is_recovered_by_a_new_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        alice = await start_in_process(tmp_path, 1, 101, [])
        assert alice.node is not None
        others = [await start_in_process(tmp_path, n, n + 100, [alice.node.address])
                  for n in (2, 3, 4)]
        bob = others[0]
        everyone = [alice, *others]
        try:
            await wait_joined(everyone)
            befriend(alice, bob, "alice", "bob")
            assert alice.messenger is not None and bob.messenger is not None
            assert bob.history is not None

            async def pump(done: Callable[[], bool], rounds: int = 80) -> None:
                for _ in range(rounds):
                    if done():
                        return
                    for d, other in ((alice, bob), (bob, alice)):
                        assert d.messenger is not None
                        await d.messenger.maintenance([other.identity.public_key])
                        await d.messenger.poll_mailbox(other.identity.public_key)
                    await asyncio.sleep(0.2)

            await alice.messenger.send_text(bob.identity.public_key, "one")
            await pump(lambda: _texts(bob, alice) == ["one"])
            assert _texts(bob, alice) == ["one"]
            await pump(lambda: not alice.history.outbox(bob.identity.public_key))  # type: ignore[union-attr]

            # Bob loses his session with Alice (a restored backup, a corrupted state...).
            with bob.history.transaction() as db:
                db.clear_session(alice.identity.public_key)
            bob.messenger.stream.states.pop(alice.identity.public_key)

            await alice.messenger.send_text(bob.identity.public_key, "two")
            await alice.messenger.send_text(bob.identity.public_key, "three")
            await pump(lambda: _texts(bob, alice) == ["one", "two", "three"], rounds=150)
            assert _texts(bob, alice) == ["one", "two", "three"]
            assert bob.messenger.undecryptable >= 1  # the old frames really failed
            # Both directions work on the new session, and Alice's outbox empties.
            await bob.messenger.send_text(alice.identity.public_key, "back")
            await pump(lambda: _texts(alice, bob) == ["back"]
                       and not alice.history.outbox(bob.identity.public_key))  # type: ignore[union-attr]
            assert _texts(alice, bob) == ["back"]
            assert alice.history is not None
            assert not alice.history.outbox(bob.identity.public_key)
        finally:
            for daemon in everyone:
                await daemon.stop()

    asyncio.run(scenario())
