"""``dhtchat backup FILE`` and ``dhtchat restore FILE``: an encrypted copy of a profile.

The backup has a passphrase of its own (``$DHTCHAT_BACKUP_PASSPHRASE`` or the terminal),
independent of the identity's (``$DHTCHAT_PASSPHRASE``). Format and replay rule:
:mod:`dhtchat.app.backup` and docs/protocol.md ("Backup files")."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path

from dhtchat.app.backup import ensure_stopped, restore_backup, write_backup
from dhtchat.cli.errors import EXIT_OK, UsageError
from dhtchat.cli.identity import load_identity, read_passphrase, warn_if_weak
from dhtchat.cli.options import open_profile

BACKUP_ENV = "DHTCHAT_BACKUP_PASSPHRASE"


def read_backup_passphrase(confirm: bool) -> str:
    """The backup's passphrase from ``$DHTCHAT_BACKUP_PASSPHRASE`` (then removed) or the
    terminal (asked twice when ``confirm``)."""
    env = os.environ.pop(BACKUP_ENV, None)
    if env is not None:
        if not env:
            raise UsageError(f"{BACKUP_ENV} is empty; a backup always has a passphrase")
        return env
    if not sys.stdin.isatty():
        raise UsageError(f"the backup's passphrase is needed: set {BACKUP_ENV} or run in a "
                         "terminal")
    first = getpass.getpass("Backup passphrase: ")
    if not first:
        raise UsageError("empty passphrase; a backup always has a passphrase")
    if confirm and getpass.getpass("Repeat backup passphrase: ") != first:
        raise UsageError("the passphrases differ")
    return first


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count} bytes"


def cmd_backup(args: argparse.Namespace) -> int:
    """Write an encrypted backup of the profile (the daemon must be stopped)."""
    profile, _ = open_profile(args)
    ensure_stopped(profile.root)
    identity = load_identity(profile)
    passphrase = read_backup_passphrase(confirm=True)
    warn_if_weak(passphrase)
    summary = write_backup(profile, identity, Path(args.file), passphrase,
                           history=args.history)
    what = (f"history and {summary.files} received files ({_size(summary.file_bytes)})"
            if summary.history else "no history (add --history for messages and files)")
    print(f"backed up {summary.user_id} to {args.file}: {summary.contacts} contacts, {what}",
          file=sys.stderr)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    """Build a new profile from a backup."""
    profile, _ = open_profile(args)
    passphrase = read_backup_passphrase(confirm=False)
    if args.no_passphrase:
        identity_passphrase = None
        print("warning: the restored identity key is stored UNENCRYPTED", file=sys.stderr)
    else:
        identity_passphrase = read_passphrase(confirm=True,
                                              prompt="Passphrase for the restored profile: ")
    summary = restore_backup(Path(args.file), profile.root, passphrase, identity_passphrase)
    what = f"history and {summary.files} received files" if summary.history else "no history"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.created))
    print(f"restored {summary.user_id} into {profile.root}: {summary.contacts} contacts, "
          f"{what}. Start the daemon: it opens new sessions with your contacts (no new "
          "contact requests needed).", file=sys.stderr)
    print(f"note: this backup was written {when}; if the profile exchanged messages after "
          "that, restore a newer backup (with an older one those conversations can stall)",
          file=sys.stderr)
    print(summary.user_id)
    return EXIT_OK
