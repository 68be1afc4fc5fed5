"""The ``dhtchat`` command line.

Exit codes: 0 success, 1 the operation failed or found nothing, 2 usage error (bad arguments,
bad user id, wrong passphrase, missing identity). Errors are one clear line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

import segno

from dhtchat import __version__
from dhtchat.app.demo import run_demo
from dhtchat.app.keystore import (
    KeystoreError,
    is_encrypted,
    load_identity_document,
    open_identity,
    passphrase_strength,
    rewrap_identity_file,
    save_identity_file,
)
from dhtchat.app.profile import NodeState, Profile, make_private, resolve_profile_dir
from dhtchat.app.rpc import (
    INVALID_PARAMS,
    NOT_A_CONTACT,
    NOT_FOUND,
    DaemonNotRunning,
    DaemonStopped,
    RpcError,
)
from dhtchat.app.rpc import call as rpc_call
from dhtchat.app.terminal import TerminalSafeWriter, one_line
from dhtchat.core.addresses import Address, format_address, parse_address
from dhtchat.core.errors import DhtChatError, InvalidUserId, LocalProtocolError
from dhtchat.core.events import (
    BootstrapCompleted,
    ContactAdded,
    ContactEvicted,
    Event,
    PeerMisbehaved,
    RecordStored,
)
from dhtchat.core.identity import (
    SEED_BYTES,
    SigningIdentity,
    decode_user_id,
    encode_user_id,
    fingerprint,
)
from dhtchat.core.ids import short
from dhtchat.core.node import DhtConfig
from dhtchat.core.records import MAX_VALUE_BYTES, RecordType, app_salt, make_app_record, record_key
from dhtchat.net.udp import UdpDhtNode

if TYPE_CHECKING:
    from dhtchat.net.webrtc import TurnServer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("dhtchat")


class UsageError(Exception):
    """Bad input from the user: reported on one line, exit code 2."""


# ---------------------------------------------------------------------------- helpers


def _profile(args: argparse.Namespace) -> tuple[Profile, bool]:
    root, chosen = resolve_profile_dir(args.profile)
    return Profile(root), chosen


def _read_passphrase(confirm: bool, prompt: str = "Passphrase: ") -> str:
    # Removed once read: child processes (and /proc/<pid>/environ readers) do not inherit it.
    env = os.environ.pop("DHTCHAT_PASSPHRASE", None)
    if env is not None:
        if not env:
            raise UsageError("DHTCHAT_PASSPHRASE is empty; use --no-passphrase for no passphrase")
        return env
    if not sys.stdin.isatty():
        raise UsageError(
            "a passphrase is needed: set DHTCHAT_PASSPHRASE or run in a terminal"
        )
    first = getpass.getpass(prompt)
    if not first:
        raise UsageError("empty passphrase; use --no-passphrase to store the key unencrypted")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise UsageError("the passphrases differ")
    return first


def _load_identity(profile: Profile) -> SigningIdentity:
    doc = load_identity_document(profile.identity_path)
    passphrase = _read_passphrase(confirm=False) if is_encrypted(doc) else None
    return open_identity(doc, passphrase)


def _bind_host_for(address: Address) -> str:
    host = address[0]
    if ":" in host:
        return "::1" if host == "::1" else "::"
    return "127.0.0.1" if host.startswith("127.") else "0.0.0.0"


def _parse_bootstrap(values: Sequence[str] | None) -> list[Address]:
    out = []
    for value in values or []:
        try:
            out.append(parse_address(value))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return out


def _describe(event: Event) -> str | None:
    if isinstance(event, ContactAdded):
        return f"contact added {short(event.node_id)} at {format_address(event.address)}"
    if isinstance(event, ContactEvicted):
        return f"contact evicted {short(event.node_id)} at {format_address(event.address)}"
    if isinstance(event, RecordStored):
        return (f"stored record {short(event.key)} seq {event.seq} from "
                f"{format_address(event.source)}")
    if isinstance(event, PeerMisbehaved):
        return f"dropped bad datagram from {format_address(event.address)}: {event.reason}"
    if isinstance(event, BootstrapCompleted):
        return f"bootstrap complete: {event.contacts} contacts"
    return None


class _LogBudget:
    """At most ``per_minute`` lines per minute; reports how many were suppressed."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window_start = 0.0
        self._used = 0
        self._suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= 60.0:
            if self._suppressed:
                log.info("suppressed %d more bad-datagram lines in the last minute",
                         self._suppressed)
            self._window_start, self._used, self._suppressed = now, 0, 0
        if self._used < self.per_minute:
            self._used += 1
            return True
        self._suppressed += 1
        return False


# ---------------------------------------------------------------------------- id


def cmd_id_new(args: argparse.Namespace) -> int:
    profile, _ = _profile(args)
    if profile.has_identity():
        raise UsageError(f"an identity already exists in {profile.root}")
    if args.no_passphrase:
        passphrase = None
        print("warning: the identity key is stored UNENCRYPTED; anyone who can read "
              f"{profile.identity_path} can impersonate you, and read your message history "
              "and contact list", file=sys.stderr)
    else:
        passphrase = _read_passphrase(confirm=True)
        _warn_if_weak(passphrase)
    make_private(profile.root)
    identity = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    save_identity_file(profile.identity_path, identity, passphrase)
    print(identity.user_id)
    return EXIT_OK


def _warn_if_weak(passphrase: str) -> None:
    score, guesses = passphrase_strength(passphrase)
    if score < 3:
        print(f"warning: weak passphrase (strength {score}/4, {guesses}); a stolen profile "
              "could be opened by guessing it", file=sys.stderr)


def cmd_id_passphrase(args: argparse.Namespace) -> int:
    profile, _ = _profile(args)
    make_private(profile.root)
    doc = load_identity_document(profile.identity_path)
    old = _read_passphrase(confirm=False, prompt="Current passphrase: ") \
        if is_encrypted(doc) else None
    if args.no_passphrase:
        new = None
        print("warning: the identity key will be stored UNENCRYPTED; anyone who can read "
              f"{profile.root} can read your message history and contact list",
              file=sys.stderr)
    else:
        new_env = os.environ.pop("DHTCHAT_NEW_PASSPHRASE", None)
        if new_env is not None:
            os.environ["DHTCHAT_PASSPHRASE"] = new_env
        new = _read_passphrase(confirm=True, prompt="New passphrase: ")
        _warn_if_weak(new)
    rewrap_identity_file(profile.identity_path, old, new)
    print("passphrase changed", file=sys.stderr)
    return EXIT_OK


def cmd_id_show(args: argparse.Namespace) -> int:
    profile, _ = _profile(args)
    doc = load_identity_document(profile.identity_path)
    try:
        public_key = base64.b64decode(str(doc.get("public_key", "")), validate=True)
        user_id = encode_user_id(public_key)
    except (ValueError, LocalProtocolError):
        raise KeystoreError(f"identity file {profile.identity_path} is malformed") from None
    print(user_id)
    if args.qr:
        segno.make(user_id, error="m").terminal(compact=True)
    print(f"fingerprint: {fingerprint(public_key)}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------- node


async def _run_node(args: argparse.Namespace) -> int:
    bootstrap = _parse_bootstrap(args.bootstrap)
    profile_root, chosen = resolve_profile_dir(args.profile)
    state: NodeState | None = None
    node_key: SigningIdentity | None = None
    if chosen:
        state = NodeState(Profile(profile_root).node_db_path)
        node_key = state.node_key()

    misbehaviour = _LogBudget(per_minute=20)

    def on_event(event: Event) -> None:
        line = _describe(event)
        if line is None:
            return
        if isinstance(event, PeerMisbehaved) and not misbehaviour.allow(time.monotonic()):
            return  # a flood of bad datagrams must not flood the log too
        log.info("%s", line)

    try:
        node = await UdpDhtNode.create(args.host, args.port, node_key=node_key,
                                       on_event=on_event)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("node %s listening on %s", node.node_id.hex(), format_address(node.address))
    if state is not None:
        remembered = state.contacts()
        if remembered:
            log.info("re-verifying %d remembered contacts", len(remembered))
            node.add_known_contacts(remembered)
    where = ", ".join(format_address(a) for a in bootstrap)

    async def join() -> None:
        try:
            contacts = await node.bootstrap(bootstrap)
        except TimeoutError:
            contacts = len(node.core.table)
        if contacts:
            log.info("joined through %s: %d contacts", where, contacts)
        else:
            log.warning("no node answered at %s; retrying every 30 s", where)

    join_task: asyncio.Task[None] | None = None
    while not stop.is_set():
        if bootstrap and len(node.core.table) == 0 and (join_task is None or join_task.done()):
            join_task = asyncio.create_task(join())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 30.0)
        if state is not None:
            state.save_contacts(node.contacts())
    if join_task is not None and not join_task.done():
        join_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await join_task
    if state is not None:
        state.save_contacts(node.contacts())
        state.close()
    await node.close()
    log.info("node stopped")
    return EXIT_OK


def cmd_node(args: argparse.Namespace) -> int:
    return asyncio.run(_run_node(args))


# ---------------------------------------------------------------------------- dht


async def _client(bootstrap: list[Address]) -> UdpDhtNode:
    if not bootstrap:
        raise UsageError("--bootstrap HOST:PORT is required")
    node = await UdpDhtNode.create(_bind_host_for(bootstrap[0]), 0,
                                   config=DhtConfig(read_only=True))
    try:
        contacts = await node.bootstrap(bootstrap, timeout=10.0)
    except TimeoutError:
        contacts = len(node.core.table)
    if contacts == 0:
        await node.close()
        raise DhtUnreachable("no DHT node answered at " +
                             ", ".join(format_address(a) for a in bootstrap))
    return node


class DhtUnreachable(Exception):
    """No bootstrap node answered."""


async def _dht_put(args: argparse.Namespace) -> int:
    bootstrap = _parse_bootstrap(args.bootstrap)
    value = args.value.encode("utf-8")
    if len(value) > MAX_VALUE_BYTES:
        raise UsageError(f"VALUE is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}")
    if not 1 <= args.ttl <= 7 * 24 * 3600:
        raise UsageError("--ttl must be between 1 second and 7 days")
    profile, _ = _profile(args)
    if profile.has_identity():  # publish as yourself when you have an identity
        signer = _load_identity(profile)
    else:
        signer = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    now = time.time()
    record = make_app_record(signer, args.key, value, seq=int(now * 1000),
                             expires=int(now) + args.ttl)
    node = await _client(bootstrap)
    try:
        result = await node.put(record, timeout=args.timeout)
    except TimeoutError:
        print("error: no storer acknowledged within the timeout", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await node.close()
    print(record.key.hex())
    print(f"owner {signer.user_id}; stored on {result.stored} of {result.attempted} nodes",
          file=sys.stderr)
    return EXIT_OK if result.stored > 0 else EXIT_FAILED


async def _dht_get(args: argparse.Namespace) -> int:
    bootstrap = _parse_bootstrap(args.bootstrap)
    owner: bytes | None = None
    if args.record_key:
        if args.owner or args.key:
            raise UsageError("give either --record-key HEX or --owner ID KEY, not both")
        try:
            key = bytes.fromhex(args.record_key)
        except ValueError:
            raise UsageError("--record-key must be 64 hex digits") from None
        if len(key) != 32:
            raise UsageError("--record-key must be 64 hex digits")
    elif args.owner:
        if not args.key:
            raise UsageError("--owner ID needs the application KEY")
        owner = decode_user_id(args.owner)
        key = record_key(RecordType.APP, owner, app_salt(args.key))
    else:
        raise UsageError("give --record-key HEX or --owner ID KEY")
    node = await _client(bootstrap)
    try:
        records = await node.get(key, owner=owner, timeout=args.timeout)
    except TimeoutError:
        records = []
    finally:
        await node.close()
    if not records:
        print("not found", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([
            {
                "owner": encode_user_id(r.owner),
                "type": r.type,
                "seq": r.seq,
                "expires": r.expires,
                "value": r.value.decode("utf-8", errors="replace"),
                "value_base64": base64.b64encode(r.value).decode("ascii"),
            }
            for r in records
        ], indent=2))
    else:
        for record in records:
            print(record.value.decode("utf-8", errors="replace"))
    return EXIT_OK


def cmd_dht_put(args: argparse.Namespace) -> int:
    return asyncio.run(_dht_put(args))


def cmd_dht_get(args: argparse.Namespace) -> int:
    return asyncio.run(_dht_get(args))


# ---------------------------------------------------------------------------- daemon


def _parse_turn(args: argparse.Namespace) -> TurnServer | None:
    from dhtchat.net.webrtc import TurnServer  # noqa: PLC0415 - aiortc loads only for daemons

    if not args.turn:
        if args.turn_user or args.turn_pass:
            raise UsageError("--turn-user/--turn-pass need --turn URL")
        return None
    if not args.turn.startswith(("turn:", "turns:")):
        raise UsageError("--turn must be a turn: URL, e.g. turn:203.0.113.5:3478")
    if not args.turn_user or args.turn_pass is None:
        raise UsageError("--turn needs --turn-user and --turn-pass")
    return TurnServer(args.turn, args.turn_user, args.turn_pass)


async def _run_daemon(args: argparse.Namespace) -> int:
    # Imported here: aiortc takes a while to load and only the daemon needs it.
    from dhtchat.app.daemon import Daemon, DaemonAlreadyRunning, DaemonOptions  # noqa: PLC0415

    profile, _ = _profile(args)
    if not profile.has_identity():
        raise UsageError(f"no identity in {profile.root}; create one with `dhtchat id new`")
    if not is_encrypted(load_identity_document(profile.identity_path)):
        log.warning("this identity has no passphrase: the message history and contact list "
                    "in %s are readable by anyone who can read its files", profile.root)
    identity = _load_identity(profile)
    options = DaemonOptions(
        port=args.port, host=args.host, bootstrap=_parse_bootstrap(args.bootstrap),
        stun=_parse_bootstrap(args.stun), turn=_parse_turn(args), relay_only=args.relay_only,
        ice_addresses=args.ice_address, connect_timeout=args.connect_timeout,
        display_name=args.name or "",
    )
    daemon = Daemon(profile, identity, options)
    try:
        await daemon.start()
    except DaemonAlreadyRunning as exc:
        raise UsageError(str(exc)) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(daemon.stop()))
    log.info("daemon ready; API on %s", daemon.socket_path)
    try:
        await daemon.serve_forever()
    finally:
        await daemon.stop()
    log.info("daemon stopped")
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    return asyncio.run(_run_daemon(args))


def _rpc(args: argparse.Namespace, method: str, params: dict[str, Any],
         timeout: float = 120.0) -> Any:
    profile, _ = _profile(args)
    path = profile.root / "daemon.sock"
    try:
        return asyncio.run(rpc_call(path, method, params, timeout=timeout))
    except DaemonNotRunning:
        raise DaemonUnavailable(
            f"no daemon is running for profile {profile.root}; start one with "
            "`dhtchat daemon --port PORT`") from None


class DaemonUnavailable(Exception):
    """The client could not reach a daemon."""


def _print_contacts(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = row.get("status", "")
        if row.get("path"):
            status += f" ({row['path']})"
        if row.get("reason") and row.get("status") != "connected":
            status += f" - {row['reason']}"
        extra = f" \"{one_line(row['message'])}\"" if row.get("message") else ""
        print(f"{one_line(row['name']):<20} {row['state']:<9} {status:<24} {row['id']}{extra}")
        if row.get("warning"):
            print(f"  WARNING: {one_line(row['name'])} {row['warning']}")


def cmd_contact(args: argparse.Namespace) -> int:
    action = args.contact_command
    if action == "request":
        result = _rpc(args, "contact.request",
                      {"id": args.id, "name": args.name, "message": args.message})
        print(f"request sent to {result['id']} (stored on {result.get('stored_on', 0)} nodes)"
              if result["state"] == "outgoing" else f"{result['name']}: {result['state']}")
    elif action == "pending":
        _print_contacts(_rpc(args, "contact.pending", {}), args.json)
    elif action == "accept":
        result = _rpc(args, "contact.accept", {"id": args.id, "name": args.name})
        print(f"accepted {result['name']} ({result['id']})")
    elif action == "refuse":
        result = _rpc(args, "contact.refuse", {"id": args.id})
        print(f"refused {result['id']}")
    elif action == "block":
        result = _rpc(args, "contact.block", {"id": args.id})
        print(f"blocked {result['id']}")
    elif action == "unblock":
        result = _rpc(args, "contact.unblock", {"id": args.id})
        print(f"unblocked {result['id']}")
    else:
        _print_contacts(_rpc(args, "contact.list", {}), args.json)
    return EXIT_OK


def cmd_connect(args: argparse.Namespace) -> int:
    result = _rpc(args, "connect", {"contact": args.contact, "timeout": args.timeout},
                  timeout=args.timeout + 30)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        local, remote = result["local"], result["remote"]
        print(f"connected to {result['name']} {result['path']}: "
              f"{local['type']} {local['address']} <-> {remote['type']} {remote['address']} "
              f"in {result['connect_ms']:.0f} ms")
    return EXIT_OK


# Starts every line dhtchat itself writes into a conversation (a timer change, a group's new
# member list, a file offer). It, and the signs that look like it, are escaped in everything
# other people choose (names, texts, file and group names), so no text can pass for a notice.
NOTICE_MARK = "\u2691"  # ⚑
_MARK_LOOKALIKES = str.maketrans({c: f"\\u{ord(c):04x}" if ord(c) < 0x10000
                                  else f"\\U{ord(c):08x}"
                                  for c in "\u2690\u2691\u26f3\u26ff\U0001f3c1\U0001f3f3"
                                           "\U0001f3f4\U0001f6a9"})


def _unmarked(text: str) -> str:
    """``text`` on one line, terminal-safe, without anything that looks like the mark."""
    return one_line(text).translate(_MARK_LOOKALIKES)


def _print_message(message: dict[str, Any], as_json: bool, names: dict[str, str]) -> None:
    if as_json:
        print(json.dumps(message), flush=True)
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(message["timestamp"]))
    author = str(message.get("author") or message["from"])
    who = _unmarked(names.get(author) or message.get("author_name") or author[:12])
    where = ""
    if message.get("group"):  # which group, before who wrote in it
        where = f"[{_unmarked(message.get('group_name') or message['group'][:12])}] "
    marks = ""
    if message["from"] == names.get("__me__"):
        marks = " ✓✓" if message["read"] else " ✓" if message["delivered"] else " …"
    # Continuation lines are indented, so a message cannot fake a line of its own.
    text = "\n    ".join(_unmarked(line) for line in str(message["text"]).split("\n"))
    mark = "" if message.get("kind", "text") == "text" else f"{NOTICE_MARK} "
    print(f"[{stamp}] {mark}{where}{who}: {text}{marks}", flush=True)


def _names(args: argparse.Namespace) -> dict[str, str]:
    rows = _rpc(args, "contact.list", {})
    names = {row["id"]: row["name"] for row in rows}
    names["__me__"] = _rpc(args, "status", {})["id"]
    names[names["__me__"]] = "me"
    return names


def cmd_send(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"to": args.contact, "text": args.text}
    if args.wait:
        params.update(wait=True, timeout=args.timeout)
    result = _rpc(args, "message.send", params, timeout=args.timeout + 30)
    state = "delivered" if result["delivered"] else "queued"
    print(f"{state} {result['id']}", file=sys.stderr)
    return EXIT_OK


def cmd_receive(args: argparse.Namespace) -> int:
    names = {} if args.json else _names(args)
    reached = not args.json  # the daemon answered already (the names)
    while True:
        try:
            messages = _rpc(args, "message.receive", {"wait": 30 if args.follow else 0},
                            timeout=90)
        except DaemonUnavailable:
            if reached:  # it was there a moment ago: it stopped, say so
                raise DaemonStopped("the daemon stopped") from None
            raise
        reached = True
        for message in messages:
            _print_message(message, args.json, names)
        if not args.follow:
            return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    names = {} if args.json else _names(args)
    for message in _rpc(args, "message.history", {"contact": args.contact,
                                                  "limit": args.limit}):
        _print_message(message, args.json, names)
    return EXIT_OK


def _progress_line(row: dict[str, Any]) -> str:
    return (f"{row['name']}: {row['transferred'] / 1e6:.1f} of {row['size'] / 1e6:.1f} MB "
            f"({row['progress']:.0f}%)")


def cmd_file(args: argparse.Namespace) -> int:
    action = args.file_command
    if action == "send":
        path = os.path.abspath(args.path)
        result = _rpc(args, "file.send", {"to": args.contact, "path": path})
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
            rows = [r for r in _rpc(args, "file.list", {}) if r["id"] == result["id"]]
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
        rows = _rpc(args, "file.list", {})
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
        row = _rpc(args, f"file.{action}", {"id": args.id})
        done = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}[action]
        print(f"{done} {row['name']} ({row['size']} bytes)", file=sys.stderr)
        return EXIT_OK
    if action == "limits":
        changes = {"auto_accept": args.auto_accept, "contact_quota": args.contact_quota,
                   "total_quota": args.total_quota}
        limits = _rpc(args, "file.limits", {k: v for k, v in changes.items() if v is not None})
        for name, value in limits.items():
            print(f"{name}: {value}")
        return EXIT_OK
    result = _rpc(args, "file.get", {"id": args.id, "dest": os.path.abspath(args.dest)})
    print(result["path"])
    return EXIT_OK


def cmd_group(args: argparse.Namespace) -> int:
    action = args.group_command
    if action == "create":
        result = _rpc(args, "group.create", {"name": args.name, "members": args.member})
    elif action == "invite":
        result = _rpc(args, "group.invite", {"group": args.group, "members": args.member})
    elif action == "remove":
        result = _rpc(args, "group.remove", {"group": args.group, "member": args.member})
    elif action == "leave":
        result = _rpc(args, "group.leave", {"group": args.group})
        print(f"left {args.group}")
        return EXIT_OK
    else:
        rows = _rpc(args, "group.list", {})
        if args.json:
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        names = _names(args)
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


def cmd_timer(args: argparse.Namespace) -> int:
    result = _rpc(args, "message.timer", {"contact": args.contact, "seconds": args.seconds})
    print(result["text"])
    return EXIT_OK


_MEDIA_PREFIXES = ("tone", "pulse", "alsa", "v4l2", "lavfi")


def _media_spec(value: str | None) -> str | None:
    """A media spec for the daemon: file paths made absolute (its working directory is not
    ours); tone:, silence, null and device specs as given."""
    if value is None or value in ("silence", "null") or \
            value.partition(":")[0] in _MEDIA_PREFIXES:
        return value
    return os.path.abspath(value)


def _media_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in ("audio_in", "audio_out", "video_in"):
        value = _media_spec(getattr(args, name, None))
        if value is not None:
            params[name] = value
    return params


def _print_call_stats(stats: dict[str, Any]) -> None:
    if not stats:
        return
    rtt = f"{stats['rtt_ms']:.0f} ms" if stats.get("rtt_ms") is not None else "-"
    jitter = f"{stats['jitter_ms']:.1f} ms" if stats.get("jitter_ms") is not None else "-"
    print(f"  {stats['duration_s']:>6.0f} s  rtt {rtt}  jitter {jitter}  loss "
          f"{stats['loss_percent']:.1f}%  send {stats.get('send_kbps', 0):.0f} kbit/s  "
          f"received {stats['packets_received']} packets", file=sys.stderr, flush=True)


def _follow_call(args: argparse.Namespace, call: dict[str, Any], duration: float | None,
                 stats_every: float = 5.0) -> int:
    """Print the call's progress, SAS and stats until it ends (hang up after ``duration``
    s of media, or on Ctrl-C); 0 after a normal hang-up."""
    shown_state, shown_sas = "", None
    active_since: float | None = None
    next_stats = 0.0
    try:
        while True:
            if call["state"] != shown_state:
                shown_state = call["state"]
                path = f" ({call['path']})" if call.get("path") else ""
                if shown_state != "ended":
                    print(f"call {shown_state}{path}", file=sys.stderr, flush=True)
            if call.get("sas") and call["sas"] != shown_sas:
                shown_sas = call["sas"]
                print(f"SAS: {shown_sas['words']}  ({shown_sas['number']}) - read these to "
                      "each other; if they differ, someone is in the middle",
                      file=sys.stderr, flush=True)
            if call["state"] == "ended":
                break
            now = time.monotonic()
            if call["state"] == "active":
                active_since = active_since or now
                if now >= next_stats:
                    next_stats = now + stats_every
                    _print_call_stats(_rpc(args, "call.status", {"id": call["id"]})["stats"])
                if duration is not None and now - active_since >= duration:
                    call = _rpc(args, "call.hangup", {"id": call["id"]})
                    continue
            call = _rpc(args, "call.wait", {"id": call["id"], "timeout": 1}, timeout=30)
    except KeyboardInterrupt:
        call = _rpc(args, "call.hangup", {"id": call["id"]})
    print(f"call ended: {call['reason']}", file=sys.stderr)
    return EXIT_OK if call["reason"] in ("hung up", "hung up by the contact") else EXIT_FAILED


def _follow_group(args: argparse.Namespace, legs: list[dict[str, Any]],
                  duration: float | None) -> int:
    """Each leg's state and SAS until all ended (hang up all after ``duration`` s with
    every answered leg active, or on Ctrl-C)."""
    shown: dict[str, tuple[str, Any]] = {}
    active_since: float | None = None
    try:
        while True:
            legs = [_rpc(args, "call.status", {"id": leg["id"]}) for leg in legs]
            for leg in legs:
                now_shown = (leg["state"], leg.get("sas"))
                if shown.get(leg["id"]) != now_shown:
                    shown[leg["id"]] = now_shown
                    sas = f"  SAS: {leg['sas']['words']} ({leg['sas']['number']})" \
                        if leg.get("sas") and leg["state"] == "active" else ""
                    what = leg["reason"] if leg["state"] == "ended" else leg["state"]
                    print(f"{leg['name']}: {what}{sas}", file=sys.stderr, flush=True)
            if all(leg["state"] == "ended" for leg in legs):
                break
            if any(leg["state"] == "active" for leg in legs):
                active_since = active_since or time.monotonic()
                if duration is not None and time.monotonic() - active_since >= duration:
                    _rpc(args, "call.hangup", {"id": legs[0]["id"]})
                    continue
            time.sleep(0.5)
    except KeyboardInterrupt:
        _rpc(args, "call.hangup", {"id": legs[0]["id"]})
    print("group call ended", file=sys.stderr)
    return EXIT_OK if any(leg["answered"] for leg in legs) else EXIT_FAILED


def cmd_call(args: argparse.Namespace) -> int:
    words = args.target
    if words[0] == "list" and len(words) == 1:
        rows = _rpc(args, "call.list", {"limit": args.limit})
        if args.json:
            print(json.dumps(rows, indent=2))
            return EXIT_OK
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started"]))
            length = (f"{row['ended'] - row['answered']:.0f} s"
                      if row["answered"] and row["ended"] else "")
            mark = "MISSED " if row["missed"] else ""
            print(f"{when}  {row['direction']:<8} {row['name']:<16} {mark}{row['reason']} "
                  f"{length}".rstrip())
        return EXIT_OK
    if words[0] == "stats" and len(words) == 1:
        status = _rpc(args, "call.status", {})
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print(f"{status['state']} call with {status['name']}", file=sys.stderr)
            _print_call_stats(status["stats"])
        return EXIT_OK
    if words[0] == "verify" and len(words) in (2, 3):
        params: dict[str, Any] = {"contact": words[1]}
        if len(words) == 3 or args.sas:
            params["sas"] = args.sas or words[2]
        result = _rpc(args, "call.verify", params)
        print(f"{result['name']} is verified (SAS {result['sas']})", file=sys.stderr)
        return EXIT_OK
    if words[0] == "hangup" and len(words) == 1:
        _rpc(args, "call.hangup", {})
        return EXIT_OK
    controls = {"mute": ("mute", True), "unmute": ("mute", False), "hold": ("hold", True),
                "resume": ("hold", False), "camera-on": ("camera", True),
                "camera-off": ("camera", False)}
    if words[0] in controls and len(words) == 1:
        name, value = controls[words[0]]
        status = _rpc(args, "call.control", {name: value})
        print(f"{status['name']}: muted={status['muted']} held={status['held']} "
              f"camera_off={status['camera_off']}", file=sys.stderr)
        return EXIT_OK
    if len(words) > 5:
        raise UsageError("usage: dhtchat call NAME_OR_ID [NAME_OR_ID ...] (a group call of "
                         "up to 5 people) | call list | call stats | "
                         "call verify NAME_OR_ID [WORDS] | call hangup")
    if len(words) > 1:
        group = _rpc(args, "call.start", {"to": words, **_media_params(args)}, timeout=120)
        print(f"group call with {', '.join(c['name'] for c in group['calls'])}...",
              file=sys.stderr, flush=True)
        return _follow_group(args, group["calls"], args.duration)
    params = {"to": words[0], "video": args.video, **_media_params(args)}
    call = _rpc(args, "call.start", params, timeout=90)
    print(f"calling {call['name']}...", file=sys.stderr, flush=True)
    return _follow_call(args, call, args.duration)


def cmd_answer(args: argparse.Namespace) -> int:
    media = _media_params(args)
    if args.auto:
        _rpc(args, "call.auto_answer", {"enabled": True, **media})
        print("answering every call (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            while True:
                call = _rpc(args, "call.wait", {"timeout": 60}, timeout=90)
                if call is not None and call["state"] != "ended":
                    print(f"call from {call['name']}", file=sys.stderr, flush=True)
                    _follow_call(args, call, None)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            with contextlib.suppress(Exception):
                _rpc(args, "call.auto_answer", {"enabled": False})
    call = _rpc(args, "call.wait", {"timeout": args.timeout}, timeout=args.timeout + 30)
    if call is None or call["state"] != "ringing" or call["direction"] != "incoming":
        print("no incoming call", file=sys.stderr)
        return EXIT_FAILED
    print(f"answering {call['name']}", file=sys.stderr, flush=True)
    call = _rpc(args, "call.answer", {"id": call["id"], **media}, timeout=90)
    return _follow_call(args, call, None)


def cmd_simulate(args: argparse.Namespace) -> int:
    # Imported here: the simulator pulls matplotlib and friends, which a chat node never needs.
    from dhtchat.sim.cli import simulate_main  # noqa: PLC0415

    return simulate_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(nodes=args.nodes, keep_running=args.keep_running))


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="dhtchat", description="Serverless end-to-end encrypted messenger on a DHT."
    )
    parser.add_argument("--version", action="version", version=f"dhtchat {__version__}")
    parser.add_argument("--profile", metavar="DIR",
                        help="profile directory (default: $DHTCHAT_HOME or the user data dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    id_parser = sub.add_parser("id", help="manage your identity")
    id_sub = id_parser.add_subparsers(dest="id_command", required=True)
    new = id_sub.add_parser("new", help="create a new identity and print its user id")
    new.add_argument("--no-passphrase", action="store_true",
                     help="store the key unencrypted (not recommended)")
    new.set_defaults(func=cmd_id_new)
    change = id_sub.add_parser("passphrase", help="change the passphrase of your identity "
                               "(new one from $DHTCHAT_NEW_PASSPHRASE or the terminal)")
    change.add_argument("--no-passphrase", action="store_true",
                        help="remove the passphrase (not recommended)")
    change.set_defaults(func=cmd_id_passphrase)
    show = id_sub.add_parser("show", help="print your user id")
    show.add_argument("--qr", action="store_true", help="also print a terminal QR code")
    show.set_defaults(func=cmd_id_show)

    node = sub.add_parser("node", help="run a headless DHT node until SIGINT/SIGTERM")
    node.add_argument("--port", type=int, required=True, help="UDP port (0: any free port)")
    node.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    node.add_argument("--bootstrap", metavar="HOST:PORT", nargs="+", action="extend",
                      help="known node(s) to join through")
    node.set_defaults(func=cmd_node)

    dht = sub.add_parser("dht", help="store and fetch signed values")
    dht_sub = dht.add_subparsers(dest="dht_command", required=True)
    put = dht_sub.add_parser("put", help="store VALUE under the application key KEY")
    # One address per flag (repeatable): nargs="+" would swallow the positional KEY VALUE.
    put.add_argument("--bootstrap", metavar="HOST:PORT", action="append", required=True,
                     help="a known node (repeat the flag for several)")
    put.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    put.add_argument("--timeout", type=float, default=15.0)
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    put.set_defaults(func=cmd_dht_put)
    get = dht_sub.add_parser("get", help="fetch a value")
    get.add_argument("--bootstrap", metavar="HOST:PORT", action="append", required=True,
                     help="a known node (repeat the flag for several)")
    get.add_argument("--record-key", metavar="HEX")
    get.add_argument("--owner", metavar="ID", help="owner's user id (with KEY)")
    get.add_argument("--json", action="store_true", help="print records as JSON")
    get.add_argument("--timeout", type=float, default=15.0)
    get.add_argument("key", metavar="KEY", nargs="?")
    get.set_defaults(func=cmd_dht_get)

    sim = sub.add_parser(
        "simulate", help="simulate a large DHT on virtual time (see docs/simulator.md)",
        description="Run a scenario (TOML, see simulations/) with optional overrides, or "
                    "`dhtchat simulate sweep SWEEP.toml ...` for parameter sweeps.")
    sim.add_argument("scenario", nargs="?", metavar="SCENARIO.toml")
    sim.add_argument("--nodes", type=int)
    sim.add_argument("--lookups", type=int)
    sim.add_argument("--seed", type=int)
    sim.add_argument("--k", type=int)
    sim.add_argument("--alpha", type=int)
    sim.add_argument("--join", choices=["realistic", "oracle"])
    sim.add_argument("--churn", metavar="PRESET")
    sim.add_argument("--baseline", choices=["kademlia"])
    sim.add_argument("--workers", type=int, metavar="N",
                     help="spread the nodes over N processes (needs a latency floor)")
    sim.add_argument("--out", metavar="DIR", default="sim-out")
    sim.add_argument("--no-plots", action="store_true")
    sim.set_defaults(func=cmd_simulate)

    daemon = sub.add_parser("daemon", help="run your node: DHT, contacts, connections")
    daemon.add_argument("--port", type=int, required=True, help="UDP port of the DHT node")
    daemon.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    daemon.add_argument("--bootstrap", metavar="HOST:PORT", nargs="+", action="extend",
                        help="known DHT node(s) to join through")
    daemon.add_argument("--stun", metavar="HOST:PORT", nargs="+", action="extend",
                        help="STUN server(s) to use instead of DHT peers")
    daemon.add_argument("--turn", metavar="URL", help="TURN server, e.g. turn:HOST:3478")
    daemon.add_argument("--turn-user", metavar="U")
    daemon.add_argument("--turn-pass", metavar="P")
    daemon.add_argument("--relay-only", action="store_true",
                        help="connect only through TURN: peers never learn your IP")
    daemon.add_argument("--ice-address", metavar="IP", action="append",
                        help="offer only these local addresses as ICE host candidates")
    daemon.add_argument("--name", help="display name sent with your contact requests")
    daemon.add_argument("--connect-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    daemon.set_defaults(func=cmd_daemon)

    contact = sub.add_parser("contact", help="contact requests and the contact list")
    contact_sub = contact.add_subparsers(dest="contact_command", required=True)
    c_request = contact_sub.add_parser("request", help="ask ID to become a contact")
    c_request.add_argument("id", metavar="ID")
    c_request.add_argument("--name", help="the display name they will see")
    c_request.add_argument("--message", default="", help="a short note (280 characters)")
    c_pending = contact_sub.add_parser("pending", help="requests waiting for an answer")
    c_pending.add_argument("--json", action="store_true")
    c_accept = contact_sub.add_parser("accept", help="accept a request")
    c_accept.add_argument("id", metavar="ID")
    c_accept.add_argument("--name", help="what to call this contact")
    for name, text in (("refuse", "refuse a request"), ("block", "block an id for good"),
                       ("unblock", "forget a block")):
        c_other = contact_sub.add_parser(name, help=text)
        c_other.add_argument("id", metavar="ID")
    c_list = contact_sub.add_parser("list", help="contacts and their status")
    c_list.add_argument("--json", action="store_true")
    contact.set_defaults(func=cmd_contact)

    connect = sub.add_parser("connect", help="open an encrypted connection to a contact")
    connect.add_argument("contact", metavar="NAME_OR_ID")
    connect.add_argument("--timeout", type=float, default=30.0)
    connect.add_argument("--json", action="store_true")
    connect.set_defaults(func=cmd_connect)

    send = sub.add_parser("send", help="send a message (queued; delivered when possible)")
    send.add_argument("contact", metavar="NAME_OR_ID")
    send.add_argument("text", metavar="TEXT")
    send.add_argument("--wait", action="store_true",
                      help="return once the delivery receipt arrived")
    send.add_argument("--timeout", type=float, default=60.0)
    send.set_defaults(func=cmd_send)
    receive = sub.add_parser("receive", help="print messages received since the last call")
    receive.add_argument("--json", action="store_true", help="JSON lines")
    receive.add_argument("--follow", action="store_true", help="keep printing new messages")
    receive.set_defaults(func=cmd_receive)
    history = sub.add_parser("history", help="the conversation with a contact")
    history.add_argument("contact", metavar="NAME_OR_ID")
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=int, default=50)
    history.set_defaults(func=cmd_history)

    group = sub.add_parser("group", help="group chats")
    group_sub = group.add_subparsers(dest="group_command", required=True)
    g_create = group_sub.add_parser("create", help="create a group of contacts")
    g_create.add_argument("name", metavar="NAME")
    g_create.add_argument("--member", metavar="ID", action="append", required=True)
    g_invite = group_sub.add_parser("invite", help="admin: add contacts")
    g_invite.add_argument("group", metavar="GROUP")
    g_invite.add_argument("--member", metavar="ID", action="append", required=True)
    g_remove = group_sub.add_parser("remove", help="admin: remove a member")
    g_remove.add_argument("group", metavar="GROUP")
    g_remove.add_argument("member", metavar="ID")
    g_leave = group_sub.add_parser("leave", help="leave a group")
    g_leave.add_argument("group", metavar="GROUP")
    g_list = group_sub.add_parser("list", help="your groups")
    g_list.add_argument("--json", action="store_true")
    group.set_defaults(func=cmd_group)

    timer = sub.add_parser("timer", help="disappearing messages for a conversation")
    timer.add_argument("contact", metavar="NAME_OR_ID")
    timer.add_argument("seconds", type=int, metavar="SECONDS",
                       help="delete messages this long after they are read (0: off)")
    timer.set_defaults(func=cmd_timer)

    files = sub.add_parser("file", help="send and receive files")
    file_sub = files.add_subparsers(dest="file_command", required=True)
    f_send = file_sub.add_parser("send", help="send a file of any size (resumable)")
    f_send.add_argument("contact", metavar="NAME_OR_ID")
    f_send.add_argument("path", metavar="PATH")
    f_send.add_argument("--wait", action="store_true", help="show progress until it arrived")
    f_send.add_argument("--timeout", type=float, default=24 * 3600.0)
    f_list = file_sub.add_parser("list", help="transfers and their progress")
    f_list.add_argument("--json", action="store_true")
    f_get = file_sub.add_parser("get", help="copy a received file out")
    f_get.add_argument("id", metavar="ID")
    f_get.add_argument("dest", metavar="DEST")
    for verb, text in (("accept", "download an offered file"), ("decline", "refuse an offer"),
                       ("cancel", "stop a transfer (a partial download is deleted)")):
        file_sub.add_parser(verb, help=text).add_argument("id", metavar="ID")
    f_limits = file_sub.add_parser("limits", help="show or set the auto-accept size and quotas")
    for option in ("--auto-accept", "--contact-quota", "--total-quota"):
        f_limits.add_argument(option, type=int, metavar="BYTES")
    files.set_defaults(func=cmd_file)

    call = sub.add_parser("call", help="voice/video calls: call NAME_OR_ID [NAME_OR_ID ...] "
                          "(2-4 names: a group call), call list, call stats, "
                          "call verify NAME_OR_ID [WORDS], call hangup, call mute|unmute|"
                          "hold|resume|camera-on|camera-off")
    call.add_argument("target", nargs="+",
                      metavar="NAME_OR_ID [...] | list | stats | verify | hangup | mute ...")
    call.add_argument("--video", action="store_true", help="a video call")
    for flag, what in (("--audio-in", "microphone: tone:440, silence, alsa:hw:0, "
                        "pulse:NAME or an audio file (looped); default silence"),
                       ("--audio-out", "speaker: alsa:default, pulse:NAME, null or a file "
                        "to record to (.wav/.ogg/.flac); default null"),
                       ("--video-in", "camera: v4l2:/dev/video0, lavfi:testsrc or a file")):
        call.add_argument(flag, dest=flag[2:].replace("-", "_"), help=what)
    call.add_argument("--duration", type=float, help="hang up after S seconds of media")
    call.add_argument("--sas", help="with verify: the words the contact read to you")
    call.add_argument("--limit", type=int, default=50, help="with list: how many")
    call.add_argument("--json", action="store_true")
    call.set_defaults(func=cmd_call)
    answer = sub.add_parser("answer", help="answer the incoming call")
    answer.add_argument("--auto", action="store_true",
                        help="answer every call until Ctrl-C (headless use)")
    for flag in ("--audio-in", "--audio-out", "--video-in"):
        answer.add_argument(flag, dest=flag[2:].replace("-", "_"),
                            help="as for `dhtchat call`")
    answer.add_argument("--timeout", type=float, default=60.0,
                        help="wait this long for a call to ring")
    answer.set_defaults(func=cmd_answer)

    demo = sub.add_parser("demo", help="run a local network on loopback and show it working")
    demo.add_argument("--nodes", type=int, default=16)
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the network up until Ctrl-C")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dhtchat`` console script."""
    if argv is None and sys.argv[1:2] == ["simulate"]:
        # the real command line only: restart with the compiled hot path, on huge pages
        # (dhtchat/sim/launch.py)
        from dhtchat.sim.launch import relaunch  # noqa: PLC0415

        relaunch()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["simulate", "sweep"]:
        from dhtchat.sim.sweep import sweep_main  # noqa: PLC0415

        return sweep_main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
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
        format="%(asctime)s %(levelname)s %(message)s",
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

