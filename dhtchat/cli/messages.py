"""``dhtchat send``, ``receive``, ``history`` and ``timer``: the messages of a conversation."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dhtchat.app.rpc import DaemonStopped
from dhtchat.cli.errors import EXIT_OK, DaemonUnavailable
from dhtchat.cli.printing import print_message
from dhtchat.cli.rpcclient import contact_names, rpc


def cmd_send(args: argparse.Namespace) -> int:
    """Queue a message (with ``--wait``: until its delivery receipt)."""
    params: dict[str, Any] = {"to": args.contact, "text": args.text}
    if args.wait:
        params.update(wait=True, timeout=args.timeout)
    result = rpc(args, "message.send", params, timeout=args.timeout + 30)
    state = "delivered" if result["delivered"] else "queued"
    print(f"{state} {result['id']}", file=sys.stderr)
    return EXIT_OK


def cmd_receive(args: argparse.Namespace) -> int:
    """Print the messages received since the last call (``--follow``: keep on)."""
    names = {} if args.json else contact_names(args)
    reached = not args.json  # the daemon answered already (the names)
    while True:
        try:
            messages = rpc(args, "message.receive", {"wait": 30 if args.follow else 0},
                            timeout=90)
        except DaemonUnavailable:
            if reached:  # it was there a moment ago: it stopped, say so
                raise DaemonStopped("the daemon stopped") from None
            raise
        reached = True
        for message in messages:
            print_message(message, args.json, names)
        if not args.follow:
            return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """Print the conversation with a contact or group."""
    names = {} if args.json else contact_names(args)
    for message in rpc(args, "message.history", {"contact": args.contact,
                                                  "limit": args.limit}):
        print_message(message, args.json, names)
    return EXIT_OK


def cmd_timer(args: argparse.Namespace) -> int:
    """Set a conversation's disappearing-message timer."""
    result = rpc(args, "message.timer", {"contact": args.contact, "seconds": args.seconds})
    print(result["text"])
    return EXIT_OK
