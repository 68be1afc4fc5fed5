"""Backup and restore through the CLI with real daemons on a loopback DHT: back up, destroy
the profile, restore it into a new directory, and talk with the old contact both ways
without a new contact request; a running daemon, a wrong passphrase and a damaged or
truncated file are clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtchat.app.keystore import load_identity_document, open_identity
from dhtchat.core.identity import decode_user_id
from dhtchat.store.history import History, history_key
from tests.daemons import (
    PASSPHRASE,
    DaemonProcess,
    DhtProcess,
    _env,
    cli,
    daemon_args,
    make_contacts,
    new_identity,
)

pytestmark = pytest.mark.timeout(600)
BACKUP_PASSPHRASE = "a different long backup passphrase"


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(24)
    yield net
    net.stop()


def run(profile: Path, *args: str, backup_passphrase: str = BACKUP_PASSPHRASE,
        ) -> subprocess.CompletedProcess[str]:
    """``dhtchat --profile PROFILE ARGS`` with the backup's passphrase in the environment."""
    env = _env() | {"DHTCHAT_BACKUP_PASSPHRASE": backup_passphrase}
    return subprocess.run([sys.executable, "-m", "dhtchat", "--profile", str(profile), *args],
                          capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def _texts(profile: Path, contact: str, incoming_from: str) -> list[str]:
    out = cli(profile, "history", contact, "--json", "--limit", "1000").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r["text"] for r in rows if r["from"] == incoming_from]


def _wait_texts(profile: Path, contact: str, incoming_from: str, want: list[str],
                timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        got = _texts(profile, contact, incoming_from)
        if all(text in got for text in want):
            return
        time.sleep(0.5)
    raise AssertionError(f"{want} never all arrived; got {got}")


def _check_no_session_travelled(profile: Path, contact: bytes) -> None:
    """The replay rule: the restored history has the conversation's counters but no ratchet
    session and no prekeys (the daemon starts both afresh)."""
    identity = open_identity(load_identity_document(profile / "identity.json"), PASSPHRASE)
    history = History(profile / "messages.db", history_key(identity.seed))
    try:
        row = history.conversation(contact)
        assert row.next_out_seq > 1 and row.next_in_seq > 1  # the streams' positions came
        assert row.session is None
        assert history.get_meta("prekeys") is None
        assert all(entry.frame is None for entry in history.outbox(contact))
    finally:
        history.close()


@pytest.mark.slow
def test_restored_profile_talks_with_the_old_contact(tmp_path: Path, dht: DhtProcess) -> None:
    alice_id = new_identity(tmp_path / "alice")
    bob_id = new_identity(tmp_path / "bob")
    alice = DaemonProcess(tmp_path / "alice", daemon_args(dht, "Alice"))
    bob = DaemonProcess(tmp_path / "bob", daemon_args(dht, "Bob"))
    restored: DaemonProcess | None = None
    backup = tmp_path / "alice.backup"
    try:
        alice.wait_ready()
        bob.wait_ready()
        make_contacts(alice, alice_id, bob, bob_id)
        cli(alice.profile, "send", bob_id, "before the backup", "--wait", "--timeout", "90")
        cli(bob.profile, "send", alice_id, "reply before the backup", "--wait",
            "--timeout", "90")
        _wait_texts(alice.profile, bob_id, bob_id, ["reply before the backup"])

        running = run(alice.profile, "backup", str(backup))
        assert running.returncode != 0 and "stop it first" in running.stderr
        assert "Traceback" not in running.stderr and not backup.exists()

        alice.stop()
        made = run(alice.profile, "backup", str(backup), "--history")
        assert made.returncode == 0, made.stderr
        assert "1 contacts" in made.stderr
        assert backup.read_bytes()[:14] == b"dhtchat-backup"
        assert b"before the backup" not in backup.read_bytes()  # encrypted
        shutil.rmtree(alice.profile)  # the machine is gone

        # Bob goes on writing while Alice is away: these wait in his outbox, encrypted
        # under the session the restored profile no longer has.
        cli(bob.profile, "send", alice_id, "while you were away")

        new_profile = tmp_path / "alice-new-machine"
        done = run(new_profile, "restore", str(backup))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == alice_id
        assert cli(new_profile, "id", "show").stdout.strip() == alice_id
        _check_no_session_travelled(new_profile, decode_user_id(bob_id))
        restored = DaemonProcess(new_profile, daemon_args(dht, "Alice"))
        restored.wait_ready()
        row = restored.wait_contact(bob_id, lambda r: r["state"] == "accepted")
        assert row["name"] == "bob" or row["name"]  # named as before, no new request
        # The history came along.
        assert "reply before the backup" in _texts(new_profile, bob_id, bob_id)

        cli(new_profile, "send", bob_id, "hello from the restored profile", "--wait",
            "--timeout", "120", timeout=180)
        _wait_texts(bob.profile, alice_id, alice_id, ["hello from the restored profile"])
        cli(bob.profile, "send", alice_id, "welcome back")
        try:
            _wait_texts(new_profile, bob_id, bob_id, ["while you were away", "welcome back"])
        except AssertionError:
            print("RESTORED", restored.log(), "BOB", bob.log(), sep="\n")
            raise
        # Nothing is shown twice.
        texts = _texts(new_profile, bob_id, bob_id)
        assert texts.count("welcome back") == 1 and texts.count("while you were away") == 1
        assert bob.contact(alice_id)["state"] == "accepted"  # type: ignore[index]
    finally:
        for daemon in (alice, bob, restored):
            if daemon is not None:
                daemon.stop()


def test_bad_backups_are_clear_errors(tmp_path: Path) -> None:
    profile = tmp_path / "p"
    user_id = new_identity(profile)
    backup = tmp_path / "b.backup"
    made = run(profile, "backup", str(backup), "--history")
    assert made.returncode == 0, made.stderr
    data = backup.read_bytes()

    wrong = run(tmp_path / "r1", "restore", str(backup), backup_passphrase="not it")
    assert wrong.returncode == 2
    assert "wrong backup passphrase" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "r1").exists()

    truncated = tmp_path / "truncated.backup"
    truncated.write_bytes(data[:-10])
    cut = run(tmp_path / "r2", "restore", str(truncated))
    assert cut.returncode == 1 and "truncated" in cut.stderr
    assert "Traceback" not in cut.stderr and not (tmp_path / "r2").exists()

    damaged = tmp_path / "damaged.backup"
    flipped = bytearray(data)
    flipped[len(data) - 30] ^= 0x01
    damaged.write_bytes(bytes(flipped))
    bad = run(tmp_path / "r3", "restore", str(damaged))
    assert bad.returncode == 1 and "damaged" in bad.stderr and "Traceback" not in bad.stderr

    garbage = tmp_path / "garbage.backup"
    garbage.write_bytes(b"hello, not a backup at all" * 10)
    nope = run(tmp_path / "r4", "restore", str(garbage))
    assert nope.returncode == 1 and "not a dhtchat backup" in nope.stderr

    missing = run(tmp_path / "r5", "restore", str(tmp_path / "nothing.backup"))
    assert missing.returncode == 1 and "no backup file" in missing.stderr

    occupied = run(profile, "restore", str(backup))
    assert occupied.returncode == 1 and "not empty" in occupied.stderr

    ok = run(tmp_path / "r6", "restore", str(backup))
    assert ok.returncode == 0 and ok.stdout.strip() == user_id
