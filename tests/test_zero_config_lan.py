"""Zero-config start in network namespaces: two hosts on one bridge run ``dhtchat daemon``
with no --port and no --bootstrap, find each other by LAN discovery, become contacts and
talk; restarted (both at once, still with nothing typed) they come back on the same ports
and talk again. With ``--no-lan-discovery`` the same two hosts never meet.

Topology (created and deleted by the test; nothing touches the host namespace)::

    <prefix>-a 10.77.0.2/24 eth0 --veth-- va --+
                                                br0 (<prefix>-sw)
    <prefix>-b 10.77.0.3/24 eth0 --veth-- vb --+

No default route, no IPv6: multicast finds its way by the interface the daemon picks
(``IP_MULTICAST_IF``), not by a route. Needs root; runs one at a time with the NAT lab tests
(the ``natlab`` marker takes the lab lock under xdist, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.rpc import call
from tests.daemons import DaemonProcess, cli, make_contacts, new_identity
from tests.natlab import PREFIX_ROOT, cleanup_prefix, lab_namespaces

pytestmark = [pytest.mark.slow, pytest.mark.natlab, pytest.mark.timeout(300)]

SUBNET = "10.77.0"
DISCOVERY_TIMEOUT = 30.0


class Lan:
    """Two hosts on one bridge, each in its own namespace."""

    def __init__(self) -> None:
        existing = set(lab_namespaces(PREFIX_ROOT))
        self.prefix = next(p for p in (PREFIX_ROOT + "z" + secrets.token_hex(2)
                                       for _ in range(100))
                           if not any(n.startswith(p + "-") for n in existing))
        self.switch = f"{self.prefix}-sw"
        self.hosts = {"a": f"{self.prefix}-a", "b": f"{self.prefix}-b"}
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _run(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def _build(self) -> None:
        for ns in (self.switch, *self.hosts.values()):
            self._run("ip", "netns", "add", ns)
            self._run("ip", "netns", "exec", ns, "sysctl", "-qw",
                      "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            self._run("ip", "-n", ns, "link", "set", "lo", "up")
        self._run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, (name, ns) in enumerate(self.hosts.items()):
            port = f"v{name}"
            self._run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer",
                      "name", "eth0", "netns", ns)
            self._run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
            self._run("ip", "-n", self.switch, "link", "set", port, "up")
            self._run("ip", "-n", ns, "addr", "add", f"{SUBNET}.{i + 2}/24", "dev", "eth0")
            self._run("ip", "-n", ns, "link", "set", "eth0", "multicast", "on")
            self._run("ip", "-n", ns, "link", "set", "eth0", "up")

    def add_address(self, host: str, cidr: str) -> None:
        """Give ``host``'s eth0 a second address."""
        self._run("ip", "-n", self.hosts[host], "addr", "add", cidr, "dev", "eth0")

    def add_side_link(self, host: str, cidr: str) -> None:
        """Give ``host`` a second interface ``side0`` (a veth whose peer ``side1`` stays in
        the same namespace: a link that leads nowhere)."""
        ns = self.hosts[host]
        self._run("ip", "-n", ns, "link", "add", "side0", "type", "veth", "peer", "name",
                  "side1")
        self._run("ip", "-n", ns, "addr", "add", cidr, "dev", "side0")
        for name in ("side1", "side0"):
            self._run("ip", "-n", ns, "link", "set", name, "up")

    def wrap(self, host: str) -> Callable[[list[str]], list[str]]:
        """Run a command line in ``host``'s namespace."""
        return lambda argv: ["ip", "netns", "exec", self.hosts[host], *argv]

    def close(self) -> None:
        """Kill what runs in the namespaces and delete them."""
        cleanup_prefix(self.prefix + "-")


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "needs 'ip' (iproute2) on PATH"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns' unavailable: {exc}"
    return None


@pytest.fixture
def lan() -> Iterator[Lan]:
    reason = _unavailable()  # as the NAT lab: a failure, not a skip, in CI
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the LAN test cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    network = Lan()
    try:
        yield network
    finally:
        network.close()


def _status(daemon: DaemonProcess) -> dict[str, Any]:
    status: dict[str, Any] = asyncio.run(call(daemon.profile / "daemon.sock", "status", {}, 20))
    return status


def _wait(what: str, predicate: Callable[[], bool], timeout: float,
          daemons: list[DaemonProcess]) -> float:
    """Poll ``predicate`` until it holds; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    logs = "\n".join(f"--- {d.profile.name}\n{d.log()[-3000:]}" for d in daemons)
    raise AssertionError(f"{what}: not within {timeout} s\n{logs}")


def _history(daemon: DaemonProcess, contact: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = asyncio.run(call(
        daemon.profile / "daemon.sock", "message.history", {"contact": contact}, 20))
    return rows


def _received(daemon: DaemonProcess, contact: str, text: str) -> bool:
    return any(m["text"] == text and m["from"] == contact for m in _history(daemon, contact))


class Pair:
    """Alice on host a, Bob on host b."""

    def __init__(self, lan: Lan, tmp: Path) -> None:
        self.lan = lan
        self.alice_id = new_identity(tmp / "alice")
        self.bob_id = new_identity(tmp / "bob")
        self.profiles = {"a": tmp / "alice", "b": tmp / "bob"}
        self.daemons: dict[str, DaemonProcess] = {}
        self.started = 0.0

    def start(self, *args: str, alice: tuple[str, ...] = ()) -> float:
        """Start both daemons with ``args`` (no --port, no --bootstrap; Alice's also with
        ``alice``); the seconds until both answer."""
        self.started = started = time.monotonic()
        for host, name, more in (("a", "Alice", alice), ("b", "Bob", ())):
            self.daemons[host] = DaemonProcess(self.profiles[host],
                                               ["--name", name, *args, *more],
                                               wrap=self.lan.wrap(host))
        for daemon in self.daemons.values():
            daemon.wait_ready(60)
        return time.monotonic() - started

    @property
    def alice(self) -> DaemonProcess:
        return self.daemons["a"]

    @property
    def bob(self) -> DaemonProcess:
        return self.daemons["b"]

    def meet(self, timeout: float = DISCOVERY_TIMEOUT) -> float:
        """Seconds from :meth:`start` until each daemon has the other in its routing
        table."""
        _wait("the two hosts see each other",
              lambda: all(_status(d)["dht_contacts"] >= 1 for d in self.daemons.values()),
              timeout, list(self.daemons.values()))
        return time.monotonic() - self.started

    def talk(self, tag: str) -> None:
        """A message each way, seen in the other's history."""
        daemons = list(self.daemons.values())
        cli(self.alice.profile, "send", self.bob_id, f"hello Bob {tag}")
        cli(self.bob.profile, "send", self.alice_id, f"hello Alice {tag}")
        _wait("Bob has Alice's message",
              lambda: _received(self.bob, self.alice_id, f"hello Bob {tag}"), 60, daemons)
        _wait("Alice has Bob's message",
              lambda: _received(self.alice, self.bob_id, f"hello Alice {tag}"), 60, daemons)

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()

    def dump(self) -> None:
        for host, daemon in self.daemons.items():
            print(f"--- {host} ({daemon.profile.name}) log tail\n{daemon.log()[-2000:]}")


@pytest.fixture
def pair(lan: Lan, tmp_path: Path) -> Iterator[Pair]:
    made = Pair(lan, tmp_path)
    try:
        yield made
    finally:
        made.dump()
        made.stop()


def test_two_hosts_on_one_link_meet_and_talk_with_nothing_typed(pair: Pair) -> None:
    ready = pair.start()
    seen = pair.meet()
    print(f"LAN discovery: both daemons answer {ready:.2f} s after their start and have each "
          f"other in their routing tables {seen:.2f} s after it")
    # (one hearing the other is enough to meet; each hears the other's next announce)
    _wait("each host heard the other's announce",
          lambda: all(_status(d)["lan_discovery"]["heard"] >= 1
                      for d in pair.daemons.values()), 10, list(pair.daemons.values()))
    first = {host: _status(d) for host, d in pair.daemons.items()}
    for status in first.values():
        lan = status["lan_discovery"]
        assert lan["enabled"] is True, status
        assert lan["interfaces"] == ["eth0"], status
        assert lan["sent"] >= 1 and lan["refused"] == 0, status
        assert status["dht_address"].startswith("0.0.0.0:"), status
        assert status["dht_address"] != "0.0.0.0:0"

    make_contacts(pair.alice, pair.alice_id, pair.bob, pair.bob_id, timeout=60)
    pair.talk("1")

    # Both restart at once, still with nothing typed: same ports (kept in the profile),
    # the peers of the last run re-verified, LAN discovery to break the tie of two nodes
    # that each start as a DHT client waiting for the other.
    pair.stop()
    for profile in pair.profiles.values():
        assert (profile / "node.sqlite").exists()
    ready = pair.start()
    again = pair.meet()
    print(f"after a restart of both: ready in {ready:.2f} s, met {again:.2f} s after start")
    for host, daemon in pair.daemons.items():
        assert _status(daemon)["dht_address"] == first[host]["dht_address"]
    pair.talk("2")


def test_a_node_bound_to_one_address_announces_on_its_network_only(pair: Pair) -> None:
    pair.lan.add_side_link("a", "192.168.9.2/24")  # a second link
    pair.lan.add_side_link("b", "192.168.9.3/24")
    pair.start(alice=("--host", f"{SUBNET}.2"))
    pair.meet()
    alice, bob = _status(pair.alice), _status(pair.bob)
    assert alice["dht_address"].startswith(f"{SUBNET}.2:")
    assert alice["lan_discovery"]["interfaces"] == ["eth0"]  # not side0: unreachable there
    assert sorted(bob["lan_discovery"]["interfaces"]) == ["eth0", "side0"]
    make_contacts(pair.alice, pair.alice_id, pair.bob, pair.bob_id, timeout=60)


def test_restart_reuses_the_port_and_the_peers_that_answered(pair: Pair) -> None:
    """Bob restarts with LAN discovery off and no bootstrap: the peer saved from the last
    run (Alice) is all he has, and enough."""
    pair.start()
    pair.meet()
    make_contacts(pair.alice, pair.alice_id, pair.bob, pair.bob_id, timeout=60)
    port = _status(pair.bob)["dht_address"]
    pair.bob.stop()
    pair.daemons["b"] = DaemonProcess(pair.profiles["b"], ["--no-lan-discovery"],
                                      wrap=pair.lan.wrap("b"))
    pair.bob.wait_ready(60)
    status = _status(pair.bob)
    assert status["lan_discovery"] == {"enabled": False,
                                       "reason": "switched off (--no-lan-discovery)"}
    assert status["dht_address"] == port
    pair.meet()
    pair.talk("after Bob's restart")


def test_without_lan_discovery_the_two_hosts_never_meet(pair: Pair) -> None:
    """The control: the same hosts, no address typed and discovery off. They are still alone
    after several times what discovery takes (about a second; see above)."""
    pair.start("--no-lan-discovery")
    with pytest.raises(AssertionError, match="not within"):
        pair.meet(timeout=10.0)
    for daemon in pair.daemons.values():
        status = _status(daemon)
        assert status["dht_contacts"] == 0
        assert status["lan_discovery"]["enabled"] is False


_SENDER = """
import socket, sys
source, *payloads = sys.argv[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for payload in payloads:
    s.sendto(bytes.fromhex(payload), ("239.192.68.67", 6767))
"""


def test_junk_and_foreign_announces_on_the_link_are_refused_without_a_traceback(
        pair: Pair) -> None:
    from dhtchat.core.lan import LAN_MAGIC, Announce, encode_announce  # noqa: PLC0415

    pair.start()
    pair.meet()
    _wait("Bob heard Alice", lambda: _status(pair.bob)["lan_discovery"]["heard"] >= 1, 10,
          list(pair.daemons.values()))
    before = _status(pair.bob)["lan_discovery"]
    junk = [b"", b"\xff" * 40, LAN_MAGIC + b"\xc1", b"dL\x07" + b"\x00" * 20,
            b"x" * 1200]
    subprocess.run([*pair.lan.wrap("a")(["python3", "-c", _SENDER, f"{SUBNET}.2"]),
                    *(j.hex() for j in junk)], check=True, timeout=30)
    # well-formed announces on the same wire from a public address, and from a private one
    # that is not on Bob's network (10.77.0.0/24): neither is a local source
    valid = encode_announce(Announce(b"\x09" * 32, 4000, b"stranger", 1))
    for cidr in ("203.0.113.9/24", "192.168.50.9/24"):
        pair.lan.add_address("a", cidr)
        subprocess.run([*pair.lan.wrap("a")(["python3", "-c", _SENDER, cidr.split("/")[0]]),
                        valid.hex()], check=True, timeout=30)
    _wait("Bob refused the seven datagrams",
          lambda: _status(pair.bob)["lan_discovery"]["refused"] - before["refused"] >= 7, 10,
          list(pair.daemons.values()))
    after = _status(pair.bob)
    assert after["lan_discovery"]["heard"] == before["heard"]  # the stranger was not reported
    assert after["dht_contacts"] == 1  # and not contacted
    assert pair.bob.proc.poll() is None
    assert "Traceback" not in pair.bob.log()
