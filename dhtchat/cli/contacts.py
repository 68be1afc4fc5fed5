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
        result = rpc(args, "contact.request",
                      {"id": args.id, "name": args.name, "message": args.message})
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
