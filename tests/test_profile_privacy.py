"""Review items 5 and 6 of issue 11: a private profile, an encrypted contact list, the
passphrase handling of the CLI."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dhtchat.app.keystore import (
    MEMLIMIT,
    WrongPassphrase,
    load_identity_document,
    open_identity,
    write_private_file,
)
from dhtchat.app.profile import make_private
from dhtchat.cli import identity as id_command
from dhtchat.store.contacts import ContactStore, contacts_key

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DHTCHAT_")}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dhtchat", *args], env=full,
                          capture_output=True, text=True, timeout=60, check=False)


def test_premade_loose_profile_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "files").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "files", 0o777)
    (root / "contacts.sqlite").write_bytes(b"")
    os.chmod(root / "contacts.sqlite", 0o644)
    make_private(root)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "files").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "contacts.sqlite").st_mode) == 0o600


def test_id_new_makes_a_premade_profile_private(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    done = _run(["--profile", str(root), "id", "new", "--no-passphrase"])
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert "message history" in done.stderr  # --no-passphrase says what it gives away


def test_private_file_ignores_umask_and_planted_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "identity.json"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "identity.json.tmp")  # the old fixed temp name
    old = os.umask(0o000)
    try:
        write_private_file(target, b"secret")
    finally:
        os.umask(old)
    assert victim.read_bytes() == b"keep"
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.json", "identity.json.tmp",
                                                         "victim"]


def test_contact_list_is_encrypted_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "contacts.sqlite"
    key = contacts_key(bytes(32))
    store = ContactStore(path, key)
    store.put(b"\x01" * 32, name="Zelda-the-contact", state="incoming",
              message="hello from a stranger")
    store.close()
    raw = path.read_bytes()
    assert b"Zelda-the-contact" not in raw and b"hello from a stranger" not in raw
    assert not raw.startswith(b"SQLite format 3")
    again = ContactStore(path, key)
    assert [e.name for e in again.all()] == ["Zelda-the-contact"]
    again.close()


def test_clear_contact_list_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "contacts.sqlite"
    old = ContactStore(path)
    old.put(b"\x02" * 32, name="Old-Friend", state="accepted")
    old.close()
    assert b"Old-Friend" in path.read_bytes()
    store = ContactStore(path, contacts_key(bytes(32)))
    assert [e.name for e in store.all()] == ["Old-Friend"]
    store.close()
    assert b"Old-Friend" not in path.read_bytes()


def test_moderate_argon2_cost() -> None:
    assert MEMLIMIT >= 256 * 1024 * 1024


def test_passphrase_variable_is_removed_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHTCHAT_PASSPHRASE", "a long enough passphrase here")
    assert id_command.read_passphrase(confirm=False) == "a long enough passphrase here"
    assert "DHTCHAT_PASSPHRASE" not in os.environ


def test_weak_passphrase_warns_with_strength(capsys: pytest.CaptureFixture[str]) -> None:
    id_command.warn_if_weak("a")
    assert "weak passphrase (strength 0/4" in capsys.readouterr().err
    id_command.warn_if_weak("quartz tundra violin seventeen marmalade")
    assert capsys.readouterr().err == ""


def test_id_passphrase_changes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "p"
    monkeypatch.setenv("DHTCHAT_PASSPHRASE", "first passphrase of mine")
    args = argparse.Namespace(profile=str(root), no_passphrase=False)
    assert id_command.cmd_id_new(args) == 0
    path = root / "identity.json"
    identity = open_identity(load_identity_document(path), "first passphrase of mine")
    monkeypatch.setenv("DHTCHAT_PASSPHRASE", "first passphrase of mine")
    monkeypatch.setenv("DHTCHAT_NEW_PASSPHRASE", "second passphrase of mine")
    assert id_command.cmd_id_passphrase(args) == 0
    doc = load_identity_document(path)
    assert open_identity(doc, "second passphrase of mine").seed == identity.seed
    with pytest.raises(WrongPassphrase):
        open_identity(doc, "first passphrase of mine")


def test_daemon_without_passphrase_says_files_are_readable(tmp_path: Path) -> None:
    root = tmp_path / "p"
    assert _run(["--profile", str(root), "id", "new", "--no-passphrase"]).returncode == 0
    full = {k: v for k, v in os.environ.items() if not k.startswith("DHTCHAT_")}
    full["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dhtchat", "--profile", str(root), "daemon", "--port", "0",
         "--host", "127.0.0.1"], env=full, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = ""
        for _ in range(200):  # bounded: the warning comes before the daemon is ready
            line = proc.stderr.readline()
            seen += line
            if not line or "readable by anyone" in line or "daemon ready" in line:
                break
        assert "readable by anyone" in seen, seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)
