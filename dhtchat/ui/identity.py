"""The identity on the desktop client's first run and unlock screens.

Creating and opening the identity happens before any daemon runs, so it cannot go through
the API: these are the same app-layer functions ``dhtchat id new`` uses
(:mod:`dhtchat.app.keystore`), and nothing of the daemon.
"""

from __future__ import annotations

import base64
import io
import secrets
from dataclasses import dataclass
from pathlib import Path

import segno

from dhtchat.app.keystore import (
    KeystoreError,
    is_encrypted,
    load_identity_document,
    open_identity,
    passphrase_strength,
    save_identity_file,
)
from dhtchat.app.profile import Profile, make_private
from dhtchat.core.errors import LocalProtocolError
from dhtchat.core.identity import (
    SEED_BYTES,
    SigningIdentity,
    decode_user_id,
    encode_user_id,
    fingerprint,
)

__all__ = ["IdentityInfo", "KeystoreError", "create_identity", "has_identity", "id_fingerprint",
           "needs_passphrase", "qr_code", "read_identity", "strength", "unlock"]

MIN_PASSPHRASE = 8  # characters; zxcvbn's score is shown as well


@dataclass(frozen=True)
class IdentityInfo:
    """What the first-run screen shows: the user id and its fingerprint."""

    user_id: str
    fingerprint: str


def has_identity(profile: Path) -> bool:
    """Whether the profile holds an identity."""
    return Profile(profile).has_identity()


def needs_passphrase(profile: Path) -> bool:
    """Whether the profile's identity is encrypted with a passphrase."""
    return is_encrypted(load_identity_document(Profile(profile).identity_path))


def strength(passphrase: str) -> tuple[int, str]:
    """zxcvbn's score (0-4) of ``passphrase`` and the guesses needed, as a phrase."""
    return passphrase_strength(passphrase)


def create_identity(profile: Path, passphrase: str | None) -> IdentityInfo:
    """Create a new identity in the profile (made private), encrypted with ``passphrase``."""
    paths = Profile(profile)
    if paths.has_identity():
        raise KeystoreError(f"an identity already exists in {profile}")
    make_private(profile)
    identity = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    save_identity_file(paths.identity_path, identity, passphrase)
    return _info(identity.user_id)


def unlock(profile: Path, passphrase: str | None) -> IdentityInfo:
    """Check the passphrase by opening the identity (about a second of Argon2id);
    :class:`KeystoreError` when it is wrong."""
    doc = load_identity_document(Profile(profile).identity_path)
    return _info(open_identity(doc, passphrase).user_id)


def read_identity(profile: Path) -> IdentityInfo:
    """The profile's user id and fingerprint, without the passphrase (the public key is
    stored in the clear)."""
    doc = load_identity_document(Profile(profile).identity_path)
    try:
        public_key = base64.b64decode(str(doc.get("public_key", "")), validate=True)
        return _info(encode_user_id(public_key))
    except (ValueError, LocalProtocolError):
        raise KeystoreError(f"the identity file in {profile} is malformed") from None


def _info(user_id: str) -> IdentityInfo:
    return IdentityInfo(user_id, id_fingerprint(user_id))


def id_fingerprint(user_id: str) -> str:
    """The fingerprint of a user id (what two people compare), or "" for a malformed id."""
    try:
        return fingerprint(decode_user_id(user_id))
    except LocalProtocolError:
        return ""


def qr_code(user_id: str) -> str:
    """The user id as a QR code in Unicode half blocks (two rows per line), 1-module border."""
    out = io.StringIO()
    segno.make(user_id, error="m").terminal(out=out, border=1, compact=True)
    return out.getvalue().rstrip("\n")
