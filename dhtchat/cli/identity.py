"""``dhtchat id``: create an identity, change its passphrase, show it."""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import secrets
import sys

import segno

from dhtchat.app.keystore import (
    KeystoreError,
    is_encrypted,
    load_identity_document,
    open_identity,
    passphrase_strength,
    rewrap_identity_file,
    save_identity_file,
)
from dhtchat.app.profile import Profile, make_private
from dhtchat.cli.errors import EXIT_OK, UsageError
from dhtchat.cli.options import open_profile
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.identity import SEED_BYTES, SigningIdentity, encode_user_id, fingerprint


def read_passphrase(confirm: bool, prompt: str = "Passphrase: ") -> str:
    """The passphrase from ``$DHTCHAT_PASSPHRASE`` (then removed) or the terminal."""
    # Removed once read: child processes (and /proc/<pid>/environ readers) do not inherit it.
    env = os.environ.pop("DHTCHAT_PASSPHRASE", None)
    if env is not None:
        if not env:
            raise UsageError("DHTCHAT_PASSPHRASE is empty; use --no-passphrase for no passphrase")
        return env
    if not sys.stdin.isatty():
        raise UsageError(
            "a passphrase is needed: set DHTCHAT_PASSPHRASE or run in a terminal"
        )
    first = getpass.getpass(prompt)
    if not first:
        raise UsageError("empty passphrase; use --no-passphrase to store the key unencrypted")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise UsageError("the passphrases differ")
    return first


def load_identity(profile: Profile) -> SigningIdentity:
    """The profile's identity, asking for its passphrase when it has one."""
    doc = load_identity_document(profile.identity_path)
    passphrase = read_passphrase(confirm=False) if is_encrypted(doc) else None
    return open_identity(doc, passphrase)


def cmd_id_new(args: argparse.Namespace) -> int:
    """Create an identity in the profile and print its user id."""
    profile, _ = open_profile(args)
    if profile.has_identity():
        raise UsageError(f"an identity already exists in {profile.root}")
    if args.no_passphrase:
        passphrase = None
        print("warning: the identity key is stored UNENCRYPTED; anyone who can read "
              f"{profile.identity_path} can impersonate you, and read your message history "
              "and contact list", file=sys.stderr)
    else:
        passphrase = read_passphrase(confirm=True)
        warn_if_weak(passphrase)
    make_private(profile.root)
    identity = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    save_identity_file(profile.identity_path, identity, passphrase)
    print(identity.user_id)
    return EXIT_OK


def warn_if_weak(passphrase: str) -> None:
    """Warn on stderr when ``passphrase`` is easy to guess."""
    score, guesses = passphrase_strength(passphrase)
    if score < 3:
        print(f"warning: weak passphrase (strength {score}/4, {guesses}); a stolen profile "
              "could be opened by guessing it", file=sys.stderr)


def cmd_id_passphrase(args: argparse.Namespace) -> int:
    """Change (or remove) the identity's passphrase."""
    profile, _ = open_profile(args)
    make_private(profile.root)
    doc = load_identity_document(profile.identity_path)
    old = read_passphrase(confirm=False, prompt="Current passphrase: ") \
        if is_encrypted(doc) else None
    if args.no_passphrase:
        new = None
        print("warning: the identity key will be stored UNENCRYPTED; anyone who can read "
              f"{profile.root} can read your message history and contact list",
              file=sys.stderr)
    else:
        new_env = os.environ.pop("DHTCHAT_NEW_PASSPHRASE", None)
        if new_env is not None:
            os.environ["DHTCHAT_PASSPHRASE"] = new_env
        new = read_passphrase(confirm=True, prompt="New passphrase: ")
        warn_if_weak(new)
    rewrap_identity_file(profile.identity_path, old, new)
    print("passphrase changed", file=sys.stderr)
    return EXIT_OK


def cmd_id_show(args: argparse.Namespace) -> int:
    """Print the user id (and with ``--qr`` a QR code); the fingerprint on stderr."""
    profile, _ = open_profile(args)
    doc = load_identity_document(profile.identity_path)
    try:
        public_key = base64.b64decode(str(doc.get("public_key", "")), validate=True)
        user_id = encode_user_id(public_key)
    except (ValueError, LocalProtocolError):
        raise KeystoreError(f"identity file {profile.identity_path} is malformed") from None
    print(user_id)
    if args.qr:
        segno.make(user_id, error="m").terminal(compact=True)
    print(f"fingerprint: {fingerprint(public_key)}", file=sys.stderr)
    return EXIT_OK
