#!/usr/bin/env python3
"""``kademlia`` (PyPI) side of ``dht_loopback.py``: all servers in one asyncio loop.

Nodes bind one loopback /24 each (127.0.0.1, 127.0.1.1, ...), like the dhtchat worker, and
bootstrap one after the other through node 0 (``Server.bootstrap`` returns after its
self-lookup). ``Server.set`` reports success when at least one of the k closest nodes
stored the value; ``Server.get`` returns as soon as one node returns the value (and answers
from the local store when the getting node holds the key).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_loopback import (
    Op,
    add_worker_arguments,
    base_result,
    check_worker_args,
    emit_crash,
    emit_result,
    emit_unavailable,
    finish_result,
    host_for,
    log,
    make_plan,
    measure_idle_async,
    run_async_phases,
    summarize_sizes,
    udp_sockets,
)

IMPL = "kademlia"


def table_size(server: Any) -> int:
    return sum(len(bucket) for bucket in server.protocol.router.buckets)


async def run(args: argparse.Namespace) -> int:
    try:
        import kademlia  # noqa: PLC0415  (optional: reported as unavailable)
        from kademlia.network import Server  # noqa: PLC0415
        from kademlia.utils import digest  # noqa: PLC0415
    except Exception as exc:
        return emit_unavailable(IMPL, f"{type(exc).__name__}: {exc} (python {sys.executable})")
    # The library logs every lookup at INFO and missing neighbours at WARNING.
    logging.getLogger("kademlia").setLevel(logging.ERROR)
    logging.getLogger("rpcudp").setLevel(logging.ERROR)
    random.seed(f"dht-loopback/{args.seed}/kademlia")  # the library draws from `random`

    result = base_result(IMPL, args)
    result["version"] = getattr(kademlia, "__version__", "unknown")
    result["ksize"] = args.ksize
    result["bind"] = "one loopback /24 per node: 127.0.0.1, 127.0.1.1, ..."
    plan = make_plan(args.nodes, args.ops, args.seed, args.value_size)
    t_start = time.perf_counter()

    servers: list[Any] = []
    try:
        for i in range(args.nodes):
            node_id = hashlib.sha1(f"dht-loopback/{args.seed}/kademlia-node-{i}".encode())
            server = Server(ksize=args.ksize, node_id=node_id.digest())
            await server.listen(0, interface=host_for(i))
            servers.append(server)
        result["startup_s"] = time.perf_counter() - t_start
        log(IMPL, f"{len(servers)} nodes up in {result['startup_s']:.2f} s")

        t0 = time.perf_counter()
        host, port = servers[0].transport.get_extra_info("sockname")[:2]
        boot_failures = 0
        for server in servers[1:]:
            try:
                found = await asyncio.wait_for(
                    server.bootstrap([(host, port)]), min(30.0, args.settle_timeout + 1.0)
                )
                boot_failures += 0 if found else 1
            except Exception:
                boot_failures += 1
        result["bootstrap_s"] = time.perf_counter() - t0
        result["bootstrap_failures"] = boot_failures
        result["settle_s"] = 0.0  # bootstrap() returns once the self-lookup is done
        result["routing_table"] = summarize_sizes([table_size(s) for s in servers])
        log(
            IMPL,
            f"bootstrapped in {result['bootstrap_s']:.2f} s, "
            f"routing tables {result['routing_table']}",
        )

        idle = await measure_idle_async(args.idle)
        result["udp_sockets"] = udp_sockets()

        async def put(op: Op) -> tuple[bool, int | None]:
            ok = await servers[op.put_node].set(op.key, op.value)
            return bool(ok), None

        def count_local_hits() -> None:
            # Server.get answers from the local store when the getting node holds the key.
            result["get_local_hits"] = sum(
                1 for o in plan if servers[o.get_node].storage.get(digest(o.key)) is not None
            )

        async def get(op: Op) -> bool:
            value = await servers[op.get_node].get(op.key)
            return bool(value == op.value)

        puts, gets, stored = await run_async_phases(
            IMPL, plan, put, get, args.op_timeout, between=count_local_hits
        )
        finish_result(result, puts, gets, idle, stored)
        result["total_s"] = time.perf_counter() - t_start
        emit_result(result)
        return 0
    except Exception as exc:
        return emit_crash(IMPL, exc)
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="kademlia worker of dht_loopback.py")
    add_worker_arguments(parser)
    parser.add_argument("--ksize", type=int, default=20, help="k (the library's default: 20)")
    args = parser.parse_args()
    if not 1 <= args.ksize <= 64:
        raise SystemExit("--ksize must be within 1..64")
    check_worker_args(args)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
