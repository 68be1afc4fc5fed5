"""Store a signed record on a small local DHT and fetch it from another node.

Run from the repository root:  python examples/local_network_put_get.py

Each node binds its own 127.0.N.1 address (Linux routes all of 127.0.0.0/8 to the loopback
interface), so the network looks like machines on different /24 subnets, which is what the
routing table's diversity limits expect. Nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time

import msgspec

from dhtchat.core.errors import InvalidRecord
from dhtchat.core.identity import SEED_BYTES, SigningIdentity
from dhtchat.core.records import make_app_record, validate_record
from dhtchat.net.udp import UdpDhtNode

NODES = 5


async def main() -> int:
    nodes: list[UdpDhtNode] = []
    try:
        # 1. Start the nodes (port 0 = any free port) and join each through the first one.
        for i in range(NODES):
            nodes.append(await UdpDhtNode.create(f"127.0.{i + 1}.1", 0))
        entry = nodes[0].address
        for node in nodes[1:]:
            await node.bootstrap([entry], timeout=5.0)
        print(f"{NODES} nodes up; entry node at {entry[0]}:{entry[1]}")

        # 2. A person *is* a keypair. Alice signs a value under the application key "status".
        alice = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
        record = make_app_record(alice, "status", b"hello from Alice", seq=1,
                                 expires=int(time.time()) + 600)  # lives for 10 minutes
        put = await nodes[1].put(record, timeout=5.0)
        print(f"stored on {put.stored} of {put.attempted} nodes "
              f"(record key {record.key.hex()[:16]}...)")

        # 3. Anyone who knows Alice's public key and the application key can fetch it,
        #    through any node. Here: the last one, which never saw the put.
        found = await nodes[-1].get(record.key, owner=alice.public_key, timeout=5.0)
        if not found:
            print("not found")
            return 1
        fetched = found[0]
        # The node already dropped invalid records; checking again shows what "valid" means:
        # bound to this key, not expired, signed by its owner.
        validate_record(fetched, record.key, time.time())
        if fetched.owner != alice.public_key or fetched.value != record.value:
            print("fetched a different record")
            return 1
        print(f"fetched and verified {fetched.value.decode()!r} (seq {fetched.seq}) "
              f"signed by {alice.user_id}")

        # 4. A tampered copy is rejected: the signature no longer matches the value.
        forged = msgspec.structs.replace(fetched, value=b"hello from Mallory")
        try:
            validate_record(forged, record.key, time.time())
        except InvalidRecord as exc:
            print(f"tampered copy rejected: {exc}")
        else:
            print("a tampered record was accepted!")
            return 1
    finally:
        for node in nodes:
            await node.close()
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
