"""The calls benchmark keeps working with tiny parameters (numbers are reported, not
asserted on, except that they are there, positive and plausible, and every burst arrived)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(240)


def test_calls_benchmark_prints_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "calls.py"), "--calls", "2", "--cold", "1",
         "--seconds", "2", "--bursts", "3", "--json", str(out)],
        capture_output=True, text=True, timeout=200, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = proc.stdout
    times = r"\s+\d+ / \d+ / \d+ / \d+\s+\d+\.\d+x"
    assert re.search(r"setup, dial -> caller's first frame \(2 calls\)" + times, text), text
    assert re.search(r"cold setup, no data connection \(1 calls\): caller" + times, text), text
    assert re.search(r"mouth-to-ear estimate, both directions \(6 bursts\)" + times, text), text
    assert re.search(r"CPU per call end\s+\d+\.\d+ %\s+\d+\.\d+x", text), text
    assert "EXCLUDES what real devices add" in text

    report = json.loads(out.read_text())
    for setup in (report["setup"]["all"], report["cold"]):
        for side in ("caller_first_frame", "callee_first_frame"):
            assert setup[side]["n"] >= 1
            assert 0 < setup[side]["min_ms"] <= setup[side]["max_ms"] < 30_000
    assert report["setup"]["all"]["caller_first_frame"]["n"] == 2
    assert 0 < report["raw"]["setup"]["both"]["p50_ms"] < 30_000
    for direction in ("caller_to_callee", "callee_to_caller"):
        bursts = report["mouth_to_ear"][direction]
        assert bursts["sent"] == 3 and bursts["matched"] == 3, bursts
        assert 0 < bursts["min_ms"] <= bursts["max_ms"] < 2_000
    assert report["raw"]["bursts"]["both"]["n"] == 6
    cpu = report["cpu"]
    assert cpu["idle"]["cpu_s"] >= 0 and cpu["active"]["cpu_s"] > 0
    assert cpu["active"]["percent_core"] > 0 and report["raw"]["cpu"]["percent_core"] > 0
    assert min(cpu["active"]["frames_received"]) > 50  # ~100 frames each in 2 s
    # The work directory (profiles, databases) is gone.
    work = re.search(r"work directory (\S+)", proc.stderr)
    assert work is not None
    assert not Path(work.group(1)).exists()
