"""asyncio driver of LAN discovery (:mod:`dhtchat.core.lan`): the multicast sockets.

Theory of operation: one socket, bound to the group and port with ``SO_REUSEADDR`` and
``SO_REUSEPORT`` (several daemons on one host all hear every announce), joins the group on
every IPv4 interface that is up, multicast-capable and has a private address; a second,
unbound socket sends each announce once per such interface (``IP_MULTICAST_IF``), with TTL 1
and loopback on, so that daemons on the same host hear each other too. The interface list
(name, index, address and netmask, read with the Linux ``SIOCGIF*`` ioctls) is read again
before each announce, so an interface that comes up later is joined then; the networks of
the interfaces are the "links" the core checks a source against. Elsewhere than Linux the
kernel's default interface is used and only the address ranges are checked. The core decides
what to send and when, and what a received datagram means; this module only moves bytes and
reads the clock (monotonic).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import secrets
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dhtchat.core.lan import (
    INSTANCE_BYTES,
    LAN_GROUP,
    LAN_PORT,
    MAX_ANNOUNCE_BYTES,
    Found,
    LanConfig,
    LanDiscovery,
    Network,
    is_local_source,
)

log = logging.getLogger("dhtchat.lan")

_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_SIOCGIFNETMASK: Final = 0x891B
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8
_IFF_MULTICAST: Final = 0x1000
_MAX_WAIT: Final = 5.0  # the run loop wakes at least this often (interfaces, clock steps)


@dataclass(frozen=True)
class Interface:
    """An IPv4 interface that can carry the announce."""

    index: int
    name: str
    address: str
    network: ipaddress.IPv4Network


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    packed = struct.pack("256s", name.encode()[:15])
    return fcntl.ioctl(sock.fileno(), request, packed)


def interfaces() -> list[Interface] | None:
    """The up, multicast-capable (non-loopback) IPv4 interfaces with a private, link-local or
    shared address (Linux; None elsewhere: not known). On a link where we have a public
    address nobody would accept our announce (:func:`~dhtchat.core.lan.is_local_source`), so
    none is sent there: it would only tell that link's operator that a dhtchat node runs
    here."""
    if not sys.platform.startswith("linux"):
        return None
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for index, name in socket.if_nameindex():
            try:
                flags = struct.unpack_from("H", _ioctl(probe, _SIOCGIFFLAGS, name), 16)[0]
                if not flags & _IFF_UP or flags & _IFF_LOOPBACK or not flags & _IFF_MULTICAST:
                    continue
                address = socket.inet_ntoa(_ioctl(probe, _SIOCGIFADDR, name)[20:24])
                netmask = socket.inet_ntoa(_ioctl(probe, _SIOCGIFNETMASK, name)[20:24])
            except OSError:  # no IPv4 address, or the interface went away
                continue
            if not is_local_source(address):
                continue
            network = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
            found.append(Interface(index, name, address, network))
    return found


def _mreqn(index: int) -> bytes:
    """``struct ip_mreqn`` for the group on interface ``index``."""
    return socket.inet_aton(LAN_GROUP) + socket.inet_aton("0.0.0.0") + struct.pack("i", index)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("LAN socket error: %s", exc)


class LanAnnouncer:
    """Announces a DHT node on the local links and reports the nodes it hears.

    :meth:`open` binds the sockets (an :class:`OSError` if the group port cannot be bound);
    :meth:`run` sends on the core's schedule until ``stopping``; ``on_found`` hears each
    :class:`~dhtchat.core.lan.Found`; ``role()``, if given, says whether the DHT node serves
    (read before each announce: a change is announced soon)."""

    def __init__(self, core: LanDiscovery, on_found: Callable[[Found], None], *,
                 group: str = LAN_GROUP, port: int = LAN_PORT,
                 role: Callable[[], bool] | None = None, bind_host: str = "") -> None:
        self.core = core
        self.bind_host = bind_host
        self.group = group
        self.port = port
        self._on_found = on_found
        self._role = role
        self._wakeup = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: socket.socket | None = None
        self._links: list[Network] | None = None
        self._joined: set[int] = set()
        self.interfaces: list[Interface] = []  # where the group is joined
        self.announcing: list[str] = []  # the names of the interfaces announced on
        self._targets: list[int] = []  # interface indexes to send on (0: the kernel's choice)
        self.send_errors = 0

    @classmethod
    async def open(cls, node_id: bytes, dht_port: int, on_found: Callable[[Found], None], *,
                   serving: bool = True, config: LanConfig | None = None,
                   port: int = LAN_PORT, role: Callable[[], bool] | None = None,
                   bind_host: str = "") -> LanAnnouncer:
        """Bind the LAN discovery sockets for the DHT node ``node_id`` on ``dht_port``;
        ``bind_host``: the address the DHT socket is bound to, if not a wildcard (the
        announce then goes only out of the interface that has it: elsewhere the node
        cannot be reached at the source address)."""
        core = LanDiscovery(node_id, dht_port, secrets.token_bytes(INSTANCE_BYTES),
                            time.monotonic(), config, serving=serving)
        announcer = cls(core, on_found, port=port, role=role, bind_host=bind_host)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Bound to the group (Linux: only the group's datagrams, no unicast to the port).
            receiver.bind((announcer.group if sys.platform.startswith("linux") else "",
                           announcer.port))
            receiver.setblocking(False)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        except OSError:
            receiver.close()
            raise
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sender.setblocking(False)
        announcer._sender = sender
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(announcer._on_datagram), sock=receiver)
        announcer._transport = transport
        announcer._refresh()
        return announcer

    def _refresh(self) -> None:
        """Read the interfaces again; join the group on the new ones."""
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        found = interfaces()
        self.interfaces = found or []
        self._links = None if found is None else [i.network for i in found]
        wanted = {0} if found is None else {i.index for i in found}
        self._targets = sorted(wanted)
        if found is not None and self.bind_host not in ("", "0.0.0.0", "::"):
            # announce only where the DHT socket can be reached at the source address
            with contextlib.suppress(ValueError):
                bound = ipaddress.ip_address(self.bind_host)
                self._targets = [i.index for i in found if bound in i.network]
        self.announcing = [i.name for i in self.interfaces if i.index in self._targets]
        for index in wanted - self._joined:
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(index))
                self._joined.add(index)
            except OSError as exc:  # EADDRINUSE: joined already; ENODEV: no route, no link
                log.debug("joining %s on interface %d: %s", self.group, index, exc)
        self._joined &= wanted

    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            found = self.core.receive(data, source, time.monotonic(), self._links)
        except Exception:  # a bug must not take the daemon down; the core never raises
            log.exception("internal error handling a LAN announce from %s", source)
            return
        if found is not None:
            log.info("LAN: a dhtchat node at %s:%d", *found.address)
            self._on_found(found)
            self._wake()  # the core may want to answer with an announce soon

    def _send(self, datagram: bytes) -> None:
        sender = self._sender
        if sender is None:
            return
        for index in self._targets:
            try:
                if index:
                    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(index))
                sender.sendto(datagram, (self.group, self.port))
            except OSError as exc:
                self.send_errors += 1
                log.debug("LAN announce on interface %d: %s", index, exc)

    def _wake(self) -> None:
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Announce on the core's schedule until ``stopping`` (or :meth:`close`)."""
        while not stopping.is_set() and self._transport is not None:
            now = time.monotonic()
            if self._role is not None:
                self.core.update(serving=self._role(), now=now)
            datagram = self.core.announce(now)
            if datagram is not None:
                assert len(datagram) <= MAX_ANNOUNCE_BYTES
                self._refresh()
                self._send(datagram)
            wait = min(max(0.0, self.core.deadline - time.monotonic()), _MAX_WAIT)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._waiting(stopping), wait)

    async def _waiting(self, stopping: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stopping.wait()),
                   asyncio.ensure_future(self._wakeup.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def close(self) -> None:
        """Close both sockets (idempotent)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self._wake()
