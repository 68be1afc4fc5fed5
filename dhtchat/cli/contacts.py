"""``dhtchat contact`` (requests and the contact list) and ``dhtchat connect``."""

from __future__ import annotations

import argparse
import json

from dhtchat.cli.errors import EXIT_OK
from dhtchat.cli.printing import print_contacts
from dhtchat.cli.rpcclient import rpc


def cmd_contact(args: argparse.Namespace) -> int:
    """Requests, answers, blocks and the contact list."""
    action = args.contact_command
    if action == "request":
        params = {"id": args.id, "name": args.name, "message": args.message}
        if args.contact_name:
            params["contact_name"] = args.contact_name
        result = rpc(args, "contact.request", params)
        print(f"request sent to {result['id']} (stored on {result.get('stored_on', 0)} nodes)"
              if result["state"] == "outgoing" else f"{result['name']}: {result['state']}")
    elif action == "pending":
        print_contacts(rpc(args, "contact.pending", {}), args.json)
    elif action == "accept":
        result = rpc(args, "contact.accept", {"id": args.id, "name": args.name})
        print(f"accepted {result['name']} ({result['id']})")
    elif action == "refuse":
        result = rpc(args, "contact.refuse", {"id": args.id})
        print(f"refused {result['id']}")
    elif action == "block":
        result = rpc(args, "contact.block", {"id": args.id})
        print(f"blocked {result['id']}")
    elif action == "unblock":
        result = rpc(args, "contact.unblock", {"id": args.id})
        print(f"unblocked {result['id']}")
    elif action == "rename":
        result = rpc(args, "contact.rename", {"id": args.id, "name": args.name})
        print(f"renamed {result['id']} to {result['name']}")
    elif action == "remove":
        result = rpc(args, "contact.remove", {"id": args.id,
                                              "delete_history": args.delete_history})
        count = result["messages_deleted"]
        kept = f"{count} message{'' if count == 1 else 's'} deleted" \
            if result["history_deleted"] else \
            f"history kept (`dhtchat history {result['id']}`; `--delete-history` deletes it)"
        print(f"removed {result['name']} ({result['id']}); {kept}")
    else:
        print_contacts(rpc(args, "contact.list", {}), args.json)
    return EXIT_OK


def cmd_connect(args: argparse.Namespace) -> int:
    """Open an encrypted connection to a contact and print its path."""
    result = rpc(args, "connect", {"contact": args.contact, "timeout": args.timeout},
                  timeout=args.timeout + 30)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        local, remote = result["local"], result["remote"]
        print(f"connected to {result['name']} {result['path']}: "
              f"{local['type']} {local['address']} <-> {remote['type']} {remote['address']} "
              f"in {result['connect_ms']:.0f} ms")
    return EXIT_OK
