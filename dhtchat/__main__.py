"""``python -m dhtchat``: the same as the ``dhtchat`` command (and what ``dhtchat simulate``
re-executes itself as, see dhtchat/cli/simulate.py)."""

import sys

from dhtchat.sim.launch import activate_if_launched

activate_if_launched()  # before anything imports the core

from dhtchat.cli import main  # noqa: E402

sys.exit(main())
