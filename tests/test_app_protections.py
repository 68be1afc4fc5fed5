"""App-level protections, each tested so that removing the check turns the test red: an
older presence record cannot undo a contact's goodbye; a group's admin sends a removed member
nothing (observed in the admin's outbox, not at the member, who would drop it anyway)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from dhtchat.app.daemon import Daemon
from dhtchat.app.messenger import Payload
from dhtchat.core.contacts import Pair, Purpose, epoch_of, make_presence
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import Record
from tests.daemons import befriend, start_in_process, wait_joined


def _presence(bob: SigningIdentity, alice: bytes, epoch: int, session: bytes, published: int,
              seq: int, *, online: bool) -> Record:
    pair = Pair.derive(bob, alice)
    plaintext = make_presence(bob, pair, epoch, session, published, False, online=online)
    return pair.seal_record(Purpose.PRESENCE, epoch, plaintext, seq=seq,
                            expires=published + 600, random_bytes=secrets.token_bytes)


def test_an_older_presence_does_not_undo_a_goodbye(tmp_path: Path) -> None:
    """Bob said "online", then goodbye ("offline"); the earlier "online" record delivered
    again (a stale DHT node, a replay) must not show him online."""
    async def scenario() -> None:
        alice = await start_in_process(tmp_path, 1, 171, [])
        bob = SigningIdentity.from_seed(bytes([172]) * 32)
        try:
            alice.contacts.put(bob.public_key, name="bob", state="accepted")
            link = alice.link_contact(bob.public_key)
            now = int(time.time())
            epoch, session = epoch_of(now), secrets.token_bytes(16)
            handle = alice.rendezvous.presence_handler(link, epoch)
            hello = _presence(bob, alice.identity.public_key, epoch, session, now - 5,
                              1000, online=True)
            goodbye = _presence(bob, alice.identity.public_key, epoch, session, now,
                                2000, online=False)
            await handle(hello)
            assert link.online
            await handle(goodbye)
            assert not link.online
            await handle(hello)  # the very record again: the duplicate filter
            assert not link.online
            link.processed.clear()  # a replay after the duplicate filter forgot it
            await handle(hello)
            assert not link.online, "an older presence undid the goodbye"
            # A re-encrypted copy of the old presence (new nonce, new seq) is older too.
            await handle(_presence(bob, alice.identity.public_key, epoch, session, now - 5,
                                   3000, online=True))
            assert not link.online
            # A newer "online" (Bob came back) is taken.
            await handle(_presence(bob, alice.identity.public_key, epoch, session, now + 1,
                                   4000, online=True))
            assert link.online
        finally:
            await alice.stop()
    asyncio.run(scenario())


def _texts(daemon: Daemon) -> list[str]:
    """The messages ``daemon`` received (group ones included), in order."""
    assert daemon.history is not None
    return [m.text for m in daemon.history.unfetched()]


def _queued_kinds(sender: Daemon, to: Daemon) -> list[str]:
    """What ``sender`` has queued for ``to`` (everything it ever sent ``to`` that was not
    acknowledged: ``to`` is stopped, so nothing is)."""
    assert sender.history is not None
    return [msgspec.msgpack.decode(e.payload, type=Payload).kind
            for e in sender.history.outbox(to.identity.public_key)]


def test_the_admin_sends_a_removed_member_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        alice = await start_in_process(tmp_path, 1, 181, [])
        assert alice.node is not None
        others = [await start_in_process(tmp_path, n, n + 180, [alice.node.address])
                  for n in (2, 3, 4)]
        bob, carol = others[0], others[1]
        running = [alice, *others]
        try:
            await wait_joined(running)
            befriend(alice, bob, "alice", "bob")
            befriend(alice, carol, "alice", "carol")
            await carol.stop()  # Carol acknowledges nothing: Alice's outbox keeps it all
            running.remove(carol)
            assert alice.messenger is not None and bob.messenger is not None

            async def pump(done: Callable[[], bool], rounds: int = 150) -> None:
                for _ in range(rounds):
                    if done():
                        return
                    for d, other in ((alice, bob), (bob, alice)):
                        assert d.messenger is not None
                        await d.messenger.maintenance([other.identity.public_key])
                        await d.messenger.poll_mailbox(other.identity.public_key)
                    await asyncio.sleep(0.2)
                raise AssertionError("the exchange did not finish")

            state = await alice.messenger.create_group(
                "trio", [bob.identity.public_key, carol.identity.public_key])
            await alice.messenger.send_group_text(state.id, "before")
            assert _queued_kinds(alice, carol) == ["group_update", "group_text"]
            await alice.messenger.change_group(state.id, remove=[carol.identity.public_key])
            assert _queued_kinds(alice, carol) == ["group_update", "group_text",
                                                   "group_update"]
            await alice.messenger.send_group_text(state.id, "after, from alice")
            await pump(lambda: "after, from alice" in _texts(bob))
            await bob.messenger.send_group_text(state.id, "after, from bob")  # relayed by Alice
            await pump(lambda: "after, from bob" in _texts(alice)
                       and not _queued_kinds(alice, bob))
            # Nothing for Carol after her removal: neither Alice's text nor Bob's relayed one.
            assert _queued_kinds(alice, carol) == ["group_update", "group_text",
                                                   "group_update"]
        finally:
            for daemon in running:
                await daemon.stop()
    asyncio.run(scenario())
