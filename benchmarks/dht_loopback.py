#!/usr/bin/env python3
"""Loopback DHT benchmark: dhtchat against OpenDHT and the ``kademlia`` PyPI package.

Usage::

    python benchmarks/dht_loopback.py [--nodes 64] [--ops 200]
                                      [--only dhtchat,opendht,kademlia] [--json OUT]

For each implementation a separate worker process starts ``--nodes`` nodes on loopback
addresses, bootstraps every node through node 0, lets the network settle (bounded), measures
its idle CPU for ``--idle`` seconds, then runs ``--ops`` sequential puts of distinct keys from
seeded random nodes followed by ``--ops`` sequential gets of the same keys from other seeded
random nodes. Each worker prints one ``RESULT {json}`` line; this parent prints a table and the
ratios dhtchat/OpenDHT and dhtchat/kademlia, and optionally writes everything as JSON.

The workers:

* dhtchat: this file, ``--worker dhtchat``, run by the interpreter running this script.
* OpenDHT: ``_opendht_worker.py`` under ``--opendht-python`` (default ``/usr/bin/python3``,
  where Debian's ``python3-opendht`` lives).
* kademlia: ``_kademlia_worker.py`` under ``--kademlia-python`` (default: this interpreter).

The top half of this module (up to the dhtchat worker) is shared with the other workers and
must only import the standard library: ``/usr/bin/python3`` imports it without the project's
dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMPLEMENTATIONS = ("dhtchat", "opendht", "kademlia")
RESULT_PREFIX = "RESULT "
EXIT_UNAVAILABLE = 3
MAX_NODES = 1024

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

JsonDict = dict[str, Any]


# ----------------------------------------------------------------------------------- shared


def log(impl: str, message: str) -> None:
    """Progress line on stderr (stdout carries only the RESULT line)."""
    print(f"[{impl}] {message}", file=sys.stderr, flush=True)


def host_for(index: int) -> str:
    """Distinct loopback address of node ``index``: 127.0.0.1, 127.0.1.1, ... (one per /24).

    Linux routes all of 127.0.0.0/8 to ``lo``, so no setup is needed. dhtchat limits contacts
    per /24, so its nodes need one /24 each to behave as on a real network.
    """
    if not 0 <= index < MAX_NODES:
        raise ValueError(f"node index {index} out of range")
    return f"127.{index // 256}.{index % 256}.1"


def _proc_net_address(hex_address: str) -> str:
    """``0100007F:1F90`` (from /proc/net/udp) -> ``127.0.0.1``; IPv6 words likewise."""
    host_hex = hex_address.split(":", maxsplit=1)[0]
    raw = bytes.fromhex(host_hex)
    # /proc prints each 32-bit word in host byte order.
    words = [
        raw[i : i + 4][::-1] if sys.byteorder == "little" else raw[i : i + 4]
        for i in range(0, len(raw), 4)
    ]
    packed = b"".join(words)
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    address = ipaddress.IPv6Address(packed)
    return str(address.ipv4_mapped or address)


def udp_sockets() -> JsonDict | None:
    """UDP sockets this process holds and the local IPs they are bound to (Linux only).

    Evidence that every node listens on loopback only; None where /proc is not available.
    """
    try:
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ips: dict[str, int] = {}
        families: dict[str, int] = {}
        for table in ("udp", "udp6"):
            path = f"/proc/self/net/{table}"
            if not os.path.exists(path):
                continue
            with open(path, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) > 9 and parts[9] in inodes:
                        ip = _proc_net_address(parts[1])
                        ips[ip] = ips.get(ip, 0) + 1
                        families[table] = families.get(table, 0) + 1
    except OSError:
        return None
    loopback = sum(n for ip, n in ips.items() if ip.startswith("127.") or ip == "::1")
    return {
        "count": sum(ips.values()),
        "by_table": families,
        "non_loopback": {
            ip: n for ip, n in ips.items() if not (ip.startswith("127.") or ip == "::1")
        },
        "loopback": loopback,
        "distinct_ips": len(ips),
    }


@dataclass(frozen=True, slots=True)
class Op:
    """One put of ``value`` under ``key`` from ``put_node`` and one get of it from
    ``get_node``."""

    index: int
    put_node: int
    get_node: int
    key: str
    value: bytes


def make_plan(nodes: int, ops: int, seed: int, value_size: int) -> list[Op]:
    """The seeded operation list every implementation runs (identical across workers)."""
    if nodes < 2:
        raise ValueError("need at least 2 nodes")
    rng = random.Random(f"dht-loopback/{seed}")
    plan: list[Op] = []
    for index in range(ops):
        put_node = rng.randrange(nodes)
        get_node = rng.randrange(nodes - 1)
        if get_node >= put_node:
            get_node += 1
        value = rng.randbytes(value_size)
        plan.append(Op(index, put_node, get_node, f"dht-loopback/{seed}/key-{index}", value))
    return plan


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize_sizes(sizes: Sequence[int]) -> JsonDict:
    """min/mean/max of per-node routing table sizes."""
    if not sizes:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(sizes), "mean": round(sum(sizes) / len(sizes), 2), "max": max(sizes)}


@dataclass
class Phase:
    """Latencies, outcomes and CPU time of one phase (all puts, or all gets)."""

    name: str
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    _wall0: float = 0.0
    _cpu0: float = 0.0

    def start(self) -> None:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    def stop(self) -> None:
        self.cpu_s = time.process_time() - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0

    def record(self, latency: float, ok: bool, error: str | None = None) -> None:
        self.latencies.append(latency)
        if ok:
            self.ok += 1
        else:
            reason = error or "failed"
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def summary(self, idle_cpu_frac: float) -> JsonDict:
        count = len(self.latencies)
        ms = [1000.0 * x for x in self.latencies]
        cpu_per_op = self.cpu_s / count if count else math.nan
        net_cpu = max(0.0, self.cpu_s - idle_cpu_frac * self.wall_s)
        return {
            "count": count,
            "ok": self.ok,
            "success_rate": self.ok / count if count else math.nan,
            "errors": dict(sorted(self.errors.items())),
            "latency_ms": {
                "p50": percentile(ms, 50),
                "p95": percentile(ms, 95),
                "mean": sum(ms) / count if count else math.nan,
                "max": max(ms) if ms else math.nan,
            },
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cpu_ms_per_op": 1000.0 * cpu_per_op,
            "cpu_ms_per_op_net_idle": 1000.0 * net_cpu / count if count else math.nan,
        }


def measure_idle_sync(seconds: float) -> float:
    """CPU seconds per wall second the process spends while nothing is asked of it."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)


async def measure_idle_async(seconds: float) -> float:
    """:func:`measure_idle_sync` with the event loop running."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)


PutFn = Callable[[Op], Awaitable[tuple[bool, int | None]]]
GetFn = Callable[[Op], Awaitable[bool]]


async def run_async_phases(
    impl: str,
    plan: Sequence[Op],
    put: PutFn,
    get: GetFn,
    op_timeout: float,
    *,
    between: Callable[[], None] | None = None,
) -> tuple[Phase, Phase, list[int]]:
    """Sequential put phase then get phase for asyncio implementations.

    ``between`` runs after the put phase and before the get phase, outside both
    measurements.

    ``put`` returns (ok, storers acknowledged or None when the implementation does not say);
    ``get`` returns whether the expected value came back. Each op is bounded by
    ``op_timeout``; a timed-out op counts as failed with its elapsed time as latency.
    """
    stored: list[int] = []
    puts, gets = Phase("put"), Phase("get")
    puts.start()
    for op in plan:
        t0 = time.perf_counter()
        try:
            ok, acks = await asyncio.wait_for(put(op), op_timeout)
            error = None if ok else "not stored"
            if acks is not None:
                stored.append(acks)
        except TimeoutError:
            ok, error = False, "timeout"
        except Exception as exc:  # a failing op is a result, not a crash
            ok, error = False, type(exc).__name__
        puts.record(time.perf_counter() - t0, ok, error)
    puts.stop()
    log(impl, f"puts: {puts.ok}/{len(plan)} ok in {puts.wall_s:.2f} s")
    if between is not None:
        between()
    gets.start()
    for op in plan:
        t0 = time.perf_counter()
        try:
            ok = await asyncio.wait_for(get(op), op_timeout)
            error = None if ok else "not found"
        except TimeoutError:
            ok, error = False, "timeout"
        except Exception as exc:
            ok, error = False, type(exc).__name__
        gets.record(time.perf_counter() - t0, ok, error)
    gets.stop()
    log(impl, f"gets: {gets.ok}/{len(plan)} ok in {gets.wall_s:.2f} s")
    return puts, gets, stored


def base_result(impl: str, args: argparse.Namespace) -> JsonDict:
    """Fields every worker result starts with."""
    return {
        "impl": impl,
        "available": True,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "pid": os.getpid(),
        "nodes": args.nodes,
        "ops": args.ops,
        "seed": args.seed,
        "value_size": args.value_size,
    }


def finish_result(
    result: JsonDict, puts: Phase, gets: Phase, idle_cpu_frac: float, stored: Sequence[int]
) -> JsonDict:
    """Add the phase summaries to ``result``."""
    result["idle_cpu_frac"] = idle_cpu_frac
    result["put"] = puts.summary(idle_cpu_frac)
    result["get"] = gets.summary(idle_cpu_frac)
    if stored:
        result["put"]["storers_mean"] = sum(stored) / len(stored)
        result["put"]["storers_min"] = min(stored)
    return result


def without_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return value


def emit_result(result: JsonDict) -> None:
    """The one machine-readable line a worker prints on stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(without_nan(result), allow_nan=False) + "\n")
    sys.stdout.flush()


def emit_crash(impl: str, exc: BaseException) -> int:
    """Report a worker that failed part-way (the traceback goes to stderr)."""
    traceback.print_exception(exc, file=sys.stderr)
    emit_result(
        {
            "impl": impl,
            "available": True,
            "crashed": True,
            "reason": f"crashed: {type(exc).__name__}: {exc}",
        }
    )
    return 1


def emit_unavailable(impl: str, reason: str) -> int:
    """Report that ``impl`` cannot run here; returns the worker's exit status."""
    log(impl, f"unavailable: {reason}")
    emit_result({"impl": impl, "available": False, "reason": reason})
    return EXIT_UNAVAILABLE


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the parent and every worker (the parent passes them on)."""
    parser.add_argument("--nodes", type=int, default=64, help="nodes per network (default 64)")
    parser.add_argument("--ops", type=int, default=200, help="puts, then as many gets (200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of node ids and op plan (1)")
    parser.add_argument("--value-size", type=int, default=100, help="value bytes (100)")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        help="longest wait for routing tables after bootstrap, seconds (30)",
    )
    parser.add_argument(
        "--idle", type=float, default=2.0, help="idle window measuring background CPU, s (2)"
    )
    parser.add_argument("--op-timeout", type=float, default=10.0, help="per-op limit, s (10)")


def check_worker_args(args: argparse.Namespace) -> None:
    """Bounds every worker enforces, so each loop is bounded in count and time."""
    if not 2 <= args.nodes <= MAX_NODES:
        raise SystemExit(f"--nodes must be within 2..{MAX_NODES}")
    if not 1 <= args.ops <= 100_000:
        raise SystemExit("--ops must be within 1..100000")
    if not 1 <= args.value_size <= 900:
        raise SystemExit("--value-size must be within 1..900 (dhtchat records hold 1000)")
    for name in ("settle_timeout", "idle", "op_timeout"):
        value = getattr(args, name)
        if not 0 <= value <= 600:
            raise SystemExit(f"--{name.replace('_', '-')} must be within 0..600 s")


# ------------------------------------------------------------------------ dhtchat worker


async def _dhtchat_main(args: argparse.Namespace) -> int:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # benchmark the working tree's dhtchat
    try:
        # Imported here: the rest of this module must load without the project installed.
        import dhtchat  # noqa: PLC0415
        from dhtchat.core.identity import SigningIdentity  # noqa: PLC0415
        from dhtchat.core.records import Record, make_app_record  # noqa: PLC0415
        from dhtchat.net.udp import UdpDhtNode  # noqa: PLC0415
    except Exception as exc:
        return emit_unavailable("dhtchat", f"{type(exc).__name__}: {exc}")

    impl = "dhtchat"
    result = base_result(impl, args)
    result["version"] = getattr(dhtchat, "__version__", "unknown")
    result["bind"] = "one loopback /24 per node: 127.0.0.1, 127.0.1.1, ..."
    plan = make_plan(args.nodes, args.ops, args.seed, args.value_size)
    t_start = time.perf_counter()

    nodes: list[UdpDhtNode] = []
    try:
        for i in range(args.nodes):
            nodes.append(await UdpDhtNode.create(host_for(i), 0, seed=args.seed * 100_003 + i))
        result["startup_s"] = time.perf_counter() - t_start
        log(impl, f"{len(nodes)} nodes up in {result['startup_s']:.2f} s")

        t0 = time.perf_counter()
        entry = [nodes[0].address]
        boot_failures = 0
        for node in nodes[1:]:
            try:
                await node.bootstrap(entry, timeout=min(30.0, args.settle_timeout + 1.0))
            except Exception:
                boot_failures += 1
        result["bootstrap_s"] = time.perf_counter() - t0
        result["bootstrap_failures"] = boot_failures
        result["settle_s"] = 0.0  # bootstrap() returns once the self-lookup is done
        result["routing_table"] = summarize_sizes([len(n.peers()) for n in nodes])
        log(
            impl,
            f"bootstrapped in {result['bootstrap_s']:.2f} s, "
            f"routing tables {result['routing_table']}",
        )

        idle = await measure_idle_async(args.idle)
        result["udp_sockets"] = udp_sockets()

        # Records are signed before the clock starts: the benchmark times the DHT operation.
        signers = [
            SigningIdentity.from_seed(random.Random(f"signer/{args.seed}/{i}").randbytes(32))
            for i in range(args.nodes)
        ]
        expires = int(time.time()) + 3600
        records: dict[int, Record] = {
            op.index: make_app_record(
                signers[op.put_node], op.key, op.value, seq=1, expires=expires
            )
            for op in plan
        }

        async def put(op: Op) -> tuple[bool, int | None]:
            done = await nodes[op.put_node].put(records[op.index], timeout=args.op_timeout)
            return done.stored > 0, done.stored

        async def get(op: Op) -> bool:
            found = await nodes[op.get_node].get(records[op.index].key, timeout=args.op_timeout)
            return any(r.value == op.value for r in found)

        puts, gets, stored = await run_async_phases(impl, plan, put, get, args.op_timeout + 1.0)
        finish_result(result, puts, gets, idle, stored)
        result["internal_errors"] = sum(n.internal_errors for n in nodes)
        result["total_s"] = time.perf_counter() - t_start
        emit_result(result)
        return 0
    finally:
        for node in nodes:
            await node.close()


def dhtchat_worker(args: argparse.Namespace) -> int:
    """Run the dhtchat side of the benchmark in this process."""
    check_worker_args(args)
    try:
        return asyncio.run(_dhtchat_main(args))
    except Exception as exc:
        return emit_crash("dhtchat", exc)


# ----------------------------------------------------------------------------- the parent


@dataclass
class WorkerOutcome:
    """What came back from one worker process."""

    impl: str
    result: JsonDict | None
    returncode: int | None
    elapsed_s: float
    note: str = ""


def worker_command(impl: str, args: argparse.Namespace) -> list[str]:
    """argv of the worker process for ``impl``."""
    passthrough = [
        "--nodes",
        str(args.nodes),
        "--ops",
        str(args.ops),
        "--seed",
        str(args.seed),
        "--value-size",
        str(args.value_size),
        "--settle-timeout",
        str(args.settle_timeout),
        "--idle",
        str(args.idle),
        "--op-timeout",
        str(args.op_timeout),
    ]
    if impl == "dhtchat":
        return [sys.executable, str(Path(__file__).resolve()), "--worker", "dhtchat", *passthrough]
    if impl == "opendht":
        return [args.opendht_python, str(BENCH_DIR / "_opendht_worker.py"), *passthrough]
    if impl == "kademlia":
        return [
            args.kademlia_python,
            str(BENCH_DIR / "_kademlia_worker.py"),
            *passthrough,
            "--ksize",
            str(args.kademlia_ksize),
        ]
    raise ValueError(impl)


def run_worker(impl: str, args: argparse.Namespace) -> WorkerOutcome:
    """Run one worker with a wall-clock limit; parse its RESULT line."""
    cmd = worker_command(impl, args)
    print(f"== {impl}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if not Path(cmd[0]).exists() and os.sep in cmd[0]:
        return WorkerOutcome(
            impl,
            {"impl": impl, "available": False, "reason": f"interpreter {cmd[0]} not found"},
            None,
            0.0,
        )
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            timeout=args.worker_timeout,
            check=False,
            cwd=str(REPO_ROOT),
        )
    except subprocess.TimeoutExpired:
        return WorkerOutcome(
            impl, None, None, time.perf_counter() - t0, f"killed after {args.worker_timeout:.0f} s"
        )
    except OSError as exc:
        return WorkerOutcome(
            impl,
            {"impl": impl, "available": False, "reason": f"cannot start {cmd[0]}: {exc}"},
            None,
            0.0,
        )
    elapsed = time.perf_counter() - t0
    result: JsonDict | None = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX) :])
            except json.JSONDecodeError:
                result = None
    note = "" if result is not None else f"no result line (exit status {proc.returncode})"
    return WorkerOutcome(impl, result, proc.returncode, elapsed, note)


METRICS: list[tuple[str, str, str]] = [
    # (label, phase, key path within the phase summary)
    ("put p50 ms", "put", "latency_ms.p50"),
    ("put p95 ms", "put", "latency_ms.p95"),
    ("put mean ms", "put", "latency_ms.mean"),
    ("put CPU ms/op", "put", "cpu_ms_per_op"),
    ("put CPU ms/op, net of idle", "put", "cpu_ms_per_op_net_idle"),
    ("put success", "put", "success_rate"),
    ("get p50 ms", "get", "latency_ms.p50"),
    ("get p95 ms", "get", "latency_ms.p95"),
    ("get mean ms", "get", "latency_ms.mean"),
    ("get CPU ms/op", "get", "cpu_ms_per_op"),
    ("get CPU ms/op, net of idle", "get", "cpu_ms_per_op_net_idle"),
    ("get success", "get", "success_rate"),
]
RATIO_LABELS = [label for label, _, _ in METRICS if "success" not in label]


def metric(result: JsonDict, phase: str, path: str) -> float:
    """A number from a worker result, NaN when absent."""
    return _num(result, phase, *path.split("."))


def fmt(value: float, label: str) -> str:
    if math.isnan(value):
        return "n/a"
    if "success" in label:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return math.nan
    return a / b


def _num(result: JsonDict, *path: str) -> float:
    node: Any = result
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else math.nan


def _cell(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


_EXTRA_ROWS: list[tuple[str, Callable[[JsonDict], str]]] = [
    ("idle CPU (cores)", lambda r: _cell(_num(r, "idle_cpu_frac"), ".4f")),
    (
        "routing table min/mean",
        lambda r: (
            _cell(_num(r, "routing_table", "min"), ".0f")
            + "/"
            + _cell(_num(r, "routing_table", "mean"), ".1f")
        ),
    ),
    ("storers per put (mean)", lambda r: _cell(_num(r, "put", "storers_mean"), ".1f")),
    ("gets answered locally", lambda r: _cell(_num(r, "get_local_hits"), ".0f")),
    (
        "bootstrap+settle s",
        lambda r: _cell(_num(r, "bootstrap_s") + _num(r, "settle_s"), ".2f"),
    ),
    ("worker wall s", lambda r: _cell(_num(r, "worker_wall_s"), ".1f")),
]


def build_report(outcomes: Sequence[WorkerOutcome]) -> tuple[str, JsonDict]:
    """The printed table and the ratios, from the worker results."""
    ok = {
        o.impl: o.result
        for o in outcomes
        if o.result is not None and o.result.get("available") and "put" in o.result
    }
    lines: list[str] = []
    for o in outcomes:
        if o.impl in ok:
            continue
        res = o.result or {}
        reason = res.get("reason") or o.note or "failed"
        state = "UNAVAILABLE" if res.get("available") is False else "FAILED"
        lines.append(f"{o.impl}: {state} ({reason})")
    names = [o.impl for o in outcomes if o.impl in ok]
    if names:
        width = max(len(label) for label, _, _ in METRICS) + 2
        lines.append("".join([f"{'metric':<{width}}", *(f"{n:>12}" for n in names)]))
        for label, phase, path in METRICS:
            cells = [f"{fmt(metric(ok[n], phase, path), label):>12}" for n in names]
            lines.append(f"{label:<{width}}" + "".join(cells))
        for label, getter in _EXTRA_ROWS:
            lines.append(f"{label:<{width}}" + "".join(f"{getter(ok[n]):>12}" for n in names))
    ratios: JsonDict = {}
    if "dhtchat" in ok:
        for other in ("opendht", "kademlia"):
            if other not in ok:
                continue
            ratios[f"dhtchat/{other}"] = {
                label: ratio(metric(ok["dhtchat"], phase, path), metric(ok[other], phase, path))
                for label, phase, path in METRICS
                if label in RATIO_LABELS
            }
    if ratios:
        lines.append("")
        lines.append("ratios (dhtchat / other; > 1 means dhtchat is slower or uses more CPU)")
        cols = list(ratios)
        width = max(len(label) for label in RATIO_LABELS) + 2
        lines.append(f"{'metric':<{width}}" + "".join(f"{c:>18}" for c in cols))
        for label in RATIO_LABELS:
            cells = []
            for c in cols:
                value = ratios[c][label]
                cells.append(f"{'n/a' if math.isnan(value) else f'{value:.2f}x':>18}")
            lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines), ratios


def cpu_model() -> str:
    """The CPU's model name on Linux, else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="64-node loopback DHT benchmark: dhtchat vs OpenDHT vs kademlia",
    )
    add_worker_arguments(parser)
    parser.add_argument(
        "--only",
        default=",".join(IMPLEMENTATIONS),
        help="comma-separated subset of dhtchat,opendht,kademlia",
    )
    parser.add_argument("--json", metavar="OUT", help="also write all results as JSON")
    parser.add_argument(
        "--opendht-python",
        default="/usr/bin/python3",
        help="interpreter with Debian's python3-opendht (/usr/bin/python3)",
    )
    parser.add_argument(
        "--kademlia-python",
        default=sys.executable,
        help="interpreter with the kademlia package (this one)",
    )
    parser.add_argument(
        "--kademlia-ksize",
        type=int,
        default=20,
        help="k of the kademlia servers (20, the library's default)",
    )
    parser.add_argument(
        "--worker-timeout",
        type=float,
        default=900.0,
        help="wall-clock limit per worker process, s (900)",
    )
    parser.add_argument("--worker", choices=["dhtchat"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "dhtchat":
        return dhtchat_worker(args)
    check_worker_args(args)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(IMPLEMENTATIONS))
    if unknown or not selected:
        raise SystemExit(f"--only takes names from {','.join(IMPLEMENTATIONS)}; got {unknown}")
    selected = [name for name in IMPLEMENTATIONS if name in selected]

    outcomes: list[WorkerOutcome] = []
    for impl in selected:
        outcome = run_worker(impl, args)
        if outcome.result is not None:
            outcome.result["worker_wall_s"] = outcome.elapsed_s
        outcomes.append(outcome)
        print(
            f"== {impl}: finished in {outcome.elapsed_s:.1f} s"
            f"{' (' + outcome.note + ')' if outcome.note else ''}",
            file=sys.stderr,
            flush=True,
        )

    table, ratios = build_report(outcomes)
    print()
    print(
        f"DHT loopback benchmark: {args.nodes} nodes, {args.ops} puts + {args.ops} gets, "
        f"seed {args.seed}, {args.value_size}-byte values, "
        f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}"
    )
    print(
        "latency: wall time of one op (sequential ops, failures included); "
        "CPU: process CPU of the whole N-node network per op"
    )
    print(table)

    if args.json:
        report = {
            "config": {k: v for k, v in vars(args).items() if k not in ("worker",)},
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "processor": cpu_model(),
            },
            "results": {
                o.impl: o.result or {"impl": o.impl, "available": False, "reason": o.note}
                for o in outcomes
            },
            "ratios": ratios,
        }
        Path(args.json).write_text(
            json.dumps(without_nan(report), indent=2, allow_nan=False) + "\n"
        )
        print(f"\nwrote {args.json}")

    dhtchat = next((o for o in outcomes if o.impl == "dhtchat"), None)
    if dhtchat is None:
        return 0
    good = (
        dhtchat.result is not None and dhtchat.result.get("available") and "put" in dhtchat.result
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
