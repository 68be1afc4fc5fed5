"""The identity file: an Ed25519 seed encrypted at rest with a passphrase.

Format (JSON, one file ``identity.json`` in the profile directory, mode 0600)::

    {"format": "dhtchat-identity", "version": 1, "public_key": b64,
     "kdf": {"name": "argon2id", "opslimit": N, "memlimit": N, "salt": b64},
     "cipher": "xchacha20poly1305-ietf", "nonce": b64, "ciphertext": b64}

The key-encryption key is Argon2id(passphrase, salt) (RFC 9106); the seed is sealed with
XChaCha20-Poly1305 with the public key as associated data, so a wrong passphrase or any
tampering fails authentication. ``kdf.name == "none"`` stores the seed in clear (only with
``--no-passphrase``, which the CLI warns about).
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NotRequired, TypedDict

import nacl.bindings
import nacl.exceptions
import nacl.pwhash

from dhtchat.app.jsontypes import JsonObject
from dhtchat.core.errors import DhtChatError
from dhtchat.core.identity import SEED_BYTES, SigningIdentity
from dhtchat.store.private import write_private_file

FORMAT: Final = "dhtchat-identity"
VERSION: Final = 1
# libsodium's MODERATE cost (3 passes over 256 MiB): an offline guess costs ~0.5-1 s of a core.
OPSLIMIT: Final = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MEMLIMIT: Final = nacl.pwhash.argon2id.MEMLIMIT_MODERATE


class KeystoreError(DhtChatError):
    """The identity file is missing, unreadable or malformed."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not open the identity file."""


class KdfParams(TypedDict):
    """The ``kdf`` member of an identity document (``name`` "none": the seed is in clear)."""

    name: str
    opslimit: NotRequired[int]
    memlimit: NotRequired[int]
    salt: NotRequired[str]  # base64


class IdentityDocument(TypedDict):
    """An identity document as :func:`seal_identity` writes it (the format above)."""

    format: str
    version: int
    public_key: str  # base64, as are the members below
    kdf: KdfParams
    seed: NotRequired[str]  # only unencrypted
    cipher: NotRequired[str]
    nonce: NotRequired[str]
    ciphertext: NotRequired[str]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise KeystoreError(f"identity file: {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise KeystoreError(f"identity file: {what} is not valid base64") from None


def _derive_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
        passphrase.encode("utf-8"),
        salt,
        opslimit=opslimit,
        memlimit=memlimit,
    )


def seal_identity(identity: SigningIdentity, passphrase: str | None) -> IdentityDocument:
    """The JSON document protecting ``identity`` (``None``: unencrypted)."""
    public_key = _b64(identity.public_key)
    if passphrase is None:
        return {"format": FORMAT, "version": VERSION, "public_key": public_key,
                "kdf": {"name": "none"}, "seed": _b64(identity.seed)}
    salt = secrets.token_bytes(nacl.pwhash.argon2id.SALTBYTES)
    nonce = secrets.token_bytes(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)
    key = _derive_key(passphrase, salt, OPSLIMIT, MEMLIMIT)
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        identity.seed, identity.public_key, nonce, key
    )
    return {"format": FORMAT, "version": VERSION, "public_key": public_key,
            "kdf": {"name": "argon2id", "opslimit": OPSLIMIT, "memlimit": MEMLIMIT,
                    "salt": _b64(salt)},
            "cipher": "xchacha20poly1305-ietf", "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext)}


def is_encrypted(doc: Mapping[str, object]) -> bool:
    """Whether opening ``doc`` needs a passphrase."""
    kdf = doc.get("kdf")
    return not (isinstance(kdf, dict) and kdf.get("name") == "none")


def open_identity(doc: Mapping[str, object], passphrase: str | None) -> SigningIdentity:
    """Decrypt an identity document; raises :class:`WrongPassphrase` or :class:`KeystoreError`."""
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise KeystoreError("not a dhtchat identity file (or a newer version)")
    public_key = _unb64(doc.get("public_key"), "public_key")
    kdf = doc.get("kdf")
    if not isinstance(kdf, dict):
        raise KeystoreError("identity file: kdf is missing")
    if kdf.get("name") == "none":
        seed = _unb64(doc.get("seed"), "seed")
    elif kdf.get("name") == "argon2id":
        if passphrase is None:
            raise WrongPassphrase("this identity is protected by a passphrase")
        opslimit, memlimit = kdf.get("opslimit"), kdf.get("memlimit")
        if not isinstance(opslimit, int) or not isinstance(memlimit, int) or not (
            1 <= opslimit <= 64 and 8192 <= memlimit <= 4 * 1024**3
        ):
            raise KeystoreError("identity file: bad argon2id parameters")
        key = _derive_key(passphrase, _unb64(kdf.get("salt"), "salt"), opslimit, memlimit)
        try:
            seed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                _unb64(doc.get("ciphertext"), "ciphertext"), public_key,
                _unb64(doc.get("nonce"), "nonce"), key,
            )
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase("wrong passphrase (or the identity file was altered)") from None
    else:
        raise KeystoreError(f"identity file: unknown kdf {kdf.get('name')!r}")
    if len(seed) != SEED_BYTES:
        raise KeystoreError("identity file: seed has the wrong length")
    identity = SigningIdentity.from_seed(seed)
    if identity.public_key != public_key:
        raise KeystoreError("identity file: public key does not match the secret key")
    return identity


def rewrap_identity_file(path: Path, old: str | None, new: str | None) -> SigningIdentity:
    """Change the passphrase of the identity file at ``path`` (``None``: no passphrase);
    raises :class:`WrongPassphrase` when ``old`` does not open it."""
    identity = open_identity(load_identity_document(path), old)
    doc = seal_identity(identity, new)
    write_private_file(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    return identity


def passphrase_strength(passphrase: str) -> tuple[int, str]:
    """zxcvbn's score (0-4) and its estimate of the guesses needed, as a phrase."""
    # Imported here: only `id new` / `id passphrase` need it; the package has no stubs.
    from zxcvbn import zxcvbn  # type: ignore[import-untyped]  # noqa: PLC0415

    result = zxcvbn(passphrase[:100])  # zxcvbn is quadratic; 100 characters are plenty
    guesses = float(result["guesses"])
    return int(result["score"]), f"about 10^{int(math.log10(max(guesses, 1.0)))} guesses"


def save_identity_file(path: Path, identity: SigningIdentity, passphrase: str | None) -> None:
    """Write the identity file (refusing to overwrite an existing one)."""
    if path.exists():
        raise KeystoreError(f"an identity already exists at {path}")
    doc = seal_identity(identity, passphrase)
    write_private_file(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


def load_identity_document(path: Path) -> JsonObject:
    """Read the identity JSON document (as read: :func:`open_identity` checks it)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise KeystoreError(f"no identity in {path.parent} (create one with `dhtchat id new`)") \
            from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"cannot read identity file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise KeystoreError(f"identity file {path} is malformed")
    return doc
