"""Simulation outputs: ``metrics.json``, ``timing.json``, ``lookups.csv`` and PNG plots.

``metrics.json`` is a pure function of the scenario (sorted keys, rounded floats, no wall
time), so two runs with the same seed produce byte-identical files; wall-clock numbers go to
``timing.json``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from dhtchat.sim.accel import status as accel_status
from dhtchat.sim.hugepages import allocator_description
from dhtchat.sim.runner import LookupRecord, RunResult

RATIO_METRICS = (
    ("lookups.success_rate", "success_rate"),
    ("lookups.exact_k_rate", "exact_k_rate"),
    ("lookups.latency_ms.p50", "latency_p50"),
    ("lookups.latency_ms.p95", "latency_p95"),
    ("lookups.hops.mean", "hops_mean"),
    ("messages_total", "messages_total"),
    ("bytes_total", "bytes_total"),
)


def dig(data: dict[str, Any], dotted: str) -> Any:
    """``dig(m, "a.b.c")`` is ``m["a"]["b"]["c"]`` (None when absent)."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def add_baseline(metrics: dict[str, Any], name: str, baseline: dict[str, Any]) -> None:
    """Attach a baseline's metrics and the ratios dhtchat / baseline."""
    metrics.setdefault("baseline", {})[name] = baseline
    ratios: dict[str, float | None] = {}
    for path, label in RATIO_METRICS:
        ours, theirs = dig(metrics, path), dig(baseline, path)
        if isinstance(ours, int | float) and isinstance(theirs, int | float) and theirs:
            ratios[label] = round(ours / theirs, 6)
        else:
            ratios[label] = None
    metrics.setdefault("ratios", {})[f"dhtchat/{name}"] = ratios


def metrics_json(metrics: dict[str, Any]) -> str:
    """Canonical JSON text of the metrics (stable across runs)."""
    return json.dumps(metrics, sort_keys=True, indent=2) + "\n"


def write_outputs(result: RunResult, out_dir: Path, *, plots: bool = True,
                  baseline_wall_seconds: float | None = None) -> list[Path]:
    """Write every output file; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "metrics.json"
    path.write_text(metrics_json(result.metrics))
    written.append(path)
    timing: dict[str, float | str] = {"wall_seconds": round(result.wall_seconds, 3),
                                      "code": accel_status(),
                                      "allocator": allocator_description(os.environ)}
    if baseline_wall_seconds is not None:
        timing["baseline_wall_seconds"] = round(baseline_wall_seconds, 3)
    path = out_dir / "timing.json"
    path.write_text(json.dumps(timing, indent=2) + "\n")
    written.append(path)
    path = out_dir / "lookups.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(LookupRecord)])
        for record in sorted(result.lookups, key=lambda r: (r.kind, r.index)):
            row = asdict(record)
            writer.writerow([int(v) if isinstance(v, bool) else v for v in row.values()])
    written.append(path)
    if plots:
        written += _plots(result, out_dir)
    return written


def _plots(result: RunResult, out_dir: Path) -> list[Path]:
    # matplotlib is slow to import and only needed here; Agg renders without a display.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    main = [r for r in result.lookups if r.kind in ("lookup", "get")]
    name = result.metrics.get("scenario", {}).get("name", "")
    latencies = sorted(r.latency_ms for r in main)
    if latencies:
        fig, ax = plt.subplots(figsize=(6, 4))
        ys = [(i + 1) / len(latencies) for i in range(len(latencies))]
        ax.plot(latencies, ys, label="dhtchat")
        ax.set_xscale("log")
        ax.set_xlabel("lookup latency (ms, virtual time, log scale)")
        ax.set_ylabel("CDF")
        ax.set_title(f"Lookup latency CDF — {name}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out_dir / "latency_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
        fig, ax = plt.subplots(figsize=(6, 4))
        hops = [r.hops for r in main]
        bins = range(min(hops), max(hops) + 2)
        ax.hist(hops, bins=list(bins), align="left", rwidth=0.8)
        expected = result.metrics["lookups"]["hops"]["expected_stutzbach_rejaie"]
        ax.axvline(expected, color="red", linestyle="--",
                   label=f"log2(N)/(1.33+log2 k) = {expected:.2f}")
        ax.set_xlabel("hops to the closest node")
        ax.set_ylabel("lookups")
        ax.set_title(f"Hops — {name}")
        ax.legend()
        path = out_dir / "hops_histogram.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if result.timeline:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([m for m, _ in result.timeline], [v for _, v in result.timeline], marker=".")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("minutes into the workload")
        ax.set_ylabel("lookup success rate")
        ax.set_title(f"Success over time — {name}")
        ax.grid(True, alpha=0.3)
        path = out_dir / "success_over_time.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
