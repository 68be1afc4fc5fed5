"""``dhtchat node``: a headless DHT node until SIGINT/SIGTERM; ``dhtchat demo`` (on a terminal
through :mod:`dhtchat.cli.demoui`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time

from dhtchat.app.profile import NodeState, Profile, resolve_profile_dir
from dhtchat.cli.errors import EXIT_OK, UsageError
from dhtchat.cli.options import parse_bootstrap
from dhtchat.core.addresses import format_address
from dhtchat.core.events import (
    BootstrapCompleted,
    ContactAdded,
    ContactEvicted,
    Event,
    PeerMisbehaved,
    RecordStored,
)
from dhtchat.core.identity import SigningIdentity
from dhtchat.core.ids import short
from dhtchat.net.udp import UdpDhtNode

log = logging.getLogger("dhtchat")


def _describe(event: Event) -> str | None:
    if isinstance(event, ContactAdded):
        return f"contact added {short(event.node_id)} at {format_address(event.address)}"
    if isinstance(event, ContactEvicted):
        return f"contact evicted {short(event.node_id)} at {format_address(event.address)}"
    if isinstance(event, RecordStored):
        return (f"stored record {short(event.key)} seq {event.seq} from "
                f"{format_address(event.source)}")
    if isinstance(event, PeerMisbehaved):
        return f"dropped bad datagram from {format_address(event.address)}: {event.reason}"
    if isinstance(event, BootstrapCompleted):
        return f"bootstrap complete: {event.contacts} contacts"
    return None


class _LogBudget:
    """At most ``per_minute`` lines per minute; reports how many were suppressed."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window_start = 0.0
        self._used = 0
        self._suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= 60.0:
            if self._suppressed:
                log.info("suppressed %d more bad-datagram lines in the last minute",
                         self._suppressed)
            self._window_start, self._used, self._suppressed = now, 0, 0
        if self._used < self.per_minute:
            self._used += 1
            return True
        self._suppressed += 1
        return False


async def _run_node(args: argparse.Namespace) -> int:
    bootstrap = parse_bootstrap(args.bootstrap)
    profile_root, chosen = resolve_profile_dir(args.profile)
    state: NodeState | None = None
    node_key: SigningIdentity | None = None
    if chosen:
        state = NodeState(Profile(profile_root).node_db_path)
        node_key = state.node_key()

    misbehaviour = _LogBudget(per_minute=20)

    def on_event(event: Event) -> None:
        line = _describe(event)
        if line is None:
            return
        if isinstance(event, PeerMisbehaved) and not misbehaviour.allow(time.monotonic()):
            return  # a flood of bad datagrams must not flood the log too
        log.info("%s", line)

    try:
        node = await UdpDhtNode.create(args.host, args.port, node_key=node_key,
                                       on_event=on_event)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("node %s listening on %s", node.node_id.hex(), format_address(node.address))
    if state is not None:
        remembered = state.peers()
        if remembered:
            log.info("re-verifying %d remembered contacts", len(remembered))
            node.add_known_peers(remembered)
    where = ", ".join(format_address(a) for a in bootstrap)

    async def join() -> None:
        try:
            contacts = await node.bootstrap(bootstrap)
        except TimeoutError:
            contacts = len(node.core.table)
        if contacts:
            log.info("joined through %s: %d contacts", where, contacts)
        else:
            log.warning("no node answered at %s; retrying every 30 s", where)

    join_task: asyncio.Task[None] | None = None
    while not stop.is_set():
        if bootstrap and len(node.core.table) == 0 and (join_task is None or join_task.done()):
            join_task = asyncio.create_task(join())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 30.0)
        if state is not None:
            state.save_peers(node.peers())
    if join_task is not None and not join_task.done():
        join_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await join_task
    if state is not None:
        state.save_peers(node.peers())
        state.close()
    await node.close()
    log.info("node stopped")
    return EXIT_OK


def cmd_node(args: argparse.Namespace) -> int:
    """Run a DHT node until SIGINT or SIGTERM."""
    return asyncio.run(_run_node(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a local network on loopback and show it working: on a terminal the desktop client
    with the demo contact; without one (CI) the conversation with the demo bot as a headless
    transcript; ``--dht``: the DHT put/get."""
    from dhtchat.app.demo import has_terminal, run_demo  # noqa: PLC0415 - loads aiortc

    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    # On a terminal the desktop client (--keep-running: the transcript, then the commands to
    # go on with from another terminal).
    if not args.dht and not args.keep_running and has_terminal():
        from dhtchat.cli.demoui import run_demo_ui  # noqa: PLC0415 - loads Textual

        return run_demo_ui(nodes=max(4, min(args.nodes, 250)), timeout=args.timeout,
                           verbose=args.verbose)
    if not args.verbose and not args.dht:  # the transcript says what the daemons log
        logging.getLogger("dhtchat").setLevel(logging.ERROR)
        logging.getLogger("dhtchat.demobot").setLevel(logging.WARNING)
    return asyncio.run(run_demo(dht=args.dht, nodes=args.nodes, keep_running=args.keep_running,
                                timeout=args.timeout))
