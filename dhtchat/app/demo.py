"""``dhtchat demo``: a small DHT on loopback showing signed put/get and listen push.

Each node binds its own 127.0.N.1 address (Linux routes all of 127/8 to the loopback
interface), so the per-/24 diversity limits behave as on a real network.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from dhtchat.core.identity import SEED_BYTES, SigningIdentity, fingerprint
from dhtchat.core.ids import short
from dhtchat.core.records import make_app_record
from dhtchat.net.udp import UdpDhtNode


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(*, nodes: int = 16, keep_running: bool = False) -> int:
    """Start ``nodes`` nodes, store and fetch a signed value, show a listen push. Exit code."""
    nodes = max(4, min(nodes, 250))
    started = time.perf_counter()
    network = [await UdpDhtNode.create(f"127.0.{i + 1}.1", 0) for i in range(nodes)]
    first = network[0].address
    await asyncio.gather(*(n.bootstrap([first]) for n in network[1:]))
    for n in network:  # a second self-lookup once everyone is in: full routing tables
        await n.find_node(n.node_id)
    sizes = [len(n.core.table) for n in network]
    _say(f"[1/4] {nodes} DHT nodes up on 127.0.x.1 in {time.perf_counter() - started:.2f}s; "
         f"routing tables hold {min(sizes)}-{max(sizes)} verified contacts")

    alice = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    _say(f"[2/4] Alice's user id: {alice.user_id}")
    _say(f"      fingerprint:     {fingerprint(alice.public_key)}")
    alice_node, bob_node = network[1], network[-1]

    record = make_app_record(alice, "greeting", b"hello from Alice", seq=1,
                             expires=int(time.time()) + 600)
    t0 = time.perf_counter()
    put = await alice_node.put(record)
    t1 = time.perf_counter()
    found = await bob_node.get(record.key, owner=alice.public_key)
    t2 = time.perf_counter()
    ok = bool(found) and found[0].value == record.value
    _say(f"[3/4] Alice stored 'greeting' on {put.stored}/{put.attempted} nodes in "
         f"{(t1 - t0) * 1000:.1f} ms (record key {short(record.key)}); Bob fetched and "
         f"verified {found[0].value.decode() if found else 'NOTHING'!r} in "
         f"{(t2 - t1) * 1000:.1f} ms")

    sub = await bob_node.listen(record.key)
    update = make_app_record(alice, "greeting", b"Alice is online now", seq=2,
                             expires=int(time.time()) + 600)
    t3 = time.perf_counter()
    await alice_node.put(update)
    try:
        pushed = await asyncio.wait_for(anext(aiter(sub)), 10.0)
        _say(f"[4/4] Bob's listen received the update {pushed.value.decode()!r} (seq "
             f"{pushed.seq}) {(time.perf_counter() - t3) * 1000:.1f} ms after Alice's put")
    except TimeoutError:
        _say("[4/4] Bob's listen received nothing within 10 s")
        ok = False
    sub.close()

    if keep_running:
        _say(f"network running; bootstrap with --bootstrap {first[0]}:{first[1]}; Ctrl-C stops")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    for n in network:
        await n.close()
    _say("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1
