"""Connection set-up through the NAT lab (issue 12): how long ``connect`` takes, end to end.

Each run builds a fresh lab (two home NATs, a public DHT, coturn when ``--turn``), two daemons
and makes them contacts, then measures three things with the ``connect`` RPC (wall time from
the request to the result, as a client sees it):

* ``first``: Alice connects right after the contact request was accepted (Bob's automatic
  connection may offer at the same moment: then the glare rule decides);
* ``glare``: both stop; Bob restarts and then both ask ``connect`` at the same time, while
  Bob's old goodbye may still be the newest presence Alice has seen;
* ``failures``: attempts that did not connect, with their reasons.

Needs root, ``ip netns``, iptables and coturn (``docs/natlab.md``). Usage::

    sudo python -m benchmarks.natlab_connect --runs 10 --nat symmetric --turn
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dhtchat.app.rpc import RpcError, call
from tests.daemons import DaemonProcess, DhtProcess, make_contacts, new_identity
from tests.natlab import NatLab, NatType, unavailable_reason

TURN_USER, TURN_PASS = "dhtchat", "lab-secret"


class Scene:
    """A lab with a public DHT, maybe coturn, and Alice and Bob daemons behind routers."""

    def __init__(self, lab: NatLab, tmp: Path, *, turn: bool, dht_mode: str) -> None:
        self.lab = lab
        self.dht = DhtProcess(10, lab.address("public0"),
                              wrap=lambda argv: lab.exec_argv("public0", argv))
        self.common = ["--port", "4000", "--dht-mode", dht_mode]
        for address in self.dht.bootstrap:
            self.common += ["--bootstrap", address]
        if turn:
            host, port = lab.start_coturn("public1", TURN_USER, TURN_PASS, "dhtchat.lab")
            self.common += ["--turn", f"turn:{host}:{port}", "--turn-user", TURN_USER,
                            "--turn-pass", TURN_PASS]
        self.alice_id = new_identity(tmp / "alice")
        self.bob_id = new_identity(tmp / "bob")
        self.alice = self.start(tmp / "alice", "alice", "Alice")
        self.bob = self.start(tmp / "bob", "bob", "Bob")
        make_contacts(self.alice, self.alice_id, self.bob, self.bob_id, timeout=60)

    def start(self, profile: Path, host: str, name: str) -> DaemonProcess:
        daemon = DaemonProcess(profile, [*self.common, "--name", name],
                               wrap=lambda argv: self.lab.exec_argv(host, argv))
        daemon.wait_ready(60)
        deadline = time.monotonic() + 60
        while daemon.status() is None:  # joined the DHT
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}'s daemon did not join the DHT")
            time.sleep(0.2)
        return daemon

    def close(self) -> None:
        for daemon in (self.alice, self.bob):
            daemon.stop()
        self.dht.stop()


def timed_connect(daemon: DaemonProcess, contact: str, timeout: float) -> tuple[float, str]:
    """Seconds the connect RPC took, and "" or the reason it failed."""
    started = time.monotonic()
    try:
        asyncio.run(call(daemon.profile / "daemon.sock", "connect",
                         {"contact": contact, "timeout": timeout}, timeout + 30))
    except (RpcError, ConnectionError, TimeoutError, OSError) as exc:
        return time.monotonic() - started, str(exc)
    return time.monotonic() - started, ""


def one_run(nat: NatType, turn: bool, timeout: float, logs: Path | None,
            dht_mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, \
            NatLab(publics=2, nat_a=nat, nat_b=nat) as lab:
        scene = Scene(lab, Path(tmp), turn=turn, dht_mode=dht_mode)
        try:
            first, first_error = timed_connect(scene.alice, scene.bob_id, timeout)
            scene.bob.stop()
            log = Path(tmp) / "bob" / "daemon.log"
            (log.parent / "daemon-before-restart.log").write_text(log.read_text())
            scene.bob = scene.start(Path(tmp) / "bob", "bob", "Bob")
            with ThreadPoolExecutor(2) as pool:
                jobs = [pool.submit(timed_connect, scene.alice, scene.bob_id, timeout),
                        pool.submit(timed_connect, scene.bob, scene.alice_id, timeout)]
                glare = [job.result() for job in jobs]
        finally:
            scene.close()
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                for log in (Path(tmp) / "alice" / "daemon.log", Path(tmp) / "bob" / "daemon.log",
                            Path(tmp) / "bob" / "daemon-before-restart.log"):
                    if log.exists():
                        (logs / f"{log.parent.name}-{log.name}").write_text(log.read_text())

    errors = [f"{phase}: {e}" for phase, e in
              (("first", first_error), ("alice", glare[0][1]), ("bob", glare[1][1])) if e]
    return {"first": first, "glare": max(g[0] for g in glare), "errors": errors}


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nat", choices=["cone", "symmetric"], default="symmetric")
    parser.add_argument("--turn", action="store_true", help="configure coturn on public1")
    parser.add_argument("--dht-mode", choices=["auto", "server", "client"], default="auto",
                        help="the daemons' --dht-mode (server: as before the automatic choice)")
    parser.add_argument("--timeout", type=float, default=20.0, help="connect timeout (s)")
    parser.add_argument("--json", action="store_true", help="print every run as JSON too")
    parser.add_argument("--logs", type=Path, help="keep each run's daemon logs under here "
                        "(DHTCHAT_DAEMON_VERBOSE=1 makes them detailed)")
    args = parser.parse_args(argv)
    reason = unavailable_reason(["turnserver"] if args.turn else [])
    if reason is not None:
        print(f"NAT lab unavailable: {reason}", file=sys.stderr)
        return 2
    runs = []
    for i in range(args.runs):
        logs = args.logs / f"run-{i + 1}" if args.logs is not None else None
        result = one_run(args.nat, args.turn, args.timeout, logs, args.dht_mode)
        runs.append(result)
        print(f"run {i + 1}: first {result['first']:.2f} s, glare after restart "
              f"{result['glare']:.2f} s" + (f", errors {result['errors']}"
                                             if result["errors"] else ""), flush=True)
        if args.json:
            print(json.dumps(result))
    failures = sum(len(r["errors"]) for r in runs)
    print(f"{args.nat} NAT{' + TURN' if args.turn else ''}"
          f", --dht-mode {args.dht_mode}, {args.runs} runs: "
          f"first connect {summary([r['first'] for r in runs])}; "
          f"glare after a restart {summary([r['glare'] for r in runs])}; "
          f"failed attempts {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
