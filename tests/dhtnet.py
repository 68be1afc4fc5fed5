"""A throwaway DHT of N real UDP nodes on loopback, run as ``python -m tests.dhtnet N``.

Prints ``READY host:port ...`` (a few bootstrap addresses) once the nodes have joined, then
runs until stdin closes or SIGTERM. Used by the daemon tests, which need a DHT in another
process so the daemons (also separate processes) can use it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from dhtchat.net.udp import UdpDhtNode


async def main(count: int, host: str) -> None:
    nodes = [await UdpDhtNode.create(host, 0, seed=1000 + i) for i in range(count)]
    first = nodes[0].address
    await asyncio.gather(*(n.bootstrap([first]) for n in nodes[1:]))
    await asyncio.gather(*(n.bootstrap([first]) for n in nodes[1:]))  # fill tables both ways
    addresses = " ".join(f"{n.address[0]}:{n.address[1]}" for n in nodes[:3])
    print(f"READY {addresses}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    await stop.wait()
    for node in nodes:
        await node.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 32,
                     sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"))
