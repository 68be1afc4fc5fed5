"""The NAT lab harness (tests/natlab.py) builds the topology and NATs it promises.

Needs root and ``ip netns``; skipped locally otherwise, but fails when CI=true.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.natlab import (
    LineReader,
    NatLab,
    NatLabError,
    cleanup_prefix,
    lab_namespaces,
    parse_stun_response,
    require_natlab,
    stun_request,
    stun_response,
)

pytestmark = [pytest.mark.slow, pytest.mark.natlab, pytest.mark.timeout(60)]

STUN_PORT = 3478


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    """alice behind a cone NAT (router_a), bob behind a symmetric one (router_b).

    coturn on public0, the tiny Python STUN responder on public1.
    """
    require_natlab(tools=("turnserver",))
    with NatLab(publics=2, nat_a="cone", nat_b="symmetric") as lab:
        lab.start_coturn("public0", "labuser", "labpass", "natlab.test")
        lab.start_stun_responder("public1")
        yield lab
    assert lab_namespaces(lab.prefix + "-") == []


def _servers(lab: NatLab) -> list[tuple[str, int]]:
    return [(lab.address("public0"), STUN_PORT), (lab.address("public1"), STUN_PORT)]


def test_stun_codec_roundtrip() -> None:
    request, tid = stun_request()
    assert len(request) == 20
    assert request[:2] == b"\x00\x01"
    assert request[4:8] == bytes.fromhex("2112a442")
    response = stun_response(tid, ("203.0.113.2", 40000))
    assert parse_stun_response(response, tid) == ("203.0.113.2", 40000)
    assert parse_stun_response(response, bytes(12)) is None  # other transaction
    assert parse_stun_response(request, tid) is None  # not a response


def test_topology(lab: NatLab) -> None:
    assert lab.address("alice") == "10.1.0.2"
    assert lab.address("bob") == "10.2.0.2"
    assert lab.address("router_a") == "203.0.113.2"
    assert lab.address("public1") == "203.0.113.11"
    assert all(len(lab.netns(h)) <= 15 for h in lab.hosts)
    routes = lab.run("alice", ["ip", "route"]).stdout
    assert "default via 10.1.0.1" in routes
    assert "default dev tun0" in lab.run("public0", ["ip", "route"]).stdout
    assert lab.run("router_b", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_cone_nat_maps_endpoint_independently(lab: NatLab) -> None:
    # Same local port, two STUN servers (coturn, Python responder): one mapping.
    seen = lab.stun_probe_from("alice", _servers(lab), local_port=40001)
    assert seen[0] is not None
    assert seen[1] is not None
    assert seen[0][0] == lab.address("router_a")  # the WAN address, not 10.1.0.2
    assert seen[0] == seen[1]


def test_symmetric_nat_maps_per_destination(lab: NatLab) -> None:
    seen = lab.stun_probe_from("bob", _servers(lab), local_port=40001)
    assert seen[0] is not None
    assert seen[1] is not None
    assert seen[0][0] == seen[1][0] == lab.address("router_b")
    # --random-fully: a fresh random port per destination (equal by chance ~1 in 64k).
    assert seen[0][1] != seen[1][1]


def _received(events: list[dict[str, object]]) -> list[object]:
    return [e["data"] for e in events if e.get("event") == "recv"]


def _drain(proc: subprocess.Popen[bytes], reader: LineReader) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    while (event := reader.json(timeout=10)) is not None:
        events.append(event)
    proc.wait(timeout=5)
    return events


def test_unsolicited_udp_does_not_reach_alice(lab: NatLab) -> None:
    wan = lab.address("router_a")
    public0 = lab.address("public0")
    duration = 2.5
    quiet, quiet_reader = lab.start_udp("alice", 40011, duration=duration)
    echo, echo_reader = lab.start_udp("public0", 5000, echo=True, duration=duration)
    talker, talker_reader = lab.start_udp(
        "alice", 40010, send_to=[(public0, 5000)], duration=duration
    )
    # Positive control: alice's hello arrives from the WAN address and the echo comes back.
    hello = echo_reader.json(timeout=2)
    assert hello is not None
    assert hello["data"] == "hello"
    mapped_ip, mapped_port = hello["src"]
    assert mapped_ip == wan
    reply = talker_reader.json(timeout=2)
    assert reply is not None
    assert reply["data"] == "echo:hello"

    lab.send_udp("public1", (wan, mapped_port), b"other-host")  # address-dependent filter
    lab.send_udp("public0", (wan, mapped_port), b"other-port", src_port=5001)  # port-dependent
    lab.send_udp("public1", (wan, 40011), b"no-mapping")  # nothing ever left 40011
    lab.send_udp("public1", ("10.1.0.2", 40011), b"private")  # no route to the LAN
    time.sleep(0.3)  # a window for datagrams that must NOT arrive (no event to wait for)

    assert _received(_drain(talker, talker_reader)) == []  # echo already read
    assert _received(_drain(quiet, quiet_reader)) == []
    assert _received(_drain(echo, echo_reader)) == []


def test_loss_emulation(lab: NatLab) -> None:
    servers = _servers(lab)[1:]
    lab.set_loss("router_a", 1.0)
    try:
        assert lab.stun_probe_from("alice", servers, timeout=0.5) == [None]
    finally:
        lab.set_loss("router_a", 0)
    assert lab.stun_probe_from("alice", servers, timeout=2)[0] is not None


def test_teardown_removes_everything() -> None:
    require_natlab()
    with pytest.raises(RuntimeError, match="boom"), NatLab(publics=1) as lab:
        assert len(lab_namespaces(lab.prefix + "-")) == 6  # switch, public0, 2 routers, 2 LANs
        sleeper = lab.popen("public0", ["sleep", "60"])
        # A process the lab did not start itself is found through `ip netns pids`.
        stray = subprocess.Popen(["ip", "netns", "exec", lab.netns("bob"), "sleep", "60"])
        raise RuntimeError("boom")
    try:
        assert lab_namespaces(lab.prefix + "-") == []
        assert sleeper.poll() is not None
        assert stray.wait(timeout=5) is not None
    finally:
        if stray.poll() is None:
            stray.kill()
    assert lab.teardown_seconds < 5


def test_cleanup_prefix_removes_leftovers() -> None:
    require_natlab()
    lab = NatLab(publics=1).__enter__()  # never exited: a crashed run's leftovers
    leftover = lab.popen("alice", ["sleep", "60"])
    try:
        before = lab_namespaces(lab.prefix + "-")
        assert len(before) == 6
        assert sorted(cleanup_prefix(lab.prefix + "-")) == sorted(before)
        assert lab_namespaces(lab.prefix + "-") == []
        assert leftover.wait(timeout=5) is not None
    finally:
        lab.close()


def test_coturn_failure_reports_log_tail() -> None:
    require_natlab(tools=("turnserver",))
    # no-stun: coturn runs but never answers the binding request used as readiness probe.
    with NatLab(publics=1) as lab, pytest.raises(NatLabError, match=r"(?s)did not answer.*tail"):
        lab.start_coturn("public0", "u", "p", "r", extra_config=["no-stun"], timeout=1)


def test_prefix_collision_leaves_the_other_lab_alone() -> None:
    require_natlab()
    with NatLab(publics=1) as lab:
        mine = lab_namespaces(lab.prefix + "-")
        with pytest.raises(NatLabError, match="netns add"), NatLab(publics=1, prefix=lab.prefix):
            pass
        assert lab_namespaces(lab.prefix + "-") == mine
        assert "10.1.0.2" in lab.run("alice", ["ip", "-br", "addr"]).stdout  # still usable
