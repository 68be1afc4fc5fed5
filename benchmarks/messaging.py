#!/usr/bin/env python3
"""Messaging benchmark: two real ``dhtchat daemon`` processes on loopback.

Usage::

    python benchmarks/messaging.py                      # defaults: a few minutes on 2 cores
    python benchmarks/messaging.py --latency 50 --messages 200 --ratchet 500 --offline 20

Measures, in this order (a stage given a count of 0 is skipped):

1. **Latency** (``--latency`` samples of ``--size`` bytes): one message at a time, from the
   start of Alice's ``message.send`` RPC to the moment Bob's pending ``message.receive``
   long-poll (``wait``) returns it, over the connected data channel.
2. **Receipt round trip** (``--receipts`` samples): ``message.send`` with ``wait: true``, i.e.
   until Bob's cumulative ack (the delivery receipt) is back at Alice (Bob's ack is delayed
   by ``ACK_DELAY`` = 50 ms to batch bursts).
3. **Throughput** (``--messages`` messages of ``--size`` bytes): queued through per-message
   ``message.send`` RPCs (``--concurrency`` in flight), or with ``--batch B`` through
   ``message.send_batch`` calls of B messages on one pipelined connection (``--concurrency``
   batches in flight; the API's fast path), while Bob drains with
   ``message.receive``; rate until Bob has all of them (checked exactly once, and in order
   when ``--concurrency`` is 1), and until Alice's outbox is empty (all acknowledged); and
   each daemon's CPU time per message meanwhile (from ``/proc``; it moves much less with
   the load of a shared machine than the rates do).
4. **File transfer** (``--file-mb``): only if the daemon has a ``file.send`` method;
   otherwise prints ``file transfer: not available in this build``.
5. **Offline delivery** (``--offline`` messages of ``--offline-size`` bytes): Bob's daemon is
   stopped, Alice queues the messages (they go into DHT mailbox slots), Alice stops, Bob
   starts again and fetches them from the DHT: from the start of Bob's new daemon process to
   his API reporting ``joined``, and to the last message returned by ``message.receive``.
   The package's bytecode is compiled first, as an installed package's is (under
   ``PYTHONDONTWRITEBYTECODE`` every start would compile all of ``dhtchat`` again).
6. **Ratchet** (``--ratchet`` messages of ``--size`` bytes, in this process):
   encrypt + decrypt with :class:`dhtchat.messaging.session.Conversation` one way (symmetric
   chain steps only) and alternating directions (a DH ratchet step per message), plus one way
   with the ``to_json`` state save the messenger does per message.

References measured in the same run, for the ``dhtchat / raw`` ratios:

* raw aiortc: one process, two ``RTCPeerConnection``s on 127.0.0.1, one data channel with the
  daemon's options (reliable, ordered), ``--size``-byte messages sent back to back;
* raw ``doubleratchet``: the library with the same recommended primitives (X25519, HKDF,
  separate HMACs, AES-256-CBC + HMAC, SHA-256), without the X3DH/Conversation wrapper;
* raw RPC: sequential ``status`` calls over the daemon's Unix socket (the floor of any
  per-message RPC client).

Every process the script starts (a 16-node DHT, two daemons) is stopped at the end, also on
errors and Ctrl-C. ``--json OUT`` writes every number.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from doubleratchet import DoubleRatchet, Header  # noqa: E402
from doubleratchet.recommended import (  # noqa: E402
    HashFunction,
    aead_aes_hmac,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)

from dhtchat.app.rpc import METHOD_NOT_FOUND, RpcClient, RpcError, call  # noqa: E402
from dhtchat.messaging.session import Conversation, PrekeyStore  # noqa: E402
from dhtchat.net.webrtc import restrict_host_addresses  # noqa: E402
from tests.daemons import (  # noqa: E402
    DaemonProcess,
    DhtProcess,
    make_contacts,
    new_identity,
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def text_of(index: int, size: int) -> str:
    """A ``size``-byte ASCII text that starts with its index."""
    head = f"{index:08d} "
    return head + "x" * max(0, size - len(head))


# ---------------------------------------------------------------------------- daemons


class Pair:
    """A DHT and two daemons (Alice, Bob) that are accepted contacts."""

    def __init__(self, root: Path, dht_nodes: int) -> None:
        self.root = root
        self.dht: DhtProcess | None = None
        self.alice: DaemonProcess | None = None
        self.bob: DaemonProcess | None = None
        self.dht_nodes = dht_nodes
        self.alice_id = ""
        self.bob_id = ""

    def args(self, name: str) -> list[str]:
        assert self.dht is not None
        out = ["--port", "0", "--host", "127.0.0.1", "--ice-address", "127.0.0.1",
               "--name", name]
        for address in self.dht.bootstrap:
            out += ["--bootstrap", address]
        return out

    def start(self) -> None:
        self.dht = DhtProcess(self.dht_nodes)
        self.alice_id = new_identity(self.root / "alice")
        self.bob_id = new_identity(self.root / "bob")
        self.alice = DaemonProcess(self.root / "alice", self.args("Alice"))
        self.bob = DaemonProcess(self.root / "bob", self.args("Bob"))
        self.alice.wait_ready()
        self.bob.wait_ready()
        make_contacts(self.alice, self.alice_id, self.bob, self.bob_id)

    def restart_bob(self) -> None:
        assert self.bob is not None
        self.bob = DaemonProcess(self.bob.profile, self.args("Bob"))

    def stop(self) -> None:
        for daemon in (self.alice, self.bob):
            if daemon is not None:
                with contextlib.suppress(Exception):
                    daemon.stop()
        if self.dht is not None:
            with contextlib.suppress(Exception):
                self.dht.stop()


async def rpc(daemon: DaemonProcess, method: str, params: dict[str, Any] | None = None,
              timeout: float = 120.0) -> Any:
    return await call(daemon.profile / "daemon.sock", method, params or {}, timeout)


async def contact_status(daemon: DaemonProcess, user_id: str) -> str:
    rows = await rpc(daemon, "contact.list")
    row = next((r for r in rows if r["id"] == user_id), None)
    return str(row.get("status", "")) if row else ""


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float,
                   what: str, period: float = 0.2) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await predicate():
            return time.monotonic() - started
        await asyncio.sleep(period)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


async def ensure_connected(pair: Pair) -> None:
    """Wait for auto-connect (or ask for a connection) until both see the data channel."""
    assert pair.alice is not None and pair.bob is not None
    alice, bob = pair.alice, pair.bob

    async def connected() -> bool:
        return (await contact_status(alice, pair.bob_id) == "connected"
                and await contact_status(bob, pair.alice_id) == "connected")

    with contextlib.suppress(TimeoutError):
        await wait_for(connected, 15, "auto-connect")
        return
    with contextlib.suppress(RpcError):
        await rpc(alice, "connect", {"contact": pair.bob_id, "timeout": 30}, timeout=40)
    await wait_for(connected, 30, "connection")


async def drain(daemon: DaemonProcess) -> int:
    got = await rpc(daemon, "message.receive", {"wait": 0, "limit": 10000})
    return len(got)


# ---------------------------------------------------------------------------- stages


async def bench_latency(pair: Pair, samples: int, size: int) -> dict[str, Any]:
    """Send RPC -> Bob's long-poll returns, over one API connection per daemon (as a client
    that stays connected, e.g. the desktop client, talks to it)."""
    assert pair.alice is not None and pair.bob is not None
    alice = await RpcClient.open(pair.alice.profile / "daemon.sock")
    bob = await RpcClient.open(pair.bob.profile / "daemon.sock")
    times: list[float] = []
    wrong = 0
    try:
        for i in range(samples):
            text = text_of(i, size)
            receive = asyncio.ensure_future(bob.call("message.receive",
                                                     {"wait": 30, "limit": 10}, timeout=60))
            await asyncio.sleep(0.01)  # the long-poll is waiting in Bob's daemon
            started = time.perf_counter()
            await alice.call("message.send", {"to": pair.bob_id, "text": text})
            got = cast(list[dict[str, Any]], await receive)
            while not got:  # a wake-up without the message (should not happen)
                got = cast(list[dict[str, Any]], await bob.call(
                    "message.receive", {"wait": 30, "limit": 10}, timeout=60))
            times.append(time.perf_counter() - started)
            wrong += [m["text"] for m in got] != [text]
    finally:
        await alice.close()
        await bob.close()
    return {"samples": samples, "size": size, "p50_ms": percentile(times, 0.5) * 1000,
            "p95_ms": percentile(times, 0.95) * 1000, "mean_ms": sum(times) / len(times) * 1000,
            "max_ms": max(times) * 1000, "wrong": wrong}


async def bench_receipts(pair: Pair, samples: int, size: int) -> dict[str, Any]:
    assert pair.alice is not None and pair.bob is not None
    times: list[float] = []
    for i in range(samples):
        started = time.perf_counter()
        result = await rpc(pair.alice, "message.send",
                           {"to": pair.bob_id, "text": text_of(i, size), "wait": True,
                            "timeout": 60})
        times.append(time.perf_counter() - started)
        assert result["delivered"], result
    await drain(pair.bob)
    return {"samples": samples, "p50_ms": percentile(times, 0.5) * 1000,
            "p95_ms": percentile(times, 0.95) * 1000}


def cpu_seconds(daemon: DaemonProcess) -> float | None:
    """User + system CPU time of a daemon process so far (None where /proc is missing)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


async def bench_throughput(pair: Pair, count: int, size: int,
                           concurrency: int, batch: int = 0) -> dict[str, Any]:
    assert pair.alice is not None and pair.bob is not None
    alice, bob = pair.alice, pair.bob
    texts = [text_of(i, size) for i in range(count)]
    cpu_before = (cpu_seconds(alice), cpu_seconds(bob))
    received: list[dict[str, Any]] = []
    started = time.perf_counter()
    deadline = time.monotonic() + max(120.0, count / 5)

    marks: list[float] = []  # when a quarter, half, three quarters, all had arrived

    async def receiver() -> None:
        while len(received) < count and time.monotonic() < deadline:
            received.extend(await rpc(bob, "message.receive", {"wait": 5, "limit": 10000}))
            while len(marks) < 4 and len(received) >= count * (len(marks) + 1) / 4:
                marks.append(time.perf_counter() - started)

    async def sender(first: int) -> None:
        for i in range(first, count, concurrency):
            await rpc(alice, "message.send", {"to": pair.bob_id, "text": texts[i]})

    async def batches() -> None:
        client = await RpcClient.open(alice.profile / "daemon.sock")
        try:
            chunks = [texts[i:i + batch] for i in range(0, count, batch)]
            in_flight: set[asyncio.Future[Any]] = set()
            for chunk in chunks:  # sent in order; at most `concurrency` await their reply
                if len(in_flight) >= concurrency:
                    _, in_flight = await asyncio.wait(in_flight,
                                                      return_when=asyncio.FIRST_COMPLETED)
                in_flight.add(asyncio.ensure_future(client.call(
                    "message.send_batch",
                    {"messages": [{"to": pair.bob_id, "text": text} for text in chunk]})))
                await asyncio.sleep(0)  # the request line is written before the next one
            for result in await asyncio.gather(*in_flight):
                refused = [r for r in result if "error" in r]
                assert not refused, refused[:3]
        finally:
            await client.close()

    receiving = asyncio.ensure_future(receiver())
    if batch:
        await batches()
    else:
        await asyncio.gather(*(sender(k) for k in range(concurrency)))
    queued = time.perf_counter() - started
    await receiving
    all_received = time.perf_counter() - started

    async def acked() -> bool:
        return int((await rpc(alice, "status"))["outbox"]) == 0

    await wait_for(acked, 120, "acknowledgement of every message", period=0.05)
    all_acked = time.perf_counter() - started
    cpu_after = (cpu_seconds(alice), cpu_seconds(bob))
    # CPU per message of each daemon: what the messaging path costs, whatever else the
    # shared machine runs (the rates above move with the load, this much less).
    cpu_ms = [None if a is None or b is None else (b - a) * 1000 / count
              for a, b in zip(cpu_before, cpu_after, strict=True)]
    got = [m["text"] for m in received]
    exactly_once = len(got) == count and set(got) == set(texts)
    in_order = got == texts
    return {"messages": count, "size": size, "concurrency": concurrency, "batch": batch,
            "queued_s": queued, "received_s": all_received, "acked_s": all_acked,
            "queue_rate": count / queued, "rate": count / all_received,
            "acked_rate": count / all_acked, "exactly_once": exactly_once,
            "in_order": in_order, "received": len(got), "cpu_ms_per_message": cpu_ms,
            "quarter_rates": [count / 4 / (b - a) if b > a else None
                              for a, b in zip([0.0, *marks], marks, strict=False)]}


async def bench_rpc_floor(pair: Pair, seconds: float = 2.0) -> dict[str, Any]:
    assert pair.alice is not None
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        await rpc(pair.alice, "status")
        calls += 1
    elapsed = time.perf_counter() - started
    return {"calls": calls, "rate": calls / elapsed}


async def file_send_available(pair: Pair) -> bool:
    assert pair.alice is not None
    try:
        await rpc(pair.alice, "file.send", {})
    except RpcError as exc:
        return exc.code != METHOD_NOT_FOUND
    return True


async def bench_file(pair: Pair, megabytes: int, tmp: Path) -> dict[str, Any]:
    """Send a file of random bytes and fetch it on Bob's side (API of the file issue)."""
    assert pair.alice is not None and pair.bob is not None
    path = tmp / "bench-file.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as sink:
        for _ in range(megabytes):
            chunk = secrets.token_bytes(1 << 20)
            digest.update(chunk)
            sink.write(chunk)
    size = megabytes << 20
    with contextlib.suppress(Exception):  # Bob accepts it unasked (files over 1 MiB wait)
        await rpc(pair.bob, "file.limits", {"auto_accept": size})
    started = time.perf_counter()
    result = await rpc(pair.alice, "file.send",
                       {"to": pair.bob_id, "path": str(path), "wait": True, "timeout": 3600},
                       timeout=3700)
    elapsed = time.perf_counter() - started
    out: dict[str, Any] = {"megabytes": megabytes, "seconds": elapsed,
                           "mb_per_s": size / 1e6 / elapsed, "verified": None}
    with contextlib.suppress(Exception):
        file_id = result.get("id") if isinstance(result, dict) else None
        listing = await rpc(pair.bob, "file.list")
        if file_id is None and listing:
            file_id = listing[-1].get("id")
        dest = tmp / "bench-file.received"
        await rpc(pair.bob, "file.get", {"id": file_id, "dest": str(dest)}, timeout=600)
        received = hashlib.sha256()
        with open(dest, "rb") as inp:
            while block := inp.read(1 << 20):
                received.update(block)
        out["verified"] = received.digest() == digest.digest()
    return out


async def bench_offline(pair: Pair, count: int, size: int) -> dict[str, Any]:
    """Bob offline, Alice queues ``count`` messages into the mailbox and stops; Bob returns."""
    assert pair.alice is not None and pair.bob is not None
    alice = pair.alice
    await drain(pair.bob)
    pair.bob.stop()

    async def bob_offline() -> bool:
        return await contact_status(alice, pair.bob_id) == "offline"

    await wait_for(bob_offline, 60, "Alice seeing Bob offline")
    texts = [text_of(i, size) for i in range(count)]
    started = time.perf_counter()
    for text in texts:
        await rpc(alice, "message.send", {"to": pair.bob_id, "text": text})
    queued = time.perf_counter() - started

    async def all_in_mailbox() -> bool:
        return int((await rpc(alice, "status"))["outbox_in_mailbox"]) >= count

    await wait_for(all_in_mailbox, 120, "messages in the DHT mailbox", period=0.05)
    in_mailbox = time.perf_counter() - started
    # What pip does on install: the restart below measures the daemon, not the compiler.
    compiled = await asyncio.to_thread(compileall.compile_dir, str(ROOT / "dhtchat"),
                                       quiet=1)
    await asyncio.sleep(2)  # the last puts complete (as the integration test does)
    alice.stop()
    restarted = time.perf_counter()
    pair.restart_bob()
    assert pair.bob is not None
    bob = pair.bob
    await asyncio.to_thread(bob.wait_ready)
    ready = time.perf_counter() - restarted
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 300
    while len(got) < count and time.monotonic() < deadline:
        got += await rpc(bob, "message.receive", {"wait": 5, "limit": 10000})
    fetched = time.perf_counter() - restarted
    return {"messages": count, "size": size, "queued_s": queued, "in_mailbox_s": in_mailbox,
            "mailbox_put_rate": count / in_mailbox, "bob_ready_s": ready,
            "fetched_s": fetched, "fetch_rate_after_ready": count / max(1e-9, fetched - ready),
            "received": len(got), "in_order": [m["text"] for m in got] == texts,
            "bytecode_compiled": bool(compiled)}


# ---------------------------------------------------------------------------- in-process


async def bench_ratchet(count: int, size: int) -> dict[str, Any]:
    a_store = PrekeyStore.create(secrets.token_bytes(32), time.time())
    b_store = PrekeyStore.create(secrets.token_bytes(32), time.time())
    a = Conversation(a_store, a_store.identity_key, b_store.identity_key)
    b = Conversation(b_store, b_store.identity_key, a_store.identity_key)
    # Establish the session both ways, so every header below is a plain ratchet header.
    await b.decrypt(await a.encrypt(b"hello", b_store.bundle_for(a_store.identity_key)))
    await a.decrypt(await b.encrypt(b"hello", None))
    message = secrets.token_bytes(size)
    out: dict[str, Any] = {"messages": count, "size": size}

    started = time.perf_counter()
    for _ in range(count):
        assert await b.decrypt(await a.encrypt(message, None)) == message
    out["one_way"] = count / (time.perf_counter() - started)

    started = time.perf_counter()
    for i in range(count):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        assert await receiver.decrypt(await sender.encrypt(message, None)) == message
    out["alternating"] = count / (time.perf_counter() - started)

    started = time.perf_counter()
    state_bytes = 0
    for _ in range(count):
        wire = await a.encrypt(message, None)
        state_bytes = len(a.to_json())
        await b.decrypt(wire)
        b.to_json()
    out["one_way_saved"] = count / (time.perf_counter() - started)
    out["state_json_bytes"] = state_bytes
    out["wire_overhead"] = len(await a.encrypt(message, None)) - size
    return out


# The raw reference: the library with the recommended primitives, no X3DH / Conversation.


class _RawRootKDF(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return b"bench/root"


class _RawMessageKDF(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256


class _RawAEAD(aead_aes_hmac.AEAD):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return b"bench/aead"


class _RawRatchet(DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        return (associated_data + header.ratchet_pub
                + header.previous_sending_chain_length.to_bytes(4, "big")
                + header.sending_chain_length.to_bytes(4, "big"))


async def bench_raw_ratchet(count: int, size: int) -> dict[str, Any]:
    args = (diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet, _RawRootKDF,
            _RawMessageKDF, b"\x02\x01", 1000, 1000, _RawAEAD)
    bob_key = X25519PrivateKey.generate()
    bob_priv = bob_key.private_bytes_raw()
    bob_pub = bob_key.public_key().public_bytes_raw()
    secret, ad = secrets.token_bytes(32), secrets.token_bytes(66)
    a, first = await _RawRatchet.encrypt_initial_message(*args, secret, bob_pub, b"hello", ad)
    b, _ = await _RawRatchet.decrypt_initial_message(*args, secret, bob_priv, first, ad)
    await a.decrypt_message(await b.encrypt_message(b"hello", ad), ad)
    message = secrets.token_bytes(size)
    out: dict[str, Any] = {"messages": count, "size": size}
    started = time.perf_counter()
    for _ in range(count):
        await b.decrypt_message(await a.encrypt_message(message, ad), ad)
    out["one_way"] = count / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(count):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        await receiver.decrypt_message(await sender.encrypt_message(message, ad), ad)
    out["alternating"] = count / (time.perf_counter() - started)
    return out


async def bench_raw_datachannel(count: int, size: int) -> dict[str, Any]:
    """Two aiortc peers in this process on 127.0.0.1; ``count`` messages back to back."""
    restrict_host_addresses(["127.0.0.1"])
    config = RTCConfiguration(iceServers=[])
    pc1, pc2 = RTCPeerConnection(config), RTCPeerConnection(config)
    try:
        channel = pc1.createDataChannel("bench")
        opened, done = asyncio.Event(), asyncio.Event()
        received = 0

        @channel.on("open")
        def on_open() -> None:
            opened.set()

        @pc2.on("datachannel")
        def on_datachannel(remote: RTCDataChannel) -> None:
            @remote.on("message")
            def on_message(_: Any) -> None:
                nonlocal received
                received += 1
                if received == count:
                    done.set()

        await pc1.setLocalDescription(await pc1.createOffer())
        await pc2.setRemoteDescription(pc1.localDescription)
        await pc2.setLocalDescription(await pc2.createAnswer())
        await pc1.setRemoteDescription(pc2.localDescription)
        await asyncio.wait_for(opened.wait(), 30)
        message = secrets.token_bytes(size)
        started = time.perf_counter()
        for _ in range(count):
            channel.send(message)
        await asyncio.wait_for(done.wait(), max(60.0, count / 100))
        elapsed = time.perf_counter() - started
    finally:
        await pc1.close()
        await pc2.close()
        restrict_host_addresses(None)
    return {"messages": count, "size": size, "rate": count / elapsed}


# ---------------------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}x" if a and b else "-"


def report(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []
    lat = results.get("latency")
    if lat:
        rows.append((f"latency p50 ({lat['size']} B, send RPC -> receive returns)",
                     f"{lat['p50_ms']:.1f} ms", "", ""))
        rows.append(("latency p95", f"{lat['p95_ms']:.1f} ms", "", ""))
        rows.append(("latency mean / max",
                     f"{lat['mean_ms']:.1f} / {lat['max_ms']:.1f} ms", "", ""))
    rec = results.get("receipts")
    if rec:
        rows.append(("send --wait (delivery receipt back) p50 / p95",
                     f"{rec['p50_ms']:.1f} / {rec['p95_ms']:.1f} ms", "", ""))
    raw_dc = (results.get("raw_datachannel") or {}).get("rate")
    thr = results.get("throughput")
    if thr:
        how = (f"send_batch of {thr['batch']}, {thr['concurrency']} in flight" if thr["batch"]
               else f"{thr['concurrency']} RPC in flight")
        rows.append((f"messages/s, {thr['size']} B, all received "
                     f"({thr['messages']} msgs, {how})",
                     f"{thr['rate']:.0f}", f"{raw_dc:.0f}" if raw_dc else "-",
                     ratio(thr["rate"], raw_dc)))
        rows.append(("messages/s, queued (send RPCs only)", f"{thr['queue_rate']:.0f}", "", ""))
        quarters = " / ".join(f"{r:.0f}" if r else "-" for r in thr["quarter_rates"])
        rows.append(("messages/s received per quarter of the run", quarters, "", ""))
        rows.append(("messages/s, all acknowledged (outbox empty)",
                     f"{thr['acked_rate']:.0f}", "", ""))
        if None not in thr["cpu_ms_per_message"]:
            rows.append(("daemon CPU ms per message, Alice / Bob (throughput run)",
                         " / ".join(f"{ms:.2f}" for ms in thr["cpu_ms_per_message"]), "", ""))
    rpc_floor = results.get("rpc_floor")
    if rpc_floor:
        rows.append(("RPC calls/s (sequential `status`, floor of per-message RPC)",
                     f"{rpc_floor['rate']:.0f}", "", ""))
    fil = results.get("file")
    if fil:
        rows.append((f"file transfer MB/s ({fil['megabytes']} MiB, send --wait)",
                     f"{fil['mb_per_s']:.2f}", "", f"verified={fil['verified']}"))
    off = results.get("offline")
    if off:
        rows.append((f"offline: {off['messages']} x {off['size']} B into mailboxes, msgs/s",
                     f"{off['mailbox_put_rate']:.1f}", "", ""))
        rows.append(("offline: Bob restart -> API ready", f"{off['bob_ready_s']:.1f} s", "",
                     ""))
        rows.append(("offline: Bob restart -> all fetched", f"{off['fetched_s']:.1f} s", "",
                     f"{off['received']} recv, order={off['in_order']}"))
    rat, raw = results.get("ratchet"), results.get("raw_ratchet") or {}
    if rat:
        rows.append((f"ratchet encrypt+decrypt/s, {rat['size']} B, one way",
                     f"{rat['one_way']:.0f}", f"{raw.get('one_way', 0):.0f}",
                     ratio(rat["one_way"], raw.get("one_way"))))
        rows.append(("ratchet encrypt+decrypt/s, alternating (DH step each)",
                     f"{rat['alternating']:.0f}", f"{raw.get('alternating', 0):.0f}",
                     ratio(rat["alternating"], raw.get("alternating"))))
        rows.append(("ratchet one way + to_json of both states per message",
                     f"{rat['one_way_saved']:.0f}", "", ""))
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'metric':<{width}}  {'dhtchat':>14}  {'raw':>8}  dhtchat / raw")
    print("-" * (width + 40))
    for name, value, raw_value, rat_text in rows:
        print(f"{name:<{width}}  {value:>14}  {raw_value:>8}  {rat_text}")
    if results.get("file_unavailable"):
        print("file transfer: not available in this build")
    if thr:
        print(f"throughput check: exactly once={thr['exactly_once']}, "
              f"in order={thr['in_order']} ({thr['received']} received)")
    if lat and lat["wrong"]:
        print(f"latency check: {lat['wrong']} samples returned something else")
    print("raw = aiortc data channel in one process (messages/s) / doubleratchet library "
          "without the X3DH wrapper (ratchet)")


async def run(options: argparse.Namespace, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {
        "config": vars(options),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    if options.ratchet:
        log(f"ratchet: {options.ratchet} x {options.size} B in this process")
        results["ratchet"] = await bench_ratchet(options.ratchet, options.size)
        results["raw_ratchet"] = await bench_raw_ratchet(options.ratchet, options.size)
    if options.raw_messages:
        log(f"raw aiortc data channel: {options.raw_messages} x {options.size} B")
        results["raw_datachannel"] = await bench_raw_datachannel(options.raw_messages,
                                                                 options.size)
    if not (options.latency or options.receipts or options.messages or options.offline
            or options.file_mb):
        return results
    pair = Pair(root, options.dht_nodes)
    try:
        log(f"starting a {options.dht_nodes}-node DHT and two daemons")
        await asyncio.to_thread(pair.start)
        await ensure_connected(pair)
        assert pair.alice is not None and pair.bob is not None
        warm = await rpc(pair.alice, "message.send",
                         {"to": pair.bob_id, "text": "warm-up", "wait": True, "timeout": 60})
        assert warm["delivered"]
        await drain(pair.bob)
        if options.latency:
            log(f"latency: {options.latency} samples")
            results["latency"] = await bench_latency(pair, options.latency, options.size)
        if options.receipts:
            log(f"receipts: {options.receipts} samples")
            results["receipts"] = await bench_receipts(pair, options.receipts, options.size)
        if options.messages:
            log(f"throughput: {options.messages} messages")
            results["throughput"] = await bench_throughput(pair, options.messages, options.size,
                                                           options.concurrency, options.batch)
            results["rpc_floor"] = await bench_rpc_floor(pair)
        if options.file_mb:
            if await file_send_available(pair):
                log(f"file: {options.file_mb} MiB")
                try:
                    results["file"] = await bench_file(pair, options.file_mb, root)
                except (RpcError, OSError, TimeoutError) as exc:
                    results["file_error"] = str(exc)
                    log(f"file transfer failed: {exc}")
            else:
                results["file_unavailable"] = True
        if options.offline:
            log(f"offline: {options.offline} messages through the DHT mailbox")
            results["offline"] = await bench_offline(pair, options.offline, options.offline_size)
    except BaseException:
        for daemon in (pair.alice, pair.bob):
            if daemon is not None:
                log(f"--- {daemon.profile.name} log tail ---\n{daemon.log()[-3000:]}")
        raise
    finally:
        await asyncio.to_thread(pair.stop)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def bounded(low: int, high: int) -> Callable[[str], int]:
        def parse(text: str) -> int:
            value = int(text)
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"must be in {low}..{high}")
            return value
        return parse

    parser.add_argument("--latency", type=bounded(0, 100000), default=200,
                        help="latency samples (default 200)")
    parser.add_argument("--receipts", type=bounded(0, 100000), default=50,
                        help="send --wait samples (default 50)")
    parser.add_argument("--messages", type=bounded(0, 1000000), default=2000,
                        help="messages for the throughput run (default 2000)")
    parser.add_argument("--concurrency", type=bounded(1, 64), default=1,
                        help="message.send RPCs in flight (default 1, like a CLI loop)")
    parser.add_argument("--batch", type=bounded(0, 1000), default=0,
                        help="send through message.send_batch calls of this many messages "
                             "on one connection (default 0: one message.send RPC each)")
    parser.add_argument("--size", type=bounded(1, 65536), default=1024,
                        help="message size in bytes (default 1024)")
    parser.add_argument("--ratchet", type=bounded(0, 1000000), default=2000,
                        help="messages per ratchet measurement (default 2000)")
    parser.add_argument("--raw-messages", type=bounded(0, 1000000), default=2000,
                        help="messages through the raw aiortc data channel (default 2000)")
    parser.add_argument("--file-mb", type=bounded(0, 100000), default=20,
                        help="file size in MiB if file.send exists (default 20; 0 skips)")
    parser.add_argument("--offline", type=bounded(0, 512), default=50,
                        help="messages delivered through the DHT mailbox (default 50)")
    parser.add_argument("--offline-size", type=bounded(1, 700), default=200,
                        help="bytes per offline message (default 200; a mailbox slot holds "
                             "one record of at most 1000 bytes)")
    parser.add_argument("--dht-nodes", type=bounded(4, 256), default=16,
                        help="nodes of the loopback DHT (default 16)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dhtchat-bench-"))
    log(f"work directory {root} (removed at the end)")
    started = time.monotonic()
    try:
        results = asyncio.run(run(options, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["wall_s"] = time.monotonic() - started
    report(results)
    print(f"total wall time {results['wall_s']:.0f} s on {os.cpu_count()} CPUs")
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
