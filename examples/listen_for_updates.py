"""Subscribe to a key and get each new value pushed to you (no polling).

Run from the repository root:  python examples/listen_for_updates.py

Bob listens on Alice's "presence" key; when Alice publishes a newer value, the nodes storing
the key push it to Bob's node straight away. Nodes run on 127.0.N.1 (loopback only).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time

from dhtchat.core.identity import SEED_BYTES, SigningIdentity
from dhtchat.core.records import make_app_record, validate_record
from dhtchat.net.udp import UdpDhtNode

NODES = 4
WAIT = 5.0  # seconds Bob waits for the push


async def main() -> int:
    nodes: list[UdpDhtNode] = []
    try:
        for i in range(NODES):
            nodes.append(await UdpDhtNode.create(f"127.0.{i + 1}.1", 0))
        for node in nodes[1:]:
            await node.bootstrap([nodes[0].address], timeout=5.0)
        alice_node, bob_node = nodes[1], nodes[-1]

        # Alice publishes her presence. The sequence number orders her updates.
        alice = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
        expires = int(time.time()) + 600
        first = make_app_record(alice, "presence", b"away", seq=1, expires=expires)
        await alice_node.put(first, timeout=5.0)

        # Bob subscribes to the key. listen() returns once the storers have accepted it.
        subscription = await bob_node.listen(first.key, timeout=5.0)
        print(f"Bob listens on {first.key.hex()[:16]}...")
        try:
            # Alice comes online: a newer record under the same key.
            update = make_app_record(alice, "presence", b"online", seq=2, expires=expires)
            sent = time.perf_counter()
            await alice_node.put(update, timeout=5.0)

            # Wait (bounded) for the push; a subscription yields verified records.
            updates = aiter(subscription)
            deadline = time.monotonic() + WAIT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    print(f"no update within {WAIT} s")
                    return 1
                try:
                    pushed = await asyncio.wait_for(anext(updates), remaining)
                except TimeoutError:
                    continue  # the loop ends at the deadline
                if pushed.owner == alice.public_key and pushed.seq >= update.seq:
                    break
            validate_record(pushed, first.key, time.time())
            print(f"update received: {pushed.value.decode()!r} (seq {pushed.seq}) "
                  f"{(time.perf_counter() - sent) * 1000:.1f} ms after the put")
        finally:
            subscription.close()  # stop renewing the subscription
    finally:
        for node in nodes:
            await node.close()
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
