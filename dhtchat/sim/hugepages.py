"""Run large simulations on transparent huge pages.

Theory of operation
-------------------
A 10,000-node realistic run keeps about 1.3 GB of small objects alive: the nodes' routing
tables, per-peer records and rate limiters. Each datagram touches a different node's state,
so with 4 KiB pages most memory accesses also miss the TLB, and the page walks cost about
as much as the Python code itself (the cost per event grows from 3,000 to 10,000 nodes while
the work per event does not). CPython's own small-object allocator takes its memory in 1 MiB
arenas that the kernel does not back with huge pages when transparent huge pages are in
``madvise`` mode (the Debian default). glibc's malloc (2.35 and later) can ask for them:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` makes it ``madvise(MADV_HUGEPAGE)`` its heap, and
``PYTHONMALLOC=malloc`` routes every Python allocation through it. Both are read when the
process starts, so ``dhtchat simulate`` re-executes itself once with them set
(:func:`dhtchat.cli.simulate.relaunch`, in the environment
:func:`dhtchat.sim.launch.launch_environment` gives). Results do not depend on the
allocator (``metrics.json`` is byte-identical either way); only wall time does.
``DHTCHAT_SIM_HUGEPAGES=0`` turns this off. Measured in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

OPT_OUT = "DHTCHAT_SIM_HUGEPAGES"
TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_MIN_GLIBC = (2, 35)  # first release with the glibc.malloc.hugetlb tunable


def glibc_version() -> tuple[int, int] | None:
    """The C library's version if it is glibc, else None."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    try:
        major, minor = text.split()[1].split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def transparent_huge_pages() -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never"), None if unknown."""
    try:
        text = _THP_SETTING.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_page_environment(
    environ: Mapping[str, str],
    *,
    glibc: tuple[int, int] | None,
    thp_mode: str | None,
) -> dict[str, str] | None:
    """The environment to restart the simulator with, or None to run as is.

    None when the user opted out, when the process already chose an allocator, or when
    this machine cannot give glibc's heap huge pages.
    """
    if environ.get(OPT_OUT, "1") == "0" or "PYTHONMALLOC" in environ:
        return None
    if glibc is None or glibc < _MIN_GLIBC or thp_mode not in ("always", "madvise"):
        return None
    env = dict(environ)
    tunables = env.get("GLIBC_TUNABLES", "")
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    env["PYTHONMALLOC"] = "malloc"
    return env


def allocator_description(environ: Mapping[str, str]) -> str:
    """How this process allocates memory, for the run's timing notes."""
    chosen = environ.get("PYTHONMALLOC")
    if chosen == "malloc" and TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return "glibc malloc on transparent huge pages"
    return f"PYTHONMALLOC={chosen}" if chosen else "default"


def simulator_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """:func:`huge_page_environment` with this machine's C library and kernel setting."""
    if sys.platform != "linux":
        return None
    return huge_page_environment(environ, glibc=glibc_version(),
                                 thp_mode=transparent_huge_pages())
