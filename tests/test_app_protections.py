"""App-level protections, each tested so that removing the check turns the test red: an
older presence record cannot undo a contact's goodbye."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from dhtchat.core.contacts import Pair, Purpose, epoch_of, make_presence
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import Record
from tests.daemons import start_in_process


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
            link = alice._link(bob.public_key)
            now = int(time.time())
            epoch, session = epoch_of(now), secrets.token_bytes(16)
            handle = alice._presence_handler(link, epoch)
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
