"""Parameter sweeps: a grid of scenarios, each run several times, aggregated with 95% CIs.

A sweep file is TOML::

    name = "k-vs-size"                      # optional (default: the file's stem)
    repetitions = 5                         # runs per grid point (default 1)
    metrics = ["lookups.success_rate", "lookups.hops.mean"]   # dotted paths (optional)
    confidence = 0.95                       # optional

    [base]                                  # Scenario fields shared by every point (flat)
    join = "oracle"
    lookups = 200

    [grid]                                  # cartesian product, in this order
    nodes = [100, 1000, 10000]
    k = [4, 8, 16]

Repetition ``r`` of a point runs with seed ``point seed`` for ``r == 0`` (so a one-repetition
sweep reproduces the single scenarios) and ``derive_seed(point seed, "sweep", r)`` (63 bits)
otherwise; the point seed is ``seed`` from the grid, else from ``[base]``, else the Scenario
default. Every point therefore uses the same seeds (common random numbers), which makes
differences between points less noisy.

Runs execute in local processes (:class:`~concurrent.futures.ProcessPoolExecutor`) or on a
Dask cluster (``scheduler="tcp://host:8786"``, or ``"local"`` for a throw-away
:class:`distributed.LocalCluster` on 127.0.0.1). Remote Dask workers need the same dhtchat
version installed. The result is a pure function of the spec: results are ordered by point and
repetition, never by completion.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import functools
import io
import itertools
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dhtchat.sim.accel import activate
from dhtchat.sim.network import derive_seed
from dhtchat.sim.runner import Scenario, run

__all__ = [
    "DEFAULT_METRICS",
    "Aggregate",
    "PointResult",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "WriteSummary",
    "aggregate",
    "load_sweep",
    "plan_sweep",
    "run_sweep",
    "run_task",
    "sweep_main",
    "t_critical",
    "write_sweep",
]

DEFAULT_METRICS: tuple[str, ...] = (
    "lookups.success_rate",
    "lookups.exact_k_rate",
    "lookups.hops.mean",
    "lookups.latency_ms.p50",
    "lookups.latency_ms.p95",
    "lookups.requests_mean",
)
FORMAT = "dhtchat-sweep/1"
_TOP_LEVEL_KEYS = ("name", "base", "grid", "repetitions", "metrics", "confidence")
_SCENARIO_FIELDS = {f.name: f for f in fields(Scenario)}
_SEED_MASK = (1 << 63) - 1  # seeds stay representable as TOML integers


class SweepError(ValueError):
    """A bad sweep file or spec; the message is one line, meant for the user."""


# ---------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file. ``grid`` keeps the file's key and value order."""

    name: str = "sweep"
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    repetitions: int = 1
    metrics: tuple[str, ...] = DEFAULT_METRICS
    confidence: float = 0.95

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, default_name: str = "sweep") -> SweepSpec:
        """Build and check a spec from parsed TOML; raises :class:`SweepError`."""
        unknown = sorted(set(data) - set(_TOP_LEVEL_KEYS))
        if unknown:
            raise SweepError(f"unknown sweep keys: {', '.join(unknown)} (expected "
                             f"{', '.join(_TOP_LEVEL_KEYS)}; scenario fields go in [base])")
        name = data.get("name", default_name)
        if not isinstance(name, str) or not name:
            raise SweepError("name must be a non-empty string")
        base = data.get("base", {})
        if not isinstance(base, dict):
            raise SweepError("[base] must be a table of scenario fields")
        grid = data.get("grid", {})
        if not isinstance(grid, dict):
            raise SweepError("[grid] must be a table mapping scenario fields to lists")
        repetitions = data.get("repetitions", 1)
        if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
            raise SweepError("repetitions must be an integer >= 1")
        metrics = data.get("metrics", list(DEFAULT_METRICS))
        if (not isinstance(metrics, list) or not metrics
                or not all(isinstance(m, str) for m in metrics)):
            raise SweepError("metrics must be a non-empty list of dotted paths, "
                             "e.g. [\"lookups.success_rate\"]")
        confidence = data.get("confidence", 0.95)
        if (isinstance(confidence, bool) or not isinstance(confidence, int | float)
                or not 0 < confidence < 1):
            raise SweepError("confidence must be a number in (0, 1), e.g. 0.95")
        spec = cls(name=name,
                   base={k: _check_value(k, v, "[base]") for k, v in base.items()},
                   grid={k: _check_grid_values(k, v) for k, v in grid.items()},
                   repetitions=repetitions, metrics=tuple(metrics),
                   confidence=float(confidence))
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check names and values (also of specs built in code); raises :class:`SweepError`."""
        for key in self.base:
            _check_field_name(key, "[base]")
        for key in self.grid:
            _check_field_name(key, "[grid]")
        for metric in self.metrics:
            if not metric or any(not part for part in metric.split(".")):
                raise SweepError(f"bad metric path {metric!r}: use dotted keys such as "
                                 f"'lookups.hops.mean'")
        duplicates = sorted({m for m in self.metrics if self.metrics.count(m) > 1})
        if duplicates:
            raise SweepError(f"metric listed twice: {', '.join(duplicates)}")
        if self.repetitions < 1:
            raise SweepError("repetitions must be an integer >= 1")
        plan_sweep(self)  # every point must be a valid Scenario

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what ``sweep.json`` records)."""
        return {"name": self.name, "base": dict(self.base),
                "grid": {k: list(v) for k, v in self.grid.items()},
                "repetitions": self.repetitions, "metrics": list(self.metrics),
                "confidence": self.confidence}


def load_sweep(path: Path) -> SweepSpec:
    """Read and check a sweep file; every problem is a one-line :class:`SweepError`."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise SweepError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SweepError(f"{path} is not UTF-8 text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return SweepSpec.from_dict(data, default_name=path.stem)
    except SweepError as exc:
        raise SweepError(f"{path}: {exc}") from exc


def _check_field_name(key: str, where: str) -> None:
    if key == "name":
        raise SweepError(f"{where}: 'name' is not a parameter; set the sweep's name at the "
                         f"top level")
    if key not in _SCENARIO_FIELDS:
        close = difflib.get_close_matches(key, list(_SCENARIO_FIELDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SweepError(f"{where}: unknown scenario field {key!r}{hint}")


def _check_value(key: str, value: Any, where: str) -> Any:
    """Check a value's type against the Scenario field; ints become floats for float fields."""
    _check_field_name(key, where)
    f = _SCENARIO_FIELDS[key]
    default: Any = f.default_factory() if callable(f.default_factory) else f.default
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        raise SweepError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
    return value


def _check_grid_values(key: str, values: Any) -> list[Any]:
    _check_field_name(key, "[grid]")
    if not isinstance(values, list) or not values:
        raise SweepError(f"[grid]: {key} must be a non-empty list of values")
    checked = [_check_value(key, v, "[grid]") for v in values]
    seen: set[str] = set()
    for value in checked:
        text = json.dumps(value, sort_keys=True)
        if text in seen:
            raise SweepError(f"[grid]: {key} lists {text} twice")
        seen.add(text)
    return checked


# ---------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Point:
    index: int
    point_id: str
    params: dict[str, Any]
    seeds: tuple[int, ...]
    scenarios: tuple[Scenario, ...]  # one per repetition


def repetition_seed(point_seed: int, repetition: int) -> int:
    """The seed of repetition ``repetition``: the point's own seed first, then derived ones."""
    if repetition == 0:
        return point_seed
    return derive_seed(point_seed, "sweep", repetition) & _SEED_MASK


def _points(spec: SweepSpec) -> list[_Point]:
    keys = list(spec.grid)
    combos = list(itertools.product(*(spec.grid[k] for k in keys)))
    width = max(3, len(str(len(combos) - 1)))
    points: list[_Point] = []
    for index, combo in enumerate(combos):
        point_id = f"p{index:0{width}d}"
        params = dict(zip(keys, combo, strict=True))
        values = {**spec.base, **params}
        try:
            template = Scenario.from_dict({**values, "name": spec.name})
        except (ValueError, TypeError) as exc:
            where = ", ".join(f"{k}={_fmt_param(v)}" for k, v in params.items())
            raise SweepError(f"invalid scenario{' at ' + where if where else ''}: {exc}"
                             ) from exc
        seeds = tuple(repetition_seed(template.seed, r) for r in range(spec.repetitions))
        scenarios = tuple(replace(template, seed=seed, name=f"{spec.name}/{point_id}/r{r}")
                          for r, seed in enumerate(seeds))
        points.append(_Point(index, point_id, params, seeds, scenarios))
    return points


def plan_sweep(spec: SweepSpec) -> list[tuple[str, Scenario]]:
    """Every run of the sweep as ``(point_id, scenario)``, by point then by repetition.

    The scenario's ``seed`` is the repetition's seed and its ``name`` is
    ``"<sweep>/<point_id>/r<repetition>"``.
    """
    return [(p.point_id, s) for p in _points(spec) for s in p.scenarios]


# ---------------------------------------------------------------------------- statistics


def _two_sided_probability(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) * tan(theta)) for Student's t with integer ``df`` (finite series)."""
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    total = 0.0
    if df % 2:
        term = c
        for j in range((df - 1) // 2):
            total += term
            term *= c2 * (2 * j + 2) / (2 * j + 3)
        return 2.0 / math.pi * (theta + s * total)
    term = 1.0
    for j in range(df // 2):
        total += term
        term *= c2 * (2 * j + 1) / (2 * j + 2)
    return s * total


def _t_series(df: int, confidence: float) -> float:
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _two_sided_probability(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def _t_expansion(df: int, confidence: float) -> float:
    """Cornish-Fisher expansion of the t quantile in powers of 1/df (accurate for large df)."""
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


_SERIES_MAX_DF = 200


@functools.lru_cache(maxsize=256)
def t_critical(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student's t critical value: P(|T| <= t) = confidence with ``df`` degrees.

    Exact (finite series for integer df, solved by bisection) up to df 200, then the
    Cornish-Fisher expansion, whose error there is far below 1e-9.
    """
    if df < 1:
        raise ValueError("df must be >= 1")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if df <= _SERIES_MAX_DF:
        return _t_series(df, confidence)
    return _t_expansion(df, confidence)


@dataclass(frozen=True)
class Aggregate:
    """Summary of one metric at one point over its repetitions. ``None``: undefined (n = 1)."""

    mean: float
    std: float | None  # sample standard deviation (n - 1)
    n: int
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n,
                "ci_low": self.ci_low, "ci_high": self.ci_high}


def _r9(value: float) -> float:
    return round(value, 9) + 0.0  # + 0.0 turns -0.0 into 0.0


def aggregate(values: Sequence[float], confidence: float = 0.95) -> Aggregate:
    """Mean, sample std and the Student's t confidence interval of the mean."""
    if not values:
        raise ValueError("no values to aggregate")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Aggregate(_r9(mean), None, 1, None, None)
    std = statistics.stdev(values)
    half = t_critical(n - 1, confidence) * std / math.sqrt(n)
    return Aggregate(_r9(mean), _r9(std), n, _r9(mean - half), _r9(mean + half))


# ---------------------------------------------------------------------------- execution


def run_task(scenario: Scenario) -> dict[str, Any]:
    """One run, as executed by a worker process or Dask worker: returns only the metrics."""
    return run(scenario, progress=False).metrics


def _numeric_paths(metrics: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_paths(value, path + ".")
        elif isinstance(value, int | float):
            yield path


def _metric_value(metrics: dict[str, Any], path: str) -> float:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            node = None
            break
        node = node[part]
    if isinstance(node, int | float):  # bools count as 0/1
        return float(node)
    available = sorted(_numeric_paths(metrics))
    close = difflib.get_close_matches(path, available, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    kind = "not a number" if node is not None else "not found"
    raise SweepError(f"metric {path!r} {kind} in the run's metrics{hint}")


def _probe_metrics(spec: SweepSpec, first: Scenario) -> None:
    """Fail fast on a mistyped metric path with a tiny version of the first scenario."""
    probe = replace(first, nodes=min(first.nodes, 16), lookups=0, settle=0.0, join="oracle")
    try:
        metrics = run_task(probe)
    except Exception:  # only an early check: the real runs will report the failure
        return
    for path in spec.metrics:
        _metric_value(metrics, path)


class _Progress:
    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            elapsed = time.monotonic() - self.start
            end = "\n" if self.done == self.total else ""
            print(f"\r{self.label}: {self.done}/{self.total} runs {elapsed:7.1f}s", end=end,
                  file=sys.stderr, flush=True)


def _collect(results: list[dict[str, Any] | None], index: int, scenario: Scenario,
             outcome: Callable[[], dict[str, Any]], progress: _Progress) -> None:
    try:
        results[index] = outcome()
    except Exception as exc:
        exc.add_note(f"in sweep run {scenario.name} (seed {scenario.seed})")
        raise
    progress.step()


def _run_processes(scenarios: list[Scenario], workers: int,
                   progress: _Progress) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | None] = [None] * len(scenarios)
    if workers == 1:
        for i, scenario in enumerate(scenarios):
            _collect(results, i, scenario, functools.partial(run_task, scenario), progress)
        return [r for r in results if r is not None]
    # spawn: independent of the platform default, and safe in processes that run threads
    context = multiprocessing.get_context("spawn")
    # workers use the compiled hot path when the parent's build exists (they never build)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=functools.partial(activate, build_if_missing=False))
    try:
        pending: dict[Future[dict[str, Any]], int] = {
            pool.submit(run_task, scenario): i for i, scenario in enumerate(scenarios)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                i = pending.pop(future)
                _collect(results, i, scenarios[i], future.result, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [r for r in results if r is not None]


def _run_dask(scenarios: list[Scenario], scheduler: str, workers: int | None,
              progress: _Progress) -> tuple[list[dict[str, Any]], str]:
    """Run on Dask; returns the metrics in order and a description of the cluster."""
    try:
        import distributed  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise SweepError("a Dask scheduler needs the 'distributed' package "
                         "(pip install 'dhtchat[sim]')") from exc
    with contextlib.ExitStack() as stack:
        if scheduler == "local":
            n_workers = workers or 2
            cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=None, host="127.0.0.1", protocol="tcp://")
            stack.enter_context(cluster)
            client = distributed.Client(cluster)  # type: ignore[no-untyped-call]
            backend = f"dask-local({n_workers}) at {cluster.scheduler_address}"
        else:
            try:
                client = distributed.Client(  # type: ignore[no-untyped-call]
                    scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise SweepError(f"cannot connect to the Dask scheduler {scheduler}: {exc}"
                                 ) from exc
            backend = f"dask({scheduler})"
        stack.enter_context(client)
        futures = client.map(run_task, scenarios, pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[dict[str, Any] | None] = [None] * len(scenarios)
        try:
            for future in distributed.as_completed(futures):  # type: ignore[no-untyped-call]
                i = index[future.key]
                _collect(results, i, scenarios[i], future.result, progress)
        finally:
            client.cancel(futures)  # type: ignore[no-untyped-call]
    return [r for r in results if r is not None], backend


@dataclass(frozen=True)
class PointResult:
    """One grid point: its parameters, the repetitions' raw values and their aggregates."""

    point_id: str
    params: dict[str, Any]
    seeds: tuple[int, ...]
    values: dict[str, tuple[float, ...]]  # metric -> one value per repetition
    aggregates: dict[str, Aggregate]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.point_id, "params": dict(self.params), "seeds": list(self.seeds),
                "metrics": {m: {**self.aggregates[m].to_dict(), "values": list(v)}
                            for m, v in self.values.items()}}


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep. Everything but ``backend`` and ``wall_seconds`` is deterministic."""

    spec: SweepSpec
    points: list[PointResult]
    backend: str
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """What ``sweep.json`` holds; ``execution`` is the only non-deterministic part."""
        return {"format": FORMAT, "spec": self.spec.to_dict(),
                "points": [p.to_dict() for p in self.points],
                "execution": {"backend": self.backend,
                              "wall_seconds": round(self.wall_seconds, 3)}}


def run_sweep(spec: SweepSpec, *, workers: int | None = None, scheduler: str | None = None,
              progress: bool = False) -> SweepResult:
    """Run every point and repetition, locally (processes) or on Dask, and aggregate.

    ``workers``: processes (default ``os.cpu_count()``; 1 runs in this process), or the
    LocalCluster's worker count with ``scheduler="local"`` (default 2). ``scheduler``: a Dask
    scheduler address, or ``"local"``.
    """
    if workers is not None and workers < 1:
        raise SweepError("workers must be >= 1")
    spec.validate()
    points = _points(spec)
    scenarios = [s for p in points for s in p.scenarios]
    if any(s.workers > 1 for s in scenarios):
        raise SweepError("a sweep runs its scenarios in parallel already: set workers = 1 "
                         "(workers > 1 is for single large runs)")
    _probe_metrics(spec, scenarios[0])
    bar = _Progress(len(scenarios), f"sweep {spec.name}", progress)
    start = time.monotonic()
    if scheduler is None:
        count = max(1, min(workers or os.cpu_count() or 1, len(scenarios)))
        metrics = _run_processes(scenarios, count, bar)
        backend = f"processes({count})"
    else:
        metrics, backend = _run_dask(scenarios, scheduler, workers, bar)
    wall = time.monotonic() - start
    results: list[PointResult] = []
    cursor = iter(metrics)
    for point in points:
        runs = [next(cursor) for _ in point.scenarios]
        values = {m: tuple(_metric_value(r, m) for r in runs) for m in spec.metrics}
        results.append(PointResult(point.point_id, dict(point.params), point.seeds, values,
                                   {m: aggregate(v, spec.confidence)
                                    for m, v in values.items()}))
    return SweepResult(spec, results, backend, wall)


# ---------------------------------------------------------------------------- output


@dataclass
class WriteSummary:
    """Files written by :func:`write_sweep`, and notes (e.g. why no plot was made)."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"wrote {path}" for path in self.files]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _fmt_param(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)


def csv_columns(spec: SweepSpec) -> list[str]:
    """The header of ``sweep.csv``: ``point``, the grid parameters, then 4 columns per metric."""
    columns = ["point", *spec.grid]
    for metric in spec.metrics:
        columns += [f"{metric}.mean", f"{metric}.ci_low", f"{metric}.ci_high", f"{metric}.n"]
    return columns


def sweep_csv(result: SweepResult) -> str:
    """``sweep.csv`` as text: one row per grid point."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(result.spec))
    for point in result.points:
        row = [point.point_id, *(_fmt_param(point.params[k]) for k in result.spec.grid)]
        for metric in result.spec.metrics:
            agg = point.aggregates[metric]
            row += [_csv_number(agg.mean), _csv_number(agg.ci_low), _csv_number(agg.ci_high),
                    str(agg.n)]
        writer.writerow(row)
    return buffer.getvalue()


def write_sweep(result: SweepResult, out_dir: Path, *, plot: bool = True) -> WriteSummary:
    """Write ``sweep.json``, ``sweep.csv`` and (with matplotlib) ``sweep.png`` to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = WriteSummary()
    json_path = out_dir / "sweep.json"
    json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", "utf-8")
    summary.files.append(json_path)
    csv_path = out_dir / "sweep.csv"
    csv_path.write_text(sweep_csv(result), "utf-8")
    summary.files.append(csv_path)
    if plot:
        png_path = out_dir / "sweep.png"
        note = _plot(result, png_path)
        if note is None:
            summary.files.append(png_path)
        else:
            summary.notes.append(note)
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plot(result: SweepResult, path: Path) -> str | None:
    """Plot the first metric against the first grid parameter; a note if not possible."""
    spec = result.spec
    if not spec.grid:
        return "no plot: the sweep has no [grid] parameter to plot against"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    x_key, *others = spec.grid
    metric = spec.metrics[0]
    x_values = spec.grid[x_key]
    numeric = all(_is_number(v) for v in x_values)
    positions = {json.dumps(v, sort_keys=True): i for i, v in enumerate(x_values)}
    lines: dict[tuple[str, ...], list[PointResult]] = {}
    for point in result.points:
        label = tuple(f"{k}={_fmt_param(point.params[k])}" for k in others)
        lines.setdefault(label, []).append(point)
    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def x_of(p: PointResult) -> float:
        v = p.params[x_key]
        return float(v) if numeric else float(positions[json.dumps(v, sort_keys=True)])

    for label, unsorted in lines.items():
        members = sorted(unsorted, key=x_of)
        xs = [x_of(p) for p in members]
        aggs = [p.aggregates[metric] for p in members]
        ys = [a.mean for a in aggs]
        low = [a.mean - a.ci_low if a.ci_low is not None else 0.0 for a in aggs]
        high = [a.ci_high - a.mean if a.ci_high is not None else 0.0 for a in aggs]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3,
                    label=", ".join(label) if label else None)
    if not numeric:
        ax.set_xticks(range(len(x_values)), [_fmt_param(v) for v in x_values])
    elif len(x_values) > 2 and min(x_values) > 0 and max(x_values) / min(x_values) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    level = f"{spec.confidence:.0%}"
    ax.set_title(f"{spec.name}: {metric} ({level} CI, {spec.repetitions} repetitions)")
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return None


def format_table(result: SweepResult, max_metrics: int = 4) -> str:
    """A plain-text table of the points: parameters and ``mean ± CI half-width``."""
    spec = result.spec
    metrics = list(spec.metrics[:max_metrics])
    header = ["point", *spec.grid, *metrics]
    rows = [header]
    for point in result.points:
        row = [point.point_id, *(_fmt_param(point.params[k]) for k in spec.grid)]
        for metric in metrics:
            agg = point.aggregates[metric]
            cell = f"{agg.mean:.4g}"
            if agg.ci_low is not None and agg.ci_high is not None:
                cell += f" ± {(agg.ci_high - agg.ci_low) / 2:.3g}"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    if len(spec.metrics) > max_metrics:
        lines.append(f"({len(spec.metrics) - max_metrics} more metrics in sweep.csv)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def sweep_main(argv: list[str]) -> int:
    """``dhtchat simulate sweep SWEEP.toml [--out DIR] [--workers N] [--scheduler ADDR|local]
    [--repetitions R]``: 0 on success, 2 on a bad file or argument."""
    parser = argparse.ArgumentParser(
        prog="dhtchat simulate sweep",
        description="Run a parameter sweep (a [grid] of scenarios, each repeated) and write "
                    "sweep.json, sweep.csv and sweep.png with confidence intervals.")
    parser.add_argument("sweep", metavar="SWEEP.toml", type=Path)
    parser.add_argument("--out", metavar="DIR", type=Path, default=Path("sweep-out"),
                        help="output directory (default: sweep-out)")
    parser.add_argument("--workers", metavar="N", type=_positive_int,
                        help="local processes (default: CPU count) or LocalCluster workers")
    parser.add_argument("--scheduler", metavar="ADDRESS|local",
                        help="run on a Dask scheduler (tcp://host:8786), or 'local' for a "
                             "LocalCluster on 127.0.0.1")
    parser.add_argument("--repetitions", metavar="R", type=_positive_int,
                        help="override the file's repetitions")
    parser.add_argument("--no-plot", action="store_true", help="do not write sweep.png")
    args = parser.parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
        if args.repetitions is not None:
            spec = replace(spec, repetitions=args.repetitions)
        runs = len(plan_sweep(spec))
        print(f"sweep {spec.name}: {runs // spec.repetitions} points x {spec.repetitions} "
              f"repetitions = {runs} runs", file=sys.stderr)
        result = run_sweep(spec, workers=args.workers, scheduler=args.scheduler,
                           progress=sys.stderr.isatty())
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = write_sweep(result, args.out, plot=not args.no_plot)
    print(format_table(result))
    print(f"{runs} runs in {result.wall_seconds:.1f}s on {result.backend}")
    if spec.repetitions == 1:
        print("note: one repetition per point: no confidence intervals (set repetitions)")
    print(summary)
    return 0
