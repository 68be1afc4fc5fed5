"""Bounded mutation run (mutmut, config in pyproject [tool.mutmut]) over the small core
modules; prints the score per module and fails below the measured floor.

    nice -n 10 python benchmarks/mutation.py   # about 6 min on one busy core
"""

from __future__ import annotations

import subprocess
import sys

FLOORS = {"pow": 90, "ratelimit": 91, "storage": 85}  # measured 2026-12-02, docs/benchmarks.md


def main() -> int:
    subprocess.run(["mutmut", "run", "--max-children", "1"], check=False, timeout=900)
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=False).stdout.splitlines()
    failed = False
    for module, floor in FLOORS.items():
        rows = [r for r in out if f"dhtchat.core.{module}." in r]
        survived = sum("survived" in r for r in rows)
        score = 100 * (len(rows) - survived) // max(1, len(rows))
        print(f"{module}: {len(rows)} mutants, {survived} survived, score {score} %")
        failed |= not rows or score < floor
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
