"""The desktop-client benchmark keeps working with tiny parameters (its numbers are reported,
not asserted on, except that they are there), and its screenshot mode saves the SVGs."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None and os.environ.get("CI") != "true",
                                 reason="needs tmux (./dev test installs it; CI fails without)")]


def _leftovers(stderr: str) -> str:
    work = re.search(r"work directory (\S+)", stderr)
    assert work is not None, stderr
    assert not Path(work.group(1)).exists()
    return subprocess.run(["pgrep", "-f", work.group(1)], capture_output=True, text=True,
                          check=False).stdout.strip()


def test_ui_benchmark_prints_numbers(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ui.py"), "--messages", "150",
         "--starts", "1", "--keys", "6", "--idle", "2", "--dht-nodes", "8",
         "--json", str(out)],
        capture_output=True, text=True, timeout=360, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = proc.stdout
    number = r"\d+ ms"
    assert re.search(rf"start to the conversations list, daemon running: p50 {number}", text)
    assert re.search(rf"start to the unlock screen, no daemon: p50 {number}", text)
    assert re.search(rf"passphrase Enter to the list, daemon started by the UI: p50 {number}",
                     text)
    assert re.search(rf"open a 150-message conversation: p50 {number}", text)
    assert re.search(rf"key to screen .*: p50 {number}, p95 {number}", text)
    assert re.search(r"idle CPU, an open conversation: \d+\.\d+ CPU-s per minute", text)
    report = json.loads(out.read_text())
    assert len(report["keys"]) == 6 and all(0 < k < 10 for k in report["keys"])
    assert len(report["start_running"]) == len(report["start_by_ui_after_passphrase"]) == 1
    assert report["idle_list"] >= 0
    assert _leftovers(proc.stderr) == ""  # every daemon and client it started is gone


def test_ui_screenshots_are_saved(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ui.py"), "--screenshots", str(tmp_path),
         "--dht-nodes", "8"],
        capture_output=True, text=True, timeout=360, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for name, shown in (("conversations", "1 contact request"),
                        ("conversation", "printed notes"), ("requests", "workshop"),
                        ("first-run", "Strength")):
        svg = (tmp_path / f"ui-{name}.svg").read_text()
        assert svg.startswith("<svg"), name
        assert shown in html.unescape(svg).replace("\xa0", " "), name
    assert _leftovers(proc.stderr) == ""
