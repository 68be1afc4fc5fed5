"""Two people chat end to end: contact request, acceptance, a direct encrypted connection,
and a message with its delivery receipt, through the daemons' JSON-RPC API.

Everything runs on loopback in this process: an 8-node DHT and two daemons (Alice, Bob),
each with its own profile in a temporary directory. Run: ``python examples/two_daemons_chat.py``
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.profile import Profile
from dhtchat.app.rpc import call
from dhtchat.core.identity import SigningIdentity
from dhtchat.net.udp import UdpDhtNode


async def main() -> None:
    nodes = [await UdpDhtNode.create("127.0.0.1", 0) for _ in range(8)]
    await asyncio.gather(*(n.bootstrap([nodes[0].address]) for n in nodes[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        daemons: dict[str, Daemon] = {}
        for name in ("alice", "bob"):
            options = DaemonOptions(port=0, host="127.0.0.1", bootstrap=[nodes[0].address],
                                    ice_addresses=["127.0.0.1"], display_name=name.title())
            identity = SigningIdentity.from_seed(secrets.token_bytes(32))
            daemons[name] = Daemon(Profile(Path(tmp) / name), identity, options)
            await daemons[name].start()
        alice, bob = daemons["alice"], daemons["bob"]

        async def api(daemon: Daemon, method: str, **params: Any) -> Any:
            return await call(daemon.socket_path, method, params)

        try:
            while not (alice.joined and bob.joined):
                await asyncio.sleep(0.05)
            await api(alice, "contact.request", id=bob.identity.user_id,
                      message="hi Bob, it's Alice")
            while not await api(bob, "contact.pending"):
                await asyncio.sleep(0.1)
            request = (await api(bob, "contact.pending"))[0]
            print(f"Bob got a request from {request['name']}: {request['message']!r}")
            await api(bob, "contact.accept", id=alice.identity.user_id, name="Alice")
            while (await api(alice, "contact.list"))[0]["state"] != "accepted":
                await asyncio.sleep(0.1)
            print("Alice and Bob are contacts")
            info = await api(alice, "connect", contact="Bob", timeout=20)
            print(f"connected {info['path']}: {info['local']['type']} <-> "
                  f"{info['remote']['type']} in {info['connect_ms']:.0f} ms")
            started = time.monotonic()
            sent = await api(alice, "message.send", to="Bob", text="hello Bob", wait=True,
                             timeout=20)
            received = await api(bob, "message.receive", wait=10)
            print(f"Bob received {received[0]['text']!r}; Alice has the delivery receipt: "
                  f"{sent['delivered']} ({(time.monotonic() - started) * 1000:.0f} ms)")
            if received[0]["text"] != "hello Bob" or not sent["delivered"]:
                raise SystemExit("FAILED: the message did not arrive with its receipt")
            print("OK: end-to-end encrypted message delivered exactly once, with a receipt")
        finally:
            for daemon in daemons.values():
                await daemon.stop()
            for node in nodes:
                await node.close()


if __name__ == "__main__":
    asyncio.run(main())
