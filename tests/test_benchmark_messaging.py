"""The messaging benchmark keeps working with tiny parameters (numbers are reported, not
asserted on, except that they are there and the delivery checks passed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(400)


@pytest.mark.slow
def test_messaging_benchmark_prints_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "messaging.py"), "--latency", "5",
         "--receipts", "2", "--messages", "30", "--ratchet", "30", "--raw-messages", "50",
         "--file-mb", "1", "--offline", "3", "--dht-nodes", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=360, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = proc.stdout
    number = r"\s+\d+(\.\d+)?"
    assert re.search(r"latency p50 .*" + number + " ms", text), text
    assert re.search(r"latency p95" + number + " ms", text), text
    assert re.search(r"messages/s, 1024 B, all received .*" + number, text), text
    assert re.search(r"ratchet encrypt\+decrypt/s, 1024 B, one way" + number + number, text)
    assert re.search(r"dhtchat / raw", text)
    assert "file transfer" in text  # MB/s, or "not available in this build"
    report = json.loads(out.read_text())
    assert report["latency"]["wrong"] == 0
    assert report["throughput"]["exactly_once"] and report["throughput"]["in_order"]
    assert report["offline"]["received"] == 3 and report["offline"]["in_order"]
    assert report["ratchet"]["one_way"] > 0 and report["raw_ratchet"]["one_way"] > 0
    assert report["raw_datachannel"]["rate"] > 0
    # Every daemon the benchmark started is gone, and so is its work directory.
    work = re.search(r"work directory (\S+)", proc.stderr)
    assert work is not None
    assert not Path(work.group(1)).exists()
    leftovers = subprocess.run(["pgrep", "-f", work.group(1)], capture_output=True, text=True,
                               check=False)
    assert leftovers.stdout.strip() == ""
