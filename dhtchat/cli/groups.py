"""``dhtchat group``: create, invite, remove, leave and list group chats."""

from __future__ import annotations

import argparse
import json

from dhtchat.app.terminal import one_line
from dhtchat.cli.errors import EXIT_OK
from dhtchat.cli.rpcclient import contact_names, rpc


def cmd_group(args: argparse.Namespace) -> int:
    """The ``group`` subcommands."""
    action = args.group_command
    if action == "create":
        result = rpc(args, "group.create", {"name": args.name, "members": args.member})
    elif action == "invite":
        result = rpc(args, "group.invite", {"group": args.group, "members": args.member})
    elif action == "remove":
        result = rpc(args, "group.remove", {"group": args.group, "member": args.member})
    elif action == "leave":
        result = rpc(args, "group.leave", {"group": args.group})
        print(f"left {args.group}")
        return EXIT_OK
    else:
        rows = rpc(args, "group.list", {})
        if args.json:
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        names = contact_names(args)
        for row in rows:
            state = "" if row["active"] else " (left/removed)"
            print(f"{one_line(row['name']):<20} {len(row['members']):>4} members  "
                  f"v{row['version']}  {row['id']}{state}")
            members = [one_line(names.get(m, m)) + (" (admin)" if m == row["admin"] else "")
                       for m in row["members"]]
            print(f"    {', '.join(members)}")
        return EXIT_OK
    print(f"{result['name']}: {len(result['members'])} members (version {result['version']})")
    return EXIT_OK
