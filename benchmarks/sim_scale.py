#!/usr/bin/env python3
"""Simulator scale benchmark: wall time and peak memory of large runs on this machine.

Usage::

    python benchmarks/sim_scale.py [--only 10k,100k] [--json OUT]

Runs, each in a fresh process (so peak RSS is the run's own):

* ``10k``: 10,000 nodes with realistic joins (bootstrap, self-lookup, refresh) then 10,000
  lookups, spread over the machine's 2 cores (the scenario sets ``workers = 2``; see
  docs/simulator.md, "Parallel runs"). Target: under 2 minutes.
* ``100k``: 100,000 nodes with the oracle warm start then 100,000 lookups. Target: under 30
  minutes and under 8 GB peak memory.

Each child runs the way ``dhtchat simulate`` does: with the hot path compiled by mypyc
(``dhtchat/sim/accel.py``, built once into the cache) and glibc malloc on transparent huge
pages where the machine has them (``dhtchat/sim/hugepages.py``); the output names both.
``DHTCHAT_SIM_COMPILE=0`` / ``DHTCHAT_SIM_HUGEPAGES=0`` measure without them.

Peak memory is the total over the run's processes (an upper bound for a parallel run: this
process's peak plus workers x the largest worker's); CPU time and page faults include the
workers.

Printed next to each: the target, the ratio to it, and the PeerSim anchor from the issue
(PeerSim, Java: 18.5 min for 10k nodes; 4.6 h and 12.7-16.5 GB for 100k), with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

RUNS: dict[str, dict[str, Any]] = {
    "10k": {"scenario": "simulations/scaling_10k.toml", "target_s": 120.0,
            "peersim_s": 18.5 * 60, "peersim_gb": None, "target_gb": None},
    "100k": {"scenario": "simulations/scaling_100k.toml", "target_s": 1800.0,
             "peersim_s": 4.6 * 3600, "peersim_gb": 12.7, "target_gb": 8.0},
}


def _child(scenario: str) -> None:
    sys.path.insert(0, str(ROOT))
    from dhtchat.sim.accel import activate  # noqa: PLC0415

    code = activate()  # before anything imports the core, as `dhtchat simulate` does
    from dhtchat.sim.hugepages import allocator_description  # noqa: PLC0415
    from dhtchat.sim.runner import Scenario, run  # noqa: PLC0415

    spec = Scenario.from_toml(ROOT / scenario)
    started = time.perf_counter()
    result = run(spec, progress=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # A parallel run (Scenario.workers > 1) does its work in child processes: RUSAGE_CHILDREN
    # has their CPU time and the largest one's peak, so the total is at most this process's
    # peak plus workers x that.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = spec.workers if spec.workers > 1 else 0
    peak_kb = usage.ru_maxrss + workers * children.ru_maxrss
    lookups = result.metrics["lookups"]
    print("RESULT " + json.dumps({
        "nodes": spec.nodes, "join": spec.join, "lookups": lookups["count"],
        "wall_s": round(wall, 1), "peak_gb": round(peak_kb / 1024**2, 3),
        "success_rate": lookups["success_rate"], "exact_k_rate": lookups["exact_k_rate"],
        "hops_mean": lookups["hops"]["mean"],
        "hops_expected": lookups["hops"]["expected_stutzbach_rejaie"],
        "messages_total": result.metrics["messages_total"],
        "signatures_verified": result.metrics["signatures_verified"],
        "events": result.metrics["events"],
        "us_per_event": round(wall / max(1, result.metrics["events"]) * 1e6, 2),
        "code": code, "allocator": allocator_description(os.environ),
        # page faults that needed I/O or the host (a disturbed run shows up here)
        "major_page_faults": usage.ru_majflt + children.ru_majflt,
        "cpu_s": round(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
                       1),
        "processes": max(1, workers),
        "peak_per_process_gb": round(max(usage.ru_maxrss, children.ru_maxrss) / 1024**2, 3),
    }), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="10k,100k", help="comma-separated: 10k,100k")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return 0
    results = {}
    # Build the compiled hot path (if this source version has none yet) before any measured
    # run: a build in the measured process would count the compiler among its children.
    subprocess.run([sys.executable, "-c", "from dhtchat.sim.accel import activate; activate()"],
                   check=False, cwd=ROOT, timeout=1800)
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in RUNS:
            print(f"unknown run {name!r}; choose from {', '.join(RUNS)}", file=sys.stderr)
            return 2
        spec = RUNS[name]
        print(f"== {name}: {spec['scenario']}", file=sys.stderr, flush=True)
        # the child runs as `dhtchat simulate` does: on huge pages where the machine has
        # them (dhtchat/sim/hugepages.py), with the compiled hot path (dhtchat/sim/accel.py)
        sys.path.insert(0, str(ROOT))
        from dhtchat.sim.hugepages import simulator_environment  # noqa: PLC0415

        env = simulator_environment(os.environ) or dict(os.environ)
        proc = subprocess.run([sys.executable, __file__, "--child", spec["scenario"]],
                              stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT, env=env,
                              timeout=3 * 3600)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name}: failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        result = json.loads(line[len("RESULT "):])
        result["target_s"] = spec["target_s"]
        result["time_vs_target"] = round(result["wall_s"] / spec["target_s"], 3)
        result["time_vs_peersim"] = round(result["wall_s"] / spec["peersim_s"], 4)
        if spec["target_gb"]:
            result["memory_vs_target"] = round(result["peak_gb"] / spec["target_gb"], 3)
            result["memory_vs_peersim"] = round(result["peak_gb"] / spec["peersim_gb"], 3)
        results[name] = result
        print(f"{name}: {result['nodes']} nodes ({result['join']} join) + {result['lookups']} "
              f"lookups in {result['wall_s']} s (target {spec['target_s']:.0f} s: "
              f"{result['time_vs_target']}x; PeerSim {spec['peersim_s']:.0f} s: "
              f"{result['time_vs_peersim']}x), peak {result['peak_gb']} GB"
              + (f" ({result['processes']} worker processes, each at most "
                 f"{result['peak_per_process_gb']} GB)" if result["processes"] > 1 else "")
              + (f" (target {spec['target_gb']} GB: {result['memory_vs_target']}x; PeerSim "
                 f"{spec['peersim_gb']}+ GB: {result['memory_vs_peersim']}x)"
                 if spec["target_gb"] else "")
              + f"; success {result['success_rate']}, exact-k {result['exact_k_rate']}, hops "
              f"{result['hops_mean']} (expected {result['hops_expected']}), "
              f"{result['us_per_event']} us/event, signatures "
              f"{'verified' if result['signatures_verified'] else 'not verified'}; "
              f"{result['code']}, allocator {result['allocator']}; CPU {result['cpu_s']} s, "
              f"{result['major_page_faults']} major page faults")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
