"""NAT lab: two daemons behind home NATs connect through the DHT (docs/natlab.md).

(a) endpoint-independent NAT: direct connection by hole punching, with STUN answered by the
    public DHT nodes (no coturn anywhere);
(b) symmetric NATs: direct fails; with TURN configured the connection goes through the relay,
    without TURN it fails with a reason that says so;
(c) ``--relay-only``: relay even though direct would work, and the peer never sees the
    private or public address of the relay-only side;
(d) voice calls with tones recorded and checked by FFT, direct through cone NATs and through
    TURN between symmetric NATs.

Runs as root in CI (``CI=true`` turns a missing prerequisite into a failure, not a skip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.media import audio_duration, dominant_frequency
from tests.daemons import (
    PASSPHRASE,
    REPO,
    DaemonProcess,
    DhtProcess,
    cli,
    make_contacts,
    new_identity,
)
from tests.natlab import NatLab, NatType, require_natlab

pytestmark = [pytest.mark.slow, pytest.mark.natlab, pytest.mark.timeout(300)]

TURN_USER, TURN_PASS = "dhtchat", "lab-secret"


class Scene:
    """A lab with a public DHT, maybe coturn, and Alice and Bob daemons behind routers."""

    def __init__(self, lab: NatLab, tmp: Path, *, turn: bool,
                 alice_args: tuple[str, ...] = (), bob_args: tuple[str, ...] = ()) -> None:
        self.lab = lab
        self.daemons: list[DaemonProcess] = []
        self.dht = DhtProcess(10, lab.address("public0"),
                              wrap=lambda argv: lab.exec_argv("public0", argv))
        self.turn_url = None
        if turn:
            host, port = lab.start_coturn("public1", TURN_USER, TURN_PASS, "dhtchat.lab")
            self.turn_url = f"turn:{host}:{port}"
        common = ["--port", "4000"]
        for address in self.dht.bootstrap:
            common += ["--bootstrap", address]
        if self.turn_url:
            common += ["--turn", self.turn_url, "--turn-user", TURN_USER,
                       "--turn-pass", TURN_PASS]
        self.alice_id = new_identity(tmp / "alice")
        self.bob_id = new_identity(tmp / "bob")
        self.alice = self._daemon(tmp / "alice", "alice", [*common, "--name", "Alice",
                                                           *alice_args])
        self.bob = self._daemon(tmp / "bob", "bob", [*common, "--name", "Bob", *bob_args])
        make_contacts(self.alice, self.alice_id, self.bob, self.bob_id, timeout=60)

    def _daemon(self, profile: Path, host: str, args: list[str]) -> DaemonProcess:
        daemon = DaemonProcess(profile, args,
                               wrap=lambda argv: self.lab.exec_argv(host, argv))
        self.daemons.append(daemon)
        daemon.wait_ready(60)
        return daemon

    def connect(self, timeout: int = 40) -> tuple[int, dict[str, Any], str]:
        result = cli(self.alice.profile, "connect", self.bob_id, "--timeout", str(timeout),
                     "--json", check=False, timeout=timeout + 60)
        info = json.loads(result.stdout) if result.returncode == 0 else {}
        return result.returncode, info, result.stderr

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.dht.stop()


@pytest.fixture
def scene_factory(tmp_path: Path) -> Iterator[Any]:
    require_natlab(["turnserver"])
    opened: list[tuple[NatLab, Scene | None]] = []

    def make(nat: NatType, *, turn: bool, alice_args: tuple[str, ...] = (),
             bob_args: tuple[str, ...] = ()) -> Scene:
        lab = NatLab(publics=2, nat_a=nat, nat_b=nat)
        lab.__enter__()
        opened.append((lab, None))
        scene = Scene(lab, tmp_path, turn=turn, alice_args=alice_args, bob_args=bob_args)
        opened[-1] = (lab, scene)
        return scene

    yield make
    for lab, scene in opened:
        try:
            if scene is not None:
                for daemon in scene.daemons:
                    print(f"--- {daemon.profile.name} log tail\n{daemon.log()[-1500:]}")
                scene.close()
        finally:
            lab.close()


def test_cone_nat_hole_punching_with_dht_stun(scene_factory: Any) -> None:
    scene: Scene = scene_factory("cone", turn=False)
    code, info, err = scene.connect()
    assert code == 0, err
    assert info["path"] == "direct"
    # Bob is reached at his router's public mapping, learned through STUN from a DHT node.
    assert info["remote"]["type"] in ("srflx", "prflx")
    assert info["remote"]["address"].startswith(scene.lab.address("router_b") + ":")
    assert info["stun"] is not None
    assert info["stun"].startswith(scene.lab.address("public0") + ":")  # a DHT node, no coturn
    print(f"\ncone NAT: direct in {info['connect_ms']:.0f} ms via {info['local']} <-> "
          f"{info['remote']}")
    bob_row = scene.bob.wait_contact(scene.alice_id, lambda r: r.get("status") == "connected")
    assert bob_row["path"] == "direct"


def test_symmetric_nat_needs_turn(scene_factory: Any) -> None:
    scene: Scene = scene_factory("symmetric", turn=True)
    code, info, err = scene.connect()
    assert code == 0, err
    assert info["path"] == "relay"
    assert "relay" in (info["local"]["type"], info["remote"]["type"])
    print(f"\nsymmetric NAT: relay in {info['connect_ms']:.0f} ms via {info['local']} <-> "
          f"{info['remote']}")


def test_symmetric_nat_without_turn_fails_with_reason(scene_factory: Any) -> None:
    scene: Scene = scene_factory("symmetric", turn=False)
    code, _info, err = scene.connect(timeout=10)
    assert code == 1
    assert "ICE found no working candidate pair" in err and "TURN" in err
    row = scene.alice.contact(scene.bob_id)
    assert row is not None and row["status"] != "connected" and "ICE" in row["reason"]


def test_relay_only_hides_the_address(scene_factory: Any) -> None:
    scene: Scene = scene_factory("cone", turn=True, alice_args=("--relay-only",))
    code, info, err = scene.connect()
    assert code == 0, err
    assert info["path"] == "relay"
    assert info["local"]["type"] == "relay"
    coturn_host = scene.lab.address("public1")
    row = scene.bob.wait_contact(scene.alice_id, lambda r: r.get("status") == "connected")
    # Bob sees only the relay's address for Alice: neither 10.1.0.2 nor her router's WAN IP.
    assert row["remote"]["address"].startswith(coturn_host + ":")
    assert row["remote"]["type"] == "relay" or row["remote"]["type"] == "prflx"
    log = scene.bob.log()
    assert scene.lab.address("alice") not in log
    assert scene.lab.address("router_a") not in log


def test_reconnects_after_network_outage(scene_factory: Any) -> None:
    """Alice's uplink goes dark: the connection's keepalive (5 s of silence) or ICE consent
    freshness (RFC 7675, ~30 s) declares the path dead, both sides say so with a reason, and
    the daemons reconnect by themselves once the network is back."""
    scene: Scene = scene_factory("cone", turn=False)
    code, _info, err = scene.connect()
    assert code == 0, err
    block = ["iptables", "-I", "FORWARD", "1", "-j", "DROP"]
    scene.lab.run("router_a", block)
    try:
        row = scene.alice.wait_contact(scene.bob_id, lambda r: r.get("status") != "connected",
                                       timeout=60)
        print(f"\nafter the outage alice says: {row['status']} - {row.get('reason')}")
        reason = row.get("reason", "")
        assert row["status"] == "unreachable" or "consent" in reason or "connection" in reason
        assert "nothing heard" in reason or "consent" in reason or "connection" in reason
    finally:
        scene.lab.run("router_a", ["iptables", "-D", "FORWARD", "1"])
    back = scene.alice.wait_contact(scene.bob_id, lambda r: r.get("status") == "connected",
                                    timeout=90)
    assert back["path"] == "direct"
    scene.bob.wait_contact(scene.alice_id, lambda r: r.get("status") == "connected",
                           timeout=30)


def _tone_call(scene: Scene, tmp: Path, seconds: float = 4.0) -> tuple[str, str]:
    """Alice calls Bob through the lab (440 Hz against 1000 Hz, both recorded); checks the
    tones, the duration and the SAS; returns the two CLI outputs."""
    env = dict(os.environ, DHTCHAT_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(REPO))
    answer = subprocess.Popen(
        [sys.executable, "-m", "dhtchat", "--profile", str(scene.bob.profile), "answer",
         "--audio-in", "tone:1000", "--audio-out", str(tmp / "bob-heard.wav")],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        stdin=subprocess.DEVNULL)
    try:  # (no wait: `answer` also picks up a call that is already ringing)
        call = cli(scene.alice.profile, "call", scene.bob_id, "--audio-in", "tone:440",
                   "--audio-out", str(tmp / "alice-heard.wav"), "--duration", str(seconds),
                   timeout=180)
        _, answered = answer.communicate(timeout=60)
    finally:
        if answer.poll() is None:
            answer.kill()
    assert answer.returncode == 0, answered
    sas = [[line for line in text.splitlines() if line.startswith("SAS: ")]
           for text in (call.stderr, answered)]
    assert sas[0] and sas[0] == sas[1]
    for name, tone in (("alice-heard.wav", 1000.0), ("bob-heard.wav", 440.0)):
        assert abs(dominant_frequency(tmp / name) - tone) < 15, name
        assert audio_duration(tmp / name) >= 0.9 * seconds, name
    return call.stderr, answered


def test_call_through_cone_nats(scene_factory: Any, tmp_path: Path) -> None:
    """A voice call between the two NATed daemons: the media connection punches through
    like the data connection."""
    scene: Scene = scene_factory("cone", turn=False)
    code, _info, err = scene.connect()
    assert code == 0, err
    call, _ = _tone_call(scene, tmp_path)
    print(f"\ncall through cone NATs:\n{call}")
    assert "call active (direct)" in call
    logged = json.loads(cli(scene.alice.profile, "call", "list", "--json").stdout)
    assert logged[0]["reason"] == "hung up"


def test_call_through_turn(scene_factory: Any, tmp_path: Path) -> None:
    """Both behind symmetric NATs: the call's media go through coturn."""
    scene: Scene = scene_factory("symmetric", turn=True)
    code, info, err = scene.connect()
    assert code == 0, err
    assert info["path"] == "relay"
    call, _ = _tone_call(scene, tmp_path)
    print(f"\ncall through TURN:\n{call}")
    assert "call active (relay)" in call
