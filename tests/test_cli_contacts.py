"""Contact management through the CLI with real daemons on a loopback DHT: naming a contact
at request time (`--as`), `contact rename`, `contact remove` (history kept, or deleted with
`--delete-history`), the `contact list` table, and a pasted fingerprint where an id belongs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import DaemonProcess, DhtProcess, cli, daemon_args, new_identity

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


def _table(profile: Path) -> list[list[str]]:
    lines = cli(profile, "contact", "list").stdout.splitlines()
    return [line.split() for line in lines]


def test_name_rename_list_and_remove(tmp_path: Path, dht: DhtProcess) -> None:
    alice_id = new_identity(tmp_path / "alice")
    bob_id = new_identity(tmp_path / "bob")
    bob_fingerprint = cli(tmp_path / "bob", "id", "show").stderr.split("fingerprint: ")[1]
    alice = DaemonProcess(tmp_path / "alice", daemon_args(dht, "Alice"))
    bob = DaemonProcess(tmp_path / "bob", daemon_args(dht, "Bob"))
    try:
        alice.wait_ready()
        bob.wait_ready()
        # A fingerprint pasted where the id belongs says what it is.
        pasted = cli(alice.profile, "contact", "request", bob_fingerprint.strip(), check=False)
        assert pasted.returncode == 2 and "fingerprint" in pasted.stderr, pasted.stderr
        assert "Traceback" not in pasted.stderr
        # --as names them for me; --name is still my own display name (what Bob sees).
        cli(alice.profile, "contact", "request", bob_id, "--as", "Bobby", "--name", "Ally")
        assert alice.contact(bob_id)["name"] == "Bobby"  # type: ignore[index]
        incoming = bob.wait_contact(alice_id, lambda r: r["state"] == "incoming", 60)
        assert incoming["name"] == "Ally"
        cli(bob.profile, "contact", "accept", alice_id)
        row = alice.wait_contact(bob_id, lambda r: r["state"] == "accepted", 60)
        assert row["name"] == "Bobby"  # their chosen name "Bob" does not replace mine

        header, *rows = _table(alice.profile)
        assert header == ["NAME", "STATE", "VERIFIED", "ID", "STATUS"]
        assert rows[0][:4] == ["Bobby", "accepted", "no", bob_id]  # the id stands alone

        renamed = cli(alice.profile, "contact", "rename", "Bobby", "Robert")
        assert "Robert" in renamed.stdout
        assert alice.contact(bob_id)["name"] == "Robert"  # type: ignore[index]
        empty = cli(alice.profile, "contact", "rename", "Robert", "", check=False)
        assert empty.returncode == 2 and "Traceback" not in empty.stderr
        unknown = cli(alice.profile, "contact", "rename", "nobody", "X", check=False)
        assert unknown.returncode == 2

        cli(alice.profile, "send", "Robert", "before the removal", "--wait",
            "--timeout", "90", timeout=150)
        removed = cli(alice.profile, "contact", "remove", "Robert")
        assert "history kept" in removed.stdout
        assert alice.contact(bob_id) is None
        gone = cli(alice.profile, "send", "Robert", "hello?", check=False)
        assert gone.returncode == 2 and "Traceback" not in gone.stderr
        kept = cli(alice.profile, "history", bob_id, "--json").stdout
        assert "before the removal" in kept
        assert cli(alice.profile, "contact", "list").stdout.strip() == "no contacts"

        # Asked again, named again; then removed with its history.
        cli(alice.profile, "contact", "request", bob_id, "--as", "Bob again")
        again = cli(alice.profile, "contact", "remove", "Bob again", "--delete-history")
        assert "1 message deleted" in again.stdout, again.stdout
        wiped = cli(alice.profile, "history", bob_id, check=False)
        assert wiped.returncode == 2 and "before the removal" not in wiped.stdout
        assert json.loads(cli(alice.profile, "contact", "list", "--json").stdout) == []
    finally:
        alice.stop()
        bob.stop()
