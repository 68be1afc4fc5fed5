"""Network addresses as plain ``(host, port)`` tuples, with packing and subnet grouping.

Subnet grouping implements the IP diversity limits of discv5 and S/Kademlia: IPv4 addresses
are grouped by /24, IPv6 by /64.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from dhtchat.core.errors import RemoteProtocolError

Address = tuple[str, int]


@lru_cache(maxsize=1 << 18)
def pack_ip(host: str) -> bytes:
    """4 or 16 byte packed form of an IP literal."""
    return ipaddress.ip_address(host).packed


@lru_cache(maxsize=1 << 18)
def unpack_ip(packed: bytes) -> str:
    """Textual form of a packed IP; raises :class:`RemoteProtocolError` on a bad length."""
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    if len(packed) == 16:
        return str(ipaddress.IPv6Address(packed))
    raise RemoteProtocolError("an IP address is 4 or 16 bytes")


@lru_cache(maxsize=1 << 18)
def subnet_of(host: str) -> str:
    """The diversity group of an address: its IPv4 /24 or IPv6 /64."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def is_valid_contact_address(host: str, port: int) -> bool:
    """False for addresses a contact can never have (port 0, unspecified, multicast)."""
    return 0 < port < 65536 and _is_valid_contact_host(host)


@lru_cache(maxsize=1 << 18)
def _is_valid_contact_host(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast)


def format_address(address: Address) -> str:
    """``host:port`` (IPv6 in brackets)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address:
    """Parse ``host:port`` or ``[v6]:port``; raises ValueError with a clear message."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {text!r}: expected [IPv6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad address {text!r}: expected an IP literal") from None
    return host, port
