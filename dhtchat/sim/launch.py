"""``dhtchat simulate`` in a fresh process: the compiled hot path, then the usual CLI.

``dhtchat simulate ...`` re-executes itself as ``python -m dhtchat.sim.launch simulate ...``
(on huge pages where available, see :mod:`dhtchat.sim.hugepages`), because the compiled
modules (:mod:`dhtchat.sim.accel`) must be chosen before anything imports the core, and
the CLI module imports it.
"""

from __future__ import annotations

import os
import sys

from dhtchat.sim.accel import OPT_OUT, activate
from dhtchat.sim.hugepages import simulator_environment

LAUNCHED = "_DHTCHAT_SIM_LAUNCHED"  # set in the relaunched process: never relaunch twice


def relaunch() -> None:
    """Replace this process by ``python -m dhtchat.sim.launch`` with the same arguments.

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
        os.execve(sys.executable, [sys.executable, "-m", "dhtchat.sim.launch", *sys.argv[1:]],
                  env)
    except OSError as exc:  # run on as is: only speed is lost
        print(f"note: could not restart the simulator ({exc}); running as is",
              file=sys.stderr)


def main() -> int:
    """Activate the compiled modules if possible, then run the command line as given."""
    activate()
    from dhtchat.app.cli import main as cli_main  # noqa: PLC0415

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
