"""``dhtchat dht put|get``: store and fetch signed application values, as a read-only
client of the DHT."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import time

from dhtchat.cli.errors import EXIT_FAILED, EXIT_OK, DhtUnreachable, UsageError
from dhtchat.cli.identity import load_identity
from dhtchat.cli.options import open_profile, parse_bootstrap
from dhtchat.core.addresses import Address, format_address
from dhtchat.core.identity import SEED_BYTES, SigningIdentity, decode_user_id, encode_user_id
from dhtchat.core.node import DhtConfig
from dhtchat.core.records import MAX_VALUE_BYTES, RecordType, app_salt, make_app_record, record_key
from dhtchat.net.udp import UdpDhtNode


def _bind_host_for(address: Address) -> str:
    host = address[0]
    if ":" in host:
        return "::1" if host == "::1" else "::"
    return "127.0.0.1" if host.startswith("127.") else "0.0.0.0"


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


async def _dht_put(args: argparse.Namespace) -> int:
    bootstrap = parse_bootstrap(args.bootstrap)
    value = args.value.encode("utf-8")
    if len(value) > MAX_VALUE_BYTES:
        raise UsageError(f"VALUE is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}")
    if not 1 <= args.ttl <= 7 * 24 * 3600:
        raise UsageError("--ttl must be between 1 second and 7 days")
    profile, _ = open_profile(args)
    if profile.has_identity():  # publish as yourself when you have an identity
        signer = load_identity(profile)
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
    bootstrap = parse_bootstrap(args.bootstrap)
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
    """Store VALUE under the application key KEY, signed by your identity if you have one."""
    return asyncio.run(_dht_put(args))


def cmd_dht_get(args: argparse.Namespace) -> int:
    """Fetch values by record key or by owner and application key."""
    return asyncio.run(_dht_get(args))
