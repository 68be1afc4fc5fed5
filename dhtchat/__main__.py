"""``python -m dhtchat``: the same as the ``dhtchat`` command."""

import sys

from dhtchat.app.cli import main

sys.exit(main())
