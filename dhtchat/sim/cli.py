"""``dhtchat simulate``: run one scenario and write its outputs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from dhtchat.sim.launch import launched
from dhtchat.sim.models import latency_from_spec
from dhtchat.sim.output import add_baseline, write_outputs
from dhtchat.sim.runner import Scenario, run


def load_scenario(args: argparse.Namespace) -> Scenario:
    """The scenario file (or defaults) with command-line overrides applied."""
    scenario = Scenario.from_toml(Path(args.scenario)) if args.scenario else Scenario()
    overrides = {name: getattr(args, name) for name in ("nodes", "lookups", "seed", "k",
                                                         "alpha", "join", "churn", "baseline",
                                                         "workers")
                 if getattr(args, name, None) is not None}
    scenario = dataclasses.replace(scenario, **overrides)
    scenario.validate()
    return scenario


def simulate_main(args: argparse.Namespace) -> int:
    """Entry point behind ``dhtchat simulate``; returns the exit code."""
    try:
        scenario = load_scenario(args)
    except FileNotFoundError as exc:
        print(f"error: no such scenario file: {exc.filename}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"error: bad scenario: {exc}", file=sys.stderr)
        return 2
    # In the process `dhtchat simulate` relaunches itself into, nothing but output follows.
    result = run(scenario, progress=True,
                 last_in_process=launched())
    baseline_wall = None
    if scenario.baseline == "kademlia":
        from dhtchat.sim.baseline import run_kademlia_baseline  # noqa: PLC0415

        started = time.monotonic()
        churn = scenario.churn_model()
        baseline = run_kademlia_baseline(
            nodes=scenario.nodes, lookups=scenario.lookups, seed=scenario.seed,
            latency=latency_from_spec(scenario.latency, scenario.seed),
            k=scenario.baseline_k, alpha=scenario.alpha, loss=scenario.loss,
            lookup_interval=1.0 / scenario.rate, churn=churn,
            churn_warmup=scenario.settle if churn is not None else 0.0,
        )
        baseline_wall = time.monotonic() - started
        add_baseline(result.metrics, "kademlia", baseline)
    out = Path(args.out)
    written = write_outputs(result, out, plots=not args.no_plots,
                            baseline_wall_seconds=baseline_wall)
    m = result.metrics
    lookups = m["lookups"]
    print(f"{scenario.name}: {scenario.nodes} nodes, {lookups['count']} {lookups['kind']} "
          f"lookups: success {lookups['success_rate']:.4f}, exact-k "
          f"{lookups['exact_k_rate']:.4f}, hops {lookups['hops']['mean']:.2f} (expected "
          f"{lookups['hops']['expected_stutzbach_rejaie']:.2f}), latency p50 "
          f"{lookups['latency_ms']['p50']:.0f} ms p95 {lookups['latency_ms']['p95']:.0f} ms; "
          f"{m['messages_total']} messages; {result.wall_seconds:.1f} s wall")
    for name, ratios in m.get("ratios", {}).items():
        base = m["baseline"][name.split("/", 1)[1]]["lookups"]
        print(f"baseline {name.split('/', 1)[1]}: success {base['success_rate']:.4f}, latency "
              f"p50 {base['latency_ms']['p50']:.0f} ms; ratios {name}: "
              + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
