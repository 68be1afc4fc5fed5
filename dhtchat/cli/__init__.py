"""The ``dhtchat`` command line: argv in, exit code out.

Exit codes: 0 success, 1 the operation failed or found nothing, 2 usage error (bad arguments,
bad user id, wrong passphrase, missing identity). Errors are one clear line on stderr, never a
traceback.

One module per command group (``identity``, ``node``, ``dht``, ``daemon``, ``contacts``,
``messages``, ``files``, ``groups``, ``calls``, ``simulate``; ``ui`` runs the desktop
client of :mod:`dhtchat.ui`); :mod:`dhtchat.cli.parser`
defines every subcommand, :mod:`dhtchat.cli.rpcclient` talks to the daemon and
:mod:`dhtchat.cli.printing` prints what other people chose. This package is the top layer:
it may import the app, net, messaging, core and the simulator; nothing imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO, cast

from dhtchat.app.keystore import KeystoreError
from dhtchat.app.rpc import INVALID_PARAMS, NOT_A_CONTACT, NOT_FOUND, DaemonStopped, RpcError
from dhtchat.app.terminal import TerminalSafeWriter
from dhtchat.cli.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    DaemonUnavailable,
    DhtUnreachable,
    UsageError,
)
from dhtchat.cli.parser import build_parser
from dhtchat.cli.simulate import relaunch, simulate_sweep
from dhtchat.core.errors import DhtChatError, InvalidUserId, LocalProtocolError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dhtchat`` console script."""
    if argv is None and sys.argv[1:2] == ["simulate"]:
        # the real command line only: restart with the compiled hot path, on huge pages
        # (dhtchat/cli/simulate.py)
        relaunch()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["simulate", "sweep"]:
        return simulate_sweep(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `dhtchat` alone (global options only): the desktop client
        args = parser.parse_args([*argv, "ui"])
    # Names, messages and file names come from other people: nothing they choose may reach
    # the terminal as a control sequence (dhtchat/app/terminal.py).
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _terminal_safe(stdout), _terminal_safe(stderr)
    safe_out, safe_err = sys.stdout, sys.stderr
    try:
        return _run(args)
    finally:  # unless _run replaced them (a broken pipe silences stdout for the exit)
        if sys.stdout is safe_out:
            sys.stdout = stdout
        if sys.stderr is safe_err:
            sys.stderr = stderr


def _terminal_safe(stream: TextIO) -> TextIO:
    return stream if isinstance(stream, TerminalSafeWriter) \
        else cast(TextIO, TerminalSafeWriter(stream))


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not args.verbose:  # aioice/aiortc narrate every ICE check at INFO
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except (UsageError, InvalidUserId, KeystoreError, LocalProtocolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DhtUnreachable, DaemonUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DaemonStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (TimeoutError, ConnectionError, ValueError) as exc:  # the daemon went away
        print(f"error: lost the connection to the daemon ({exc.__class__.__name__}); it may "
              "have stopped - check its log", file=sys.stderr)
        return EXIT_FAILED
    except RpcError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code in (INVALID_PARAMS, NOT_FOUND, NOT_A_CONTACT) \
            else EXIT_FAILED
    except DhtChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `dhtchat id show --qr | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_FAILED
    return code
