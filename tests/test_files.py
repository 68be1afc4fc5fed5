"""File transfer between real daemons on loopback: a 200 MB file, resumed after the sender
is killed mid-way; chunk sealing unit checks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import pytest

from dhtchat.app.events import EventLog
from dhtchat.app.files import (
    CHUNK_BYTES,
    CHUNK_MARK,
    HASH_MISMATCH,
    MAX_PENDING_OFFERS,
    TOO_MANY_OFFERS,
    FileTransfers,
    chunk_nonce,
    file_json,
    seal_chunk,
)
from dhtchat.app.rpc import RpcError, call
from dhtchat.core.errors import LocalProtocolError
from dhtchat.store.history import History
from tests.daemons import (
    DaemonProcess,
    DhtProcess,
    befriend,
    cli,
    make_contacts,
    new_identity,
    next_host,
    start_in_process,
    wait_joined,
)

SIZE = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


def _args(dht: DhtProcess, name: str) -> list[str]:
    args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1", "--name", name]
    for address in dht.bootstrap:
        args += ["--bootstrap", address]
    return args


def rpc(daemon: DaemonProcess, method: str, params: dict[str, Any] | None = None) -> Any:
    return asyncio.run(call(daemon.profile / "daemon.sock", method, params or {}, 60))


def test_chunks_are_bound_to_file_and_offset() -> None:
    key, file_id = os.urandom(32), os.urandom(16)
    sealed = seal_chunk(key, file_id, 65536, b"data")
    assert sealed[:1] == CHUNK_MARK
    assert nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        sealed[25:], sealed[1:25], chunk_nonce(file_id, 65536), key) == b"data"
    moved_ad = file_id + (0).to_bytes(8, "big")  # replayed at offset 0
    with pytest.raises(nacl.exceptions.CryptoError):
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[25:], moved_ad, chunk_nonce(file_id, 0), key)
    other_file = os.urandom(16) + (65536).to_bytes(8, "big")
    with pytest.raises(nacl.exceptions.CryptoError):
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[25:], other_file, chunk_nonce(other_file[:16], 65536), key)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_200_mb_file_resumes_after_the_sender_is_killed(tmp_path: Path,
                                                        dht: DhtProcess) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as handle:
        block = os.urandom(1 << 20)
        for i in range(SIZE >> 20):
            handle.write(hashlib.sha256(block + i.to_bytes(4, "big")).digest() * 32768)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    alice_id, bob_id = new_identity(tmp_path / "alice"), new_identity(tmp_path / "bob")
    alice = DaemonProcess(tmp_path / "alice", _args(dht, "Alice"))
    bob = DaemonProcess(tmp_path / "bob", _args(dht, "Bob"))
    try:
        alice.wait_ready()
        bob.wait_ready()
        make_contacts(alice, alice_id, bob, bob_id)
        alice.wait_contact(bob_id, lambda r: r.get("status") == "connected", 30)
        started = time.monotonic()
        offer = rpc(alice, "file.send", {"to": bob_id, "path": str(source)})
        deadline = time.monotonic() + 60  # 200 MB is over the auto-accept size: accept it
        while not any(r["id"] == offer["id"] for r in rpc(bob, "file.list")):
            assert time.monotonic() < deadline, "the offer did not arrive"
            time.sleep(0.1)
        rpc(bob, "file.accept", {"id": offer["id"]})
        # Kill Alice's daemon once Bob has checkpointed a good part of the file.
        deadline = time.monotonic() + 300
        progress = 0
        while time.monotonic() < deadline:
            rows = [r for r in rpc(bob, "file.list") if r["id"] == offer["id"]]
            progress = rows[0]["transferred"] if rows else 0
            if progress >= SIZE // 4:
                break
            time.sleep(0.05)
        assert 0 < progress < SIZE, progress
        alice.proc.kill()
        alice.proc.wait(10)
        killed_at = progress
        alice = DaemonProcess(alice.profile, _args(dht, "Alice"))
        alice.wait_ready()
        deadline = time.monotonic() + 600
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = next(r for r in rpc(bob, "file.list") if r["id"] == offer["id"])
            if row["complete"]:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        assert row["complete"], row
        out = tmp_path / "copy.bin"
        cli(bob.profile, "file", "get", offer["id"], str(out))
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
        sent = next(r for r in rpc(alice, "file.list") if r["id"] == offer["id"])
        deadline = time.monotonic() + 30
        while not sent["complete"] and time.monotonic() < deadline:
            time.sleep(0.5)
            sent = next(r for r in rpc(alice, "file.list") if r["id"] == offer["id"])
        assert sent["complete"]
        print(f"\n200 MB: killed the sender at {killed_at / 2**20:.0f} MiB received, resumed; "
              f"complete in {elapsed:.1f} s including the restart "
              f"({SIZE / 2**20 / elapsed:.1f} MiB/s overall)")
    finally:
        alice.stop()
        bob.stop()


class _FakeDaemon:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.events = EventLog()  # not opened: file events go nowhere

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task


class _FakeChannel:
    bufferedAmount = 0  # noqa: N815 - aiortc's RTCDataChannel names
    readyState = "open"  # noqa: N815

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


class _FakeMessenger:
    """What FileTransfers needs of a messenger: the history and the control messages sent."""

    def __init__(self, root: Path) -> None:
        self.history = History(root / "messages.db", os.urandom(32))
        self.daemon = _FakeDaemon()
        self.requests: list[tuple[bytes, int]] = []
        self.confirmed: list[bytes] = []
        self.ended: list[tuple[bytes, bytes, str]] = []  # (contact, file id, reason code)
        self.offered: list[bytes] = []
        self.channel = _FakeChannel()

    def channel_of(self, contact: bytes) -> _FakeChannel:
        return self.channel

    async def end_file(self, contact: bytes, file_id: bytes, reason: str) -> None:
        self.ended.append((contact, file_id, reason))

    async def send_file_offer(self, contact: bytes, file_id: bytes, *args: Any,
                              **kwargs: Any) -> None:
        self.offered.append(file_id)

    async def request_file(self, contact: bytes, file_id: bytes, offset: int) -> None:
        self.requests.append((file_id, offset))

    async def confirm_file(self, contact: bytes, file_id: bytes) -> None:
        self.confirmed.append(file_id)


def _receiver(tmp_path: Path) -> tuple[FileTransfers, _FakeMessenger]:
    messenger = _FakeMessenger(tmp_path)
    return _transfers(messenger, tmp_path / "files"), messenger


def _transfers(messenger: _FakeMessenger, root: Path) -> FileTransfers:
    """A FileTransfers wired to the fake messenger: its tasks, its channel."""
    return FileTransfers(messenger, root, tasks=messenger.daemon,  # type: ignore[arg-type]
                         channel=messenger.channel_of, events=messenger.daemon.events)


def _offer(files: FileTransfers, contact: bytes, content: bytes, digest: bytes | None = None,
           ) -> tuple[bytes, bytes]:
    file_id, key = os.urandom(16), os.urandom(32)
    with files.history.transaction() as db:
        files.on_offer(db, contact, file_id, "a.bin", len(content),
                       digest or hashlib.sha256(content).digest(), key)
    return file_id, key


async def _settle(messenger: _FakeMessenger) -> None:
    while messenger.daemon.tasks:
        await messenger.daemon.tasks.pop(0)


def test_a_zero_byte_file_completes_on_resume(tmp_path: Path) -> None:
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        contact = os.urandom(32)
        file_id, _ = _offer(files, contact, b"")
        await files.resume(contact)  # before: FileNotFoundError, never complete
        await _settle(messenger)
        entry = files.get(file_id)
        assert entry is not None and entry.complete and entry.error is None
        assert Path(entry.path).read_bytes() == b""
        assert messenger.confirmed == [file_id]
        assert messenger.requests == []
        assert await files.wait_complete(file_id, 5)
    asyncio.run(run())


def test_a_hash_mismatch_ends_the_transfer_with_an_error(tmp_path: Path) -> None:
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        contact = os.urandom(32)
        content = os.urandom(100_000)
        file_id, key = _offer(files, contact, content, digest=hashlib.sha256(b"x").digest())
        await files.resume(contact)
        assert messenger.requests == [(file_id, 0)]
        files.on_chunk(contact, seal_chunk(key, file_id, 0, content[:CHUNK_BYTES]))
        files.on_chunk(contact, seal_chunk(key, file_id, CHUNK_BYTES, content[CHUNK_BYTES:]))
        await _settle(messenger)
        entry = files.get(file_id)
        assert entry is not None and not entry.complete
        assert entry.error == HASH_MISMATCH
        assert file_json(entry)["error"] == HASH_MISMATCH
        assert not Path(entry.path).exists()
        assert messenger.confirmed == []
        assert messenger.requests == [(file_id, 0)]  # before: asked again from 0, forever
        assert await files.wait_complete(file_id, 5)  # --wait ends (with the error)
        await files.resume(contact)  # a reconnection does not restart it either
        assert messenger.requests == [(file_id, 0)]
    asyncio.run(run())


def test_received_files_are_created_0600(tmp_path: Path) -> None:
    async def run() -> None:
        old = os.umask(0o022)
        try:
            files, messenger = _receiver(tmp_path)
            contact = os.urandom(32)
            content = os.urandom(1000)
            file_id, key = _offer(files, contact, content)
            await files.resume(contact)
            entry = files.get(file_id)
            assert entry is not None
            assert os.stat(entry.path).st_mode & 0o777 == 0o600  # partial, at creation
            files.on_chunk(contact, seal_chunk(key, file_id, 0, content))
            await _settle(messenger)
            entry = files.get(file_id)
            assert entry is not None and entry.complete
            assert os.stat(entry.path).st_mode & 0o777 == 0o600
            out = files.export(file_id, tmp_path / "copy.bin")
            assert out.read_bytes() == content
            assert os.stat(out).st_mode & 0o777 == 0o600
        finally:
            os.umask(old)
    asyncio.run(run())


def test_an_offer_over_the_auto_accept_size_waits_for_the_user(tmp_path: Path) -> None:
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        files.set_limits(auto_accept=1000, contact_quota=5000, total_quota=1 << 30)
        contact = os.urandom(32)
        big, _ = _offer(files, contact, os.urandom(2000))
        small, _ = _offer(files, contact, os.urandom(500))
        await files.resume(contact)
        assert messenger.requests == [(small, 0)]  # before: both downloaded at once
        entry = files.get(big)
        assert entry is not None and not entry.accepted and not file_json(entry)["accepted"]
        await files.accept(big)
        await files.resume(contact)
        assert (big, 0) in messenger.requests
        over, _ = _offer(files, contact, os.urandom(3000))  # 2500 held + 3000 > 5000
        with pytest.raises(LocalProtocolError, match="per-contact quota"):
            await files.accept(over)
        files.set_limits(contact_quota=1 << 20, total_quota=4000)
        with pytest.raises(LocalProtocolError, match="total quota"):
            await files.accept(over)
        declined = await files.end(over, "declined")
        assert declined.error == "declined"
        with pytest.raises(LocalProtocolError, match="declined"):
            await files.accept(over)
        cancelled = await files.end(big, "cancelled")
        assert cancelled.error == "cancelled" and not Path(cancelled.path).exists()
        before = list(messenger.requests)
        await files.resume(contact)
        assert messenger.requests[len(before):] == [(small, 0)]  # not the ended ones
    asyncio.run(run())


def test_declining_or_cancelling_tells_the_other_side(tmp_path: Path) -> None:
    """Review item 3: a decline or cancel used to end the transfer on one side only, so the
    sender's `file send --wait` waited for its timeout and the offer looked pending."""
    async def run() -> None:
        bob_files, bob = _receiver(tmp_path / "bob")
        alice_files, alice = _receiver(tmp_path / "alice")
        alice_key, bob_key = os.urandom(32), os.urandom(32)
        bob_files.set_limits(auto_accept=10)
        source = tmp_path / "doc.bin"
        source.write_bytes(os.urandom(5000))
        sent = await alice_files.send(bob_key, source)
        with bob_files.history.transaction() as db:  # the offer arrives at Bob's
            bob_files.on_offer(db, alice_key, sent.id, sent.name, sent.size, sent.sha256,
                               sent.key)
        await bob_files.end(sent.id, "declined")
        assert bob.ended == [(alice_key, sent.id, "declined")]
        await alice_files.on_end(bob_key, sent.id, "declined")  # Bob's file_end arrives
        entry = alice_files.get(sent.id)
        assert entry is not None and entry.error == "declined by the contact"
        assert await alice_files.wait_complete(sent.id, 5)  # --wait ends with the error
        await alice_files.on_end(os.urandom(32), sent.id, "cancelled")  # not its contact
        assert alice_files.get(sent.id) == entry

        # The sender cancels a download in progress: Bob's partial file goes.
        again = await alice_files.send(bob_key, source)
        with bob_files.history.transaction() as db:
            bob_files.on_offer(db, alice_key, again.id, again.name, again.size,
                               again.sha256, again.key)
        await bob_files.accept(again.id)
        await bob_files.resume(alice_key)
        partial = bob_files.get(again.id)
        assert partial is not None and Path(partial.path).exists()
        await alice_files.end(again.id, "cancelled")
        assert alice.ended == [(bob_key, again.id, "cancelled")]
        await bob_files.on_end(alice_key, again.id, "cancelled")
        ended = bob_files.get(again.id)
        assert ended is not None and ended.error == "cancelled by the sender"
        assert not Path(ended.path).exists()
        assert bob.ended == [(alice_key, sent.id, "declined")]  # no echo back
    asyncio.run(run())


def test_a_contact_cannot_queue_unlimited_offers(tmp_path: Path) -> None:
    """Review item 3: waiting offers per contact are capped; the next is refused (and the
    sender told), while another contact's offer still waits for the user."""
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        files.set_limits(auto_accept=10)
        flooder, friend = os.urandom(32), os.urandom(32)
        waiting = [_offer(files, flooder, os.urandom(100))[0]
                   for _ in range(MAX_PENDING_OFFERS)]
        assert files.pending_offers(flooder) == MAX_PENDING_OFFERS
        assert messenger.ended == []
        extra, _ = _offer(files, flooder, os.urandom(100))
        await _settle(messenger)
        entry = files.get(extra)
        assert entry is not None and entry.error == TOO_MANY_OFFERS
        assert messenger.ended == [(flooder, extra, "refused")]
        assert files.pending_offers(flooder) == MAX_PENDING_OFFERS
        theirs, _ = _offer(files, friend, os.urandom(100))
        kept = files.get(theirs)
        assert kept is not None and kept.error is None and not kept.accepted
        await files.end(waiting[0], "declined")  # a decided offer frees a place
        assert files.pending_offers(flooder) == MAX_PENDING_OFFERS - 1
        small = _offer(files, flooder, b"tiny")[0]  # within auto-accept: not an offer that waits
        tiny = files.get(small)
        assert tiny is not None and tiny.accepted and tiny.error is None
    asyncio.run(run())


async def _receive_whole(files: FileTransfers, messenger: _FakeMessenger, contact: bytes,
                         content: bytes) -> bytes:
    file_id, key = _offer(files, contact, content)
    await files.resume(contact)
    for offset in range(0, len(content), CHUNK_BYTES):
        files.on_chunk(contact, seal_chunk(key, file_id, offset,
                                           content[offset:offset + CHUNK_BYTES]))
    return file_id


def test_received_files_are_encrypted_at_rest(tmp_path: Path) -> None:
    """Review item 6: a received file used to lie in clear under files/; now only its
    ciphertext is on disk (the key is in the SQLCipher history) and export decrypts."""
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        contact = os.urandom(32)
        content = b"meeting at the north gate, 9pm. " * 10_000  # 320 kB, 5 chunks
        file_id = await _receive_whole(files, messenger, contact, content)
        await _settle(messenger)
        entry = files.get(file_id)
        assert entry is not None and entry.complete and entry.error is None
        stored = Path(entry.path).read_bytes()
        assert b"north gate" not in stored
        assert len(stored) == len(content) + 16 * 5
        out = files.export(file_id, tmp_path / "out.txt")
        assert out.read_bytes() == content
        damaged = bytearray(stored)
        damaged[70_000] ^= 1  # a flipped bit in the second stored chunk
        Path(entry.path).write_bytes(bytes(damaged))
        with pytest.raises(LocalProtocolError, match="damaged"):
            files.export(file_id, tmp_path / "again.txt")
        assert not (tmp_path / "again.txt").exists()  # no half-decrypted copy left
    asyncio.run(run())


def test_a_file_received_in_clear_is_sealed_at_start(tmp_path: Path) -> None:
    """A profile from before encryption at rest: its clear files are sealed on start."""
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        contact = os.urandom(32)
        content = b"old secret " * 20_000
        file_id = await _receive_whole(files, messenger, contact, content)
        await _settle(messenger)
        entry = files.get(file_id)
        assert entry is not None and entry.complete
        Path(entry.path).write_bytes(content)  # as an older version stored it
        with files.history.transaction() as db:
            db.connection.execute("UPDATE files SET sealed = 0 WHERE id = ?", (file_id,))
        again = _transfers(messenger, tmp_path / "files")
        assert b"old secret" not in Path(entry.path).read_bytes()
        assert again.export(file_id, tmp_path / "old.txt").read_bytes() == content
        migrated = again.get(file_id)
        assert migrated is not None and migrated.sealed
    asyncio.run(run())


def _as_old_version(files: FileTransfers, file_id: bytes, content: bytes, **row: Any) -> None:
    """Make a received file look as an older version left it: in clear, not marked sealed."""
    entry = files.get(file_id)
    assert entry is not None
    Path(entry.path).write_bytes(content)
    sets = ", ".join(f"{k} = ?" for k in ("sealed", *row))
    with files.history.transaction() as db:
        db.connection.execute(f"UPDATE files SET {sets} WHERE id = ?", (0, *row.values(), file_id))


def test_sealing_at_start_survives_interruption_and_errors(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    """The start-up migration (review findings): killed after sealing but before marking,
    a file is not sealed twice; a file that cannot be sealed (no space) does not stop the
    daemon and stays readable; an older version's download stopped after its final rename
    is sealed and finished, not deleted as a hash mismatch; a partial download in clear is
    fetched again from 0; an admin's old relay of a received file streams its plaintext."""
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        contact, member = os.urandom(32), os.urandom(32)
        content = b"minutes of the meeting " * 8000  # 184 kB, 3 chunks
        sealed_twice = await _receive_whole(files, messenger, contact, content)
        unsealable = await _receive_whole(files, messenger, contact, content)
        renamed = await _receive_whole(files, messenger, contact, content)
        await _settle(messenger)
        relayed = await files.send(member, Path(files.get(unsealable).path))  # type: ignore[union-attr]
        # 1. Sealed already, but the flag was not committed (killed in between).
        with files.history.transaction() as db:
            db.connection.execute("UPDATE files SET sealed = 0 WHERE id = ?", (sealed_twice,))
        # 2. In clear, and sealing it fails.
        _as_old_version(files, unsealable, content)
        # 3. Stopped after the final rename: row still says partial, all bytes received.
        whole = files.get(renamed)
        assert whole is not None
        _as_old_version(files, renamed, content, complete=0,
                        path=str(tmp_path / "files" / "partial" / renamed.hex()))
        # 4. A partial download in clear.
        partial_id, _ = _offer(files, contact, content)
        await files.resume(contact)
        _as_old_version(files, partial_id, content[:CHUNK_BYTES], received=CHUNK_BYTES)

        def no_space(*args: Any) -> None:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr("dhtchat.app.files.seal_file_in_place", no_space)
        again = _transfers(messenger, tmp_path / "files")
        monkeypatch.undo()
        assert again.export(sealed_twice, tmp_path / "1.txt").read_bytes() == content
        stays = again.get(unsealable)
        assert stays is not None and not stays.sealed  # tried again at the next start
        assert again.export(unsealable, tmp_path / "2.txt").read_bytes() == content
        partial = again.get(partial_id)
        assert partial is not None and partial.received == 0 and partial.sealed

        third = _transfers(messenger, tmp_path / "files")
        sealed_now = third.get(unsealable)
        assert sealed_now is not None and sealed_now.sealed
        assert b"minutes" not in Path(sealed_now.path).read_bytes()
        third.on_request(member, relayed.id, 0)  # the old relay row now decrypts its source
        await _settle(messenger)
        out = third.get(relayed.id)
        assert out is not None and out.source_id == unsealable
        plain = b"".join(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                d[25:], d[1:25], chunk_nonce(relayed.id, int.from_bytes(d[17:25], "big")),
                relayed.key) for d in messenger.channel.sent)
        assert plain == content
        await third.resume(contact)  # finishes the renamed one from its sealed final file
        await _settle(messenger)
        done = third.get(renamed)
        assert done is not None and done.complete and done.error is None
        assert third.export(renamed, tmp_path / "3.txt").read_bytes() == content
    asyncio.run(run())


def test_a_received_file_is_passed_on_decrypted(tmp_path: Path) -> None:
    """An admin relaying a member's group file streams the plaintext from its sealed store,
    re-sealed under the new offer's key."""
    async def run() -> None:
        files, messenger = _receiver(tmp_path)
        member, other = os.urandom(32), os.urandom(32)
        content = os.urandom(CHUNK_BYTES * 2 + 123)
        received = files.get(await _receive_whole(files, messenger, member, content))
        await _settle(messenger)
        assert received is not None
        relayed = await files.send(other, Path("unused"), source=received)
        assert relayed.size == len(content) and relayed.sha256 == received.sha256
        files.on_request(other, relayed.id, 0)
        await _settle(messenger)
        plain = b"".join(
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                datagram[25:], datagram[1:25],
                chunk_nonce(relayed.id, int.from_bytes(datagram[17:25], "big")), relayed.key)
            for datagram in messenger.channel.sent)
        assert plain == content
    asyncio.run(run())


def test_the_free_disk_check_refuses_a_file_larger_than_the_disk(tmp_path: Path) -> None:
    files, _ = _receiver(tmp_path)
    files.set_limits(contact_quota=1 << 40, total_quota=1 << 40)
    free = shutil.disk_usage(tmp_path).free
    reason = files.refusal(os.urandom(32), free)
    assert reason is not None and "free disk" in reason
    assert files.refusal(os.urandom(32), 1000) is None


def test_file_accept_over_rpc_between_daemons(tmp_path: Path) -> None:
    """A 2 MiB offer (over the 1 MiB default) waits on Bob's side until file.accept."""
    async def scenario() -> None:
        alice = await start_in_process(tmp_path, 1, 121, [])
        assert alice.node is not None
        others = [await start_in_process(tmp_path, n, n + 120, [alice.node.address])
                  for n in (2, 3)]
        bob = others[0]
        try:
            await wait_joined([alice, *others])
            befriend(alice, bob, "alice", "bob")
            assert alice.messenger is not None and bob.messenger is not None
            await alice.connect(bob.identity.public_key, 30)
            source = tmp_path / "two.bin"
            source.write_bytes(os.urandom(2 << 20))
            offer = await alice.api.call("file.send", {"to": "bob", "path": str(source)})
            deadline = time.monotonic() + 60
            while not (rows := [r for r in await bob.api.call("file.list", {})
                                if r["id"] == offer["id"]]):
                assert time.monotonic() < deadline, "the offer did not arrive"
                await alice.messenger.flush(bob.identity.public_key)
                await asyncio.sleep(0.1)
            assert rows[0]["accepted"] is False and rows[0]["transferred"] == 0
            with pytest.raises(RpcError):
                await bob.api.call("file.accept", {"id": "00" * 16})
            accepted = await bob.api.call("file.accept", {"id": offer["id"]})
            assert accepted["accepted"] is True
            assert await alice.messenger.files.wait_complete(bytes.fromhex(offer["id"]), 120)
            out = await bob.api.call("file.get", {"id": offer["id"], "dest": str(tmp_path / "got")})
            assert Path(out["path"]).read_bytes() == source.read_bytes()
            # A declined offer ends on Alice's side too (file_end over the connection).
            second = await alice.api.call("file.send", {"to": "bob", "path": str(source)})
            deadline = time.monotonic() + 60
            while not any(r["id"] == second["id"] for r in await bob.api.call("file.list", {})):
                assert time.monotonic() < deadline, "the second offer did not arrive"
                await alice.messenger.flush(bob.identity.public_key)
                await asyncio.sleep(0.1)
            await bob.api.call("file.decline", {"id": second["id"]})
            assert await alice.messenger.files.wait_complete(bytes.fromhex(second["id"]), 60)
            mine = alice.messenger.files.get(bytes.fromhex(second["id"]))
            assert mine is not None and mine.error == "declined by the contact"
        finally:
            for daemon in (alice, *others):
                await daemon.stop()
    asyncio.run(scenario())


@pytest.mark.timeout(240)
def test_an_empty_file_completes_on_both_sides(tmp_path: Path, dht: DhtProcess) -> None:
    """Review item 11: a 0-byte file used to stay at 100 % forever on the sender, and the
    receiver raised FileNotFoundError at every reconnection (no chunk ever made the file)."""
    source = tmp_path / "empty.txt"
    source.write_bytes(b"")
    alice_id, bob_id = new_identity(tmp_path / "alice"), new_identity(tmp_path / "bob")
    alice = DaemonProcess(tmp_path / "alice", _args(dht, "Alice"))
    bob = DaemonProcess(tmp_path / "bob", _args(dht, "Bob"))
    try:
        alice.wait_ready()
        bob.wait_ready()
        make_contacts(alice, alice_id, bob, bob_id)
        alice.wait_contact(bob_id, lambda r: r.get("status") == "connected", 30)
        offer = rpc(alice, "file.send", {"to": bob_id, "path": str(source)})
        deadline = time.monotonic() + 60
        received: dict[str, Any] = {}
        sent: dict[str, Any] = {}
        while time.monotonic() < deadline:
            received = next((r for r in rpc(bob, "file.list") if r["id"] == offer["id"]), {})
            sent = next(r for r in rpc(alice, "file.list") if r["id"] == offer["id"])
            if received.get("complete") and sent["complete"]:
                break
            time.sleep(0.2)
        assert received.get("complete") and sent["complete"], (received, sent)
        assert received["error"] is None
        out = tmp_path / "copy.txt"
        cli(bob.profile, "file", "get", offer["id"], str(out))
        assert out.read_bytes() == b""
    finally:
        alice.stop()
        bob.stop()
