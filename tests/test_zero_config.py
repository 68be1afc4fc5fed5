"""Zero-config start on loopback (dhtchat/app/lifecycle.py): the node's port kept in the
profile (reused, with a fallback when taken), the peers that answered saved and re-verified
at the next start, what the daemon does with a node heard on the LAN (:class:`LanJoin`),
and ``dhtchat daemon`` with no --port."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from dhtchat.app.lifecycle import (
    DaemonOptions,
    LanJoin,
    close_node,
    join,
    open_node,
    remember_peers,
    start_upkeep,
)
from dhtchat.app.profile import NodeState, Profile
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.lan import Found
from dhtchat.net.udp import UdpDhtNode
from tests.daemons import DaemonProcess, cli, new_identity, next_host

_T = TypeVar("_T")
HOST = "127.0.0.1"


def run(coro: Callable[[], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        return await asyncio.wait_for(coro(), 60)
    return asyncio.run(main())


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _stored_port(profile: Profile) -> int | None:
    state = NodeState(profile.node_db_path)
    try:
        return state.port()
    finally:
        state.close()


# ------------------------------------------------------------------ the port


def test_the_first_start_picks_a_free_port_and_later_starts_reuse_it(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p")

    async def scenario() -> tuple[int, int, int]:
        first = await open_node(profile, DaemonOptions(host=HOST))
        port = first.address[1]
        await close_node(profile, first)
        second = await open_node(profile, DaemonOptions(host=HOST))
        again = second.address[1]
        await close_node(profile, second)
        return port, again, _stored_port(profile) or 0
    port, again, stored = run(scenario)
    assert port > 0
    assert again == port == stored


def test_a_taken_port_falls_back_to_a_free_one_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    profile = Profile(tmp_path / "p")

    async def scenario() -> tuple[int, int]:
        first = await open_node(profile, DaemonOptions(host=HOST))
        port = first.address[1]
        await close_node(profile, first)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind((HOST, port))
            second = await open_node(profile, DaemonOptions(host=HOST))
        moved = second.address[1]
        await close_node(profile, second)
        return port, moved
    with caplog.at_level(logging.WARNING, logger="dhtchat.daemon"):
        port, moved = run(scenario)
    assert moved not in (0, port)
    assert f"port {port} of the last run is not free" in caplog.text
    assert _stored_port(profile) == moved  # where peers now know the node


def test_an_explicit_port_that_is_taken_is_an_error_and_an_explicit_port_is_kept(
        tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p")

    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
            squatter.bind((HOST, 0))
            taken = squatter.getsockname()[1]
            with pytest.raises(LocalProtocolError, match=f"cannot listen on {HOST}:{taken}"):
                await open_node(profile, DaemonOptions(host=HOST, port=taken))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            free = probe.getsockname()[1]
        node = await open_node(profile, DaemonOptions(host=HOST, port=free))
        assert node.address[1] == free
        await close_node(profile, node)
        assert _stored_port(profile) == free
    run(scenario)


# ------------------------------------------------------------------ remembered peers


def test_the_peers_that_answered_are_saved_and_re_verified_at_the_next_start(
        tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p")

    async def scenario() -> None:
        others = [await UdpDhtNode.create(next_host(), 0) for _ in range(3)]
        for other in others[1:]:
            await other.bootstrap([others[0].address])
        node = await open_node(profile, DaemonOptions(host=next_host(),
                                                      bootstrap=[others[0].address]))
        await join(node, [others[0].address], asyncio.Event())
        await eventually(lambda: len(node.core.table) == 3)
        await close_node(profile, node)
        saved = {(host, port) for _, (host, port) in _peers(profile)}
        assert saved == {o.address for o in others}

        # no bootstrap address: it knows the network from the peers it saved
        again = await open_node(profile, DaemonOptions(host=next_host()))
        assert again.core.config.read_only  # auto mode: a client until a peer sees it ...
        await eventually(lambda: {c.address for c in again.core.table.contacts()}
                         == {o.address for o in others})
        await eventually(lambda: not again.core.config.read_only)  # ... which they did
        await close_node(profile, again)
        for other in others:
            await other.close()
    run(scenario)


def test_a_run_in_which_nobody_answered_keeps_the_peers_of_the_run_before(
        tmp_path: Path) -> None:
    profile = Profile(tmp_path / "p")

    async def scenario() -> None:
        other = await UdpDhtNode.create(next_host(), 0)
        node = await open_node(profile, DaemonOptions(host=next_host()))
        await node.bootstrap([other.address])
        assert remember_peers(profile, node) == 1
        await close_node(profile, node)
        await other.close()  # gone: the next run hears from nobody
        lonely = await open_node(profile, DaemonOptions(host=next_host()))
        assert remember_peers(profile, lonely) == 0
        await close_node(profile, lonely)
        assert [address for _, address in _peers(profile)] == [other.address]
    run(scenario)


def _peers(profile: Profile) -> list[tuple[bytes, tuple[str, int]]]:
    state = NodeState(profile.node_db_path)
    try:
        return state.peers()
    finally:
        state.close()


def test_the_peers_are_saved_while_the_daemon_runs_not_only_at_its_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash loses at most a PEER_SAVE_PERIOD of what was learnt."""
    monkeypatch.setattr("dhtchat.app.lifecycle.PEER_SAVE_PERIOD", 0.05)
    profile = Profile(tmp_path / "p")

    async def scenario() -> None:
        other = await UdpDhtNode.create(next_host(), 0)
        node = await open_node(profile, DaemonOptions(host=next_host()))
        stopping = asyncio.Event()
        tasks: list[asyncio.Task[object]] = []

        def spawn(coro: Awaitable[object]) -> object:
            tasks.append(asyncio.ensure_future(coro))
            return tasks[-1]
        lan = await start_upkeep(profile, node, DaemonOptions(host=HOST), spawn, stopping)
        assert lan.status() == {"enabled": False, "reason": f"the DHT node listens on {HOST} "
                                                            "only"}
        await node.bootstrap([other.address])
        await eventually(lambda: len(_peers(profile)) == 1)
        stopping.set()
        await asyncio.gather(*tasks)
        await node.close()  # no close_node: as if the process died here
        await other.close()
    run(scenario)


# ------------------------------------------------------------------ a node heard on the LAN


def _spawner(tasks: list[asyncio.Task[object]]) -> Callable[[Awaitable[object]], object]:
    def spawn(coro: Awaitable[object]) -> object:
        tasks.append(asyncio.ensure_future(coro))
        return tasks[-1]
    return spawn


def test_a_serving_node_heard_on_the_lan_is_joined_through() -> None:
    async def scenario() -> None:
        other = await UdpDhtNode.create(next_host(), 0)
        node = await UdpDhtNode.create(next_host(), 0)
        tasks: list[asyncio.Task[object]] = []
        lan = LanJoin(node, _spawner(tasks))
        lan.found(Found(other.node_id, other.address, serving=True))
        await eventually(lambda: [c.address for c in node.core.table.contacts()]
                         == [other.address])
        await asyncio.gather(*tasks)
        lan.found(Found(other.node_id, other.address, serving=True))  # known: nothing to do
        assert len(tasks) == 1
        await node.close()
        await other.close()
    run(scenario)


def test_a_client_node_heard_on_the_lan_is_not_asked() -> None:
    async def scenario() -> None:
        other = await UdpDhtNode.create(next_host(), 0)
        node = await UdpDhtNode.create(next_host(), 0)
        tasks: list[asyncio.Task[object]] = []
        LanJoin(node, _spawner(tasks)).found(Found(other.node_id, other.address, serving=False))
        assert tasks == []
        assert other.core.stats["requests_received"] == 0
        await node.close()
        await other.close()
    run(scenario)


def test_a_client_no_peer_has_observed_yet_serves_once_it_hears_a_neighbour() -> None:
    """After a restart both nodes of a LAN are DHT clients (each had peers remembered),
    each waiting to be observed by the other: hearing a neighbour breaks the tie."""
    async def scenario() -> None:
        node = await UdpDhtNode.create(next_host(), 0, auto_mode=True)
        other = await UdpDhtNode.create(next_host(), 0, auto_mode=True)
        assert node.core.config.read_only and other.core.config.read_only
        lan = LanJoin(node, _spawner([]))
        assert not lan.serving()
        lan.found(Found(other.node_id, other.address, serving=False))
        assert lan.serving() and not node.core.config.read_only
        # the other hears our next announce (now serving), serves too and joins through us
        tasks: list[asyncio.Task[object]] = []
        LanJoin(other, _spawner(tasks)).found(Found(node.node_id, node.address, serving=True))
        await eventually(lambda: len(other.core.table) == 1 and len(node.core.table) == 1)
        await asyncio.gather(*tasks)
        await node.close()
        await other.close()
    run(scenario)


def test_an_observed_client_stays_a_client_when_it_hears_a_neighbour() -> None:
    async def scenario() -> None:
        node = await UdpDhtNode.create(next_host(), 0, auto_mode=True)
        assert node.reachability is not None
        node.reachability.observe(("198.51.100.1", 1), ("203.0.113.7", 999), ("10.0.0.2", 4))
        assert node.reachability.verdict == "behind-nat"
        LanJoin(node, _spawner([])).found(Found(b"\x05" * 32, ("10.0.0.9", 4000), False))
        assert node.core.config.read_only
        await node.close()
    run(scenario)


# ------------------------------------------------------------------ the command


def test_daemon_needs_no_port_and_keeps_the_one_it_got(tmp_path: Path) -> None:
    profile = tmp_path / "me"
    new_identity(profile)
    host = next_host()
    ports = []
    for _ in range(2):
        daemon = DaemonProcess(profile, ["--host", host])
        try:
            daemon.wait_ready(60)
            status = daemon.status()
            assert status is not None
            ports.append(status["dht_address"])
            assert status["lan_discovery"] == {
                "enabled": False, "reason": f"the DHT node listens on {host} only"}
        finally:
            daemon.stop()
    assert ports[0] == ports[1] and not ports[0].endswith(":0")
    with sqlite3.connect(profile / "node.sqlite") as db:
        (stored,) = db.execute("SELECT value FROM meta WHERE name='port'").fetchone()
    db.close()
    assert ports[0] == f"{host}:{stored}"


def test_a_bad_port_is_a_usage_error_and_the_hint_asks_for_no_port(tmp_path: Path) -> None:
    profile = tmp_path / "me"
    new_identity(profile)
    bad = cli(profile, "daemon", "--port", "70000", check=False)
    assert bad.returncode == 2
    assert "--port 70000 is not a UDP port" in bad.stderr
    assert "Traceback" not in bad.stderr
    hint = cli(profile, "contact", "list", check=False)
    assert hint.returncode == 1
    assert hint.stderr.strip().endswith("start one with `dhtchat daemon`")
