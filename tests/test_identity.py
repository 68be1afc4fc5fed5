"""User ids, checksums, fingerprints and the encrypted identity file."""

from __future__ import annotations

import json
import random
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtchat.app.keystore import (
    KeystoreError,
    WrongPassphrase,
    is_encrypted,
    open_identity,
    seal_identity,
)
from dhtchat.core.errors import InvalidUserId
from dhtchat.core.identity import (
    USER_ID_LENGTH,
    SigningIdentity,
    decode_user_id,
    encode_user_id,
    fingerprint,
    safety_number,
    verify_signature,
)

B32_ALPHABET = string.ascii_lowercase + "234567"


@given(st.binary(min_size=32, max_size=32))
def test_user_id_round_trip(public_key: bytes) -> None:
    text = encode_user_id(public_key)
    assert len(text) == USER_ID_LENGTH
    assert text == text.lower()
    assert decode_user_id(text) == public_key
    assert decode_user_id(text.upper()) == public_key
    grouped = "-".join(text[i : i + 6] for i in range(0, len(text), 6))
    assert decode_user_id(grouped) == public_key


@given(st.binary(min_size=32, max_size=32), st.integers(0, USER_ID_LENGTH - 1),
       st.sampled_from(B32_ALPHABET))
def test_any_single_character_typo_is_detected(public_key: bytes, pos: int, char: str) -> None:
    text = encode_user_id(public_key)
    mutated = text[:pos] + char + text[pos + 1 :]
    if mutated == text:
        return
    with pytest.raises(InvalidUserId):
        decode_user_id(mutated)


def test_swapped_characters_and_truncation_are_detected() -> None:
    text = SigningIdentity.from_seed(b"\x01" * 32).user_id
    swapped = text[:10] + text[11] + text[10] + text[12:]
    assert swapped != text
    for bad in (swapped, text[:-1], text + "a", text.replace(text[3], "1", 1), ""):
        with pytest.raises(InvalidUserId):
            decode_user_id(bad)


def test_fingerprint_and_safety_number() -> None:
    a = SigningIdentity.from_seed(b"a" * 32).public_key
    b = SigningIdentity.from_seed(b"b" * 32).public_key
    fp = fingerprint(a)
    groups = fp.split()
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert fingerprint(a) == fp != fingerprint(b)
    assert safety_number(a, b) == safety_number(b, a)
    assert safety_number(a, b) != safety_number(a, a)


def test_signatures_verify_only_with_the_right_key_and_message() -> None:
    alice = SigningIdentity.from_seed(b"a" * 32)
    bob = SigningIdentity.from_seed(b"b" * 32)
    sig = alice.sign(b"message")
    assert verify_signature(alice.public_key, b"message", sig)
    assert not verify_signature(bob.public_key, b"message", sig)
    assert not verify_signature(alice.public_key, b"messagE", sig)
    assert not verify_signature(alice.public_key, b"message", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify_signature(alice.public_key[:31], b"message", sig)


def test_identity_file_encrypts_and_needs_the_passphrase() -> None:
    identity = SigningIdentity.from_seed(random.Random(7).randbytes(32))
    doc = seal_identity(identity, "correct horse")
    assert is_encrypted(doc)
    assert identity.seed.hex() not in json.dumps(doc)
    assert open_identity(doc, "correct horse").public_key == identity.public_key
    with pytest.raises(WrongPassphrase):
        open_identity(doc, "wrong horse")
    with pytest.raises(WrongPassphrase):
        open_identity(doc, None)


def test_identity_file_tampering_is_detected() -> None:
    identity = SigningIdentity.from_seed(random.Random(8).randbytes(32))
    doc = seal_identity(identity, "pw")
    other = SigningIdentity.from_seed(random.Random(9).randbytes(32))
    swapped = dict(doc, public_key=seal_identity(other, None)["public_key"])
    with pytest.raises(WrongPassphrase):  # the public key is authenticated data
        open_identity(swapped, "pw")
    with pytest.raises(KeystoreError):
        open_identity(dict(doc, format="something-else"), "pw")
    with pytest.raises(KeystoreError):
        open_identity(dict(doc, kdf={"name": "argon2id", "opslimit": 10**9,
                                     "memlimit": 1, "salt": "AA=="}), "pw")


def test_unencrypted_identity_file_round_trips() -> None:
    identity = SigningIdentity.from_seed(b"z" * 32)
    doc = seal_identity(identity, None)
    assert not is_encrypted(doc)
    assert open_identity(doc, None).seed == identity.seed
