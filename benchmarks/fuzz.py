# E402/PLC0415: atheris must instrument dhtchat before it is imported (child process only);
# SIM105: every target spells out which exception it accepts as the parser's own.
# ruff: noqa: E402, SIM105, PLC0415
"""Coverage-guided fuzzing of every parser dhtchat owns that reads network or file input.

Each target feeds one input to one parser. The parser may reject it only with its own
documented error type (``RemoteProtocolError`` and subclasses for the core, ``SessionError``
for the ratchet, ``KeystoreError`` for the identity file, an error *reply* for the RPC
server); any other exception is a failure. Targets are seeded from real encoded samples.

    python benchmarks/fuzz.py --inputs 1000000            # every target, one after the other
    python benchmarks/fuzz.py --target datagram --inputs 50000
    python benchmarks/fuzz.py --engine random --inputs 3000   # no atheris: a mutation loop

The atheris engine runs each target in its own child process (libFuzzer ends its process
when ``-runs`` is reached), one at a time; failures are counted without stopping the run
and the first few tracebacks are printed. The ``random`` engine runs in this process with a
seeded mutator (no coverage feedback); CI uses it (tests/test_fuzz_targets.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if os.environ.get("DHTCHAT_FUZZ_INSTRUMENT") == "1":  # the atheris child: instrument us
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["dhtchat"]):
        import dhtchat.app.files
        import dhtchat.app.groups
        import dhtchat.app.keystore
        import dhtchat.app.messenger
        import dhtchat.app.rpc
        import dhtchat.core.calls
        import dhtchat.core.contacts
        import dhtchat.core.node
        import dhtchat.core.onion
        import dhtchat.core.onion_cells
        import dhtchat.core.onion_client
        import dhtchat.core.records
        import dhtchat.core.stun
        import dhtchat.core.wire
        import dhtchat.messaging.mailbox
        import dhtchat.messaging.session  # noqa: F401

import msgspec

from dhtchat.app.events import EventLog
from dhtchat.app.files import FileTransfers, safe_file_name, seal_chunk
from dhtchat.app.groups import new_group, open_state, sign_state
from dhtchat.app.keystore import KeystoreError, load_identity_document, open_identity, seal_identity
from dhtchat.app.rpc import RpcError, RpcServer
from dhtchat.core.calls import ACTIONS, CallMachine
from dhtchat.core.contacts import (
    Pair,
    make_contact_request,
    make_presence,
    make_signal,
    open_contact_request,
    open_presence,
    open_signal,
    sdp_security,
)
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.lan import Announce, LanDiscovery, decode_announce, encode_announce
from dhtchat.core.node import DhtNode
from dhtchat.core.onion import (
    ExitRequest,
    Extend,
    OnionConfig,
    OnionRelay,
    Request,
    parse_backward,
    parse_forward,
)
from dhtchat.core.onion import frame as onion_frame
from dhtchat.core.onion_cells import decode_cell, onion_secret_key, x25519_public
from dhtchat.core.onion_client import OnionClient, RelayInfo
from dhtchat.core.records import Record, make_app_record, validate_record
from dhtchat.core.stun import answer_binding_request, binding_request, parse_binding_response
from dhtchat.core.wire import FindNode, GetValues, Ping, Store, decode, encode_request
from dhtchat.messaging.mailbox import Part
from dhtchat.messaging.payload import Frame, Payload, pack_frames, unpack_frames
from dhtchat.messaging.session import (
    Conversation,
    PrekeyStore,
    SessionError,
    is_initial_message,
    parse_bundle,
)
from dhtchat.store.history import History

NOW = 1_700_000_000.0
_encoder = msgspec.msgpack.Encoder()
_MSGSPEC_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def _ident(n: int) -> SigningIdentity:
    return SigningIdentity.from_seed(bytes([n]) * 32)


ALICE, BOB = _ident(1), _ident(2)
PAIR_BOB = Pair.derive(BOB, ALICE.public_key)  # Bob reading what Alice sealed
PAIR_ALICE = Pair.derive(ALICE, BOB.public_key)
_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP "
        "webrtc-datachannel\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n")


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never really suspends (no I/O) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended: the target needs an event loop")


# ------------------------------------------------------------------------------ targets


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: list[bytes] = field(default_factory=list)


def _t_datagram(data: bytes) -> None:
    try:
        decode(data)
    except RemoteProtocolError:
        pass


_NODE: list[DhtNode] = []


def _t_node(data: bytes) -> None:
    """The whole receive path of a DHT node: it must never raise, whatever arrives."""
    if not _NODE:
        _NODE.append(DhtNode(_ident(9), rng=random.Random(1), now=NOW))
    node = _NODE[0]
    node.receive_datagram(data, ("100.64.0.1", 4000), NOW)
    node.datagrams_to_send(NOW)
    while node.next_event() is not None:
        pass


_record_decoder = msgspec.msgpack.Decoder(Record)


def _t_record(data: bytes) -> None:
    try:
        record = _record_decoder.decode(data)  # the Record schema the wire decoder uses
    except _MSGSPEC_ERRORS:
        return
    try:
        validate_record(record, record.key, NOW)
    except RemoteProtocolError:
        pass


def _t_contact_request(data: bytes) -> None:
    """A record in my inbox: its value (proof of work, sealed box) is the fuzzed part."""
    record = Record(8, ALICE.public_key, BOB.public_key, b"", 0, int(NOW) + 600, data[:1200],
                    bytes(64))
    try:
        open_contact_request(BOB, record, NOW, pow_bits=0)
    except RemoteProtocolError:
        pass


def _t_presence(data: bytes) -> None:
    try:
        open_presence(PAIR_BOB, 1, data)
    except RemoteProtocolError:
        pass


def _t_signal(data: bytes) -> None:
    try:
        open_signal(PAIR_BOB, data)
    except RemoteProtocolError:
        pass


def _t_sdp(data: bytes) -> None:
    try:
        sdp_security(data.decode("utf-8", errors="replace"))
    except RemoteProtocolError:
        pass


def _t_stun(data: bytes) -> None:
    try:
        parse_binding_response(data, data[8:20].ljust(12, b"\0"))
    except RemoteProtocolError:
        pass
    answer_binding_request(data, ("192.0.2.1", 3478))


_part_decoder = msgspec.msgpack.Decoder(Part)
_frame_decoder = msgspec.msgpack.Decoder(Frame)
_payload_decoder = msgspec.msgpack.Decoder(Payload)


def _t_mailbox(data: bytes) -> None:
    """A mailbox slot (sealed Part), then the Part's frame, a data-channel frame batch and the
    ratchet header inside."""
    record = Record(12, PAIR_ALICE.channel_signer(_purpose("MAILBOX"), ALICE.public_key,
                                                  0).public_key,
                    b"", b"", 1, int(NOW) + 600, data[:1100], bytes(64))
    try:
        PAIR_BOB.open_record(_purpose("MAILBOX"), 0, record)
    except RemoteProtocolError:
        pass
    for decoder in (_part_decoder, _frame_decoder):
        try:
            decoded = decoder.decode(data)
        except _MSGSPEC_ERRORS:
            continue
        if isinstance(decoded, Frame):
            is_initial_message(decoded.body)
    try:
        frames = unpack_frames(data)
    except _MSGSPEC_ERRORS:
        return
    for frame in frames:
        with contextlib.suppress(*_MSGSPEC_ERRORS):
            is_initial_message(_frame_decoder.decode(frame).body)


def _purpose(name: str) -> Any:
    from dhtchat.core.contacts import Purpose
    return Purpose[name]


def _t_payload(data: bytes) -> None:
    """The decrypted payload (messages, acks, file offers, call signals, group control)."""
    try:
        payload = _payload_decoder.decode(data)
    except _MSGSPEC_ERRORS:
        return
    if payload.kind == "file":
        safe_file_name(payload.name)
    if payload.kind == "call" and payload.call_action:
        try:
            machine = CallMachine(payload.call_id or bytes(16), "incoming", NOW,
                                  nonce=bytes(16), peer_commitment=payload.commitment)
            machine.receive(payload.call_action, NOW, nonce=payload.nonce)
            machine.receive_reveal(payload.nonce, NOW)
        except RemoteProtocolError:
            pass
    if payload.group:
        try:
            open_state(payload.group, payload.author)
        except RemoteProtocolError:
            pass


def _t_group(data: bytes) -> None:
    try:
        open_state(data, ALICE.public_key)
    except RemoteProtocolError:
        pass


def _t_call(data: bytes) -> None:
    """A sequence of call actions from the contact, against both directions of a call."""
    actions = sorted(ACTIONS)
    for direction in ("incoming", "outgoing"):
        machine = CallMachine(bytes(16), direction, NOW, nonce=bytes(16),
                              peer_commitment=bytes(32))
        for i, byte in enumerate(data[:32]):
            action = actions[byte % len(actions)] if byte < 200 else data[i:i + 4].decode(
                "utf-8", errors="replace")
            try:
                if byte % 7 == 0:  # the caller's reveal, right or wrong
                    machine.receive_reveal(data[i:i + 16], NOW + i)
                else:
                    machine.receive(action, NOW + i, nonce=data[i:i + 16])
            except RemoteProtocolError:
                pass
            machine.tick(NOW + i)


_PREKEYS: list[PrekeyStore] = []


def _t_session(data: bytes) -> None:
    """A ratchet message and a prekey bundle as they arrive (frame body / DHT record)."""
    try:
        parse_bundle(data)
    except SessionError:
        pass
    if not _PREKEYS:
        _PREKEYS.append(PrekeyStore.create(BOB.seed, time.time()))
    convo = Conversation(_PREKEYS[0], BOB.public_key, ALICE.public_key)
    try:
        _run(convo.decrypt(data))
    except SessionError:
        pass


class _FileDaemon:
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()


class _FileMessenger:
    """What FileTransfers needs of its messenger to receive chunks: history and spawning."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.daemon = _FileDaemon()


_FILES: list[FileTransfers] = []
_FILE_ID, _FILE_KEY = bytes(range(16)), bytes(32)


def _files() -> FileTransfers:
    if not _FILES:
        root = Path(tempfile.mkdtemp(prefix="dhtchat-fuzz-"))
        history = History(root / "history.db", bytes(32))
        messenger = _FileMessenger(history)
        files = FileTransfers(messenger, root / "files",  # type: ignore[arg-type]
                              tasks=messenger.daemon, channel=lambda contact: None,
                              events=EventLog())  # not opened: events go nowhere
        with history.transaction() as db:
            files.on_offer(db, ALICE.public_key, _FILE_ID, "../x.bin", 1 << 30, bytes(32),
                           _FILE_KEY)
        # FileTransfers.request creates the partial file before asking for the chunks
        (root / "files" / "partial" / _FILE_ID.hex()).touch()
        _FILES.append(files)
    return _FILES[0]


def _t_file_chunk(data: bytes) -> None:
    _files().on_chunk(ALICE.public_key, data)


class _Handlers(dict[str, Any]):
    pass


async def _echo(params: dict[str, Any]) -> Any:
    return params


async def _strict(params: dict[str, Any]) -> Any:
    if not isinstance(params.get("contact"), str):
        raise RpcError(-32602, "contact must be a string")
    return {"ok": True}


_RPC = RpcServer(Path("/nonexistent/rpc.sock"), {"echo": _echo, "send": _strict})


def _t_rpc(data: bytes) -> None:
    """One request line on the daemon's socket: always a reply, never an exception."""
    response, _reply = _run(_RPC.handle_line(data))
    if response is not None:
        json.dumps(response)  # the reply must serialize


_ID_PATH: list[Path] = []


_LAN: list[LanDiscovery] = []


def _t_lan_announce(data: bytes) -> None:
    """A LAN announce, parsed alone and through the discovery machine (from a local source,
    so it gets past the address checks): a RemoteProtocolError or a verdict, nothing else."""
    try:
        decode_announce(data)
    except RemoteProtocolError:
        pass
    if not _LAN:
        _LAN.append(LanDiscovery(bytes(32), 4000, bytes(8), NOW))
    _LAN[0].receive(data, ("192.168.1.20", 6767), NOW)


_ONION: list[tuple[OnionRelay, OnionClient, list[bytes]]] = []
_ONION_CLIENT, _ONION_RELAY = ("100.64.0.7", 5000), ("100.65.0.1", 4000)


def _onion() -> tuple[OnionRelay, OnionClient, list[bytes]]:
    """A relay and a client with a one-hop path through it, and real cells of both ways."""
    if not _ONION:
        config = OnionConfig(cell_rate_per_subnet=1e9, cell_burst_per_subnet=1e12,
                             create_rate_per_subnet=1e9, create_burst_per_subnet=1e12)
        secret = onion_secret_key(bytes([7]) * 32)
        relay = OnionRelay(secret, b"r" * 32, rng=random.Random(1), now=NOW, config=config)
        client = OnionClient(rng=random.Random(2), now=NOW, config=config)
        cells: list[bytes] = []

        def pump() -> None:
            for data, _ in client.datagrams_to_send(NOW):
                cells.append(data)
                relay.receive_datagram(data, _ONION_CLIENT, NOW)
            while (event := relay.next_event()) is not None:
                if isinstance(event, ExitRequest):
                    relay.respond(event.circuit, event.request_id, b"reply", NOW)
            for data, _ in relay.datagrams_to_send(NOW):
                cells.append(data)
                client.receive_datagram(data, _ONION_RELAY, NOW)

        client.build_path(NOW, [RelayInfo(b"r" * 32, _ONION_RELAY, x25519_public(secret))])
        pump()
        client.request(b"get", NOW)
        pump()
        _ONION.append((relay, client, cells))
    return _ONION[0]


def _t_onion(data: bytes) -> None:
    """An onion cell: parsed alone, then through a relay holding a circuit (from the client's
    leg) and through a client holding a path (from the relay): never raises. The commands
    inside the layers (behind an AEAD tag the fuzzer cannot forge) are parsed directly."""
    for parse in (decode_cell, parse_forward, parse_backward):
        try:
            parse(data)
        except RemoteProtocolError:
            pass
    relay, client, _ = _onion()
    relay.receive_datagram(data, _ONION_CLIENT, NOW)
    client.receive_datagram(data, _ONION_RELAY, NOW)
    for machine in (relay, client):
        machine.datagrams_to_send(NOW)
        while machine.next_event() is not None:
            pass


def _t_identity(data: bytes) -> None:
    if not _ID_PATH:
        _ID_PATH.append(Path(tempfile.mkdtemp(prefix="dhtchat-fuzz-id-")) / "identity.json")
    path = _ID_PATH[0]
    path.write_bytes(data)
    try:
        doc = load_identity_document(path)
        open_identity(doc, None)
    except KeystoreError:
        pass


# ------------------------------------------------------------------------------ seeds


def _seeds() -> dict[str, list[bytes]]:
    signer = _ident(5)
    rec = make_app_record(signer, "k", b"hello", seq=1, expires=int(NOW) + 600)
    datagrams = [
        encode_request(b"t" * 8, signer.public_key, 0, b"", Ping(), 400),
        encode_request(b"u" * 8, signer.public_key, 0, b"", FindNode(bytes(32)), 0),
        encode_request(b"v" * 8, signer.public_key, 0, b"tok", GetValues(rec.key), 0),
        encode_request(b"w" * 8, signer.public_key, 0, b"tok", Store(rec), 0),
    ]
    counter = iter(range(1, 1 << 30))

    def rnd(n: int) -> bytes:
        return bytes([next(counter) % 256]) * n

    request = make_contact_request(ALICE, BOB.public_key, name="alice", message="hi",
                                   now=NOW, random_bytes=rnd, pow_bits=0)
    presence = make_presence(ALICE, PAIR_ALICE, 1, bytes(16), int(NOW), False)
    offer = make_signal(ALICE, BOB.public_key, "offer", bytes(16), int(NOW * 1000), _SDP)
    bye = make_signal(ALICE, BOB.public_key, "bye", bytes(16), int(NOW * 1000), "busy")
    group = sign_state(ALICE, new_group(ALICE.public_key, "team", [BOB.public_key],
                                        bytes(16)))
    slot = PAIR_ALICE.seal_record(_purpose("MAILBOX"), 0, _encoder.encode(Part(0, 1, b"x")),
                                  seq=1, expires=int(NOW) + 600, random_bytes=rnd)
    payloads = [
        Payload("text", seq=1, id=bytes(16), text="hi"),
        Payload("file", seq=2, file_id=bytes(16), name="a.txt", size=10, sha256=bytes(32),
                key=bytes(32)),
        Payload("call", call_id=bytes(16), call_action="invite", commitment=bytes(32)),
        Payload("group_update", seq=3, group_id=bytes(16), group=group,
                author=ALICE.public_key),
        Payload("ack", ack=3, read=2),
    ]
    bundle = PrekeyStore.create(ALICE.seed, time.time()).bundle()
    stun_tid = bytes(range(12))
    response = (b"\x01\x01\x00\x0c\x21\x12\xa4\x42" + stun_tid
                + b"\x00\x20\x00\x08\x00\x01\xa1\x47\xe1\x12\xa6\x43")
    identity_doc = json.dumps(seal_identity(ALICE, None)).encode()
    return {
        "datagram": datagrams,
        "node": datagrams,
        "record": [_encoder.encode(rec)],
        "contact_request": [request.value],
        "presence": [presence],
        "signal": [offer, bye],
        "sdp": [_SDP.encode()],
        "stun": [response, binding_request(stun_tid)],
        "mailbox": [slot.value, _encoder.encode(Part(0, 2, b"abc")),
                    _encoder.encode(Frame(1, b"\x92\x01\xc4\x00")),
                    pack_frames([_encoder.encode(Frame(seq, b"\x92\x01\xc4\x00"))
                                 for seq in (1, 2)])],
        "payload": [_encoder.encode(p) for p in payloads],
        "group": [group],
        "call": [bytes([0, 1, 2, 3]), bytes(range(8))],
        "session": [bundle, b"\x92\x01\xc4\x00"],
        "file_chunk": [seal_chunk(_FILE_KEY, _FILE_ID, 0, b"chunk"),
                       seal_chunk(_FILE_KEY, bytes(16), 0, b"other file")],
        "rpc": [b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":[1,2]}}\n',
                b'{"jsonrpc":"2.0","id":"x","method":"send","params":{"contact":"bob"}}',
                b'{"jsonrpc":"2.0","method":"nope"}'],
        "identity": [identity_doc],
        "lan_announce": [encode_announce(Announce(bytes(range(32)), 4001, bytes(8), 1))],
        "onion": [*_onion()[2], onion_frame(Request(1, b"get")),
                  onion_frame(Extend(bytes(32), bytes(4), 1, bytes(32), bytes(32)))],
    }


_RUNNERS: dict[str, Callable[[bytes], None]] = {
    "datagram": _t_datagram, "node": _t_node, "record": _t_record,
    "contact_request": _t_contact_request, "presence": _t_presence, "signal": _t_signal,
    "sdp": _t_sdp, "stun": _t_stun, "mailbox": _t_mailbox, "payload": _t_payload,
    "group": _t_group, "call": _t_call, "session": _t_session, "file_chunk": _t_file_chunk,
    "rpc": _t_rpc, "identity": _t_identity, "lan_announce": _t_lan_announce,
    "onion": _t_onion,
}


def targets() -> dict[str, Target]:
    seeds = _seeds()
    return {name: Target(name, run, seeds[name]) for name, run in _RUNNERS.items()}


# ------------------------------------------------------------------------------ engines


@dataclass
class Result:
    target: str
    inputs: int
    seconds: float
    failures: int
    first_failures: list[str] = field(default_factory=list)
    coverage: int | None = None  # libFuzzer "cov" (edges), atheris only
    features: int | None = None
    crashed: bool = False  # libFuzzer itself stopped (C crash, timeout, out of memory)

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[rng.randrange(len(data))] = rng.choice(
                [0, 1, 0x7F, 0x80, 0x90, 0x9F, 0xC0, 0xC1, 0xC4, 0xCC, 0xCD, 0xD9, 0xDC, 0xFF])
        elif op == 2:
            del data[rng.randrange(len(data) + 1):]
        elif op == 3:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            other = rng.choice(corpus)
            cut = rng.randrange(len(data) + 1)
            data = data[:cut] + other[rng.randrange(len(other) + 1):]
        elif op == 5 and data:
            a = rng.randrange(len(data))
            data[a:a] = data[a:a + rng.randint(1, 32)]
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 300)))
    return bytes(data)


def run_random(target: Target, inputs: int, seed: int = 0, keep: int = 3) -> Result:
    """Run ``inputs`` mutated inputs (seeds first) in this process; count failures."""
    rng = random.Random(seed)
    failures: list[str] = []
    count = 0
    start = time.perf_counter()
    for i in range(inputs):
        data = target.seeds[i] if i < len(target.seeds) else mutate(rng, target.seeds)
        count += 1
        try:
            target.run(data)
        except Exception:
            failures.append(f"input {data!r}\n{traceback.format_exc()}")
    return Result(target.name, count, time.perf_counter() - start, len(failures),
                  failures[:keep])


def _atheris_child(name: str, inputs: int, failure_log: str) -> None:
    import atheris

    target = targets()[name]
    corpus = Path(tempfile.mkdtemp(prefix=f"dhtchat-fuzz-{name}-"))
    for i, seed in enumerate(target.seeds):
        (corpus / f"seed{i}").write_bytes(seed)

    def one(data: bytes) -> None:
        try:
            target.run(data)
        except Exception:
            with open(failure_log, "a", encoding="utf-8") as log:
                log.write(json.dumps({"input": data.hex(),
                                      "traceback": traceback.format_exc()}) + "\n")

    atheris.Setup([sys.argv[0], f"-runs={inputs}", "-max_len=2048", "-print_final_stats=1",
                   "-rss_limit_mb=1536", "-timeout=20", str(corpus)], one)
    atheris.Fuzz()


def run_atheris(name: str, inputs: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="dhtchat-fuzz-log-") as tmp:
        failure_log = Path(tmp) / "failures.jsonl"
        failure_log.touch()
        env = dict(os.environ, DHTCHAT_FUZZ_INSTRUMENT="1", PYTHONPATH=str(ROOT))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--inputs", str(inputs),
             "--failure-log", str(failure_log)],
            capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - start
        lines = failure_log.read_text("utf-8").splitlines()
    err = proc.stderr
    runs = re.search(r"stat::number_of_executed_units: (\d+)", err)
    covs = re.findall(r"cov: (\d+) ft: (\d+)", err)
    result = Result(name, int(runs.group(1)) if runs else 0, seconds, len(lines),
                    [json.loads(line)["traceback"] for line in lines[:3]],
                    int(covs[-1][0]) if covs else None, int(covs[-1][1]) if covs else None)
    if proc.returncode != 0:  # libFuzzer itself stopped (crash in C, timeout, out of memory)
        result.failures += 1
        result.crashed = True
        result.first_failures.append(f"fuzzer exited {proc.returncode}:\n{err[-3000:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--target", action="append", choices=sorted(_RUNNERS),
                        help="run only this target (repeatable); default: all")
    parser.add_argument("--engine", choices=["atheris", "random"], default="atheris")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--failure-log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _atheris_child(args.child, args.inputs, args.failure_log)
        return 0
    names = args.target or list(_RUNNERS)
    all_targets = targets() if args.engine == "random" else {}
    results: list[Result] = []
    print(f"{'target':16} {'inputs':>10} {'seconds':>8} {'exec/s':>9} {'failures':>8} "
          f"{'crashed':>7} {'cov':>6} {'ft':>6}", flush=True)
    for name in names:
        result = (run_random(all_targets[name], args.inputs) if args.engine == "random"
                  else run_atheris(name, args.inputs))
        results.append(result)
        print(f"{name:16} {result.inputs:>10} {result.seconds:>8.0f} {result.per_second:>9.0f} "
              f"{result.failures:>8} {'yes' if result.crashed else 'no':>7} "
              f"{result.coverage or '-':>6} {result.features or '-':>6}", flush=True)
        for failure in result.first_failures:
            print(failure, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([vars(r) for r in results], indent=2) + "\n")
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
