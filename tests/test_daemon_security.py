"""Attacks on connection setup, against two in-process daemons over a loopback DHT:
replayed and tampered offers, offers from non-contacts, substituted DTLS fingerprints."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.links import Link
from dhtchat.app.profile import Profile
from dhtchat.app.rpc import RpcError
from dhtchat.core.contacts import (
    Pair,
    Purpose,
    epoch_of,
    make_signal,
    open_signal,
)
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.records import Record, RecordType
from dhtchat.net.udp import UdpDhtNode

pytestmark = pytest.mark.timeout(180)


class World:
    """A 12-node DHT and two daemons (Alice, Bob) that are contacts."""

    def __init__(self, nodes: list[UdpDhtNode], alice: Daemon, bob: Daemon) -> None:
        self.nodes, self.alice, self.bob = nodes, alice, bob
        self.alice_signals: list[Record] = []
        assert alice.node is not None
        original_put = alice.node.put

        async def recording_put(record: Record, **kw: Any) -> Any:
            if record.type == RecordType.SIGNAL:
                self.alice_signals.append(record)
            return await original_put(record, **kw)

        alice.node.put = recording_put  # type: ignore[method-assign]

    def bob_link(self) -> Link:
        return self.bob.links[self.alice.identity.public_key]


async def _daemon(tmp: Path, name: str, seed: int, bootstrap: tuple[str, int]) -> Daemon:
    identity = SigningIdentity.from_seed(bytes([seed]) * 32)
    options = DaemonOptions(port=0, host="127.0.0.1", bootstrap=[bootstrap],
                            ice_addresses=["127.0.0.1"], connect_timeout=15,
                            auto_connect=False)
    daemon = Daemon(Profile(tmp / name), identity, options)
    await daemon.start()
    return daemon


async def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def _world(tmp: Path) -> AsyncIterator[World]:
    nodes = [await UdpDhtNode.create("127.0.0.1", 0, seed=500 + i) for i in range(12)]
    await asyncio.gather(*(n.bootstrap([nodes[0].address]) for n in nodes[1:]))
    alice = await _daemon(tmp, "alice", 21, nodes[0].address)
    bob = await _daemon(tmp, "bob", 22, nodes[0].address)
    try:
        for me, other in ((alice, bob), (bob, alice)):
            me.contacts.put(other.identity.public_key, name=other.profile.root.name,
                            state="accepted")
        await _wait(lambda: alice.node is not None and len(alice.node.core.table) > 0
                    and bob.node is not None and len(bob.node.core.table) > 0)
        for me, other in ((alice, bob), (bob, alice)):
            me.link_contact(other.identity.public_key)
        await _wait(lambda: all(len(link.subscriptions) >= 2
                                for d in (alice, bob) for link in d.links.values()))
        yield World(nodes, alice, bob)
    finally:
        await alice.stop()
        await bob.stop()
        for node in nodes:
            await node.close()


def run(tmp: Path, body: Callable[[World], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async for world in _world(tmp):
            await body(world)
    asyncio.run(main())


def test_replayed_and_tampered_offers_are_refused(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        alice, bob = world.alice, world.bob
        result = await alice.connect(bob.identity.public_key, 15)
        assert result["status"] == "connected"
        await _wait(lambda: world.bob_link().status == "connected")
        link = world.bob_link()
        pc_before = link.pc
        offer = next(r for r in world.alice_signals)
        handler = bob.rendezvous.signal_handler(link, epoch_of(time.time()))
        dropped = bob.dropped_signals

        await handler(offer)  # the very same record again: recognised as already handled
        assert link.pc is pc_before and link.status == "connected"
        link.processed.clear()  # a replay after the duplicate filter forgot it
        await handler(offer)
        assert bob.dropped_signals == dropped + 1  # refused by the replay guard
        assert link.pc is pc_before and link.status == "connected"

        value = bytearray(offer.value)
        value[40] ^= 0x01
        await handler(msgspec.structs.replace(offer, value=bytes(value)))
        assert bob.dropped_signals == dropped + 2
        assert "failed authentication" in link.reason
        assert link.pc is pc_before and link.status == "connected"
    run(tmp_path, body)


def test_offer_from_non_contact_is_dropped(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        bob = world.bob
        eve = SigningIdentity.from_seed(bytes([23]) * 32)
        pair = Pair.derive(eve, bob.identity.public_key)
        now = time.time()
        sdp = ("v=0\r\na=ice-ufrag:evil\r\na=ice-pwd:evilevilevilevilevilevil\r\n"
               "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n")
        plaintext = make_signal(eve, bob.identity.public_key, "offer", secrets.token_bytes(16),
                                int(now * 1000), sdp)
        record = pair.seal_record(Purpose.SIGNAL, epoch_of(now), plaintext,
                                  seq=int(now * 1000), expires=int(now) + 60,
                                  random_bytes=secrets.token_bytes)
        assert world.alice.node is not None
        stored = await world.nodes[3].put(record)
        assert stored.stored > 0  # it is in the DHT, where Eve can write what she likes
        # A window for something that must NOT happen (no event to wait for): 2 s is ten
        # DHT round trips on loopback, ample for a listen push to arrive.
        await asyncio.sleep(2.0)
        assert eve.public_key not in bob.links  # Bob never listens on Eve's channel
        # And should it reach Bob's handler anyway, it is dropped before any work.
        dropped = bob.dropped_signals
        opened = open_signal(Pair.derive(bob.identity, eve.public_key), plaintext)
        await bob.handle_signal(eve.public_key, opened)
        assert bob.dropped_signals == dropped + 1
        assert eve.public_key not in bob.links
        assert all(link.pc is None for link in bob.links.values())
    run(tmp_path, body)


def test_substituted_fingerprint_is_refused_in_transit(tmp_path: Path) -> None:
    """Someone between Alice and the DHT who swaps the fingerprint in her SDP (here even
    holding the pair key, so the AEAD passes) fails Alice's identity signature."""
    async def body(world: World) -> None:
        alice, bob = world.alice, world.bob
        pair = Pair.derive(alice.identity, bob.identity.public_key)
        link = world.bob_link()
        now = time.time()
        sdp = ("v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
               "a=fingerprint:sha-256 " + ":".join(["11"] * 32) + "\r\n")
        genuine = msgspec.msgpack.decode(make_signal(
            alice.identity, bob.identity.public_key, "offer", secrets.token_bytes(16),
            int(now * 1000), sdp))
        genuine[6] = zlib.compress(sdp.replace("11:11", "66:66").encode(), 9)
        record = pair.seal_record(Purpose.SIGNAL, epoch_of(now),
                                  msgspec.msgpack.encode(genuine), seq=int(now * 1000),
                                  expires=int(now) + 60, random_bytes=secrets.token_bytes)
        await bob.rendezvous.signal_handler(link, epoch_of(now))(record)
        assert "not signed" in link.reason
        assert link.pc is None
    run(tmp_path, body)


def test_certificate_not_matching_signed_fingerprint_fails_connection(tmp_path: Path) -> None:
    """A DTLS peer whose certificate is not the one in the signed offer (a man in the middle
    of the media path) fails the connection, and the status says why."""
    async def body(world: World) -> None:
        alice, bob = world.alice, world.bob
        original = alice.connections.send_signal

        async def lying_send(link: Link, kind: Any, session: bytes, sdp: str = "") -> None:
            fake = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
            sdp = re.sub(r"a=fingerprint:sha-256 \S+", f"a=fingerprint:sha-256 {fake}", sdp)
            await original(link, kind, session, sdp)

        alice.connections.send_signal = lying_send  # type: ignore[method-assign,assignment]
        with pytest.raises(RpcError) as failure:
            await alice.connect(bob.identity.public_key, 12)
        assert world.bob_link().status != "connected"
        await _wait(lambda: "DTLS" in world.bob_link().reason, 15)
        assert "fingerprint" in world.bob_link().reason
        # Bob's signed "bye" told Alice why, instead of leaving her to time out.
        assert "DTLS" in failure.value.message and "fingerprint" in failure.value.message
        print(f"\nalice: {failure.value.message}\nbob: {world.bob_link().reason}")
    run(tmp_path, body)


def test_glare_resolves_to_one_connection(tmp_path: Path) -> None:
    async def body(world: World) -> None:
        alice, bob = world.alice, world.bob
        results = await asyncio.gather(alice.connect(bob.identity.public_key, 15),
                                       bob.connect(alice.identity.public_key, 15))
        assert [r["status"] for r in results] == ["connected", "connected"]
        a_link = alice.links[bob.identity.public_key]
        b_link = bob.links[alice.identity.public_key]
        assert a_link.session == b_link.session
    run(tmp_path, body)
