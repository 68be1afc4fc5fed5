"""STUN Binding client: find which DHT peers answer STUN, to hand one to ICE.

aiortc uses only the first STUN URL it is given, so before each connection attempt the daemon
sends Binding requests to a few DHT peers at once and gives ICE the first that answers.

The requests are padded to :data:`~dhtchat.core.stun.PROBE_BYTES`, so a DHT node answers them
without having verified us (its answer is no larger). A dhtchat node's answer carries a
receives token; echoing it in one more request shows that node that we receive at our IP, so it
then also answers aioice's bare 20-byte request from the same IP (review item 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

from dhtchat.core.addresses import Address
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.stun import PROBE_BYTES, binding_request, parse_binding_answer


class _Prober(asyncio.DatagramProtocol):
    def __init__(self, requests: dict[bytes, Address]) -> None:
        self.requests = requests
        # (transaction id, server, mapped address, receives token)
        self.answers: asyncio.Queue[tuple[bytes, Address, Address, bytes]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) < 20:
            return
        transaction_id = data[8:20]
        server = self.requests.get(transaction_id)
        if server is None:
            return
        with contextlib.suppress(RemoteProtocolError):
            mapped, token = parse_binding_answer(data, transaction_id)
            self.answers.put_nowait((transaction_id, server, mapped, token))

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
                    transport.sendto(binding_request(transaction_id, pad_to=PROBE_BYTES), server)
            wait = (timeout / 3) if attempt == 0 else deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                _tid, server, mapped, token = await asyncio.wait_for(protocol.answers.get(),
                                                                     max(0.01, wait))
                if token:
                    await _confirm(transport, protocol, server, token,
                                   min(timeout / 3, max(0.01, deadline - loop.time())))
                return server, mapped
        return None
    finally:
        transport.close()


async def _confirm(transport: asyncio.DatagramTransport, protocol: _Prober, server: Address,
                   token: bytes, timeout: float) -> None:
    """Echo ``server``'s receives token and wait (at most ``timeout``) for its answer, so
    that it answers ICE's unpadded request from our IP; sent twice if the first is lost."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    confirm_id = secrets.token_bytes(12)
    protocol.requests[confirm_id] = server
    request = binding_request(confirm_id, pad_to=PROBE_BYTES, receives_token=token)
    for attempt in range(2):
        with contextlib.suppress(OSError):
            transport.sendto(request, server)
        until = loop.time() + (timeout / 2 if attempt == 0 else deadline - loop.time())
        while (left := until - loop.time()) > 0:
            try:
                got = await asyncio.wait_for(protocol.answers.get(), left)
            except TimeoutError:
                break
            if got[0] == confirm_id:
                return
