#!/usr/bin/env python3
"""OpenDHT side of ``dht_loopback.py``; run under the interpreter that has Debian's
``python3-opendht`` (``/usr/bin/python3``), not the project's.

Every node binds IPv4 127.0.0.1 only (``run(ipv4="127.0.0.1", ipv6="")``: no IPv6 socket, no
wildcard address) on a free port, and is bootstrapped through node 0 only: nothing is sent
to OpenDHT's public bootstrap hosts, and peer discovery (LAN multicast) stays off as it is by
default.

All nodes share 127.0.0.1 rather than one 127.0.x.1 address each as the dhtchat worker does:
OpenDHT 2.4 replaces a loopback address found in a node list with the address of the node that
sent the list (a NAT heuristic in ``NetworkEngine::deserializeNodes``), so with distinct
loopback addresses every learned contact points at the wrong host and each operation waits
for ~1 s of request time-outs.

The blocking ``put``/``get`` of the binding cannot be bounded in time, so operations use the
callback forms and wait on an Event with ``--op-timeout``. ``put`` reports success once the
(up to) 8 closest live nodes of the search acknowledged the value; ``get`` completes once the
8 closest nodes answered (no early exit when the value is found).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_loopback import (
    Phase,
    add_worker_arguments,
    base_result,
    check_worker_args,
    emit_crash,
    emit_result,
    emit_unavailable,
    finish_result,
    log,
    make_plan,
    measure_idle_sync,
    summarize_sizes,
    udp_sockets,
)

IMPL = "opendht"
BIND_HOST = "127.0.0.1"
TARGET_NODES = 8  # OpenDHT's search width; settle waits for tables at least this full
_COUNT_RE = re.compile(r"count: (\d+)")


def routing_table_size(runner: Any) -> int:
    """IPv4 routing-table size, parsed from the binding's text dump of the buckets."""
    text = str(runner.getRoutingTablesLog(socket.AF_INET))
    return sum(int(m) for m in _COUNT_RE.findall(text))


def put_once(runner: Any, key: Any, value: Any, timeout: float) -> tuple[bool, str | None]:
    """Non-blocking put, waited for at most ``timeout`` seconds."""
    done = threading.Event()
    outcome: list[bool] = []

    def on_done(ok: bool, _nodes: Any) -> None:
        outcome.append(bool(ok))
        done.set()

    runner.put(key, value, done_cb=on_done)
    if not done.wait(timeout):
        return False, "timeout"
    return (True, None) if outcome and outcome[0] else (False, "not acknowledged")


def get_once(runner: Any, key: Any, expected: bytes, timeout: float) -> tuple[bool, str | None]:
    """Non-blocking get, waited for at most ``timeout`` seconds; ok when ``expected`` came."""
    done = threading.Event()
    found: list[bytes] = []

    def on_value(value: Any) -> bool:
        found.append(bytes(value.data))
        return True  # keep the search going, like the binding's blocking get

    def on_done(_ok: bool, _nodes: Any) -> None:
        done.set()

    runner.get(key, get_cb=on_value, done_cb=on_done)
    if not done.wait(timeout):
        return False, "timeout"
    return (True, None) if expected in found else (False, "not found")


def run(args: argparse.Namespace) -> int:
    try:
        import opendht  # noqa: PLC0415  (optional: reported as unavailable)
    except Exception as exc:
        return emit_unavailable(IMPL, f"{type(exc).__name__}: {exc} (python {sys.executable})")

    result = base_result(IMPL, args)
    try:
        result["version"] = version("opendht")
    except Exception:
        result["version"] = "unknown"
    result["bind"] = f"all nodes on {BIND_HOST} (IPv4 only), distinct ports"
    plan = make_plan(args.nodes, args.ops, args.seed, args.value_size)
    t_start = time.perf_counter()

    runners: list[Any] = []
    try:
        for i in range(args.nodes):
            config = opendht.DhtConfig()  # a fresh one: run()'s default config is shared
            config.setNodeId(opendht.InfoHash.get(f"dht-loopback/{args.seed}/opendht-node-{i}"))
            runner = opendht.DhtRunner()
            runner.run(port=0, ipv4=BIND_HOST, ipv6="", config=config)
            runners.append(runner)
        bound4 = runners[0].getBound(socket.AF_INET)
        bound6 = runners[0].getBound(socket.AF_INET6)
        result["bound_ipv4"] = str(bound4)
        result["bound_ipv6"] = str(bound6)
        result["startup_s"] = time.perf_counter() - t_start
        log(
            IMPL,
            f"{len(runners)} nodes up in {result['startup_s']:.2f} s; node 0 bound "
            f"IPv4 {bound4}, IPv6 {bound6}",
        )

        t0 = time.perf_counter()
        port = str(bound4.getPort())
        for runner in runners[1:]:
            runner.bootstrap(BIND_HOST, port)
        result["bootstrap_s"] = time.perf_counter() - t0  # asynchronous: returns at once

        # Settle: OpenDHT joins in the background; wait (bounded) until every routing table
        # holds at least min(8, N-1) nodes.
        t0 = time.perf_counter()
        want = min(TARGET_NODES, args.nodes - 1)
        sizes = [routing_table_size(r) for r in runners]
        while min(sizes) < want and time.perf_counter() - t0 < args.settle_timeout:
            time.sleep(0.25)
            sizes = [routing_table_size(r) for r in runners]
        result["settle_s"] = time.perf_counter() - t0
        result["settled"] = min(sizes) >= want
        result["routing_table"] = summarize_sizes(sizes)
        log(
            IMPL,
            f"settled={result['settled']} after {result['settle_s']:.2f} s, "
            f"routing tables {result['routing_table']}",
        )

        idle = measure_idle_sync(args.idle)
        result["udp_sockets"] = udp_sockets()

        keys = {op.index: opendht.InfoHash.get(op.key) for op in plan}
        puts, gets = Phase("put"), Phase("get")
        puts.start()
        for op in plan:
            t1 = time.perf_counter()
            ok, error = put_once(
                runners[op.put_node], keys[op.index], opendht.Value(op.value), args.op_timeout
            )
            puts.record(time.perf_counter() - t1, ok, error)
        puts.stop()
        log(IMPL, f"puts: {puts.ok}/{len(plan)} ok in {puts.wall_s:.2f} s")
        gets.start()
        for op in plan:
            t1 = time.perf_counter()
            ok, error = get_once(runners[op.get_node], keys[op.index], op.value, args.op_timeout)
            gets.record(time.perf_counter() - t1, ok, error)
        gets.stop()
        log(IMPL, f"gets: {gets.ok}/{len(plan)} ok in {gets.wall_s:.2f} s")

        finish_result(result, puts, gets, idle, [])
        result["total_s"] = time.perf_counter() - t_start
        emit_result(result)
        return 0
    except Exception as exc:
        return emit_crash(IMPL, exc)
    finally:
        shutdown(runners)


def shutdown(runners: list[Any]) -> None:
    """Stop every runner, bounded: wait for the shutdown callbacks, then join.

    ``shutdown()`` without a callback followed by ``join()`` deadlocks in this binding (the
    callback trampoline needs the GIL that ``join`` holds), hence the Events.
    """
    events: list[threading.Event] = []
    for runner in runners:
        event = threading.Event()
        runner.shutdown(event.set)
        events.append(event)
    deadline = time.monotonic() + 10.0
    if all(e.wait(max(0.0, deadline - time.monotonic())) for e in events):
        for runner in runners:
            runner.join()
    else:
        log(IMPL, "some nodes did not shut down within 10 s; leaving them to process exit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_worker_arguments(parser)
    args = parser.parse_args()
    check_worker_args(args)
    return run(args)


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the C++ runners' destructors must not get a chance to hang.
    os._exit(status)
