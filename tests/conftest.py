"""Suite-wide pytest hooks.

``./dev test`` runs the suite on pytest-xdist workers (``-n``). The tests are parallel-safe:
daemons and DHT nodes listen on ephemeral ports, each worker hands out its own loopback /24s
(:func:`tests.daemons.next_host`), every profile lives in ``tmp_path``, the NAT lab picks a
free random namespace prefix per lab. The NAT lab tests still run one at a time: each drives
six network namespaces and a coturn, and what they check depends on timing (consent, hole
punching, TURN allocation). (xdist's ``--dist loadgroup`` would say that, but under pytest 9.2
it groups nothing: it rewrites ``Item._nodeid``, which pytest no longer reads.)
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[
        None, object, object]:
    """Under xdist, a ``natlab`` test holds a lock shared by the run's workers. Taken outside
    pytest-timeout's hook, so waiting for the lock is not counted against the test."""
    del nextitem
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None or item.get_closest_marker("natlab") is None:
        return (yield)
    lock_path = Path(tempfile.gettempdir()) / f"dhtchat-natlab-{run}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
