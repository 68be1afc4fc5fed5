"""Security properties of a storer; each test fails if its protection is removed."""

from __future__ import annotations

import random

import msgspec
import pytest

import dhtchat.core.records as records_module
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.node import DhtConfig, DhtNode
from dhtchat.core.pow import REQUEST_POW_BITS, solve_pow
from dhtchat.core.records import (
    MAX_SALT_BYTES,
    MAX_VALUE_BYTES,
    Record,
    RecordType,
    make_app_record,
    make_record,
)
from dhtchat.core.wire import (
    MAX_DATAGRAM_BYTES,
    Envelope,
    Error,
    FindNode,
    GetValues,
    Listen,
    Ping,
    Pong,
    RequestBody,
    Store,
    Stored,
    StoreStatus,
    Values,
    decode,
    encode_envelope,
    encode_request,
    pack,
)

NOW = 1_700_000_000.0
STORER = ("198.51.100.7", 4000)


class RawPeer:
    """A hand-driven peer that speaks the wire protocol to one core node."""

    def __init__(self, node: DhtNode, address: tuple[str, int], seed: int = 1) -> None:
        self.node = node
        self.address = address
        self.key = SigningIdentity.from_seed(random.Random(seed).randbytes(32))
        self.rng = random.Random(seed)
        self.token = b""

    def request(self, body: RequestBody, *, token: bytes | None = None, pad_to: int = 0,
                now: float = NOW) -> tuple[int, list[bytes]]:
        """Send a request; returns its size and the raw replies sent back to us."""
        tid = self.rng.randbytes(8)
        data = encode_request(tid, self.key.public_key, 0,
                              self.token if token is None else token, body, pad_to)
        self.node.receive_datagram(data, self.address, now)
        replies = [d for d, dst in self.node.datagrams_to_send(now) if dst == self.address]
        for reply in replies:
            envelope = decode(reply).envelope
            if envelope.tid == tid and envelope.token:
                self.token = envelope.token
        return len(data), [r for r in replies if decode(r).envelope.tid == tid]

    def body(self, body: RequestBody, **kwargs: object) -> object:
        _, replies = self.request(body, **kwargs)  # type: ignore[arg-type]
        assert len(replies) == 1, replies
        return decode(replies[0]).envelope.body

    def get_token(self) -> bytes:
        reply = self.body(Ping(), pad_to=400)
        assert isinstance(reply, Pong)
        assert self.token
        return self.token


def make_storer(**config: object) -> DhtNode:
    key = SigningIdentity.from_seed(b"storer-key-seed-0123456789abcdef")
    return DhtNode(key, rng=random.Random(3), now=NOW, config=DhtConfig(**config))  # type: ignore[arg-type]


def owner(seed: int) -> SigningIdentity:
    return SigningIdentity.from_seed(random.Random(seed).randbytes(32))


def record(seed: int, value: bytes = b"v", *, seq: int = 1, app_key: str = "k") -> Record:
    return make_app_record(owner(seed), app_key, value, seq=seq, expires=int(NOW) + 600)


def stored(node: DhtNode, rec: Record) -> list[Record]:
    return node.store.records(rec.key, NOW, rec.owner)


def test_forged_signature_rejected() -> None:
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    good = record(1)
    forged = msgspec.structs.replace(good, value=b"evil")
    assert peer.body(Store(forged)) == Stored(StoreStatus.INVALID)
    assert stored(node, good) == []
    assert peer.body(Store(good)) == Stored(StoreStatus.OK)
    assert stored(node, good) == [good]


def test_signature_under_another_owners_key_rejected() -> None:
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    victim, attacker = owner(1), owner(2)
    honest = make_app_record(attacker, "k", b"mine", seq=1, expires=int(NOW) + 600)
    # Same content claimed for the victim's key, signed with the attacker's key.
    claimed = msgspec.structs.replace(honest, owner=victim.public_key)
    assert peer.body(Store(claimed)) == Stored(StoreStatus.INVALID)
    assert node.store.records(claimed.key, NOW) == []


def test_reader_rejects_a_record_not_bound_to_the_key() -> None:
    """A malicious storer answering a get with someone else's valid record is ignored."""
    reader = make_storer()
    victim_key = record(1).key
    impostor = record(2, b"attacker's valid record")
    qid = reader.get(victim_key, NOW)
    out = reader.datagrams_to_send(NOW)
    assert out == []  # empty table: the lookup finishes at once with nothing
    event = reader.next_event()
    assert event is not None and getattr(event, "query_id", None) == qid
    with pytest.raises(records_module.InvalidRecord, match="not bound"):
        records_module.validate_record(impostor, victim_key, NOW)


def test_seq_rollback_and_conflicting_same_seq_rejected() -> None:
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    v5 = record(1, b"five", seq=5)
    assert peer.body(Store(v5)) == Stored(StoreStatus.OK)
    assert peer.body(Store(record(1, b"four", seq=4))) == Stored(StoreStatus.ROLLBACK)
    assert peer.body(Store(record(1, b"other five", seq=5))) == Stored(StoreStatus.ROLLBACK)
    assert peer.body(Store(v5)) == Stored(StoreStatus.OK)  # identical refresh is fine
    assert stored(node, v5) == [v5]
    v6 = record(1, b"six", seq=6)
    assert peer.body(Store(v6)) == Stored(StoreStatus.OK)
    assert stored(node, v5) == [v6]


def test_oversized_record_rejected_before_signature_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real = records_module.verify_signature

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        calls.append(message)
        return real(public_key, message, signature)

    monkeypatch.setattr(records_module, "verify_signature", counting)
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    token = peer.get_token()
    big = Record(RecordType.APP, owner(1).public_key, b"", b"s", 1, int(NOW) + 60,
                 b"x" * (MAX_VALUE_BYTES + 1), b"\x01" * 64)
    data = pack(encode_envelope(Envelope(b"t" * 8, peer.key.public_key, 0, token, Store(big))))
    node.receive_datagram(data, peer.address, NOW)
    assert node.datagrams_to_send(NOW) == []
    assert calls == []
    assert node.stats["misbehaved"] == 1
    assert node.store.record_count == 0
    # Oversized as a datagram: refused before msgpack decoding even starts.
    node.receive_datagram(b"dc\x01" + b"\x00" * MAX_DATAGRAM_BYTES, peer.address, NOW)
    assert node.stats["misbehaved"] == 2 and calls == []
    # A valid record of the same owner still goes through verification and storage.
    assert peer.body(Store(record(1))) == Stored(StoreStatus.OK)
    assert len(calls) == 1


def test_store_without_a_valid_token_rejected() -> None:
    node = make_storer(token_epoch=300.0)
    peer = RawPeer(node, ("203.0.113.5", 5000))
    rec = record(1)
    assert peer.body(Store(rec), token=b"") == Stored(StoreStatus.BAD_TOKEN)
    assert peer.body(Store(rec), token=b"\x00" * 16) == Stored(StoreStatus.BAD_TOKEN)
    other = RawPeer(node, ("203.0.113.6", 5000), seed=2)
    foreign = other.get_token()  # bound to another address
    assert peer.body(Store(rec), token=foreign) == Stored(StoreStatus.BAD_TOKEN)
    same_ip_other_port = RawPeer(node, ("203.0.113.5", 5001), seed=3)
    assert peer.body(Store(rec), token=same_ip_other_port.get_token()) == \
        Stored(StoreStatus.BAD_TOKEN)
    assert node.store.record_count == 0
    token = peer.get_token()
    assert peer.body(Store(rec), token=token) == Stored(StoreStatus.OK)
    later = NOW + 2 * 300.0 + 1  # two epochs on, the token has expired
    assert peer.body(Store(record(1, seq=2)), token=token, now=later) == \
        Stored(StoreStatus.BAD_TOKEN)


def test_listen_without_token_refused() -> None:
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    reply = peer.body(Listen(record(1).key), token=b"", pad_to=400)
    assert isinstance(reply, Error)
    assert node._listener_count == 0


def _fill_worst_case(node: DhtNode) -> bytes:
    """Fill the routing table with IPv6 contacts (largest NodeInfo) and one inbox key with
    many owners' maximum-size records (largest Values reply); returns that key."""
    rng = random.Random(11)
    for i in range(400):
        node.table.add(rng.randbytes(32), (f"2001:db8:{i:x}::1", 65535), NOW)
    recipient = owner(999).public_key
    key = None
    for i in range(40):  # (put straight into the store: no proof of work needed)
        rec = make_record(owner(1000 + i), RecordType.CONTACT_REQUEST, b"s" * MAX_SALT_BYTES,
                          b"\xff" * MAX_VALUE_BYTES, seq=2**62 + i, expires=int(NOW) + 3600,
                          namespace=recipient)
        assert node.store.put(rec, 1400, f"10.{i}.0.0/24", NOW) is StoreStatus.OK
        key = key or rec.key
        assert rec.key == key  # one key, many owners
    assert key is not None
    return key


def test_amplification_factor_at_most_one_for_unvalidated_addresses() -> None:
    node = make_storer()
    full_key = _fill_worst_case(node)
    key = record(1).key  # an empty key
    rng = random.Random(5)
    worst = 0.0
    measured: dict[str, float] = {}
    bodies: list[RequestBody] = [
        Ping(), FindNode(rng.randbytes(32)), FindNode(node.node_id),
        GetValues(key), GetValues(full_key), GetValues(full_key, offset=3),
        GetValues(key, owner=b"\x01" * 32),
        Store(make_record(owner(5000), RecordType.CONTACT_REQUEST, b"s" * MAX_SALT_BYTES,
                          b"\xee" * MAX_VALUE_BYTES, seq=1, expires=int(NOW) + 60,
                          namespace=owner(999).public_key)),
        Store(record(5001)), Listen(key),
    ]
    for i, body in enumerate(bodies):
        for pad_to in (0, 100, 200, 400, 600, 900, 1400):
            peer = RawPeer(node, (f"2001:db8:ffff::{i + 1:x}", 40000 + pad_to), seed=i)
            size, replies = peer.request(body, token=b"", pad_to=pad_to)
            out = sum(len(r) for r in replies)
            ratio = out / size
            name = type(body).__name__
            measured[name] = max(measured.get(name, 0.0), ratio)
            worst = max(worst, ratio)
            # a garbage token counts as no token
            size, replies = peer.request(body, token=b"\x13" * 16, pad_to=pad_to)
            worst = max(worst, sum(len(r) for r in replies) / size)
    print("amplification (reply bytes / request bytes, worst case per request type):",
          {k: round(v, 3) for k, v in measured.items()})
    assert worst <= 1.0
    # Validated requesters do get the full answer.
    peer = RawPeer(node, ("2001:db8:ffff::99", 1), seed=99)
    peer.get_token()
    reply = peer.body(GetValues(full_key))
    assert isinstance(reply, Values) and reply.records and not reply.truncated
    assert reply.total == 40


def contact_request(signer: SigningIdentity, recipient: bytes, sealed: bytes = b"sealed",
                    *, seq: int = 0) -> Record:
    """An inbox record with its proof of work really solved (about 2**18 hashes)."""
    counter = solve_pow(recipient + signer.public_key, sealed, REQUEST_POW_BITS)
    return make_record(signer, RecordType.CONTACT_REQUEST, b"",
                       counter.to_bytes(8, "big") + sealed, seq=seq,
                       expires=int(NOW) + 600, namespace=recipient)


def signed_foreign(signer: SigningIdentity, type_: int, namespace: bytes, salt: bytes,
                   value: bytes) -> Record:
    """A correctly signed record naming ``namespace`` (bypassing make_record's refusal)."""
    unsigned = Record(type_, signer.public_key, namespace, salt, 1, int(NOW) + 600, value,
                      b"\x00" * 64)
    return msgspec.structs.replace(unsigned, signature=signer.sign(unsigned.signed_bytes()))


def test_only_open_write_types_accept_foreign_namespaces() -> None:
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    victim = owner(1).public_key
    letter = contact_request(owner(2), victim)
    assert peer.body(Store(letter)) == Stored(StoreStatus.OK)
    app = make_app_record(owner(2), "k", b"x", seq=1, expires=int(NOW) + 600)
    hijack = msgspec.structs.replace(app, namespace=victim)  # into the victim's app space
    assert peer.body(Store(hijack)) == Stored(StoreStatus.INVALID)
    for type_ in (RecordType.MAILBOX, RecordType.PRESENCE, RecordType.SIGNAL,
                  RecordType.PREKEYS, RecordType.APP, 999):
        foreign = signed_foreign(owner(2), type_, victim, b"inbox", b"hi")
        assert peer.body(Store(foreign)) == Stored(StoreStatus.INVALID), type_
    assert node.store.record_count == 1


def test_flood_from_one_subnet_cannot_exceed_its_quota() -> None:
    quota = 25
    node = make_storer(quota_records_per_subnet=quota, quota_bytes_per_subnet=10**9,
                       rate_per_ip=1e6, burst_per_ip=1e6, rate_per_subnet=1e6,
                       burst_per_subnet=1e6)
    statuses: list[int] = []
    for i in range(200):
        peer = RawPeer(node, (f"203.0.113.{i % 250 + 1}", 6000 + i), seed=i)
        peer.get_token()
        reply = peer.body(Store(record(10_000 + i)))
        assert isinstance(reply, Stored)
        statuses.append(reply.status)
    assert statuses.count(StoreStatus.OK) == quota
    assert statuses.count(StoreStatus.QUOTA) == 200 - quota
    assert node.store.subnet_usage("203.0.113.0/24")[0] == quota
    outsider = RawPeer(node, ("192.0.2.1", 7000), seed=7)
    outsider.get_token()
    assert outsider.body(Store(record(99_999))) == Stored(StoreStatus.OK)


def test_byte_quota_per_subnet() -> None:
    node = make_storer(quota_records_per_subnet=10**6, quota_bytes_per_subnet=5000)
    peer = RawPeer(node, ("203.0.113.9", 6000))
    peer.get_token()
    results = [peer.body(Store(record(i, b"x" * 900))) for i in range(10)]
    ok = [r for r in results if r == Stored(StoreStatus.OK)]
    assert 1 <= len(ok) < 10
    assert node.store.subnet_usage("203.0.113.0/24")[1] <= 5000


def test_request_rate_limit_per_ip() -> None:
    node = make_storer(rate_per_ip=10.0, burst_per_ip=20.0)
    peer = RawPeer(node, ("203.0.113.5", 5000))
    answered = sum(len(peer.request(Ping(), pad_to=400)[1]) for _ in range(500))
    assert answered == 20
    later = sum(len(peer.request(Ping(), pad_to=400, now=NOW + 1.0)[1]) for _ in range(50))
    assert later == 10
    other = RawPeer(node, ("192.0.2.1", 5000), seed=9)
    assert len(other.request(Ping(), pad_to=400)[1]) == 1


def test_bad_value_of_a_known_type_is_refused_by_policy() -> None:
    node = make_storer()
    peer = RawPeer(node, ("203.0.113.5", 5000))
    peer.get_token()
    too_long = make_record(owner(1), RecordType.SIGNAL, b"", b"x", seq=1,
                           expires=int(NOW) + 3 * 3600)  # SIGNAL records live <= 10 min
    assert peer.body(Store(too_long)) == Stored(StoreStatus.INVALID)
    expired = make_record(owner(1), RecordType.APP, b"", b"x", seq=1, expires=int(NOW) - 1)
    assert peer.body(Store(expired)) == Stored(StoreStatus.INVALID)
