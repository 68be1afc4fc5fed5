"""LAN discovery's sans-IO machine (dhtchat/core/lan.py) on a manual clock: the announce
schedule and its rate limit, the source rule, the accept limits, the repeat and own-announce
filters, and the bounded parser (with hypothesis)."""

from __future__ import annotations

import contextlib
import ipaddress

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.lan import (
    FLAG_SERVING,
    LAN_MAGIC,
    MAX_ANNOUNCE_BYTES,
    Announce,
    Found,
    LanConfig,
    LanDiscovery,
    decode_announce,
    encode_announce,
    is_local_source,
)

ME = b"\x01" * 32
INSTANCE = b"instance"
T0 = 1000.0


def machine(now: float = T0, config: LanConfig | None = None) -> LanDiscovery:
    return LanDiscovery(ME, 4000, INSTANCE, now, config)


def announce(node: int = 2, port: int = 5000, instance: bytes = b"other-01",
             flags: int = FLAG_SERVING) -> bytes:
    return encode_announce(Announce(bytes([node]) * 32, port, instance, flags))


def sends(lan: LanDiscovery, start: float, end: float, step: float = 0.1) -> list[float]:
    """The times ``announce`` returned a datagram, polling every ``step`` from start to end."""
    out = []
    for i in range(round((end - start) / step) + 1):
        now = start + i * step
        if lan.announce(now) is not None:
            out.append(round(now, 1))
    return out


# ------------------------------------------------------------------ the wire format


def test_an_announce_round_trips_and_is_small() -> None:
    data = announce(node=7, port=65535, flags=FLAG_SERVING)
    assert data.startswith(LAN_MAGIC)
    assert len(data) == 52 <= MAX_ANNOUNCE_BYTES
    assert decode_announce(data) == Announce(b"\x07" * 32, 65535, b"other-01", FLAG_SERVING)


def test_fields_a_later_version_appends_are_ignored() -> None:
    longer = LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 32, 5000, b"other-01", 1, "new"])
    assert decode_announce(longer).port == 5000


@pytest.mark.parametrize(("data", "why"), [
    (b"", "not a dhtchat announce"),
    (b"BT-SEARCH * HTTP/1.1\r\n", "not a dhtchat announce"),
    (b"dL\x02" + announce()[3:], "unknown announce version 02"),
    (announce()[:-5], "malformed"),  # truncated
    (LAN_MAGIC + b"\xc1", "malformed"),  # a byte msgpack never uses
    (LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 31, 5000, b"other-01"]), "malformed"),
    (LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 32, 0, b"other-01"]), "malformed"),
    (LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 32, 65536, b"other-01"]), "malformed"),
    (LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 32, "5000", b"other-01"]), "malformed"),
    (LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 32, 5000, b"short"]), "malformed"),
    (LAN_MAGIC + msgspec.msgpack.encode([b"\x02" * 32, 5000, b"other-01", 256]), "malformed"),
    (LAN_MAGIC + msgspec.msgpack.encode({"node_id": b"\x02" * 32}), "malformed"),
    (LAN_MAGIC + b"\x00" * MAX_ANNOUNCE_BYTES, "at most"),  # oversized, refused undecoded
])
def test_malformed_announces_are_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode_announce(data)


def test_a_malformed_announce_is_counted_and_dropped_without_raising() -> None:
    lan = machine()
    for data in (b"", b"junk", announce()[:-1], b"dL\x09xx", LAN_MAGIC + b"\x93\x01\x02"):
        assert lan.receive(data, ("192.168.1.20", 6767), T0) is None
    assert lan.stats["malformed"] == 5
    assert lan.receive(b"x" * (MAX_ANNOUNCE_BYTES + 1), ("192.168.1.20", 6767), T0) is None
    assert lan.stats["oversized"] == 1
    assert lan.stats["found"] == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2 * MAX_ANNOUNCE_BYTES))
def test_the_parser_raises_nothing_but_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_announce(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_ANNOUNCE_BYTES - len(LAN_MAGIC)))
def test_the_parser_survives_anything_after_the_magic(body: bytes) -> None:
    try:
        parsed = decode_announce(LAN_MAGIC + body)
    except RemoteProtocolError:
        return
    assert len(parsed.node_id) == 32 and 1 <= parsed.port <= 65535
    assert len(parsed.instance) == 8 and 0 <= parsed.flags <= 255


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 65535),
       st.binary(min_size=8, max_size=8), st.integers(0, 255))
def test_every_valid_announce_round_trips(node_id: bytes, port: int, instance: bytes,
                                          flags: int) -> None:
    original = Announce(node_id, port, instance, flags)
    data = encode_announce(original)
    assert len(data) <= MAX_ANNOUNCE_BYTES
    assert decode_announce(data) == original


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * MAX_ANNOUNCE_BYTES),
       st.ip_addresses().map(str), st.integers(0, 65535),
       st.floats(0, 1e9, allow_nan=False))
def test_receive_never_raises(data: bytes, host: str, port: int, now: float) -> None:
    lan = machine(now=0.0)
    found = lan.receive(data, (host, port), now)
    assert found is None or isinstance(found, Found)


# ------------------------------------------------------------------ who may be heard


@pytest.mark.parametrize("host", [
    "10.1.2.3", "172.16.0.9", "172.31.255.1", "192.168.0.10", "169.254.7.7", "100.64.0.5",
    "127.0.0.1", "fe80::1", "fe80::1%eth0", "fd00::5", "::1", "::ffff:192.168.1.4"])
def test_private_link_local_and_loopback_sources_are_local(host: str) -> None:
    assert is_local_source(host)


@pytest.mark.parametrize("host", [
    "8.8.8.8", "172.32.0.1", "203.0.113.5", "192.0.2.1", "100.128.0.1", "2001:db8::1",
    "::ffff:8.8.8.8", "0.0.0.0", "239.192.68.67", "not an ip", ""])
def test_public_and_odd_sources_are_not(host: str) -> None:
    assert not is_local_source(host)


def test_announces_from_non_local_sources_are_ignored() -> None:
    lan = machine()
    assert lan.receive(announce(), ("8.8.8.8", 6767), T0) is None
    assert lan.receive(announce(), ("203.0.113.9", 6767), T0) is None
    assert lan.stats["non_local"] == 2
    found = lan.receive(announce(), ("192.168.1.20", 6767), T0)
    assert found == Found(b"\x02" * 32, ("192.168.1.20", 5000), True)


def test_a_private_source_off_our_links_is_ignored_when_the_links_are_known() -> None:
    links = [ipaddress.ip_network("192.168.1.0/24")]
    lan = machine()
    assert lan.receive(announce(), ("10.9.9.9", 6767), T0, links) is None  # routed, not ours
    assert lan.stats["non_local"] == 1
    assert lan.receive(announce(3), ("192.168.1.7", 6767), T0, links) is not None
    assert lan.receive(announce(4), ("127.0.0.1", 6767), T0, links) is not None  # this host


def test_the_address_contacted_is_the_source_with_the_announced_port() -> None:
    found = machine().receive(announce(port=4242), ("10.0.0.8", 39999), T0)
    assert found is not None and found.address == ("10.0.0.8", 4242)


# ------------------------------------------------------------------ filters


def test_own_announces_are_dropped() -> None:
    lan = machine()
    own = lan.announce(T0)
    assert own is not None
    assert lan.receive(own, ("192.168.1.2", 6767), T0) is None
    assert lan.stats["own"] == 1
    copied = encode_announce(Announce(ME, 4001, b"elsewhen", FLAG_SERVING))  # same node key
    assert lan.receive(copied, ("192.168.1.3", 6767), T0) is None
    assert lan.stats["own_node_id"] == 1


def test_a_node_is_reported_once_per_repeat_period_or_when_its_run_or_role_changes() -> None:
    lan = machine()
    source = ("192.168.1.20", 6767)
    assert lan.receive(announce(flags=0), source, T0) is not None
    assert lan.receive(announce(flags=0), source, T0 + 10) is None
    assert lan.stats["repeat"] == 1
    served = lan.receive(announce(flags=FLAG_SERVING), source, T0 + 11)  # now it serves
    assert served is not None and served.serving
    assert lan.receive(announce(instance=b"restart!"), source, T0 + 12) is not None  # new run
    assert lan.receive(announce(flags=0), source, T0 + 61) is not None  # period over


def test_the_repeat_memory_is_bounded() -> None:
    lan = machine(config=LanConfig(max_known=8, source_burst=1000, global_burst=1000))
    for i in range(100):
        lan.receive(announce(node=i + 2), ("192.168.1.20", 6767), T0 + i * 0.01)
    assert lan.known == 8


# ------------------------------------------------------------------ rate limits


def test_accepting_is_rate_limited_per_source() -> None:
    config = LanConfig(source_rate=1.0, source_burst=8.0)
    lan = machine(config=config)
    found = [lan.receive(announce(node=i + 2), ("192.168.1.20", 6767), T0) for i in range(50)]
    assert sum(f is not None for f in found) == 8
    assert lan.stats["rate_limited"] == 42
    # another source still gets through; the first refills at source_rate
    assert lan.receive(announce(node=100), ("192.168.1.21", 6767), T0) is not None
    assert lan.receive(announce(node=101), ("192.168.1.20", 6767), T0 + 0.5) is None
    assert lan.receive(announce(node=102), ("192.168.1.20", 6767), T0 + 1.0) is not None


def test_accepting_is_rate_limited_over_all_sources() -> None:
    lan = machine(config=LanConfig(global_rate=5.0, global_burst=20.0))
    accepted = 0
    for i in range(200):  # 200 sources in 2 s: a spoofing flood
        now = T0 + i * 0.01
        host = f"10.0.{i // 250}.{i % 250 + 1}"
        accepted += lan.receive(announce(node=i % 250 + 2), (host, 6767), now) is not None
    assert accepted <= 20 + 5 * 2
    assert lan.stats["rate_limited"] == 200 - accepted


def test_the_first_announce_goes_at_start_then_at_doubling_intervals() -> None:
    lan = machine()
    assert sends(lan, T0, T0 + 200) == [T0, T0 + 2, T0 + 6, T0 + 14, T0 + 30, T0 + 62,
                                        T0 + 122, T0 + 182]
    assert lan.stats["sent"] == 8


def test_hearing_a_new_node_brings_the_next_announce_forward() -> None:
    lan = machine()
    assert lan.announce(T0) is not None
    lan.receive(announce(), ("192.168.1.20", 6767), T0 + 0.3)
    assert lan.deadline == pytest.approx(T0 + 0.8)
    assert lan.announce(T0 + 0.7) is None
    assert lan.announce(T0 + 0.8) is not None
    lan.receive(announce(), ("192.168.1.20", 6767), T0 + 1.0)  # a repeat: no reply
    assert lan.deadline > T0 + 2


def test_sending_is_rate_limited_whatever_asks_for_it() -> None:
    lan = machine(config=LanConfig(send_rate=0.2, send_burst=3.0, source_burst=1e6,
                                   global_burst=1e6))
    sent = 0
    for i in range(600):  # a new node every 0.1 s for 60 s: each asks for a reply
        now = T0 + i * 0.1
        lan.receive(announce(node=i % 250 + 2, instance=i.to_bytes(8, "big")),
                    ("192.168.1.20", 6767), now)
        sent += lan.announce(now) is not None
    assert sent <= 3 + 0.2 * 60
    assert sent >= 10  # ... but it keeps announcing at the capped rate
    assert lan.stats["send_rate_limited"] > 0


def test_a_role_or_port_change_is_announced_soon() -> None:
    lan = machine()
    datagram = lan.announce(T0)
    assert datagram is not None and decode_announce(datagram).flags == FLAG_SERVING
    lan.update(serving=True, now=T0 + 1)  # no change: the schedule stays
    assert lan.deadline == T0 + 2
    lan.update(serving=False, now=T0 + 1)
    assert lan.deadline == pytest.approx(T0 + 1.5)
    changed = lan.announce(T0 + 1.5)
    assert changed is not None and decode_announce(changed).flags == 0
    lan.update(port=4100, now=T0 + 1.6)
    moved = lan.announce(T0 + 2.1)
    assert moved is not None and decode_announce(moved).port == 4100
