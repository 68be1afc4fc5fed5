"""The environment a fast simulator process starts in, and what it does first.

A simulator run is faster when it starts on huge pages (:mod:`dhtchat.sim.hugepages`, read
when the process starts) with the compiled hot path (:mod:`dhtchat.sim.accel`, chosen before
anything imports the core). :func:`launch_environment` gives the environment to re-execute
a process in for that (or ``None`` when there is nothing to gain); it marks the process
(:data:`LAUNCHED`) so that it is restarted once only, and :func:`activate_if_launched`, the
first thing the marked process does, activates the compiled modules. Which program is
re-executed is the caller's business: ``dhtchat simulate`` restarts itself
(:func:`dhtchat.cli.simulate.relaunch`); the simulator imports nothing above the core.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dhtchat.sim.accel import OPT_OUT, activate
from dhtchat.sim.hugepages import simulator_environment

LAUNCHED = "_DHTCHAT_SIM_LAUNCHED"  # set in the relaunched process: never relaunch twice


def launch_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart a simulator process in, or ``None`` when there is nothing
    to gain (already restarted, or compilation and huge pages both off or unavailable)."""
    if environ.get(LAUNCHED) == "1":
        return None
    huge = simulator_environment(environ)
    if huge is None and environ.get(OPT_OUT) == "0":
        return None
    env = dict(huge if huge is not None else environ)
    env[LAUNCHED] = "1"
    return env


def launched() -> bool:
    """Whether this process is one that :func:`launch_environment` prepared."""
    return os.environ.get(LAUNCHED) == "1"


def activate_if_launched() -> None:
    """In a process :func:`launch_environment` prepared: activate the compiled modules
    (before the core is imported)."""
    if launched():
        activate()
