"""Routing table: exact closest-k against brute force, diversity limits, eviction policy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dhtchat.core.ids import common_prefix_length, distance
from dhtchat.core.routing import AddResult, RoutingTable

ids = st.binary(min_size=32, max_size=32)


def _address(i: int) -> tuple[str, int]:
    return (f"10.{(i >> 8) & 255}.{i & 255}.1", 4000)


@settings(max_examples=300, deadline=None)
@given(own=ids, contacts=st.lists(ids, max_size=300, unique=True),
       target=ids, count=st.integers(1, 40), near_bits=st.integers(0, 255))
def test_closest_matches_brute_force(own: bytes, contacts: list[bytes], target: bytes,
                                     count: int, near_bits: int) -> None:
    table = RoutingTable(own, k=20, max_per_subnet_bucket=99, max_per_subnet_table=999)
    # Also exercise targets close to our own id (deep buckets).
    if near_bits % 3 == 0:
        target = own[:-1] + bytes([own[-1] ^ 1])
    elif near_bits % 3 == 1:
        target = own
    for i, node_id in enumerate(contacts):
        table.add(node_id, _address(i), now=1.0)
    present = [c.node_id for c in table.contacts()]
    expected = sorted(present, key=lambda n: distance(n, target))[:count]
    assert [c.node_id for c in table.closest(target, count)] == expected


def test_buckets_hold_at_most_k_and_cache_replacements() -> None:
    own = bytes(32)
    table = RoutingTable(own, k=4, max_per_subnet_bucket=99, max_per_subnet_table=999)
    # ids in bucket 0: first bit set
    results = [table.add(bytes([0x80 | i]) + bytes(31), _address(i), 1.0)[0]
               for i in range(6)]
    assert results[:4] == [AddResult.ADDED] * 4
    assert results[4:] == [AddResult.CACHED] * 2
    assert len(table) == 4
    assert common_prefix_length(own, bytes([0x80]) + bytes(31)) == 0


def test_eviction_needs_repeated_failures_and_promotes_replacement() -> None:
    own = bytes(32)
    table = RoutingTable(own, k=2, max_failures=3, max_per_subnet_bucket=99,
                         max_per_subnet_table=999)
    a, b, c = (bytes([0x80 | i]) + bytes(31) for i in range(3))
    table.add(a, _address(1), 1.0)
    table.add(b, _address(2), 1.0)
    assert table.add(c, _address(3), 2.0)[0] is AddResult.CACHED
    assert not table.record_failure(a, 3.0)
    assert not table.record_failure(a, 4.0)
    assert a in table  # two failures: still there
    assert table.record_failure(a, 5.0)
    assert a not in table and c in table  # third failure evicts, replacement promoted


def test_a_success_resets_the_failure_count() -> None:
    table = RoutingTable(bytes(32), k=2, max_failures=2, max_per_subnet_bucket=99,
                         max_per_subnet_table=999)
    a = b"\x80" + bytes(31)
    table.add(a, _address(1), 1.0)
    table.record_failure(a, 2.0)
    table.add(a, _address(1), 3.0)  # answered again
    assert not table.record_failure(a, 4.0)
    assert a in table


def test_subnet_diversity_limits_per_bucket_and_table() -> None:
    own = bytes(32)
    table = RoutingTable(own, k=8, max_per_subnet_bucket=2, max_per_subnet_table=3)
    same_subnet = [(f"192.0.2.{i + 1}", 4000) for i in range(10)]
    bucket0 = [bytes([0x80 | i]) + bytes(31) for i in range(5)]
    results = [table.add(n, same_subnet[i], 1.0)[0] for i, n in enumerate(bucket0)]
    assert results == [AddResult.ADDED, AddResult.ADDED] + [AddResult.REJECTED_DIVERSITY] * 3
    bucket1 = [bytes([0x40 | i]) + bytes(31) for i in range(3)]
    results = [table.add(n, same_subnet[5 + i], 1.0)[0] for i, n in enumerate(bucket1)]
    assert results == [AddResult.ADDED] + [AddResult.REJECTED_DIVERSITY] * 2  # table cap 3
    assert table.add(bucket1[1], ("198.51.100.1", 4000), 1.0)[0] is AddResult.ADDED
    ipv6 = [(f"2001:db8::{i + 1:x}", 4000) for i in range(3)]
    bucket2 = [bytes([0x20 | i]) + bytes(31) for i in range(3)]
    results = [table.add(n, ipv6[i], 1.0)[0] for i, n in enumerate(bucket2)]
    assert results == [AddResult.ADDED, AddResult.ADDED, AddResult.REJECTED_DIVERSITY]


def test_self_is_never_added() -> None:
    own = b"\x11" * 32
    table = RoutingTable(own)
    assert table.add(own, _address(1), 1.0)[0] is AddResult.REJECTED_SELF
    assert len(table) == 0
