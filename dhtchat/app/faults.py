"""Fault injection for crash tests.

``DHTCHAT_CRASH_AFTER=<point>[:<n>]`` makes the daemon exit at once with ``os._exit(137)``
(no cleanup, no flush: what ``kill -9`` does) the n-th time (default: the first) it reaches
``point``. The variable is read once, when the daemon starts; unset, :func:`reached` does
nothing. The points:

* ``outbox-commit``: a message to send was committed to the outbox, before it is sent;
* ``receive-commit``: a received message was committed, before its acknowledgement is sent.
"""

from __future__ import annotations

import logging
import os
from typing import Final

log = logging.getLogger(__name__)

ENV: Final = "DHTCHAT_CRASH_AFTER"
POINTS: Final = ("outbox-commit", "receive-commit")
EXIT_STATUS: Final = 137  # 128 + SIGKILL, as a shell reports a process killed with -9


class _Fault:
    def __init__(self) -> None:
        self.point: str | None = None
        self.remaining = 0

    def arm(self, spec: str | None) -> None:
        self.point, self.remaining = None, 0
        if not spec:
            return
        point, _, count = spec.partition(":")
        if point not in POINTS or (count and (not count.isdigit() or int(count) < 1)):
            raise ValueError(f"{ENV}={spec!r}: expected one of {', '.join(POINTS)}, "
                             "optionally followed by :N (N >= 1)")
        self.point, self.remaining = point, int(count or 1)
        log.warning("fault injection: exiting with status %d at %s number %d",
                    EXIT_STATUS, point, self.remaining)

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining == 0:
            os._exit(EXIT_STATUS)


_fault = _Fault()


def arm_from_environment() -> None:
    """Read (and remove) ``DHTCHAT_CRASH_AFTER``; raises ValueError for an unknown point."""
    _fault.arm(os.environ.pop(ENV, None))


def reached(point: str) -> None:
    """The daemon passed ``point``: exit now if the armed fault says so."""
    _fault.reached(point)
