"""Exit codes of the ``dhtchat`` command and the errors that end a command.

0 success, 1 the operation failed or found nothing, 2 usage error (bad arguments, bad user
id, wrong passphrase, missing identity). :func:`dhtchat.cli.main` turns each error into one
line on stderr and its exit code, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported on one line, exit code 2."""


class DhtUnreachable(Exception):
    """No bootstrap node answered."""


class DaemonUnavailable(Exception):
    """The client could not reach a daemon."""
