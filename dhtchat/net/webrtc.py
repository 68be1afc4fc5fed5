"""The few places where dhtchat touches aiortc/aioice beyond their public API.

* ICE servers: aiortc uses only the first STUN and the first TURN URL, and adds Google's STUN
  server when ``iceServers`` is unset, so the configuration is always explicit.
* Host candidates: aioice enumerates every interface address (never loopback). A daemon can
  restrict them (``--ice-address``) to keep an interface private or to run on loopback.
* The selected candidate pair is private state: aiortc exposes no accessor for the aioice
  ``Connection`` (``RTCIceGatherer._connection``), nor aioice for its nominated pairs and
  sockets (``Connection._nominated``, ``_protocols``). They are read by name with
  ``getattr`` (nothing when a version renames them) in :func:`_ice_connection`,
  :func:`selected_pair` and :func:`enlarge_ice_socket_buffers` only; a test pins the pair
  down.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from dhtchat.core.addresses import Address

_original_host_addresses = aioice.ice.get_host_addresses
_forced_host_addresses: list[str] | None = None


def restrict_host_addresses(addresses: list[str] | None) -> None:
    """Offer only ``addresses`` as ICE host candidates (``None``: every interface)."""
    global _forced_host_addresses  # aioice reads a module-level function
    _forced_host_addresses = list(addresses) if addresses else None


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _forced_host_addresses is None:
        return list(_original_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
    return [a for a in _forced_host_addresses if (":" in a and use_ipv6) or
            (":" not in a and use_ipv4)]


aioice.ice.get_host_addresses = _host_addresses


@dataclass(frozen=True)
class TurnServer:
    """A TURN server from the configuration."""

    url: str
    username: str
    password: str


def configuration(stun: Address | None, turn: TurnServer | None,
                  relay_only: bool) -> RTCConfiguration:
    """An explicit aiortc configuration (never the implicit public STUN server)."""
    servers = []
    if stun is not None:
        host = f"[{stun[0]}]" if ":" in stun[0] else stun[0]
        servers.append(RTCIceServer(urls=f"stun:{host}:{stun[1]}"))
    if turn is not None:
        servers.append(RTCIceServer(urls=turn.url, username=turn.username,
                                    credential=turn.password))
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


@dataclass(frozen=True)
class CandidateInfo:
    """One side of the selected ICE candidate pair."""

    type: str  # host, srflx, prflx or relay
    address: Address

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"type": self.type, "address": f"{self.address[0]}:{self.address[1]}"}


@dataclass(frozen=True)
class SelectedPair:
    """The nominated ICE candidate pair of a connection."""

    local: CandidateInfo
    remote: CandidateInfo

    @property
    def path(self) -> str:
        """``relay`` when either side is a TURN relay candidate, else ``direct``."""
        return "relay" if "relay" in (self.local.type, self.remote.type) else "direct"


def _ice_connection(pc: RTCPeerConnection) -> Any:
    dtls = pc.sctp.transport if pc.sctp is not None else next(
        (t.sender.transport for t in pc.getTransceivers() if t.sender.transport is not None),
        None)  # a media-only connection (a call)
    if dtls is None:
        return None
    return getattr(dtls.transport.iceGatherer, "_connection", None)  # private: see the top


def selected_pair(pc: RTCPeerConnection) -> SelectedPair | None:
    """The nominated pair of the connection's ICE transport (its data channel's, or its first
    media track's), once connected."""
    connection = _ice_connection(pc)
    nominated = getattr(connection, "_nominated", None)
    if not nominated:
        return None
    pair = nominated[min(nominated)]
    local, remote = pair.local_candidate, pair.remote_candidate
    return SelectedPair(
        CandidateInfo(local.type, (local.host, int(local.port))),
        CandidateInfo(remote.type, (remote.host, int(remote.port))),
    )


def enlarge_ice_socket_buffers(pc: RTCPeerConnection, size: int = 4 * 1024 * 1024) -> None:
    """4 MiB receive buffers on the ICE sockets (bursts otherwise overflow the default)."""
    connection = _ice_connection(pc)
    for protocol in getattr(connection, "_protocols", []):
        transport = getattr(protocol, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def local_candidate_types(sdp: str) -> Iterator[str]:
    """Candidate types listed in an SDP (``typ host`` ...)."""
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if "typ" in parts:
                yield parts[parts.index("typ") + 1]
