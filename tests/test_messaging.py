"""Messaging between real daemons on loopback: 1,000 messages each way, offline delivery
through DHT mailboxes, kill -9 during a 500-message send, crashes injected right after the
outbox commit (sender) and the receive commit (receiver), and the history's encryption."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.faults import ENV as CRASH_AFTER
from dhtchat.app.faults import EXIT_STATUS
from dhtchat.app.rpc import DaemonNotRunning, RpcError, call
from dhtchat.store.history import History, HistoryLocked
from tests.daemons import (
    DaemonProcess,
    DhtProcess,
    cli,
    daemon_args,
    make_contacts,
    new_identity,
    next_host,
)
from tests.support import wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(32)
    yield net
    net.stop()


def _pair(tmp: Path, dht: DhtProcess) -> tuple[DaemonProcess, str, DaemonProcess, str]:
    alice_id = new_identity(tmp / "alice")
    bob_id = new_identity(tmp / "bob")
    alice = DaemonProcess(tmp / "alice", daemon_args(dht, "Alice"))
    bob = DaemonProcess(tmp / "bob", daemon_args(dht, "Bob"))
    alice.wait_ready()
    bob.wait_ready()
    make_contacts(alice, alice_id, bob, bob_id)
    return alice, alice_id, bob, bob_id


def rpc(daemon: DaemonProcess, method: str, params: dict[str, Any] | None = None,
        timeout: float = 60.0) -> Any:
    return asyncio.run(call(daemon.profile / "daemon.sock", method, params or {}, timeout))


def _receive_all(daemon: DaemonProcess, count: int, timeout: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += rpc(daemon, "message.receive", {"wait": 2})
    return got


def _wait_delivered(daemon: DaemonProcess, contact: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = [m for m in rpc(daemon, "message.history", {"contact": contact,
                                                           "limit": 100000})
                if m["from"] != contact]
        if len(rows) >= count and all(m["delivered"] for m in rows):
            return
        time.sleep(0.5)
    undelivered = sum(not m["delivered"] for m in rows)
    raise AssertionError(f"{undelivered} of {len(rows)} not delivered\n{daemon.log()}")


def _nothing_more(daemon: DaemonProcess, wait: float = 2.0) -> bool:
    """No further message shows within ``wait`` s (a long-poll receive, which returns at
    once if one does)."""
    return bool(rpc(daemon, "message.receive", {"wait": wait}) == [])


def _check_exactly_once_in_order(got: list[dict[str, Any]], texts: list[str]) -> None:
    assert [m["text"] for m in got] == texts
    assert [m["seq"] for m in got] == list(range(1, len(texts) + 1))


def test_thousand_messages_each_way(tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id, bob, bob_id = _pair(tmp_path, dht)
    try:
        a_texts = [f"a->b {i} " + "x" * 40 for i in range(1000)]
        b_texts = [f"b->a {i} " + "y" * 40 for i in range(1000)]

        async def send_all(daemon: DaemonProcess, to: str, texts: list[str]) -> float:
            started = time.monotonic()
            for text in texts:
                await call(daemon.profile / "daemon.sock", "message.send",
                           {"to": to, "text": text})
            return time.monotonic() - started

        async def both() -> list[float]:
            return list(await asyncio.gather(send_all(alice, bob_id, a_texts),
                                             send_all(bob, alice_id, b_texts)))

        started = time.monotonic()
        queued = asyncio.run(both())
        got_b = _receive_all(bob, 1000, 180)
        got_a = _receive_all(alice, 1000, 180)
        elapsed = time.monotonic() - started
        _check_exactly_once_in_order(got_b, a_texts)
        _check_exactly_once_in_order(got_a, b_texts)
        _wait_delivered(alice, bob_id, 1000, 60)
        _wait_delivered(bob, alice_id, 1000, 60)
        assert rpc(bob, "message.receive") == []  # nothing shown twice
        print(f"\n2 x 1000 messages: queued in {queued[0]:.1f} / {queued[1]:.1f} s, all "
              f"received in {elapsed:.1f} s ({2000 / elapsed:.0f} msg/s end to end)")
    finally:
        alice.stop()
        bob.stop()


def test_offline_delivery_through_mailboxes(tmp_path: Path, dht: DhtProcess) -> None:
    alice, _, bob, bob_id = _pair(tmp_path, dht)
    try:
        rpc(alice, "message.send", {"to": bob_id, "text": "warm-up", "wait": True})
        assert [m["text"] for m in _receive_all(bob, 1, 30)] == ["warm-up"]
        bob.stop()
        alice.wait_contact(bob_id, lambda r: r.get("status") == "offline", 30)
        texts = [f"while you were away {i}" for i in range(50)]
        for text in texts:
            rpc(alice, "message.send", {"to": bob_id, "text": text})
        # Every message is in the DHT before Alice goes away too.
        wait_until(lambda: rpc(alice, "status")["outbox_in_mailbox"] == 50, 60,
                   "all 50 messages stored in Bob's mailbox", interval=0.5)
        alice.stop()
        bob = DaemonProcess(bob.profile, daemon_args(dht, "Bob"))
        bob.wait_ready()
        started = time.monotonic()
        got = _receive_all(bob, 50, 240)
        print(f"\n50 offline messages fetched from the DHT in {time.monotonic() - started:.1f} s")
        assert [m["text"] for m in got] == texts
        assert [m["seq"] for m in got] == list(range(2, 52))
        assert _nothing_more(bob)
    finally:
        alice.stop()
        bob.stop()


def test_kill_9_during_a_500_message_send(tmp_path: Path, dht: DhtProcess) -> None:
    alice, _, bob, bob_id = _pair(tmp_path, dht)
    rng = random.Random(7)
    kill_points = sorted(rng.sample(range(20, 480), 5))
    texts = [f"crash-safe {i}" for i in range(500)]
    ids = [secrets.token_hex(16) for _ in texts]
    kills = 0
    try:
        i = 0
        while i < len(texts):
            if kills < len(kill_points) and i == kill_points[kills]:
                # Kill while a send is in flight: the RPC may or may not have been persisted.
                async def send_and_kill(victim: DaemonProcess, index: int) -> None:
                    task = asyncio.create_task(call(victim.profile / "daemon.sock",
                                                    "message.send",
                                                    {"to": bob_id, "text": texts[index],
                                                     "id": ids[index]}))
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    victim.proc.kill()
                    with contextlib.suppress(DaemonNotRunning, RpcError, ConnectionError,
                                             json.JSONDecodeError, asyncio.IncompleteReadError):
                        await task
                asyncio.run(send_and_kill(alice, i))
                alice.proc.wait(10)
                kills += 1
                alice = DaemonProcess(alice.profile, daemon_args(dht, "Alice"))
                alice.wait_ready()
                # The client does not know whether message i was stored: it retries with
                # the same id, which the daemon deduplicates.
            rpc(alice, "message.send", {"to": bob_id, "text": texts[i], "id": ids[i]})
            i += 1
        got = _receive_all(bob, 500, 240)
        assert kills == 5
        _check_exactly_once_in_order(got, texts)
        _wait_delivered(alice, bob_id, 500, 120)
        assert _nothing_more(bob)
        print(f"\n500 messages with kill -9 at {kill_points}: all delivered exactly once")
    finally:
        alice.stop()
        bob.stop()


def _crashed(daemon: DaemonProcess) -> None:
    """The daemon exited at its injected crash point (status 137, as after kill -9)."""
    assert daemon.proc.wait(30) == EXIT_STATUS, daemon.log()
    assert "fault injection" in daemon.log()


def test_sender_crash_right_after_the_outbox_commit(tmp_path: Path, dht: DhtProcess) -> None:
    """The message is committed to Alice's outbox and she dies before sending anything: after
    the restart it is sent from the outbox, delivered exactly once, and a client retrying
    with the same id gets the same message, not a second one."""
    alice, _, bob, bob_id = _pair(tmp_path, dht)
    try:
        alice.stop()
        alice = DaemonProcess(alice.profile, daemon_args(dht, "Alice"),
                              env={CRASH_AFTER: "outbox-commit"})
        alice.wait_ready()
        message_id = secrets.token_hex(16)
        with pytest.raises((DaemonNotRunning, RpcError, ConnectionError, OSError,
                            json.JSONDecodeError, asyncio.IncompleteReadError)):
            rpc(alice, "message.send", {"to": bob_id, "text": "committed, then crash",
                                        "id": message_id})
        _crashed(alice)
        alice = DaemonProcess(alice.profile, daemon_args(dht, "Alice"))
        alice.wait_ready()
        got = _receive_all(bob, 1, 120)
        assert [m["text"] for m in got] == ["committed, then crash"]
        _wait_delivered(alice, bob_id, 1, 60)
        again = rpc(alice, "message.send", {"to": bob_id, "text": "committed, then crash",
                                            "id": message_id})
        assert again["id"] == message_id and again["delivered"] is True
        assert _nothing_more(bob)
        sent = [m for m in rpc(alice, "message.history", {"contact": bob_id})
                if m["to"] == bob_id]
        assert [m["id"] for m in sent] == [message_id]
    finally:
        alice.stop()
        bob.stop()


def test_receiver_crash_right_after_the_receive_commit(tmp_path: Path,
                                                       dht: DhtProcess) -> None:
    """Bob commits the message and dies before acknowledging it: after his restart he shows
    it exactly once (Alice's retransmission is recognised) and Alice gets her receipt."""
    alice, alice_id, bob, bob_id = _pair(tmp_path, dht)
    try:
        bob.stop()
        bob = DaemonProcess(bob.profile, daemon_args(dht, "Bob"),
                            env={CRASH_AFTER: "receive-commit"})
        bob.wait_ready()
        sent = rpc(alice, "message.send", {"to": bob_id, "text": "stored, then crash"})
        _crashed(bob)
        assert [m["delivered"] for m in rpc(alice, "message.history", {"contact": bob_id})
                if m["id"] == sent["id"]] == [False]
        bob = DaemonProcess(bob.profile, daemon_args(dht, "Bob"))
        bob.wait_ready()
        # The receipt comes before Bob's user reads anything (a read receipt would also
        # carry the acknowledgement).
        _wait_delivered(alice, bob_id, 1, 120)
        got = _receive_all(bob, 1, 60)
        assert [m["text"] for m in got] == ["stored, then crash"]
        assert _nothing_more(bob)
        shown = [m for m in rpc(bob, "message.history", {"contact": alice_id})
                 if m["from"] == alice_id]
        assert [m["text"] for m in shown] == ["stored, then crash"]
        assert [m["id"] for m in rpc(alice, "message.history", {"contact": bob_id})
                if m["to"] == bob_id] == [sent["id"]]
    finally:
        alice.stop()
        bob.stop()


def test_an_unknown_crash_point_is_refused(tmp_path: Path) -> None:
    new_identity(tmp_path / "carol")
    carol = DaemonProcess(tmp_path / "carol", ["--port", "0", "--host", next_host()],
                          env={CRASH_AFTER: "nowhere"})
    try:
        assert carol.proc.wait(30) not in (0, EXIT_STATUS)
        assert "DHTCHAT_CRASH_AFTER" in carol.log() and "Traceback" not in carol.log()
    finally:
        carol.stop()


def test_history_is_unreadable_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "messages.db"
    history = History(path, bytes(range(32)))
    with history.transaction() as db:
        db.connection.execute("INSERT INTO messages (id, contact, outgoing, seq, sent_at, "
                              "text) VALUES (?, ?, 1, 1, 0, ?)",
                              (b"i" * 16, b"c" * 32, "the secret plan"))
    history.close()
    raw = path.read_bytes() + (path.with_name("messages.db-wal").read_bytes()
                               if path.with_name("messages.db-wal").exists() else b"")
    assert b"the secret plan" not in raw
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("SELECT * FROM messages").fetchall()
    with pytest.raises(HistoryLocked):
        History(path, bytes(32))
    reopened = History(path, bytes(range(32)))
    assert reopened.message(b"i" * 16) is not None
    reopened.close()


def test_a_history_from_before_typed_notices_gets_the_kind_column(tmp_path: Path) -> None:
    """Item 10: an existing messages.db without ``kind`` opens; its rows read as "text" (an
    old notice cannot be told from a text imitating one) and new rows keep their kind."""
    import sqlcipher3  # type: ignore[import-untyped]  # noqa: PLC0415

    from dhtchat.store import history as history_module  # noqa: PLC0415

    key, path = bytes(range(32)), tmp_path / "messages.db"
    old_schema = history_module._SCHEMA.replace("    kind TEXT NOT NULL DEFAULT 'text',\n", "")
    assert old_schema != history_module._SCHEMA
    old = sqlcipher3.connect(str(path))
    old.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    old.executescript(old_schema)
    old.execute("INSERT INTO messages (id, contact, outgoing, seq, sent_at, text) "
                "VALUES (?, ?, 1, 1, 0, ?)", (b"o" * 16, b"c" * 32, "[timer] old"))
    old.commit()
    old.close()
    history = History(path, key)
    message = history.message(b"o" * 16)
    assert message is not None and message.kind == "text"
    with history.transaction() as db:
        db.connection.execute("INSERT INTO messages (id, contact, outgoing, seq, sent_at, "
                              "text, kind) VALUES (?, ?, 1, 2, 0, ?, 'notice')",
                              (b"n" * 16, b"c" * 32, "[timer] new"))
    assert [m.kind for m in history.history(b"c" * 32, 10)] == ["text", "notice"]
    history.close()
    History(path, key).close()  # and opens again (the migration runs once)


def test_send_cli_and_errors(tmp_path: Path, dht: DhtProcess) -> None:
    alice, _alice_id, bob, bob_id = _pair(tmp_path, dht)
    try:
        result = cli(alice.profile, "send", "Bob", "hello over the CLI", "--wait")
        assert "delivered" in result.stderr
        out = cli(bob.profile, "receive", "--json").stdout.strip().splitlines()
        assert json.loads(out[0])["text"] == "hello over the CLI"
        history = cli(alice.profile, "history", bob_id).stdout
        assert "hello over the CLI" in history
        empty = cli(alice.profile, "send", "Bob", "", check=False)
        assert empty.returncode == 2 and "Traceback" not in empty.stderr
        stranger = cli(alice.profile, "send", "nobody", "hi", check=False)
        assert stranger.returncode == 2
    finally:
        alice.stop()
        bob.stop()


def test_disappearing_messages_and_typing(tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id, bob, bob_id = _pair(tmp_path, dht)
    try:
        alice.wait_contact(bob_id, lambda r: r.get("status") == "connected", 30)
        cli(alice.profile, "timer", "Bob", "2")
        try:
            rpc(alice, "message.send", {"to": bob_id, "text": "self-destructing",
                                        "wait": True})
        except RpcError:
            print(f"--- alice\n{alice.log()}\n--- bob\n{bob.log()}")
            raise
        got = _receive_all(bob, 2, 30)
        assert [m["text"] for m in got][-1] == "self-destructing"
        assert got[0]["text"].startswith("[timer]")
        texts = [m["text"] for m in rpc(bob, "message.history", {"contact": alice_id})]
        assert "self-destructing" in texts

        def texts_of(daemon: DaemonProcess, other: str) -> list[str]:
            return [m["text"] for m in rpc(daemon, "message.history", {"contact": other})]

        wait_until(lambda: all("self-destructing" not in texts_of(d, o)
                               for d, o in ((alice, bob_id), (bob, alice_id))),
                   15, "the 2 s message expired on both sides", interval=0.3)
        # Off again: the next message stays.
        cli(bob.profile, "timer", "alice", "0")
        rpc(bob, "message.send", {"to": alice_id, "text": "this one stays", "wait": True})
        # Part of the scenario, not a wait for an event: the message must still be there
        # after the 2 s a timer would have given it, and the daemons expire messages on the
        # real clock.
        time.sleep(2.5)
        texts = [m["text"] for m in rpc(alice, "message.history", {"contact": bob_id})]
        assert "this one stays" in texts
        assert rpc(alice, "message.typing", {"contact": bob_id})["sent"] is True
        bob.wait_contact(alice_id, lambda r: r.get("typing") is True, 10)
    finally:
        alice.stop()
        bob.stop()
