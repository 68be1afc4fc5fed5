"""Identities: user ids with a typo-catching checksum, fingerprints and safety numbers.

Run from the repository root:  python examples/identity_and_fingerprint.py

No network: everything here is local computation.
"""

from __future__ import annotations

import secrets
import sys

from dhtchat.core.errors import InvalidUserId
from dhtchat.core.identity import (
    SEED_BYTES,
    SigningIdentity,
    decode_user_id,
    fingerprint,
    safety_number,
)


def main() -> int:
    # An identity is an Ed25519 keypair made from 32 random bytes (keep the seed secret:
    # `dhtchat id new` stores it encrypted with a passphrase).
    alice = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    bob = SigningIdentity.from_seed(secrets.token_bytes(SEED_BYTES))
    print(f"Alice's user id: {alice.user_id}")

    # The user id is what people share. It decodes back to the public key; case, spaces and
    # dashes do not matter, so it can be read aloud in groups.
    grouped = " ".join(alice.user_id[i:i + 6] for i in range(0, len(alice.user_id), 6))
    if decode_user_id(grouped.upper()) != alice.public_key:
        return 1
    print(f"read aloud as:   {grouped}")

    # One wrong character fails the 32-bit checksum instead of naming a stranger.
    i = len(alice.user_id) // 2
    typo = alice.user_id[:i] + ("b" if alice.user_id[i] == "a" else "a") + alice.user_id[i + 1:]
    try:
        decode_user_id(typo)
    except InvalidUserId as exc:
        print(f"typo detected:   {exc}")
    else:
        print("a mistyped id was accepted!")
        return 1

    # A fingerprint is 60 digits to compare out of band (in person, on a call).
    print(f"fingerprint:     {fingerprint(alice.public_key)}")

    # A safety number covers both keys of a conversation; both sides compute the same digits.
    on_alices_phone = safety_number(alice.public_key, bob.public_key)
    on_bobs_phone = safety_number(bob.public_key, alice.public_key)
    if on_alices_phone != on_bobs_phone:
        return 1
    print(f"safety number:   {on_alices_phone}")
    print("OK: both sides see the same safety number")
    return 0


if __name__ == "__main__":
    sys.exit(main())
