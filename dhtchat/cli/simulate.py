"""``dhtchat simulate`` (and ``dhtchat simulate sweep``): the simulator behind the command
line.

The real command line restarts itself once as ``python -m dhtchat`` in the environment
:func:`dhtchat.sim.launch.launch_environment` gives (huge pages, the compiled hot path), and
``dhtchat/__main__.py`` activates the compiled modules before anything imports the core. The
simulator's modules are imported only when a simulation runs: they pull matplotlib and
friends, which a chat node never needs.
"""

from __future__ import annotations

import argparse
import os
import sys


def relaunch() -> None:
    """Replace this process by ``python -m dhtchat`` with the same arguments.

    For the ``dhtchat`` command line only (it execs). Returns, doing nothing, when there
    is nothing to gain (compilation and huge pages both off or unavailable) or on failure.
    """
    from dhtchat.sim.launch import launch_environment  # noqa: PLC0415

    env = launch_environment(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", "dhtchat", *sys.argv[1:]],
                  env)
    except OSError as exc:  # run on as is: only speed is lost
        print(f"note: could not restart the simulator ({exc}); running as is",
              file=sys.stderr)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run one scenario and write its outputs."""
    from dhtchat.sim.cli import simulate_main  # noqa: PLC0415

    return simulate_main(args)


def simulate_sweep(argv: list[str]) -> int:
    """``dhtchat simulate sweep ARGS``: a parameter sweep (its own argument parser)."""
    from dhtchat.sim.sweep import sweep_main  # noqa: PLC0415

    return sweep_main(argv)
