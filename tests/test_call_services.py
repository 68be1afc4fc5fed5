"""The call service built from its narrow interfaces alone (no daemon): the call log and
certificates it persists, and a call refused from what is known of the contact's presence."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiortc import RTCConfiguration

from dhtchat.app.callmedia import CallMedia, CallMediaEngine
from dhtchat.app.calls import CallManager, CallRecord, CallStore
from dhtchat.app.events import EventLog
from dhtchat.core.contacts import Presence
from dhtchat.core.identity import SigningIdentity
from dhtchat.store.contacts import ContactStore
from dhtchat.store.history import History

_T = TypeVar("_T")
BOB = SigningIdentity.from_seed(bytes([2]) * 32).public_key
CAROL = SigningIdentity.from_seed(bytes([3]) * 32).public_key


class _Tasks:
    def __init__(self) -> None:
        self.spawned: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[_T]:
        task: asyncio.Task[_T] = asyncio.ensure_future(coro)
        self.spawned.append(task)
        return task


@dataclass
class _Status:
    status: str
    online: bool
    presence: Presence | None
    connected_at: float


class _Peers:
    """What calls see of a daemon: it knows the status of Bob's daemon only."""

    def __init__(self, root: Path, status: _Status | None) -> None:
        self.identity = SigningIdentity.from_seed(bytes([1]) * 32)
        self.contacts = ContactStore(root / "contacts.db")
        self.status = status
        self.connects: list[bytes] = []

    async def connect(self, public_key: bytes, timeout: float) -> object:
        self.connects.append(public_key)
        raise ConnectionError("no connection in this test")

    async def rtc_configuration(self) -> RTCConfiguration:
        return RTCConfiguration(iceServers=[])

    def link_of(self, public_key: bytes) -> _Status | None:
        return self.status if public_key == BOB else None


class _Signals:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_call(self, contact: bytes, action: str, call_id: bytes,
                        **kwargs: Any) -> bool:
        self.sent.append(action)
        return True


def _names(public_key: bytes) -> str:
    return {BOB: "Bob", CAROL: "Carol"}.get(public_key, "?")


def _manager(history: History, peers: _Peers, signals: _Signals) -> CallManager:
    return CallManager(CallStore(history), peers, signals, tasks=_Tasks(), names=_names,
                       events=EventLog())  # not opened: events go nowhere


def test_the_call_log_rewrites_a_call_in_place_newest_first(tmp_path: Path) -> None:
    key = os.urandom(32)
    history = History(tmp_path / "messages.db", key)
    store = CallStore(history)
    store.save(CallRecord(b"a" * 16, BOB, "incoming", False, 100.0, None, None, ""))
    store.save(CallRecord(b"b" * 16, CAROL, "outgoing", True, 200.0, 201.0, 260.0, "hung up"))
    store.save(CallRecord(b"a" * 16, BOB, "incoming", False, 100.0, None, 130.0, "missed"))
    history.close()
    history = History(tmp_path / "messages.db", key)  # kept across a restart
    rows = _manager(history, _Peers(tmp_path, None), _Signals()).log(10)
    assert [(r["name"], r["video"], r["reason"], r["missed"]) for r in rows] == [
        ("Carol", True, "hung up", False), ("Bob", False, "missed", True)]
    assert rows[1]["ended"] == 130.0 and rows[0]["answered"] == 201.0
    assert [r.call_id for r in CallStore(history).log(1)] == [b"b" * 16]
    history.close()


def test_the_call_certificate_is_kept_per_contact(tmp_path: Path) -> None:
    key = os.urandom(32)
    history = History(tmp_path / "messages.db", key)

    def fingerprint(engine: CallMediaEngine, contact: bytes) -> str:
        return engine.certificate(contact).getFingerprints()[0].value

    first = CallMediaEngine(CallStore(history), _Tasks())
    bob = fingerprint(first, BOB)
    assert fingerprint(first, CAROL) != bob  # calls with different people are unlinkable
    history.close()
    history = History(tmp_path / "messages.db", key)
    assert fingerprint(CallMediaEngine(CallStore(history), _Tasks()), BOB) == bob
    history.close()


def test_a_call_to_a_contact_known_offline_fails_without_connecting(tmp_path: Path) -> None:
    history = History(tmp_path / "messages.db", os.urandom(32))
    goodbye = Presence(bytes(16), int(time.time()) - 60, False, False, bytes(64))
    peers = _Peers(tmp_path, _Status("offline", False, goodbye, 0.0))
    signals = _Signals()
    manager = _manager(history, peers, signals)

    async def main() -> None:
        with pytest.raises(ConnectionError, match=r"^Bob is offline \(last seen 6[01] s ago\)"):
            await manager.place(BOB, CallMedia())

    asyncio.run(main())
    assert peers.connects == [] and signals.sent == []
    assert manager.calls == {} and manager.log(5) == []
    # Nothing known of Carol: the call tries to connect (and fails here, logged as such).
    manager = _manager(history, peers, signals)

    async def unknown() -> None:
        with pytest.raises(ConnectionError, match="no connection in this test"):
            await manager.place(CAROL, CallMedia())

    asyncio.run(unknown())
    assert peers.connects == [CAROL] and signals.sent == []
    assert [(r["name"], r["reason"]) for r in manager.log(5)] == [
        ("Carol", "failed: no connection in this test")]
    history.close()
