"""File transfer between real daemons on loopback: a 200 MB file, resumed after the sender
is killed mid-way; chunk sealing unit checks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import pytest

from dhtchat.app.files import CHUNK_MARK, chunk_nonce, seal_chunk
from dhtchat.app.rpc import call
from tests.daemons import DaemonProcess, DhtProcess, cli, make_contacts, new_identity, next_host

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
