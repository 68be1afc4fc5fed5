"""NAT lab: network namespaces, two NAT routers, public hosts and coturn (test tooling).

Topology (all inside namespaces named ``<prefix>-...``; nothing touches the host namespace)::

    public0 203.0.113.10 --+
    public1 203.0.113.11 --+-- br0 (switch namespace) --+-- router_a WAN 203.0.113.2
    ...                    |                            |     LAN 10.1.0.1 -- alice 10.1.0.2
                           |                            +-- router_b WAN 203.0.113.3
                           |                                  LAN 10.2.0.1 -- bob 10.2.0.2

Every public host has a default route into a tun device nobody reads, so packets to other
addresses vanish inside the lab (coturn needs a route; see docs/natlab.md). Routers forward,
masquerade LAN->WAN ("cone" = MASQUERADE, "symmetric" = MASQUERADE --random-fully) and accept
from the WAN only ESTABLISHED,RELATED traffic, like a home router.

The module uses only the standard library: it doubles as a script run *inside* a namespace
(``python tests/natlab.py probe|stun-server|udp ...``) by :meth:`NatLab.stun_probe_from`,
:meth:`NatLab.start_stun_responder` and :meth:`NatLab.start_udp`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

NatType = Literal["cone", "symmetric"]

#: Root of generated prefixes; :func:`cleanup_prefix` with this matches every lab on the machine.
PREFIX_ROOT = "nl"
SCRIPT = str(Path(__file__).resolve())

PUBLIC_NET = "203.0.113.0/24"
_PUBLIC_BASE = 10  # public<i> = 203.0.113.(10 + i)
_ROUTERS: dict[str, tuple[str, str, str]] = {
    # router: (WAN address, LAN subnet prefix, LAN host)
    "router_a": ("203.0.113.2", "10.1.0", "alice"),
    "router_b": ("203.0.113.3", "10.2.0", "bob"),
}
_SHORT = {"router_a": "ra", "router_b": "rb", "alice": "al", "bob": "bo", "switch": "sw"}

# --------------------------------------------------------------------------------------------
# STUN (RFC 5389) binding request / response, just enough for probes and a tiny responder.
# --------------------------------------------------------------------------------------------

STUN_MAGIC_COOKIE = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_RESPONSE = 0x0101
_ATTR_MAPPED_ADDRESS = 0x0001
_ATTR_XOR_MAPPED_ADDRESS = 0x0020
_HEADER = struct.Struct("!HHI12s")


def stun_request(transaction_id: bytes | None = None) -> tuple[bytes, bytes]:
    """A binding request without attributes, and its 12-byte transaction id."""
    tid = secrets.token_bytes(12) if transaction_id is None else transaction_id
    return _HEADER.pack(STUN_BINDING_REQUEST, 0, STUN_MAGIC_COOKIE, tid), tid


def stun_response(transaction_id: bytes, mapped: tuple[str, int]) -> bytes:
    """A binding success response carrying XOR-MAPPED-ADDRESS (IPv4)."""
    ip = int(ipaddress.IPv4Address(mapped[0]))
    value = struct.pack(
        "!BBHI", 0, 0x01, mapped[1] ^ (STUN_MAGIC_COOKIE >> 16), ip ^ STUN_MAGIC_COOKIE
    )
    attr = struct.pack("!HH", _ATTR_XOR_MAPPED_ADDRESS, len(value)) + value
    header = _HEADER.pack(STUN_BINDING_RESPONSE, len(attr), STUN_MAGIC_COOKIE, transaction_id)
    return header + attr


def parse_stun_response(data: bytes, transaction_id: bytes) -> tuple[str, int] | None:
    """The mapped (ip, port) of a binding success response for ``transaction_id``, else None.

    XOR-MAPPED-ADDRESS is preferred; plain MAPPED-ADDRESS is accepted as a fallback.
    """
    if len(data) < _HEADER.size:
        return None
    msg_type, length, cookie, tid = _HEADER.unpack_from(data)
    if msg_type != STUN_BINDING_RESPONSE or cookie != STUN_MAGIC_COOKIE or tid != transaction_id:
        return None
    end = min(len(data), _HEADER.size + length)
    pos = _HEADER.size
    fallback: tuple[str, int] | None = None
    while pos + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4 : pos + 4 + attr_len]
        pos += 4 + attr_len + (-attr_len % 4)
        if len(value) < 8 or value[1] != 0x01:  # IPv4 only
            continue
        port, raw_ip = struct.unpack_from("!HI", value, 2)
        if attr_type == _ATTR_XOR_MAPPED_ADDRESS:
            ip = str(ipaddress.IPv4Address(raw_ip ^ STUN_MAGIC_COOKIE))
            return ip, port ^ (STUN_MAGIC_COOKIE >> 16)
        if attr_type == _ATTR_MAPPED_ADDRESS:
            fallback = str(ipaddress.IPv4Address(raw_ip)), port
    return fallback


def stun_probe(
    target: tuple[str, int],
    timeout: float = 1.0,
    *,
    sock: socket.socket | None = None,
    bind: tuple[str, int] = ("0.0.0.0", 0),
    retransmit: float = 0.2,
) -> tuple[str, int] | None:
    """Send a STUN binding request to ``target``; return the XOR-MAPPED-ADDRESS or None.

    Uses ``sock`` if given (left open, so several probes can share one local port), else a
    fresh UDP socket bound to ``bind``. Retransmits every ``retransmit`` seconds until
    ``timeout``. Runs in the caller's network namespace: from the host namespace, use
    :meth:`NatLab.stun_probe_from` instead.
    """
    own = sock is None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if sock is None else sock
    try:
        if own:
            s.bind(bind)
        request, tid = stun_request()
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while (now := time.monotonic()) < deadline:
            if now >= next_send:
                with contextlib.suppress(OSError):  # e.g. ICMP unreachable from a prior send
                    s.sendto(request, target)
                next_send = now + retransmit
            ready, _, _ = select.select([s], [], [], max(0.0, min(next_send, deadline) - now))
            if not ready:
                continue
            try:
                data, _src = s.recvfrom(2048)
            except OSError:
                continue
            mapped = parse_stun_response(data, tid)
            if mapped is not None:
                return mapped
        return None
    finally:
        if own:
            s.close()


def serve_stun(sock: socket.socket, stop_after: float | None = None) -> None:
    """Answer binding requests on ``sock`` with the source address seen (a tiny STUN server)."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    while deadline is None or time.monotonic() < deadline:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        try:
            data, src = sock.recvfrom(2048)
        except OSError:
            continue
        if len(data) < _HEADER.size:
            continue
        msg_type, _length, cookie, tid = _HEADER.unpack_from(data)
        if msg_type == STUN_BINDING_REQUEST and cookie == STUN_MAGIC_COOKIE:
            with contextlib.suppress(OSError):
                sock.sendto(stun_response(tid, src), src)


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


class NatLabError(RuntimeError):
    """A lab command failed or a lab service did not come up."""


def unavailable_reason(tools: Sequence[str] = ()) -> str | None:
    """Why the lab cannot run here (not root, no ``ip netns``, no iptables), or None.

    ``tools`` names further programs the caller needs, e.g. ``("turnserver",)``.
    """
    if os.geteuid() != 0:
        return "NAT lab needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "iptables-restore", "sysctl", *tools):
        if shutil.which(tool) is None:
            return f"NAT lab needs {tool!r} on PATH"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"'ip netns' unavailable: {exc}"
    return None


def lab_namespaces(prefix: str = PREFIX_ROOT) -> list[str]:
    """Names of existing network namespaces starting with ``prefix``."""
    out = subprocess.run(
        ["ip", "netns", "list"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def cleanup_prefix(prefix: str) -> list[str]:
    """Kill every process in, and delete, the namespaces whose name starts with ``prefix``.

    For leftovers of crashed runs. ``cleanup_prefix(PREFIX_ROOT)`` removes *every* lab on the
    machine, including ones other test runs are using right now. Returns the deleted names.
    """
    if not prefix:
        raise ValueError("empty prefix would match every namespace")
    names = lab_namespaces(prefix)
    for ns in names:
        _kill_netns_pids(ns)
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)
    return names


def _kill_netns_pids(ns: str) -> None:
    res = subprocess.run(
        ["ip", "netns", "pids", ns], check=False, capture_output=True, text=True, timeout=10
    )
    for token in res.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(token), signal.SIGKILL)


def _new_prefix() -> str:
    existing = set(lab_namespaces(PREFIX_ROOT))
    for _ in range(100):
        prefix = PREFIX_ROOT + secrets.token_hex(2)
        if not any(n.startswith(prefix + "-") for n in existing):
            return prefix
    raise NatLabError("no free lab prefix")


@dataclass(frozen=True)
class Host:
    """A lab host: its namespace and (for all but the switch) its IPv4 address."""

    name: str
    netns: str
    address: str | None


class LineReader:
    """Reads newline-terminated lines from a process's stdout pipe, with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdout is None:
            raise ValueError("process was started without stdout=PIPE")
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line (without newline), or None on timeout or end of stream."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if self._eof or remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self._eof = True
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def json(self, timeout: float) -> dict[str, Any] | None:
        """The next line parsed as a JSON object, or None on timeout or end of stream."""
        line = self.readline(timeout)
        if line is None:
            return None
        value = json.loads(line)
        if not isinstance(value, dict):
            raise NatLabError(f"expected a JSON object, got {line!r}")
        return value


class NatLab:
    """Network namespaces with two NAT routers, public hosts and their processes.

    Use as a context manager; teardown kills every process started through the lab and
    deletes every namespace, also when setup or the test failed::

        with NatLab(publics=2, nat_a="cone", nat_b="symmetric") as lab:
            lab.start_coturn("public0", "user", "pass", "lab")
            print(lab.stun_probe_from("alice", [(lab.address("public0"), 3478)]))
    """

    def __init__(
        self,
        publics: int = 2,
        nat_a: NatType = "cone",
        nat_b: NatType = "cone",
        *,
        prefix: str | None = None,
    ) -> None:
        if not 1 <= publics <= 200:
            raise ValueError("publics must be in 1..200")
        self.publics = publics
        self.nat: dict[str, NatType] = {"router_a": nat_a, "router_b": nat_b}
        self.prefix = prefix or ""
        self._fixed_prefix = bool(prefix)
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self.tmpdir: Path | None = None
        self.setup_seconds = 0.0
        self.teardown_seconds = 0.0
        self._created: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> NatLab:
        started = time.monotonic()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - started
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill lab processes, delete namespaces and the temp dir. Idempotent."""
        started = time.monotonic()
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.processes.clear()
        # Only namespaces this lab created (also half-built ones), never another lab's; any
        # process still inside them (started by other means) is killed too.
        names = list(self._created)
        if names:
            for ns in names:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    _kill_netns_pids(ns)
            for ns in names:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        ["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10
                    )
            self._created.clear()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        self.teardown_seconds = time.monotonic() - started

    def _build(self) -> None:
        if len(self.prefix) > 8:
            raise ValueError("prefix must be at most 8 characters")
        # The switch namespace is created first and reserves the prefix: `ip netns add` fails
        # if the name exists, so two labs never share one.
        for attempt in range(20):
            if not self._fixed_prefix:
                self.prefix = _new_prefix()
            created = len(self._created)
            try:
                switch = self._add_host("switch", None)
                break
            except NatLabError:
                # Retry only a name collision (the namespace was not created).
                if self._fixed_prefix or attempt == 19 or len(self._created) != created:
                    raise
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"natlab-{self.prefix}-"))
        self._ip(switch, "link", "add", "br0", "type", "bridge")
        self._ip(switch, "link", "set", "br0", "up")
        for i in range(self.publics):
            host = self._add_host(f"public{i}", f"203.0.113.{_PUBLIC_BASE + i}")
            self._wire(switch, f"p{i}", host, "eth0", f"{host.address}/24")
            self._ip(host, "tuntap", "add", "dev", "tun0", "mode", "tun")
            self._ip(host, "link", "set", "tun0", "up")
            self._ip(host, "route", "add", "default", "dev", "tun0")
        for router_name, (wan, lan, lan_host) in _ROUTERS.items():
            router = self._add_host(router_name, wan)
            self._wire(switch, _SHORT[router_name], router, "wan0", f"{wan}/24")
            peer = self._add_host(lan_host, f"{lan}.2")
            self._wire(router, "lan0", peer, "eth0", f"{lan}.2/24", near_addr=f"{lan}.1/24")
            self._ip(peer, "route", "add", "default", "via", f"{lan}.1")
            self._sysctl(router, "net.ipv4.ip_forward=1")
            self._iptables_restore(router, self._router_rules(self.nat[router_name]))

    def _add_host(self, name: str, address: str | None) -> Host:
        short = _SHORT.get(name) or "p" + name.removeprefix("public")
        host = Host(name, f"{self.prefix}-{short}", address)
        self._check(["ip", "netns", "add", host.netns])
        self._created.append(host.netns)
        self.hosts[name] = host
        # No IPv6 (no link-local addresses, no DAD noise); loopback up.
        self._sysctl(
            host, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"
        )
        self._ip(host, "link", "set", "lo", "up")
        return host

    def _wire(
        self,
        near: Host,
        near_if: str,
        far: Host,
        far_if: str,
        far_addr: str,
        *,
        near_addr: str | None = None,
    ) -> None:
        """A veth pair created inside the namespaces (never in the host namespace)."""
        self._ip(near, "link", "add", near_if, "type", "veth", "peer", "name", far_if,
                 "netns", far.netns)  # fmt: skip
        if near.name == "switch":
            self._ip(near, "link", "set", near_if, "master", "br0")
        if near_addr is not None:
            self._ip(near, "addr", "add", near_addr, "dev", near_if)
        self._ip(near, "link", "set", near_if, "up")
        self._ip(far, "addr", "add", far_addr, "dev", far_if)
        self._ip(far, "link", "set", far_if, "up")

    @staticmethod
    def _router_rules(nat: NatType) -> str:
        masq = "-j MASQUERADE --random-fully" if nat == "symmetric" else "-j MASQUERADE"
        return "\n".join(
            [
                "*nat",
                ":PREROUTING ACCEPT [0:0]",
                ":INPUT ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":POSTROUTING ACCEPT [0:0]",
                f"-A POSTROUTING -o wan0 {masq}",
                "COMMIT",
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD DROP [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":LABLOSS - [0:0]",
                "-A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-A INPUT -i wan0 -j DROP",
                "-A FORWARD -j LABLOSS",
                "-A FORWARD -i lan0 -o wan0 -j ACCEPT",
                "-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "COMMIT",
                "",
            ]
        )

    # -- low-level helpers ---------------------------------------------------------------------

    def _ip(self, host: Host, *args: str) -> None:
        self._check(["ip", "-n", host.netns, *args])

    def _sysctl(self, host: Host, *settings: str) -> None:
        self._check(["ip", "netns", "exec", host.netns, "sysctl", "-qw", *settings])

    def _iptables_restore(self, host: Host, rules: str) -> None:
        self._check(["ip", "netns", "exec", host.netns, "iptables-restore", "-w"], rules)

    @staticmethod
    def _check(argv: list[str], stdin: str | None = None) -> None:
        res = subprocess.run(
            argv, check=False, input=stdin, capture_output=True, text=True, timeout=30
        )
        if res.returncode != 0:
            raise NatLabError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no lab host {name!r}; hosts: {sorted(self.hosts)}") from None

    # -- public API --------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        """The namespace name of ``host`` (for ``ip netns exec`` by hand)."""
        return self.host(host).netns

    def address(self, host: str) -> str:
        """The IPv4 address of ``host`` (a router's is its WAN address)."""
        address = self.host(host).address
        if address is None:
            raise KeyError(f"lab host {host!r} has no address")
        return address

    def lan_address(self, router: str) -> str:
        """A router's LAN-side address (the default gateway of its LAN host)."""
        return f"{_ROUTERS[router][1]}.1"

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in ``host``'s namespace."""
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def popen(self, host: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``; teardown kills it. Keyword arguments go to Popen."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(host, argv), **kw)
        self.processes.append(proc)
        return proc

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host`` to completion; output captured as text by default."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        res: subprocess.CompletedProcess[str] = subprocess.run(
            self.exec_argv(host, argv), check=False, timeout=timeout, **kw
        )
        if check and res.returncode != 0:
            raise NatLabError(
                f"{argv!r} in {host} failed ({res.returncode}): {res.stderr!s}".strip()
            )
        return res

    def set_nat(self, router: str, nat: NatType) -> None:
        """Switch a router's NAT type; resets its loss. Existing conntrack mappings stay."""
        if router not in _ROUTERS:
            raise KeyError(f"{router!r} is not a router")
        self.nat[router] = nat
        self._iptables_restore(self.host(router), self._router_rules(nat))

    def set_loss(self, router: str, probability: float) -> None:
        """Drop forwarded packets (both directions) at random in ``router``; 0 turns it off."""
        if router not in _ROUTERS:
            raise KeyError(f"{router!r} is not a router")
        base = ["ip", "netns", "exec", self.netns(router), "iptables", "-w"]
        self._check([*base, "-F", "LABLOSS"])
        if probability > 0:
            self._check([*base, "-A", "LABLOSS", "-m", "statistic", "--mode", "random",
                         "--probability", f"{probability:.6f}", "-j", "DROP"])  # fmt: skip

    def script_argv(self, *args: str) -> list[str]:
        """A command line running this module's script entry point (see ``main``)."""
        return [sys.executable, SCRIPT, *args]

    def stun_probe_from(
        self,
        host: str,
        servers: Sequence[tuple[str, int]],
        *,
        local_port: int = 0,
        timeout: float = 2.0,
    ) -> list[tuple[str, int] | None]:
        """From ``host``, STUN-probe each server in turn from one local socket.

        Returns the mapped address each server saw (None where it did not answer).
        """
        if not servers:
            return []
        args = ["probe", "--bind", f"0.0.0.0:{local_port}", "--timeout", str(timeout)]
        args += [f"{ip}:{port}" for ip, port in servers]
        res = self.run(host, self.script_argv(*args), timeout=timeout * len(servers) + 10)
        return [None if r is None else (r[0], r[1]) for r in json.loads(res.stdout)]

    def _wait_stun(self, host: str, target: tuple[str, int], timeout: float) -> bool:
        args = ["probe", "--until", str(timeout), f"{target[0]}:{target[1]}"]
        res = self.run(host, self.script_argv(*args), check=False, timeout=timeout + 10)
        return res.returncode == 0

    def start_stun_responder(
        self, host: str, port: int = 3478, *, timeout: float = 5.0
    ) -> tuple[str, int]:
        """Run the tiny Python STUN responder on ``host``:``port``; wait until it answers."""
        ip = self.address(host)
        proc = self.popen(
            host,
            self.script_argv("stun-server", f"{ip}:{port}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not self._wait_stun(host, (ip, port), timeout):
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise NatLabError(f"STUN responder on {host} did not answer: {err.decode()[-2000:]}")
        return ip, port

    def start_coturn(
        self,
        host: str,
        user: str,
        password: str,
        realm: str,
        *,
        port: int = 3478,
        min_port: int = 49152,
        max_port: int = 49999,
        denied_peers: Sequence[str] = ("10.0.0.0-10.255.255.255",),
        extra_config: Sequence[str] = (),
        timeout: float = 10.0,
    ) -> tuple[str, int]:
        """Start coturn on ``host`` (TURN/STUN over UDP+TCP, long-term credentials).

        Waits until it answers a STUN binding request; raises :class:`NatLabError` with the
        tail of its log if it does not within ``timeout``. Returns ``(address, port)``.
        """
        if shutil.which("turnserver") is None:
            raise NatLabError("turnserver (coturn) is not installed")
        ip = self.address(host)
        assert self.tmpdir is not None
        workdir = self.tmpdir / f"coturn-{host}-{port}"
        workdir.mkdir()
        log = workdir / "turnserver.log"
        config = [
            f"listening-ip={ip}",
            f"relay-ip={ip}",
            f"listening-port={port}",
            f"min-port={min_port}",
            f"max-port={max_port}",
            "lt-cred-mech",
            f"user={user}:{password}",
            f"realm={realm}",
            "fingerprint",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            *(f"denied-peer-ip={peer}" for peer in denied_peers),
            f"log-file={log}",
            "simple-log",
            f"pidfile={workdir / 'turnserver.pid'}",
            f"userdb={workdir / 'turndb'}",
            *extra_config,
        ]
        conf = workdir / "turnserver.conf"
        conf.write_text("\n".join(config) + "\n")
        proc = self.popen(
            host,
            ["turnserver", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not self._wait_stun(host, (ip, port), timeout):
            exited = proc.poll()
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log file)"
            state = f"exited with {exited}" if exited is not None else "running"
            raise NatLabError(
                f"coturn on {host} ({ip}:{port}) did not answer STUN within {timeout}s "
                f"({state}); log {log} tail:\n{tail}"
            )
        return ip, port

    def start_udp(
        self,
        host: str,
        port: int,
        *,
        send_to: Sequence[tuple[str, int]] = (),
        echo: bool = False,
        duration: float = 10.0,
        timeout: float = 5.0,
    ) -> tuple[subprocess.Popen[bytes], LineReader]:
        """A UDP endpoint on ``host``:``port`` that reports what it receives as JSON lines.

        It prints ``{"event": "ready"}`` once bound (this waits for that), sends
        ``b"hello"`` to each of ``send_to``, then for ``duration`` seconds prints
        ``{"event": "recv", "src": [ip, port], "data": text}`` per datagram (echoing it
        back if ``echo``), then exits.
        """
        args = ["udp", "--bind", f"0.0.0.0:{port}", "--duration", str(duration)]
        for ip, p in send_to:
            args += ["--send-to", f"{ip}:{p}"]
        if echo:
            args.append("--echo")
        proc = self.popen(host, self.script_argv(*args), stdout=subprocess.PIPE)
        reader = LineReader(proc)
        first = reader.json(timeout)
        if first is None or first.get("event") != "ready":
            raise NatLabError(f"UDP endpoint on {host}:{port} did not start: {first!r}")
        return proc, reader

    def send_udp(
        self, host: str, target: tuple[str, int], data: bytes = b"x", *, src_port: int = 0
    ) -> None:
        """Send one datagram from ``host`` (optionally from ``src_port``) to ``target``."""
        args = ["send", "--bind", f"0.0.0.0:{src_port}", f"{target[0]}:{target[1]}", data.hex()]
        self.run(host, self.script_argv(*args))


def require_natlab(tools: Sequence[str] = ()) -> None:
    """In a pytest test or fixture: skip if the lab cannot run here, but fail when CI=true."""
    import pytest  # noqa: PLC0415 - only needed under pytest; the script mode stays stdlib-only

    reason = unavailable_reason(tools)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the NAT lab cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# Script entry point (runs inside a lab namespace)
# --------------------------------------------------------------------------------------------


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="natlab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="STUN-probe servers from one socket; print JSON results")
    p.add_argument("--bind", type=_addr, default=("0.0.0.0", 0))
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--until", type=float, default=None,
                   help="readiness mode: retry the first server until it answers or this many "
                        "seconds pass; exit 0 if it answered")  # fmt: skip
    p.add_argument("servers", type=_addr, nargs="+")
    s = sub.add_parser("stun-server", help="answer STUN binding requests")
    s.add_argument("bind", type=_addr)
    u = sub.add_parser("udp", help="UDP endpoint that reports datagrams as JSON lines")
    u.add_argument("--bind", type=_addr, required=True)
    u.add_argument("--send-to", type=_addr, action="append", default=[])
    u.add_argument("--echo", action="store_true")
    u.add_argument("--duration", type=float, default=10.0)
    d = sub.add_parser("send", help="send one datagram (hex payload)")
    d.add_argument("--bind", type=_addr, default=("0.0.0.0", 0))
    d.add_argument("target", type=_addr)
    d.add_argument("payload")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.cmd == "probe":
        sock.bind(args.bind)
        if args.until is not None:
            deadline = time.monotonic() + args.until
            while time.monotonic() < deadline:
                if stun_probe(args.servers[0], 0.1, sock=sock, retransmit=0.05) is not None:
                    return 0
            return 1
        _emit([stun_probe(server, args.timeout, sock=sock) for server in args.servers])
        return 0
    if args.cmd == "stun-server":
        sock.bind(args.bind)
        serve_stun(sock)
        return 0
    if args.cmd == "send":
        sock.bind(args.bind)
        sock.sendto(bytes.fromhex(args.payload), args.target)
        return 0
    # udp
    sock.bind(args.bind)
    _emit({"event": "ready", "local": list(sock.getsockname())})
    for target in args.send_to:
        with contextlib.suppress(OSError):
            sock.sendto(b"hello", target)
    deadline = time.monotonic() + args.duration
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            continue
        try:
            data, src = sock.recvfrom(65536)
        except OSError:
            continue
        _emit({"event": "recv", "src": list(src), "data": data.decode(errors="replace")})
        if args.echo:
            with contextlib.suppress(OSError):
                sock.sendto(b"echo:" + data, src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
