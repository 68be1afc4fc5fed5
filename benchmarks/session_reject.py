#!/usr/bin/env python3
"""Session benchmark: how fast a forged huge chain jump is refused, against the legitimate
jump of MAX_SKIP - 1 keys it is compared with.

Usage::

    python benchmarks/session_reject.py [--repeat 5]

Prints, per forged form (same chain with n = 10**6; a new chain with pn = 10**6; a new chain
with n = 10**6), the best rejection time of ``--repeat`` tries, the time of the legitimate
MAX_SKIP - 1 jump, and their ratio. The target (formerly a timed assertion in
``tests/test_session.py``) is a ratio below 0.1: the check runs before any KDF work. The
functional part (refused, state unchanged) stays in the test.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dhtchat.messaging.session import MAX_SKIP, SessionError
from tests.test_session import established, reencode

TARGET_RATIO = 0.1


async def measure(repeat: int) -> dict[str, float]:
    """Seconds for the legitimate jump and each forged one (best of ``repeat``)."""
    *_, sa, sb = await established()
    wires = [await sa.encrypt(b"m") for _ in range(MAX_SKIP)]
    t0 = time.perf_counter()
    assert await sb.decrypt(wires[-1]) == b"m"
    results = {"legitimate jump of MAX_SKIP - 1": time.perf_counter() - t0}
    legit = await sa.encrypt(b"after")
    forged = {
        "same chain, n = 10**6": reencode(legit, n=10**6),
        "new chain, pn = 10**6": reencode(legit, dh=secrets.token_bytes(32), pn=10**6),
        "new chain, n = 10**6": reencode(legit, dh=secrets.token_bytes(32), pn=0, n=10**6),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, wire in forged.items():
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                try:
                    await sb.decrypt(wire)
                except SessionError:
                    pass
                else:
                    raise AssertionError(f"{name} was accepted")
                best = min(best, time.perf_counter() - t0)
            results[name] = best
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(measure(args.repeat))
    skip = results.pop("legitimate jump of MAX_SKIP - 1")
    print(f"legitimate jump of {MAX_SKIP - 1} keys: {skip * 1000:.2f} ms")
    worst = 0.0
    for name, seconds in results.items():
        ratio = seconds / skip
        worst = max(worst, ratio)
        print(f"forged {name}: refused in {seconds * 1000:.3f} ms (ratio {ratio:.4f})")
    ok = worst < TARGET_RATIO
    print(f"worst ratio {worst:.4f}, target < {TARGET_RATIO}: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
