"""Daemons on loopback: contact request, accept, connect over a 32-node DHT (real processes,
real UDP, real aiortc); privacy of presence against a stranger who knows the id."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhtchat.app.keystore import load_identity_document, open_identity
from dhtchat.core.addresses import parse_address
from dhtchat.core.contacts import Pair, Purpose, epoch_of, inbox_key
from dhtchat.core.identity import SigningIdentity, decode_user_id
from dhtchat.core.records import RecordType, app_salt, record_key
from dhtchat.net.udp import UdpDhtNode
from tests.daemons import (
    PASSPHRASE,
    DaemonProcess,
    DhtProcess,
    cli,
    make_contacts,
    new_identity,
    next_host,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(32)
    yield net
    net.stop()


def _start(tmp: Path, name: str, dht: DhtProcess, *extra: str) -> tuple[DaemonProcess, str]:
    profile = tmp / name
    user_id = new_identity(profile)
    args = ["--port", "0", "--host", next_host(), "--ice-address", "127.0.0.1",
            "--name", name.capitalize()]
    for address in dht.bootstrap:
        args += ["--bootstrap", address]
    daemon = DaemonProcess(profile, [*args, *extra])
    daemon.wait_ready()
    return daemon, user_id


def test_request_accept_connect(tmp_path: Path, dht: DhtProcess) -> None:
    alice, alice_id = _start(tmp_path, "alice", dht)
    bob, bob_id = _start(tmp_path, "bob", dht)
    try:
        # A second daemon on the same profile is a clear error, not a second node.
        second = cli(alice.profile, "daemon", "--port", "0", "--host", "127.0.0.1",
                     check=False, timeout=30)
        assert second.returncode == 2
        assert "already running" in second.stderr

        pending = json.loads(cli(alice.profile, "contact", "pending", "--json").stdout)
        assert pending == []
        # On loopback peers see the daemon at its own address: in the default auto mode it
        # serves the DHT (behind a NAT it would stay a read-only client).
        status = alice.status()
        assert status is not None
        assert (status["dht_mode"], status["dht_role"], status["reachability"]) == (
            "auto", "server", "reachable")
        make_contacts(alice, alice_id, bob, bob_id)
        assert bob.contact(alice_id)["name"] == "alice"  # type: ignore[index]
        assert alice.contact(bob_id)["name"] == "Bob"  # type: ignore[index]

        started = time.monotonic()
        result = cli(alice.profile, "connect", "Bob", "--timeout", "30", "--json")
        elapsed = time.monotonic() - started
        info = json.loads(result.stdout)
        assert info["status"] == "connected"
        assert info["path"] == "direct"
        assert info["local"]["type"] == "host" and info["remote"]["type"] == "host"
        assert info["local"]["address"].startswith("127.0.0.1:")
        print(f"\nconnect: CLI round trip {elapsed * 1000:.0f} ms, offer -> data channel open "
              f"{info['connect_ms']:.0f} ms")
        alice_row = alice.wait_contact(bob_id, lambda r: r.get("status") == "connected")
        bob_row = bob.wait_contact(alice_id, lambda r: r.get("status") == "connected")
        assert alice_row["path"] == bob_row["path"] == "direct"

        # Peer restart: Bob's daemon goes away (Alice's status says so, with the reason) and
        # comes back; Alice reconnects by herself once Bob's new presence shows up.
        bob.stop()
        # Bob's goodbye (signed bye + offline presence) shows at once, not after the presence
        # record's 30-minute lifetime.
        row = alice.wait_contact(bob_id, lambda r: r.get("status") == "offline", timeout=30)
        assert "daemon stopped" in row["reason"]
        bob = DaemonProcess(bob.profile, bob.proc.args[bob.proc.args.index("daemon") + 1:])
        bob.wait_ready()
        started = time.monotonic()
        bob.wait_contact(alice_id, lambda r: r.get("status") == "connected", timeout=60)
        alice.wait_contact(bob_id, lambda r: r.get("status") == "connected", timeout=20)
        print(f"automatic reconnection after Bob's restart: {time.monotonic() - started:.1f} s")
        again = json.loads(cli(alice.profile, "connect", bob_id, "--json").stdout)
        assert again["status"] == "connected"
    finally:
        alice.stop()
        bob.stop()


def test_refuse_block_and_bad_input(tmp_path: Path, dht: DhtProcess) -> None:
    carol, _ = _start(tmp_path, "carol", dht)
    dave_profile = tmp_path / "dave"
    dave_id = new_identity(dave_profile)
    try:
        bad = cli(carol.profile, "contact", "request", "not-an-id", check=False)
        assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
        unknown = cli(carol.profile, "connect", "nobody", check=False)
        assert unknown.returncode == 2 and "no contact named" in unknown.stderr
        not_contact = cli(carol.profile, "connect", dave_id, check=False)
        assert not_contact.returncode == 2 and "not a contact" in not_contact.stderr
        cli(carol.profile, "contact", "block", dave_id)
        row = carol.contact(dave_id)
        assert row is not None and row["state"] == "blocked"
        blocked = cli(carol.profile, "contact", "request", dave_id, check=False)
        assert blocked.returncode == 1 and "unblock" in blocked.stderr
        too_long = cli(carol.profile, "contact", "request", dave_id, "--message", "x" * 281,
                       check=False)
        assert too_long.returncode == 2 and "280" in too_long.stderr
        cli(carol.profile, "contact", "unblock", dave_id)
        assert carol.contact(dave_id) is None
        cli(carol.profile, "contact", "block", dave_id)
        # The daemon survives garbage on its API socket.
        async def garbage() -> bytes:
            reader, writer = await asyncio.open_unix_connection(
                str(carol.profile / "daemon.sock"))
            writer.write(b"{not json\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return line
        reply = json.loads(asyncio.run(garbage()))
        assert reply["error"]["code"] == -32700
        assert carol.contact(dave_id) is not None
    finally:
        carol.stop()
    no_daemon = cli(dave_profile, "contact", "list", check=False)
    assert no_daemon.returncode == 1 and "no daemon is running" in no_daemon.stderr


def test_stranger_learns_neither_address_nor_presence(tmp_path: Path, dht: DhtProcess) -> None:
    """Eve knows Alice's id and tries every key she can derive from it: nothing she finds
    reveals Alice's address or that Alice is online. Bob (a contact) finds both, which shows
    the records exist (so the test can fail)."""
    alice, alice_id = _start(tmp_path, "alice", dht)
    bob, bob_id = _start(tmp_path, "bob", dht)
    try:
        make_contacts(alice, alice_id, bob, bob_id)
        cli(bob.profile, "connect", alice_id, "--timeout", "30")
        bob.wait_contact(alice_id, lambda r: r.get("status") == "connected")
        alice_key = decode_user_id(alice_id)
        bob_identity_pub = decode_user_id(bob_id)
        eve = SigningIdentity.from_seed(bytes(range(32)))
        status = alice.status()
        assert status is not None
        alice_dht_port = status["dht_address"]
        alice_port = alice_dht_port.rsplit(":", 1)[1].encode()

        async def scan() -> tuple[int, list[bytes]]:
            node = await UdpDhtNode.create(next_host(), 0)
            try:
                await node.bootstrap([parse_address(a) for a in dht.bootstrap])
                now = time.time()
                keys = [inbox_key(alice_key)]
                for type_ in range(0, 16):
                    for salt in (b"", b"presence", b"address", app_salt("presence"),
                                 app_salt("address")):
                        keys.append(record_key(type_, alice_key, salt))
                pair = Pair.derive(eve, alice_key)  # the only pair secret Eve can compute
                for epoch in range(epoch_of(now) - 2, epoch_of(now) + 3):
                    for purpose in Purpose:
                        for sender in (alice_key, eve.public_key):
                            keys.append(pair.channel_key(purpose, sender, epoch))
                values: list[bytes] = []
                for start in range(0, len(keys), 10):  # 10 lookups at a time
                    batches = await asyncio.gather(*(node.get(k) for k in keys[start:start + 10]))
                    values += [r.value + r.owner for records in batches for r in records]
                return len(keys), values
            finally:
                await node.close()

        tried, found = asyncio.run(scan())
        assert tried > 100
        # Only the inbox holds anything (Bob's sealed acceptance, not from Alice); no record
        # is signed by Alice's key and none carries her port in clear.
        for blob in found:
            assert alice_key not in blob
            assert alice_port not in blob
        # Control: with Bob's key the same kind of derivation finds Alice's presence.
        bob_identity = open_identity(load_identity_document(bob.profile / "identity.json"),
                                     PASSPHRASE)
        assert bob_identity.public_key == bob_identity_pub

        async def contact_lookup() -> list[int]:
            node = await UdpDhtNode.create(next_host(), 0)
            try:
                await node.bootstrap([parse_address(a) for a in dht.bootstrap])
                pair = Pair.derive(bob_identity, alice_key)
                key = pair.channel_key(Purpose.PRESENCE, alice_key, epoch_of(time.time()))
                return [r.type for r in await node.get(key)]
            finally:
                await node.close()

        assert asyncio.run(contact_lookup()) == [RecordType.PRESENCE]
    finally:
        alice.stop()
        bob.stop()


def test_stopping_with_a_follower_attached_is_clean(tmp_path: Path, dht: DhtProcess) -> None:
    """Review item 13: SIGTERM while `receive --follow` waits used to log a CancelledError
    traceback, and the client then claimed that no daemon was running."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    daemon, _ = _start(tmp_path, "alice", dht)
    follower = subprocess.Popen(
        [sys.executable, "-m", "dhtchat", "--profile", str(daemon.profile), "receive",
         "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        # Wait until the follower holds its connection to the daemon's socket.
        deadline = time.monotonic() + 20
        fds = Path(f"/proc/{follower.pid}/fd")
        while time.monotonic() < deadline and follower.poll() is None:
            links = [str(fd.readlink()) for fd in fds.iterdir() if fd.is_symlink()]
            if any(link.startswith("socket:") for link in links):
                break
            time.sleep(0.05)
        assert follower.poll() is None, follower.communicate()
        daemon.stop()
        _, err = follower.communicate(timeout=20)
    finally:
        if follower.poll() is None:
            follower.kill()
    log = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "no daemon is running" not in err, err
    assert "the daemon stopped" in err, err
    assert follower.returncode != 0


def test_killed_contact_shows_unreachable_within_seconds(tmp_path: Path,
                                                         dht: DhtProcess) -> None:
    """Review item 14: after kill -9 (no goodbye) the contact stayed `connected (direct)` for
    ~24 s (ICE consent freshness). The keepalive on the connection says it within seconds."""
    alice, alice_id = _start(tmp_path, "alice", dht)
    bob, bob_id = _start(tmp_path, "bob", dht)
    try:
        make_contacts(alice, alice_id, bob, bob_id)
        info = json.loads(cli(alice.profile, "connect", "Bob", "--timeout", "30",
                              "--json").stdout)
        assert info["status"] == "connected"
        bob.wait_contact(alice_id, lambda r: r.get("status") == "connected")
        bob.proc.kill()
        bob.proc.wait(10)
        killed = time.monotonic()
        row = alice.wait_contact(bob_id, lambda r: r.get("status") != "connected", timeout=20)
        elapsed = time.monotonic() - killed
        print(f"\nkill -9 -> contact shown {row['status']} after {elapsed:.1f} s")
        assert elapsed <= 8.0, (elapsed, row)
        assert row["status"] == "unreachable", row
        assert "last seen" in row["reason"] and row["last_seen"] <= time.time()
        text = cli(alice.profile, "contact", "list").stdout
        assert "unreachable" in text, text
    finally:
        alice.stop()
        bob.stop()
