"""Contact-request floods (issue 11 item 1): one proof of work buys one request.

The daemon's inbox handler is driven directly (no network): re-signed variants of one
solved request, a blocked sender, a flood from one storer, and the bounds on pending
requests and on what is remembered.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.inbox import INBOX_PUSH_BURST
from dhtchat.app.profile import Profile
from dhtchat.core.addresses import Address
from dhtchat.core.contacts import REQUEST_TTL, RecentIds, make_contact_request
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.records import Record, RecordType, make_app_record, make_record
from dhtchat.net.udp import UdpDhtNode
from dhtchat.store.contacts import MAX_INCOMING, ContactStore


def _rng(seed: int) -> Callable[[int], bytes]:
    counter = 0

    def random_bytes(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return (seed.to_bytes(4, "big") + counter.to_bytes(4, "big")) * (n // 8) \
            + bytes(n % 8)
    return random_bytes


def _solved_request(sender: SigningIdentity, recipient: bytes,
                    seed: int) -> tuple[Record, SigningIdentity]:
    """A solved request and the one-time envelope key that signed it (the first 32 random
    bytes make_contact_request draws are the envelope seed)."""
    rng = _rng(seed)
    envelope = SigningIdentity.from_seed(_rng(seed)(32))
    record = make_contact_request(sender, recipient, name="Mallory", message="hi",
                                  now=time.time(), random_bytes=rng)
    assert record.owner == envelope.public_key
    return record, envelope


def _variant(record: Record, envelope: SigningIdentity, i: int) -> Record:
    """The same sealed request re-signed with another seq and expiry (no new proof of work)."""
    return make_record(envelope, RecordType.CONTACT_REQUEST, b"", record.value,
                       seq=i + 1, expires=record.expires - i % 3600, namespace=record.namespace)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    me = SigningIdentity.from_seed(bytes(range(32)))
    d = Daemon(Profile(tmp_path / "me"), me, DaemonOptions())
    yield d
    d.contacts.close()


@pytest.fixture(scope="module")
def solved() -> tuple[Record, SigningIdentity, SigningIdentity]:
    me = SigningIdentity.from_seed(bytes(range(32)))
    mallory = SigningIdentity.from_seed(b"m" * 32)
    record, envelope = _solved_request(mallory, me.public_key, 1)
    return record, envelope, mallory


def test_resigned_variants_count_once(
        daemon: Daemon, solved: tuple[Record, SigningIdentity, SigningIdentity]) -> None:
    record, envelope, mallory = solved
    variants = [_variant(record, envelope, i) for i in range(2000)]
    assert len({v.signature for v in variants}) == 2000
    before = daemon.contacts.total_changes()
    asyncio.run(daemon.inbox.handle_record(record))
    first = daemon.contacts.total_changes() - before

    async def flood() -> float:
        started = time.perf_counter()
        for variant in variants:
            await daemon.inbox.handle_record(variant)
        return (time.perf_counter() - started) / len(variants)
    per_variant = asyncio.run(flood())
    print(f"\nper re-signed variant: {per_variant * 1e6:.1f} µs on the event loop, "
          f"{daemon.contacts.total_changes() - before} rows written in all")
    pending = daemon.contacts.all("incoming")
    assert [e.public_key for e in pending] == [mallory.public_key]
    assert first <= 3  # the contact row and the envelope
    assert daemon.contacts.total_changes() - before == first  # the variants wrote nothing


def test_seen_request_after_restart_costs_no_write(
        tmp_path: Path, solved: tuple[Record, SigningIdentity, SigningIdentity]) -> None:
    record, envelope, mallory = solved
    me = SigningIdentity.from_seed(bytes(range(32)))
    first = Daemon(Profile(tmp_path / "me"), me, DaemonOptions())
    asyncio.run(first.inbox.handle_record(record))
    first.contacts.put(mallory.public_key, name="Mallory", state="refused")
    first.contacts.close()
    again = Daemon(Profile(tmp_path / "me"), me, DaemonOptions())  # empty memory
    try:
        before = again.contacts.total_changes()
        for i in range(50):
            asyncio.run(again.inbox.handle_record(_variant(record, envelope, i)))
        assert again.contacts.total_changes() == before
        entry = again.contacts.get(mallory.public_key)
        assert entry is not None and entry.state == "refused"  # not shown again
    finally:
        again.contacts.close()


def test_blocked_sender_costs_no_write(
        daemon: Daemon, solved: tuple[Record, SigningIdentity, SigningIdentity]) -> None:
    record, envelope, mallory = solved
    daemon.contacts.put(mallory.public_key, name="Mallory", state="blocked")
    before = daemon.contacts.total_changes()
    asyncio.run(daemon.inbox.handle_record(record))
    for i in range(200):
        asyncio.run(daemon.inbox.handle_record(_variant(record, envelope, i)))
    assert daemon.contacts.total_changes() == before
    entry = daemon.contacts.get(mallory.public_key)
    assert entry is not None and entry.state == "blocked"
    # Unblocked, the request still in the inbox shows up on the next read.
    asyncio.run(daemon.api.call("contact.unblock", {"id": encode_user_id(mallory.public_key)}))
    asyncio.run(daemon.inbox.handle_record(_variant(record, envelope, 7)))
    entry = daemon.contacts.get(mallory.public_key)
    assert entry is not None and entry.state == "incoming"


def test_junk_costs_no_write_and_memory_is_bounded(daemon: Daemon) -> None:
    me = daemon.identity.public_key
    before = daemon.contacts.total_changes()
    for i in range(300):  # no proof of work: refused after one hash
        junk = make_record(SigningIdentity.from_seed(i.to_bytes(32, "big")),
                           RecordType.CONTACT_REQUEST, b"", bytes(100), seq=0,
                           expires=int(time.time()) + 3600, namespace=me)
        asyncio.run(daemon.inbox.handle_record(junk))
    assert daemon.contacts.total_changes() == before
    assert daemon.contacts.all("incoming") == []
    seen = RecentIds(capacity=100)
    for i in range(1000):
        seen.add(i.to_bytes(4, "big"))
    assert len(seen) == 100
    assert (999).to_bytes(4, "big") in seen and (0).to_bytes(4, "big") not in seen


def test_pending_requests_expire_and_the_oldest_go_over_the_cap(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "c.sqlite")
    try:
        t0 = 1_000_000.0
        for i in range(MAX_INCOMING + 44):
            entry = store.add_incoming(i.to_bytes(32, "big"), name=f"n{i}", message="",
                                       now=t0 + i, envelope=b"e" + i.to_bytes(31, "big"),
                                       lifetime=REQUEST_TTL)
            assert entry is not None
        pending = store.all("incoming")
        assert len(pending) == MAX_INCOMING
        kept = sorted(int.from_bytes(e.public_key, "big") for e in pending)
        assert kept == list(range(44, MAX_INCOMING + 44))  # the 44 oldest were dropped
        store.put(b"a" * 32, name="friend", state="accepted", now=t0)
        later = t0 + 100 + REQUEST_TTL
        assert store.expire_incoming(later, REQUEST_TTL) == 56  # 44..99 are too old
        assert len(store.all("incoming")) == MAX_INCOMING - 56  # the newer ones stay
        assert store.get(b"a" * 32) is not None  # accepted contacts never expire
        before = store.total_changes()
        assert store.expire_incoming(later, REQUEST_TTL) == 0
        assert store.total_changes() == before
    finally:
        store.close()


def test_seen_envelopes_are_trimmed_through_an_index(tmp_path: Path) -> None:
    ContactStore(tmp_path / "c.sqlite").close()
    db = sqlite3.connect(tmp_path / "c.sqlite")
    try:
        plan = " ".join(str(row[-1]) for row in db.execute(
            "EXPLAIN QUERY PLAN DELETE FROM seen_envelopes WHERE seen < ?", (0.0,)))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    finally:
        db.close()


def test_inbox_pushes_are_rate_limited_per_storer(
        daemon: Daemon, solved: tuple[Record, SigningIdentity, SigningIdentity]) -> None:
    record = solved[0]
    flooder, other = ("127.0.0.9", 4000), ("127.0.0.10", 4000)
    admitted = sum(daemon.inbox.admit_push(record, flooder) for _ in range(2000))
    assert admitted <= INBOX_PUSH_BURST + 2  # the refill during the loop
    assert daemon.inbox.dropped_pushes >= 2000 - admitted
    assert daemon.inbox.admit_push(record, other)  # another storer's push still gets in
    fresh_ports = sum(daemon.inbox.admit_push(record, ("127.0.0.9", 5000 + port))
                      for port in range(100))
    assert fresh_ports <= 2  # the same storer on new ports gets no new burst


def test_subscription_admit_sees_the_storer_and_drops_before_queueing() -> None:
    """The per-storer limit needs the storer's address: a push reaches ``Subscription.admit``
    with it, and a refused push never enters the subscription's queue."""
    async def scenario() -> None:
        nodes = [await UdpDhtNode.create(f"127.0.{i + 1}.1", 0, seed=300 + i) for i in range(8)]
        try:
            await asyncio.gather(*(n.bootstrap([nodes[0].address]) for n in nodes[1:]))
            addresses = {n.address for n in nodes}
            record = make_app_record(SigningIdentity.from_seed(b"P" * 32), "inbox", b"x",
                                     seq=1, expires=int(time.time()) + 600)
            admitted = await nodes[5].listen(record.key)
            refused = await nodes[6].listen(record.key)
            seen: dict[str, list[Address | None]] = {"admitted": [], "refused": []}
            called = asyncio.Event()

            def admit_all(_record: Record, source: Address | None) -> bool:
                seen["admitted"].append(source)
                return True

            def refuse_all(_record: Record, source: Address | None) -> bool:
                seen["refused"].append(source)
                called.set()
                return False

            admitted.admit, refused.admit = admit_all, refuse_all
            await nodes[2].put(record)
            got = await asyncio.wait_for(anext(aiter(admitted)), 10)
            await asyncio.wait_for(called.wait(), 10)
            assert got.value == b"x"
            assert refused.queue.empty()
            sources = seen["admitted"] + seen["refused"]
            assert sources and all(s in addresses for s in sources), (sources, addresses)
        finally:
            for node in nodes:
                await node.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_envelopes_seen_by_an_older_version_stay_seen(tmp_path: Path) -> None:
    """Older versions stored ``owner + signature[:16]``; the request id is now the owner, so
    a request refused before the upgrade must not come back as new (review finding)."""
    path = tmp_path / "contacts.sqlite"
    owner = bytes(range(32))
    store = ContactStore(path)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO seen_envelopes VALUES (?, ?)", (owner + b"\x07" * 16, 5.0))
    reopened = ContactStore(path)
    try:
        assert reopened.seen(owner)
        assert not reopened.seen(owner + b"\x07" * 16)
    finally:
        reopened.close()
