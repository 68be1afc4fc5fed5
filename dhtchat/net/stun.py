"""STUN Binding client: find which DHT peers answer STUN, to hand one to ICE.

aiortc uses only the first STUN URL it is given, so before each connection attempt the daemon
sends Binding requests to a few DHT peers at once and gives ICE the first that answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from dhtchat.core.addresses import Address
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.stun import binding_request, parse_binding_response


class _Prober(asyncio.DatagramProtocol):
    def __init__(self, requests: dict[bytes, Address]) -> None:
        self.requests = requests
        self.answers: asyncio.Queue[tuple[Address, Address]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) < 20:
            return
        transaction_id = data[8:20]
        server = self.requests.get(transaction_id)
        if server is None:
            return
        with contextlib.suppress(RemoteProtocolError):
            mapped = parse_binding_response(data, transaction_id)
            self.answers.put_nowait((server, mapped))

    def error_received(self, exc: Exception) -> None:
        pass


async def first_stun_responder(
    servers: list[Address], timeout: float = 1.5, local_host: str = "0.0.0.0"
) -> tuple[Address, Address] | None:
    """Send Binding requests to ``servers``; return ``(server, mapped address)`` of the first
    answer, or ``None`` when none answers within ``timeout`` seconds (one retransmission)."""
    if not servers:
        return None
    requests = {secrets.token_bytes(12): server for server in servers}
    loop = asyncio.get_running_loop()
    family_host = "::" if ":" in servers[0][0] and local_host == "0.0.0.0" else local_host
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Prober(requests), local_addr=(family_host, 0)
    )
    try:
        deadline = loop.time() + timeout
        for attempt in range(2):
            for transaction_id, server in requests.items():
                with contextlib.suppress(OSError):
                    transport.sendto(binding_request(transaction_id), server)
            wait = (timeout / 3) if attempt == 0 else deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(protocol.answers.get(), max(0.01, wait))
        return None
    finally:
        transport.close()
