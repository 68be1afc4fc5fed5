"""How messages and contacts print: other people's text on one terminal-safe line each, and
nothing they choose can pass for a line dhtchat writes itself."""

from __future__ import annotations

import json
import time
from typing import Any

from dhtchat.app.terminal import one_line

# Starts every line dhtchat itself writes into a conversation (a timer change, a group's new
# member list, a file offer). It, and the signs that look like it, are escaped in everything
# other people choose (names, texts, file and group names), so no text can pass for a notice.
NOTICE_MARK = "\u2691"  # ⚑
_MARK_LOOKALIKES = str.maketrans({c: f"\\u{ord(c):04x}" if ord(c) < 0x10000
                                  else f"\\U{ord(c):08x}"
                                  for c in "\u2690\u2691\u26f3\u26ff\U0001f3c1\U0001f3f3"
                                           "\U0001f3f4\U0001f6a9"})


def unmarked(text: str) -> str:
    """``text`` on one line, terminal-safe, without anything that looks like the mark."""
    return one_line(text).translate(_MARK_LOOKALIKES)


def print_message(message: dict[str, Any], as_json: bool, names: dict[str, str]) -> None:
    """One message (from ``message.receive`` or ``message.history``), as a JSON line or as
    ``[time] [group] author: text`` with delivery marks on your own; ``names`` from
    :func:`dhtchat.cli.rpcclient.contact_names`."""
    if as_json:
        print(json.dumps(message), flush=True)
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(message["timestamp"]))
    author = str(message.get("author") or message["from"])
    who = unmarked(names.get(author) or message.get("author_name") or author[:12])
    where = ""
    if message.get("group"):  # which group, before who wrote in it
        where = f"[{unmarked(message.get('group_name') or message['group'][:12])}] "
    marks = ""
    if message["from"] == names.get("__me__"):
        marks = " ✓✓" if message["read"] else " ✓" if message["delivered"] else " …"
    # Continuation lines are indented, so a message cannot fake a line of its own.
    text = "\n    ".join(unmarked(line) for line in str(message["text"]).split("\n"))
    mark = "" if message.get("kind", "text") == "text" else f"{NOTICE_MARK} "
    print(f"[{stamp}] {mark}{where}{who}: {text}{marks}", flush=True)


def print_contacts(rows: list[dict[str, Any]], as_json: bool) -> None:
    """Contact rows (``contact.list``, ``contact.pending``), as JSON or a table with a
    header: name, state, verified (a word), id, then the status (last, so however long it
    is it never runs into the id)."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no contacts")
        return
    print(f"{'NAME':<20} {'STATE':<9} {'VERIFIED':<8} {'ID':<58} STATUS")
    for row in rows:
        status = row.get("status", "")
        if row.get("path"):
            status += f" ({row['path']})"
        if row.get("reason") and row.get("status") != "connected":
            status += f" - {row['reason']}"
        if row.get("message"):
            status += f" \"{one_line(row['message'])}\""
        name = one_line(row["name"]) or "-"
        if len(name) > 20:
            name = name[:19] + "~"
        verified = "yes" if row.get("verified") else "no"
        print(f"{name:<20} {row['state']:<9} {verified:<8} {row['id']:<58} {status}".rstrip())
        if row.get("warning"):
            print(f"  WARNING: {one_line(row['name'])} {row['warning']}")
