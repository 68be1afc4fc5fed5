"""``dhtchat file``: send, list, accept, decline, cancel and copy out files; quotas."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from dhtchat.cli.errors import EXIT_FAILED, EXIT_OK
from dhtchat.cli.rpcclient import rpc


def _progress_line(row: dict[str, Any]) -> str:
    return (f"{row['name']}: {row['transferred'] / 1e6:.1f} of {row['size'] / 1e6:.1f} MB "
            f"({row['progress']:.0f}%)")


def cmd_file(args: argparse.Namespace) -> int:
    """The ``file`` subcommands."""
    action = args.file_command
    if action == "send":
        path = os.path.abspath(args.path)
        result = rpc(args, "file.send", {"to": args.contact, "path": path})
        print(f"offered {result['name']} ({result['size']} bytes) id {result['id']}",
              file=sys.stderr)
        if "group" in result:
            if args.wait:
                print("(a group file: --wait applies to files for one contact)",
                      file=sys.stderr)
            return EXIT_OK
        if not args.wait:
            return EXIT_OK
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            rows = [r for r in rpc(args, "file.list", {}) if r["id"] == result["id"]]
            if rows:
                print("\r" + _progress_line(rows[0]), end="", file=sys.stderr, flush=True)
                if rows[0]["complete"]:
                    print(file=sys.stderr)
                    print(result["id"])
                    return EXIT_OK
                if rows[0].get("error"):
                    print(file=sys.stderr)
                    print(f"error: the transfer failed: {rows[0]['error']}", file=sys.stderr)
                    return EXIT_FAILED
            time.sleep(0.5)
        print(file=sys.stderr)
        print("error: the transfer did not complete in time (it continues)", file=sys.stderr)
        return EXIT_FAILED
    if action == "list":
        rows = rpc(args, "file.list", {})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                state = "done" if row["complete"] else "fail" if row.get("error") \
                    else "offer" if not row.get("accepted", True) else f"{row['progress']:.0f}%"
                print(f"{row['id']}  {row['direction']:<3} {state:>5}  {row['size']:>12}  "
                      f"{row['name']}")
        return EXIT_OK
    if action in ("accept", "decline", "cancel"):
        row = rpc(args, f"file.{action}", {"id": args.id})
        done = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}[action]
        print(f"{done} {row['name']} ({row['size']} bytes)", file=sys.stderr)
        return EXIT_OK
    if action == "limits":
        changes = {"auto_accept": args.auto_accept, "contact_quota": args.contact_quota,
                   "total_quota": args.total_quota}
        limits = rpc(args, "file.limits", {k: v for k, v in changes.items() if v is not None})
        for name, value in limits.items():
            print(f"{name}: {value}")
        return EXIT_OK
    result = rpc(args, "file.get", {"id": args.id, "dest": os.path.abspath(args.dest)})
    print(result["path"])
    return EXIT_OK
