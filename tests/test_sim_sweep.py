"""Parameter sweeps: planning, statistics, execution backends and output files."""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from dhtchat.sim.network import derive_seed
from dhtchat.sim.runner import run
from dhtchat.sim.sweep import (
    DEFAULT_METRICS,
    SweepError,
    SweepResult,
    SweepSpec,
    _t_series,
    aggregate,
    csv_columns,
    load_sweep,
    plan_sweep,
    run_sweep,
    sweep_main,
    t_critical,
    write_sweep,
)

TINY = """\
name = "tiny"
repetitions = 2
metrics = ["lookups.success_rate", "lookups.hops.mean", "lookups.latency_ms.p50"]

[base]
lookups = 30
join = "oracle"

[grid]
nodes = [50, 100]
k = [4, 8]
"""


def _write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def _deterministic(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    data.pop("execution")  # backend and wall time: the only parts allowed to differ
    return data


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> SweepSpec:
    return load_sweep(_write(tmp_path_factory.mktemp("spec"), TINY, "tiny.toml"))


@pytest.fixture(scope="module")
def tiny_result(tiny_spec: SweepSpec) -> SweepResult:
    return run_sweep(tiny_spec, workers=2)


# ---------------------------------------------------------------------------- statistics

# Two-sided 95% (and a few other) critical values of Student's t, from standard tables.
T_TABLE = [
    (1, 0.95, 12.7062047), (2, 0.95, 4.3026527), (3, 0.95, 3.1824463),
    (4, 0.95, 2.7764451), (5, 0.95, 2.5705818), (9, 0.95, 2.2621572),
    (10, 0.95, 2.2281389), (20, 0.95, 2.0859634), (29, 0.95, 2.0452296),
    (30, 0.95, 2.0422725), (60, 0.95, 2.0002978), (120, 0.95, 1.9799304),
    (1000, 0.95, 1.9623391), (5, 0.99, 4.0321430), (10, 0.90, 1.8124611),
    (1, 0.90, 6.3137515),
]


@pytest.mark.parametrize(("df", "confidence", "expected"), T_TABLE)
def test_t_critical_matches_tables(df: int, confidence: float, expected: float) -> None:
    assert t_critical(df, confidence) == pytest.approx(expected, abs=2e-7)


def test_t_critical_is_continuous_where_the_method_changes() -> None:
    # exact series up to df 200, Cornish-Fisher expansion above: they agree there
    for df in (201, 250, 400):
        for confidence in (0.9, 0.95, 0.99):
            assert t_critical(df, confidence) == pytest.approx(_t_series(df, confidence),
                                                               abs=1e-9)
    values = [t_critical(df) for df in range(190, 215)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert t_critical(10**6) == pytest.approx(1.959966, abs=1e-6)
    with pytest.raises(ValueError):
        t_critical(0)


def test_aggregate_against_a_hand_computed_interval() -> None:
    # values 1, 2, 3, 4: mean 2.5; sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3;
    # standard error sqrt(5/3) / 2 = 0.6454972; t(0.975, df=3) = 3.1824463;
    # half-width 3.1824463 * 0.6454972 = 2.0542603 -> [0.4457397, 4.5542603]
    agg = aggregate([1.0, 2.0, 3.0, 4.0])
    assert agg.n == 4
    assert agg.mean == 2.5
    assert agg.std == pytest.approx(math.sqrt(5 / 3), abs=1e-9)
    assert agg.ci_low == pytest.approx(0.4457397, abs=1e-7)
    assert agg.ci_high == pytest.approx(4.5542603, abs=1e-7)


def test_aggregate_edge_cases() -> None:
    single = aggregate([3.0])
    assert (single.mean, single.std, single.n, single.ci_low, single.ci_high) == \
        (3.0, None, 1, None, None)
    flat = aggregate([0.5, 0.5, 0.5])
    assert (flat.std, flat.ci_low, flat.ci_high) == (0.0, 0.5, 0.5)
    # two values: t(0.975, 1) = 12.7062047, std = |a - b| / sqrt(2), se = |a - b| / 2
    pair = aggregate([1.0, 2.0])
    assert pair.ci_high == pytest.approx(1.5 + 12.7062047 * 0.5, abs=1e-6)
    with pytest.raises(ValueError):
        aggregate([])


# ---------------------------------------------------------------------------- planning


def test_plan_orders_points_and_derives_seeds(tiny_spec: SweepSpec) -> None:
    plan = plan_sweep(tiny_spec)
    assert [pid for pid, _ in plan] == ["p000", "p000", "p001", "p001",
                                        "p002", "p002", "p003", "p003"]
    assert [(s.nodes, s.k) for _, s in plan[::2]] == [(50, 4), (50, 8), (100, 4), (100, 8)]
    assert all(s.lookups == 30 and s.join == "oracle" for _, s in plan)
    # repetition 0 keeps the base seed (the Scenario default, 1); later ones are derived,
    # and every point uses the same seeds (common random numbers)
    seed1 = derive_seed(1, "sweep", 1) & ((1 << 63) - 1)
    assert [s.seed for _, s in plan] == [1, seed1] * 4
    assert plan[3][1].name == "tiny/p001/r1"


def test_grid_overrides_base_and_coerces_floats(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, """
        [base]
        nodes = 20
        seed = 7
        loss = 0.2
        [grid]
        loss = [0, 0.1]
        seed = [3]
    """))
    assert spec.name == "sweep"  # the file's stem
    assert spec.metrics == DEFAULT_METRICS
    assert spec.grid["loss"] == [0.0, 0.1] and isinstance(spec.grid["loss"][0], float)
    plan = plan_sweep(spec)
    assert [(s.loss, s.seed, s.nodes) for _, s in plan] == [(0.0, 3, 20), (0.1, 3, 20)]


@pytest.mark.parametrize(("text", "message"), [
    ("[grid]\nnodez = [10, 20]", "[grid]: unknown scenario field 'nodez' (did you mean 'nodes'?)"),
    ("[base]\nfoo = 1", "[base]: unknown scenario field 'foo'"),
    ("nodes = 10", "unknown sweep keys: nodes"),
    ("[grid]\nnodes = 10", "nodes must be a non-empty list"),
    ("[grid]\nnodes = []", "nodes must be a non-empty list"),
    ("[grid]\nnodes = [10, 10]", "nodes lists 10 twice"),
    ("[grid]\nnodes = [\"10\"]", "nodes must be int, got '10'"),
    ("[grid]\nverify_signatures = [0, 1]", "verify_signatures must be bool"),
    ("[grid]\nname = [\"a\"]", "'name' is not a parameter"),
    ("[grid]\nnodes = [1, 10]", "invalid scenario at nodes=1: nodes must be 2..2,000,000"),
    ("repetitions = 0", "repetitions must be an integer >= 1"),
    ("metrics = []", "metrics must be a non-empty list"),
    ("metrics = [\"lookups..mean\"]", "bad metric path"),
    ("confidence = 95", "confidence must be a number in (0, 1)"),
    ("[grid", "invalid TOML"),
])
def test_bad_files_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_cli_reports_unknown_grid_key_in_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "[grid]\nkk = [4, 8]\n")
    assert sweep_main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: [grid]: unknown scenario field 'kk' (did you mean 'k'?)\n"
    assert not (tmp_path / "out").exists()
    assert sweep_main([str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_unknown_metric_fails_before_the_sweep_runs(tmp_path: Path) -> None:
    spec = SweepSpec(base={"nodes": 20, "lookups": 5, "join": "oracle"},
                     metrics=("lookups.hop.mean",))
    with pytest.raises(SweepError, match=r"'lookups.hop.mean' not found .*lookups\.hops\.mean"):
        run_sweep(spec, workers=1)
    with pytest.raises(SweepError, match="not a number"):
        run_sweep(SweepSpec(base={"nodes": 20, "lookups": 5, "join": "oracle"},
                            metrics=("lookups.hops",)), workers=1)


# ---------------------------------------------------------------------------- execution


def test_results_match_single_runs(tiny_spec: SweepSpec, tiny_result: SweepResult) -> None:
    assert tiny_result.backend == "processes(2)"
    assert [p.point_id for p in tiny_result.points] == ["p000", "p001", "p002", "p003"]
    point = tiny_result.points[3]
    assert point.params == {"nodes": 100, "k": 8}
    scenarios = [s for pid, s in plan_sweep(tiny_spec) if pid == "p003"]
    direct = [run(s, progress=False).metrics["lookups"]["hops"]["mean"] for s in scenarios]
    assert point.values["lookups.hops.mean"] == tuple(direct)
    assert point.aggregates["lookups.hops.mean"] == aggregate(direct)


def test_in_process_run_matches_process_pool(tmp_path: Path, tiny_spec: SweepSpec,
                                             tiny_result: SweepResult) -> None:
    serial = run_sweep(tiny_spec, workers=1)
    assert serial.backend == "processes(1)"
    write_sweep(serial, tmp_path / "serial", plot=False)
    write_sweep(tiny_result, tmp_path / "pool", plot=False)
    assert _deterministic(tmp_path / "serial" / "sweep.json") == \
        _deterministic(tmp_path / "pool" / "sweep.json")


def test_dask_local_cluster_gives_the_same_sweep(tmp_path: Path, tiny_spec: SweepSpec,
                                                 tiny_result: SweepResult) -> None:
    pytest.importorskip("distributed")
    on_dask = run_sweep(tiny_spec, workers=2, scheduler="local")
    assert on_dask.backend.startswith("dask-local(2) at tcp://127.0.0.1:")
    write_sweep(on_dask, tmp_path / "dask", plot=False)
    write_sweep(tiny_result, tmp_path / "local", plot=False)
    dask_json = _deterministic(tmp_path / "dask" / "sweep.json")
    assert dask_json == _deterministic(tmp_path / "local" / "sweep.json")
    assert dask_json["points"][0]["metrics"]["lookups.hops.mean"]["n"] == 2
    assert (tmp_path / "dask" / "sweep.csv").read_text() == \
        (tmp_path / "local" / "sweep.csv").read_text()


# ---------------------------------------------------------------------------- output


def test_json_and_csv_contents(tmp_path: Path, tiny_result: SweepResult) -> None:
    write_sweep(tiny_result, tmp_path, plot=False)
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["format"] == "dhtchat-sweep/1"
    assert data["spec"]["grid"] == {"nodes": [50, 100], "k": [4, 8]}
    assert data["spec"]["repetitions"] == 2
    assert set(data["execution"]) == {"backend", "wall_seconds"}
    first = data["points"][0]
    assert first["id"] == "p000" and first["params"] == {"nodes": 50, "k": 4}
    stats = first["metrics"]["lookups.latency_ms.p50"]
    assert set(stats) == {"mean", "std", "n", "ci_low", "ci_high", "values"}
    assert len(stats["values"]) == 2
    assert stats["mean"] == pytest.approx(sum(stats["values"]) / 2)
    assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]

    with (tmp_path / "sweep.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    metrics = ["lookups.success_rate", "lookups.hops.mean", "lookups.latency_ms.p50"]
    expected = ["point", "nodes", "k"]
    for metric in metrics:
        expected += [f"{metric}.mean", f"{metric}.ci_low", f"{metric}.ci_high", f"{metric}.n"]
    assert rows[0] == expected == csv_columns(tiny_result.spec)
    assert [r[:3] for r in rows[1:]] == [["p000", "50", "4"], ["p001", "50", "8"],
                                         ["p002", "100", "4"], ["p003", "100", "8"]]
    hops = tiny_result.points[1].aggregates["lookups.hops.mean"]
    assert rows[2][7:11] == [repr(hops.mean), repr(hops.ci_low), repr(hops.ci_high), "2"]


def test_plot_written_with_matplotlib(tmp_path: Path, tiny_result: SweepResult) -> None:
    pytest.importorskip("matplotlib")
    summary = write_sweep(tiny_result, tmp_path)
    png = tmp_path / "sweep.png"
    assert png in summary.files and summary.notes == []
    assert png.read_bytes().startswith(b"\x89PNG")


def test_plot_skipped_with_a_note_without_matplotlib(tmp_path: Path,
                                                     tiny_result: SweepResult,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes importing it fail
    summary = write_sweep(tiny_result, tmp_path)
    assert not (tmp_path / "sweep.png").exists()
    assert [p.name for p in summary.files] == ["sweep.json", "sweep.csv"]
    assert "matplotlib is not installed" in summary.notes[0]
    assert "note: no plot" in str(summary)


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, TINY.replace("nodes = [50, 100]", "nodes = [30]"))
    out = tmp_path / "out"
    code = sweep_main([str(path), "--out", str(out), "--workers", "1", "--repetitions", "3",
                       "--no-plot"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[0].split() == ["point", "nodes", "k", "lookups.success_rate",
                                              "lookups.hops.mean", "lookups.latency_ms.p50"]
    assert "6 runs in" in stdout and f"wrote {out / 'sweep.csv'}" in stdout
    data = json.loads((out / "sweep.json").read_text())
    assert data["spec"]["repetitions"] == 3
    assert [p["metrics"]["lookups.hops.mean"]["n"] for p in data["points"]] == [3, 3]
    assert not (out / "sweep.png").exists()


def test_a_sweep_refuses_parallel_scenarios() -> None:
    spec = SweepSpec(base={"nodes": 20, "lookups": 5, "join": "oracle", "workers": 2,
                           "latency": {"model": "constant", "ms": 40}})
    with pytest.raises(SweepError, match="runs its scenarios in parallel already"):
        run_sweep(spec, workers=1)
