"""``dhtchat daemon``: run your node (DHT, contacts, connections and the local API) until
SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from dhtchat.app.keystore import is_encrypted, load_identity_document, open_identity
from dhtchat.app.settings import ProfileSettings
from dhtchat.cli.errors import EXIT_OK, UsageError
from dhtchat.cli.identity import read_passphrase
from dhtchat.cli.options import open_profile, parse_bootstrap
from dhtchat.core.errors import LocalProtocolError

if TYPE_CHECKING:
    from dhtchat.net.webrtc import TurnServer

log = logging.getLogger("dhtchat")


def _parse_turn(args: argparse.Namespace) -> TurnServer | None:
    from dhtchat.net.webrtc import TurnServer  # noqa: PLC0415 - aiortc loads only for daemons

    if not args.turn:
        if args.turn_user or args.turn_pass:
            raise UsageError("--turn-user/--turn-pass need --turn URL")
        return None
    if not args.turn.startswith(("turn:", "turns:")):
        raise UsageError("--turn must be a turn: URL, e.g. turn:203.0.113.5:3478")
    if not args.turn_user or args.turn_pass is None:
        raise UsageError("--turn needs --turn-user and --turn-pass")
    return TurnServer(args.turn, args.turn_user, args.turn_pass)


def _saved_settings(root: Path, args: argparse.Namespace) -> ProfileSettings:
    """The profile's saved settings (``settings.set``), for every flag not given; the saved
    TURN server fills ``--turn`` and its login."""
    try:
        saved = ProfileSettings.load(root)
        saved.check()
    except LocalProtocolError as exc:
        raise UsageError(f"profile settings: {exc}") from None
    if not args.turn and saved.turn:
        args.turn, args.turn_user, args.turn_pass = saved.turn, saved.turn_user, saved.turn_pass
    return saved


async def _run_daemon(args: argparse.Namespace) -> int:
    profile, _ = open_profile(args)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a UDP port (0-65535; 0: any free port)")
    if not profile.has_identity():
        raise UsageError(f"no identity in {profile.root}; create one with `dhtchat id new`")
    document = load_identity_document(profile.identity_path)
    if is_encrypted(document):
        passphrase: str | None = read_passphrase(confirm=False)
    else:
        passphrase = None
        log.warning("this identity has no passphrase: the message history and contact list "
                    "in %s are readable by anyone who can read its files", profile.root)
    # The passphrase's Argon2id (a second of a core) runs in a thread while this one imports
    # the app and aiortc (as long again; libsodium does not hold the GIL): a restart is ready
    # in the longer of the two, not their sum.
    unlocking = asyncio.get_running_loop().run_in_executor(
        None, functools.partial(open_identity, document, passphrase))
    # Imported here: aiortc takes a while to load and only the daemon needs it.
    from dhtchat.app.daemon import Daemon, DaemonAlreadyRunning, DaemonOptions  # noqa: PLC0415

    identity = await unlocking  # a wrong passphrase fails here, as before
    saved = _saved_settings(profile.root, args)
    options = DaemonOptions(
        port=args.port, host=args.host, bootstrap=parse_bootstrap(args.bootstrap),
        stun=parse_bootstrap(args.stun), turn=_parse_turn(args),
        relay_only=args.relay_only or saved.relay_only,
        ice_addresses=args.ice_address or saved.ice_addresses or None,
        connect_timeout=args.connect_timeout, display_name=args.name or saved.name,
        dht_mode="client" if args.dht_client else args.dht_mode,
        lan_discovery=not args.no_lan_discovery,
    )
    daemon = Daemon(profile, identity, options)
    try:
        await daemon.start()
    except DaemonAlreadyRunning as exc:
        raise UsageError(str(exc)) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(daemon.stop()))
    log.info("daemon ready; API on %s", daemon.socket_path)
    try:
        await daemon.serve_forever()
    finally:
        await daemon.stop()
    log.info("daemon stopped")
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    """Run the daemon of the profile until SIGINT or SIGTERM."""
    return asyncio.run(_run_daemon(args))
