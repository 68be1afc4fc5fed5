"""``dhtchat send``, ``receive``, ``history`` and ``timer``: the messages of a conversation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dhtchat.app.rpc import DaemonStopped, RpcClient
from dhtchat.cli.errors import EXIT_OK, UsageError
from dhtchat.cli.printing import print_message
from dhtchat.cli.rpcclient import contact_names, rpc, run_with_daemon
from dhtchat.messaging.payload import MAX_TEXT_BYTES

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def message_text(text: str | None) -> str:
    """The text to send: the argument, or standard input for ``-`` or no argument (a
    trailing newline dropped); over :data:`MAX_TEXT_BYTES` is a usage error naming the
    limit."""
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise UsageError("no message: give the TEXT, or pipe it in (`echo hi | dhtchat "
                             "send NAME`, or `dhtchat send NAME -`)")
        data = sys.stdin.buffer.read(MAX_TEXT_BYTES + 2)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("the text on standard input is not UTF-8") from None
        if text.endswith("\n"):
            text = text[:-1]
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        shown = f"{size}" if size <= MAX_TEXT_BYTES + 1 else f"more than {MAX_TEXT_BYTES}"
        raise UsageError(f"the message is {shown} bytes; a message holds at most "
                         f"{MAX_TEXT_BYTES} bytes (64 KiB): split it, or send it as a file "
                         "(`dhtchat file send NAME PATH`)")
    if not text:
        raise UsageError("the message is empty")
    return text


def parse_duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``30m``, ``1h``, ``7d``, ``2w`` or ``off``/``0``."""
    value = text.strip().lower()
    if value in ("off", "0"):
        return 0
    unit = _UNITS.get(value[-1:], 0)
    number = value[:-1] if unit else value
    if not number.isdigit():
        raise UsageError(f"cannot read {text!r} as a duration: use e.g. 30m, 1h, 7d, 90s or "
                         "off")
    return int(number) * (unit or 1)


def cmd_send(args: argparse.Namespace) -> int:
    """Queue a message (with ``--wait``: until its delivery receipt)."""
    params: dict[str, Any] = {"to": args.contact, "text": message_text(args.text)}
    if args.wait:
        params.update(wait=True, timeout=args.timeout)
    result = rpc(args, "message.send", params, timeout=args.timeout + 30)
    state = "delivered" if result["delivered"] else "queued"
    print(f"{state} {result['id']}", file=sys.stderr)
    return EXIT_OK


def cmd_receive(args: argparse.Namespace) -> int:
    """Print the messages received since the last call (``--follow``: keep on, woken by the
    daemon's event stream)."""
    names = {} if args.json else contact_names(args)
    if not args.follow:
        for message in rpc(args, "message.receive", {"wait": 0}, timeout=90):
            print_message(message, args.json, names)
        return EXIT_OK
    return run_with_daemon(args, lambda path: _follow(path, args.json, names))


# events after which message.receive may have something new to show
_NEW_IN_HISTORY = frozenset({"message", "group.changed", "file.offer", "file.complete"})


async def _follow(path: Path, as_json: bool, names: dict[str, str]) -> int:
    """Print what arrives until the daemon stops: subscribe to the events first, then print
    everything not shown yet, then again after each event that adds to the history (so
    nothing that arrives in between is missed)."""
    client = await RpcClient.open(path)
    try:
        await client.call("events.subscribe", {"since": -1})
        while True:
            messages: Any = await client.call("message.receive", {"wait": 0}, timeout=90)
            for message in messages:  # (a list of message objects, docs/api.md §3.11)
                print_message(message, as_json, names)
            sys.stdout.flush()
            while True:
                method, params = await client.notification()
                if method == "event" and params.get("type") in _NEW_IN_HISTORY:
                    break
    except (DaemonStopped, ConnectionError):
        raise DaemonStopped("the daemon stopped") from None
    finally:
        await client.close()


def cmd_history(args: argparse.Namespace) -> int:
    """Print the conversation with a contact or group."""
    names = {} if args.json else contact_names(args)
    for message in rpc(args, "message.history", {"contact": args.contact,
                                                  "limit": args.limit}):
        print_message(message, args.json, names)
    return EXIT_OK


def cmd_timer(args: argparse.Namespace) -> int:
    """Set a conversation's disappearing-message timer."""
    seconds = parse_duration(args.seconds)
    result = rpc(args, "message.timer", {"contact": args.contact, "seconds": seconds})
    print(result["text"])
    return EXIT_OK
