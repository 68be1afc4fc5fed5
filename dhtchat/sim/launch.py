"""``dhtchat simulate`` in a fresh process: the compiled hot path, then the usual CLI.

``dhtchat simulate ...`` re-executes itself as ``python -m dhtchat simulate ...`` with
``_DHTCHAT_SIM_LAUNCHED=1`` (on huge pages where available, see
:mod:`dhtchat.sim.hugepages`), because the compiled modules (:mod:`dhtchat.sim.accel`) must
be chosen before anything imports the core, and the CLI module imports it:
``dhtchat/__main__.py`` calls :func:`activate_if_launched` before it imports the CLI. (The
simulator never imports the app layer itself: import-linter's contracts in pyproject.toml.)
"""

from __future__ import annotations

import os
import sys

from dhtchat.sim.accel import OPT_OUT, activate
from dhtchat.sim.hugepages import simulator_environment

LAUNCHED = "_DHTCHAT_SIM_LAUNCHED"  # set in the relaunched process: never relaunch twice


def relaunch() -> None:
    """Replace this process by ``python -m dhtchat`` with the same arguments.

    For the ``dhtchat`` command line only (it execs). Returns, doing nothing, when there
    is nothing to gain (compilation and huge pages both off or unavailable) or on failure.
    """
    if os.environ.get(LAUNCHED) == "1":
        return
    huge = simulator_environment(os.environ)
    if huge is None and os.environ.get(OPT_OUT) == "0":
        return
    env = dict(huge if huge is not None else os.environ)
    env[LAUNCHED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "dhtchat", *sys.argv[1:]],
                  env)
    except OSError as exc:  # run on as is: only speed is lost
        print(f"note: could not restart the simulator ({exc}); running as is",
              file=sys.stderr)


def activate_if_launched() -> None:
    """In the process :func:`relaunch` started: activate the compiled modules (before the
    core is imported)."""
    if os.environ.get(LAUNCHED) == "1":
        activate()
