"""``dhtchat demo``: the messenger's main job on an embedded default, all on loopback.

Two demos share one local DHT setup (16 UDP nodes, each on its own 127.0.N.1: Linux routes
all of 127/8 to the loopback interface, so the per-/24 diversity limits behave as on a real
network):

* the **conversation** (the default): :func:`demo_network` starts the DHT and a demo contact,
  a real daemon with its own profile in a temporary directory driven by
  :class:`dhtchat.app.demobot.DemoBot` through its JSON-RPC API. With no terminal it then runs
  the user's side headless (:mod:`dhtchat.app.demoscript`) and prints the transcript.
  :func:`demo_network` (or, for a front end with an event loop of its own such as the
  Textual UI, :class:`DemoInBackground`) is the seam a front end uses: it returns the user's
  profile (an identity, no daemon yet), the bootstrap addresses and the ``dhtchat daemon``
  flags to open that profile with;
* the **DHT** demo (``dhtchat demo --dht``): a signed put/get and a ``listen`` push.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dhtchat.app.keystore import save_identity_file
from dhtchat.app.profile import Profile
from dhtchat.core.identity import SEED_BYTES, SigningIdentity, fingerprint
from dhtchat.core.ids import short
from dhtchat.core.records import make_app_record
from dhtchat.net.udp import UdpDhtNode

if TYPE_CHECKING:
    from dhtchat.app.daemon import Daemon
    from dhtchat.app.demobot import DemoBot

BOT_NAME: Final = "DemoBot"
USER_NAME: Final = "Demo User"
BOT_HOST: Final = "127.0.201.1"  # each daemon's DHT node on its own /24, as on the Internet
USER_HOST: Final = "127.0.202.1"
ICE_ADDRESS: Final = "127.0.0.1"  # WebRTC host candidates: loopback only
JOIN_TIMEOUT: Final = 30.0
DEFAULT_TIMEOUT: Final = 180.0  # the whole conversation demo, set-up to tear-down

Say = Callable[[str], None]


def _say(text: str) -> None:
    print(text, flush=True)


def has_terminal() -> bool:
    """Whether someone sits at a terminal: stdin and stdout are TTYs and ``CI`` is not
    ``true`` (the headless transcript runs otherwise)."""
    if os.environ.get("CI", "").lower() == "true":
        return False
    return sys.stdin.isatty() and sys.stdout.isatty()


async def start_dht(nodes: int) -> list[UdpDhtNode]:
    """``nodes`` DHT nodes on 127.0.1.1, 127.0.2.1, ... that know each other."""
    network = [await UdpDhtNode.create(f"127.0.{i + 1}.1", 0) for i in range(nodes)]
    first = network[0].address
    try:
        await asyncio.gather(*(n.bootstrap([first]) for n in network[1:]))
        for n in network:  # a second self-lookup once everyone is in: full routing tables
            await n.find_node(n.node_id)
    except BaseException:
        for n in network:
            await n.close()
        raise
    return network


# ---------------------------------------------------------------------- the conversation


@dataclass(frozen=True)
class DemoSetup:
    """What a front end needs to open the demo on the user's side.

    ``user_profile`` holds an identity without a passphrase (a throwaway profile in
    ``workdir``) and no daemon: start one with
    ``dhtchat --profile USER_PROFILE daemon *daemon_args``, or in this process with
    :meth:`DemoNetwork.start_user_daemon`. Then send a contact request to ``bot_id``."""

    workdir: Path
    user_profile: Path
    user_id: str
    bootstrap: tuple[str, ...]  # HOST:PORT of DHT nodes
    daemon_args: tuple[str, ...]
    bot_id: str
    bot_name: str


class DemoNetwork:
    """The running demo: the DHT nodes, the bot's daemon and the bot (see
    :func:`demo_network`)."""

    def __init__(self, nodes: list[UdpDhtNode], bot_daemon: Daemon, bot: DemoBot,
                 bot_task: asyncio.Task[None], setup: DemoSetup,
                 user_identity: SigningIdentity) -> None:
        self.nodes = nodes
        self.bot_daemon = bot_daemon
        self.bot = bot
        self.bot_task = bot_task
        self.setup = setup
        self._user_identity = user_identity
        self.user_daemon: Daemon | None = None

    async def start_user_daemon(self) -> Daemon:
        """Start the user's daemon in this process (what ``daemon_args`` describe) and wait
        until it has joined the DHT."""
        from dhtchat.app.daemon import Daemon, DaemonOptions  # noqa: PLC0415 - loads aiortc

        options = DaemonOptions(port=0, host=USER_HOST, bootstrap=[self.nodes[0].address],
                                ice_addresses=[ICE_ADDRESS], display_name=USER_NAME)
        daemon = Daemon(Profile(self.setup.user_profile), self._user_identity, options)
        await daemon.start()
        self.user_daemon = daemon
        await wait_joined(daemon, "your daemon")
        return daemon

    async def close(self) -> None:
        """Stop the bot, the daemons and the DHT nodes."""
        self.bot_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.bot_task
        daemons = [d for d in (self.user_daemon, self.bot_daemon) if d is not None]
        await asyncio.gather(*(d.stop() for d in daemons), return_exceptions=True)
        for node in self.nodes:
            await node.close()


async def wait_joined(daemon: Daemon, who: str, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until ``daemon`` has joined the DHT (its API's ``status``)."""
    from dhtchat.app.demobot import DemoError, as_object  # noqa: PLC0415 - loads aiortc
    from dhtchat.app.rpc import call  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while not as_object(await call(daemon.socket_path, "status", {}, 10), "status") \
            .get("joined"):
        if time.monotonic() > deadline:
            raise DemoError(f"{who} did not join the DHT within {timeout:.0f} s")
        await asyncio.sleep(0.1)


def _new_profile(root: Path) -> SigningIdentity:
    identity = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    Profile(root).root.mkdir(parents=True, mode=0o700)
    save_identity_file(Profile(root).identity_path, identity, None)
    return identity


@contextlib.asynccontextmanager
async def demo_network(workdir: Path, *, nodes: int = 16,
                       say: Say = _say) -> AsyncIterator[DemoNetwork]:
    """The demo's network, ready for the user: a DHT of ``nodes`` loopback nodes, the bot's
    daemon (profile ``workdir/bot``) joined and the bot listening to it, and the user's
    profile ``workdir/you`` with a new identity. Everything stops on exit."""
    from dhtchat.app.daemon import Daemon, DaemonOptions  # noqa: PLC0415 - loads aiortc
    from dhtchat.app.demobot import DemoBot, skipped_from_environment  # noqa: PLC0415

    started = time.perf_counter()
    network = await start_dht(nodes)
    first = network[0].address
    sizes = [len(n.core.table) for n in network]
    say(f"network  {nodes} DHT nodes up on 127.0.x.1 in {time.perf_counter() - started:.2f} s;"
        f" routing tables hold {min(sizes)}-{max(sizes)} verified contacts")
    bot_daemon: Daemon | None = None
    demo: DemoNetwork | None = None
    try:
        bot_identity = _new_profile(workdir / "bot")
        options = DaemonOptions(port=0, host=BOT_HOST, bootstrap=[first],
                                ice_addresses=[ICE_ADDRESS], display_name=BOT_NAME)
        bot_daemon = Daemon(Profile(workdir / "bot"), bot_identity, options)
        await bot_daemon.start()
        bot = DemoBot(bot_daemon.socket_path, workdir / "bot", name=BOT_NAME,
                      skip=skipped_from_environment())
        bot_task = asyncio.create_task(bot.run())
        await bot.wait_ready()
        await wait_joined(bot_daemon, f"{BOT_NAME}'s daemon")
        user_identity = _new_profile(workdir / "you")
        bootstrap = tuple(f"{h}:{p}" for h, p in (n.address for n in network[:3]))
        args = ["--port", "0", "--host", USER_HOST, "--ice-address", ICE_ADDRESS,
                "--name", USER_NAME]
        for address in bootstrap:
            args += ["--bootstrap", address]
        setup = DemoSetup(workdir=workdir, user_profile=workdir / "you",
                          user_id=user_identity.user_id, bootstrap=bootstrap,
                          daemon_args=tuple(args), bot_id=bot_identity.user_id,
                          bot_name=BOT_NAME)
        demo = DemoNetwork(network, bot_daemon, bot, bot_task, setup, user_identity)
        say(f"bot      {BOT_NAME}'s daemon joined the DHT: user id {bot_identity.user_id}")
        yield demo
    finally:
        if demo is not None:
            await demo.close()
        else:
            if bot_daemon is not None:
                await bot_daemon.stop()
            for node in network:
                await node.close()


class DemoInBackground:
    """:func:`demo_network` on an event loop of its own in a background thread, for a front
    end that runs its own loop (a Textual app) or none::

        with DemoInBackground(workdir) as setup:
            ...  # start `dhtchat --profile setup.user_profile daemon *setup.daemon_args`

    Entering waits until the bot's daemon has joined (re-raising what went wrong); leaving
    stops everything. :attr:`network` is the running :class:`DemoNetwork` (its bot's log
    can be read from the calling thread)."""

    def __init__(self, workdir: Path, *, nodes: int = 16, timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self.timeout = timeout
        self.network: DemoNetwork | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="dhtchat-demo", daemon=True)

    def __enter__(self) -> DemoSetup:
        self._thread.start()
        if not self._ready.wait(self.timeout):
            self.__exit__(None, None, None)
            raise TimeoutError(f"the demo network was not up within {self.timeout:.0f} s")
        if self._error is not None:
            self._thread.join(self.timeout)
            raise self._error
        assert self.network is not None
        return self.network.setup

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the thread that entered
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with demo_network(self.workdir, nodes=self.nodes, say=lambda _: None) as demo:
            self.network = demo
            self._ready.set()
            await self._stop.wait()


async def run_conversation_demo(*, nodes: int = 16, keep_running: bool = False,
                                timeout: float = DEFAULT_TIMEOUT, say: Say = _say) -> int:
    """The conversation with the demo bot, headless, as a transcript; the exit code (0: every
    step checked out; 1: the step that failed is printed)."""
    from dhtchat.app.demobot import DemoError  # noqa: PLC0415 - loads aiortc
    from dhtchat.app.demoscript import run_conversation  # noqa: PLC0415
    from dhtchat.app.media import MediaError  # noqa: PLC0415
    from dhtchat.app.rpc import DaemonNotRunning, RpcError  # noqa: PLC0415

    started = time.monotonic()
    say("dhtchat demo: you and a demo contact on a local DHT (loopback only; nothing leaves "
        "this machine)")
    failure = ""
    finished = 0.0
    bound = asyncio.timeout(timeout)
    with tempfile.TemporaryDirectory(prefix="dhtchat-demo-") as tmp:
        try:
            async with bound, demo_network(Path(tmp), nodes=nodes, say=say) as demo:
                await run_conversation(demo, say=say)
                finished = time.monotonic()
                if keep_running:
                    bound.reschedule(None)
                    _keep_running_help(demo, say)
                    await _until_stopped()
        except TimeoutError:
            failure = f"the demo did not finish within {timeout:.0f} s" if bound.expired() \
                else "a daemon did not answer an API call in time"
        except DemoError as exc:
            failure = str(exc)
        except RpcError as exc:
            failure = f"a daemon refused a request: {exc.message}"
        except MediaError as exc:
            failure = f"a call recording: {exc}"
        except (DaemonNotRunning, ConnectionError) as exc:
            failure = f"lost the connection to a daemon ({exc})"
        except OSError as exc:  # e.g. 127.0.N.1 cannot be bound (loopback is 127.0.0.1 only)
            failure = f"cannot set up the local network: {exc}"
    elapsed = (finished or time.monotonic()) - started
    if failure:
        say(f"demo FAILED after {elapsed:.1f} s: {failure}")
        return 1
    say(f"demo OK in {elapsed:.1f} s: request, messages, file and call checked on both sides")
    return 0


async def _until_stopped() -> None:
    """Wait for Ctrl-C or SIGTERM (then the demo cleans up: daemons, DHT, temporary files)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _keep_running_help(demo: DemoNetwork, say: Say) -> None:
    profile = demo.setup.user_profile
    say(f"running on: your profile is {profile}; try")
    say(f"  dhtchat --profile {profile} send {BOT_NAME} 'hello again' --wait")
    say(f"  dhtchat --profile {profile} receive --follow")
    say(f"  dhtchat --profile {profile} call {BOT_NAME} --duration 5")
    say("Ctrl-C stops the demo")


async def run_demo(*, dht: bool = False, nodes: int = 16, keep_running: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> int:
    """``dhtchat demo``: the conversation (``dht``: the DHT put/get demo); the exit code.

    On a terminal the command line opens the desktop client instead
    (:mod:`dhtchat.cli.demoui`: the UI sits above this layer), on :class:`DemoInBackground`."""
    nodes = max(4, min(nodes, 250))
    if dht:
        return await run_dht_demo(nodes=nodes, keep_running=keep_running)
    return await run_conversation_demo(nodes=nodes, keep_running=keep_running,
                                       timeout=timeout)


# ------------------------------------------------------------------------ the DHT demo


async def run_dht_demo(*, nodes: int = 16, keep_running: bool = False) -> int:
    """Start ``nodes`` nodes, store and fetch a signed value, show a listen push. Exit code."""
    nodes = max(4, min(nodes, 250))
    started = time.perf_counter()
    network = await start_dht(nodes)
    first = network[0].address
    sizes = [len(n.core.table) for n in network]
    _say(f"[1/4] {nodes} DHT nodes up on 127.0.x.1 in {time.perf_counter() - started:.2f}s; "
         f"routing tables hold {min(sizes)}-{max(sizes)} verified contacts")

    alice = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    _say(f"[2/4] Alice's user id: {alice.user_id}")
    _say(f"      fingerprint:     {fingerprint(alice.public_key)}")
    alice_node, bob_node = network[1], network[-1]

    record = make_app_record(alice, "greeting", b"hello from Alice", seq=1,
                             expires=int(time.time()) + 600)
    t0 = time.perf_counter()
    put = await alice_node.put(record)
    t1 = time.perf_counter()
    found = await bob_node.get(record.key, owner=alice.public_key)
    t2 = time.perf_counter()
    ok = bool(found) and found[0].value == record.value
    _say(f"[3/4] Alice stored 'greeting' on {put.stored}/{put.attempted} nodes in "
         f"{(t1 - t0) * 1000:.1f} ms (record key {short(record.key)}); Bob fetched and "
         f"verified {found[0].value.decode() if found else 'NOTHING'!r} in "
         f"{(t2 - t1) * 1000:.1f} ms")

    sub = await bob_node.listen(record.key)
    update = make_app_record(alice, "greeting", b"Alice is online now", seq=2,
                             expires=int(time.time()) + 600)
    t3 = time.perf_counter()
    await alice_node.put(update)
    try:
        pushed = await asyncio.wait_for(anext(aiter(sub)), 10.0)
        _say(f"[4/4] Bob's listen received the update {pushed.value.decode()!r} (seq "
             f"{pushed.seq}) {(time.perf_counter() - t3) * 1000:.1f} ms after Alice's put")
    except TimeoutError:
        _say("[4/4] Bob's listen received nothing within 10 s")
        ok = False
    sub.close()

    if keep_running:
        _say(f"network running; bootstrap with --bootstrap {first[0]}:{first[1]}; Ctrl-C stops")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    for n in network:
        await n.close()
    _say("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1
