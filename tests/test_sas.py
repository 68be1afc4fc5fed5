"""Short authentication string of calls (core, no I/O)."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.sas import (
    SAS_BITS,
    WORDS,
    Sas,
    check_commitment,
    commitment,
    compute_sas,
    parse_fingerprint,
    sas_from_number,
    sas_from_words,
    sas_hash,
)

keys = st.binary(min_size=32, max_size=32)
nonces = st.one_of(st.just(b""), st.binary(min_size=16, max_size=64))

ALICE = bytes(range(32))
BOB = bytes(range(100, 132))
FP_A = "sha-256 " + ":".join(f"{b:02X}" for b in range(200, 232))
FP_B = "sha-256 " + ":".join(f"{b:02X}" for b in range(10, 42))


def sdp_form(raw: bytes) -> str:
    """``sha-256 AB:CD:...`` as aiortc writes it."""
    return "sha-256 " + ":".join(f"{b:02X}" for b in raw)


def both_sides(id_a: bytes, fp_a: str | bytes, id_b: bytes, fp_b: str | bytes,
               nonce: bytes = b"") -> tuple[Sas, Sas]:
    alice = compute_sas(local_identity=id_a, local_fingerprint=fp_a, remote_identity=id_b,
                        remote_fingerprint=fp_b, nonce=nonce)
    bob = compute_sas(local_identity=id_b, local_fingerprint=fp_b, remote_identity=id_a,
                      remote_fingerprint=fp_a, nonce=nonce)
    return alice, bob


def test_wordlist_is_speakable_and_unambiguous() -> None:
    assert len(WORDS) == 256
    assert len(set(WORDS)) == 256
    assert all(re.fullmatch(r"[a-z]{3,8}", word) for word in WORDS)
    assert len({word[:4] for word in WORDS}) == 256  # a 4-letter prefix names one word


def test_known_vector() -> None:
    """Pins the formula (domain, order, cut): changing any of them breaks every SAS."""
    sas, other = both_sides(ALICE, FP_A, BOB, FP_B)
    assert sas == other
    digest = sas_hash(local_identity=ALICE, local_fingerprint=FP_A, remote_identity=BOB,
                      remote_fingerprint=FP_B)
    assert sas.value == int.from_bytes(digest[:3], "big")
    assert sas.value == 0x91AC69
    assert sas.text == "onion pumpkin honey"
    assert sas.number == "0954 6857"
    assert str(sas) == "onion pumpkin honey (0954 6857)"


def test_fingerprint_forms_are_equivalent() -> None:
    raw = bytes(range(200, 232))
    upper = sdp_form(raw)
    forms: list[str | bytes] = [
        upper, upper.lower(), "SHA-256 " + upper[8:], upper[8:], f"a=fingerprint:{upper}",
        f"  {upper}\r\n", "sha-256\t" + upper[8:].lower(), raw,
    ]
    assert {parse_fingerprint(form) for form in forms} == {raw}


@pytest.mark.parametrize("bad", [
    "", "sha-256", "sha-256 ", "sha-1 " + ":".join(["AB"] * 20),
    "sha-384 " + ":".join(["AB"] * 48), "sha-256 " + ":".join(["AB"] * 31),
    "sha-256 " + ":".join(["AB"] * 33), "sha-256 " + "AB" * 32,
    "sha-256 " + ":".join(["ABC"] + ["AB"] * 31), "sha-256 " + ":".join(["A"] + ["AB"] * 31),
    "sha-256 " + ":".join(["AB"] * 31) + ":", "sha-256 " + ":".join(["GG"] * 32),
    "sha-256 " + ":".join(["AB"] * 16) + " " + ":".join(["AB"] * 16),
    "md5 " + ":".join(["AB"] * 32), b"\x00" * 31, b"\x00" * 33,
])
def test_malformed_fingerprints_are_rejected(bad: str | bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_fingerprint(bad)
    with pytest.raises(RemoteProtocolError):
        compute_sas(local_identity=ALICE, local_fingerprint=FP_A, remote_identity=BOB,
                    remote_fingerprint=bad)


def test_bad_identities_nonces_and_reflection() -> None:
    with pytest.raises(LocalProtocolError):
        compute_sas(local_identity=ALICE[:31], local_fingerprint=FP_A, remote_identity=BOB,
                    remote_fingerprint=FP_B)
    with pytest.raises(RemoteProtocolError):  # the peer echoes our certificate
        compute_sas(local_identity=ALICE, local_fingerprint=FP_A, remote_identity=BOB,
                    remote_fingerprint=FP_A.lower())
    for nonce in (b"x", b"x" * 15, b"x" * 65):
        with pytest.raises(RemoteProtocolError):
            compute_sas(local_identity=ALICE, local_fingerprint=FP_A, remote_identity=BOB,
                        remote_fingerprint=FP_B, nonce=nonce)


def test_commitment_opens_only_with_its_nonce() -> None:
    nonce = b"n" * 16
    committed = commitment(nonce)
    assert len(committed) == 32
    check_commitment(committed, nonce)
    for wrong in (b"m" * 16, b"", b"n" * 17, b"n"):
        with pytest.raises(RemoteProtocolError):
            check_commitment(committed, wrong)
    with pytest.raises(RemoteProtocolError):
        check_commitment(committed[:31], nonce)
    with pytest.raises(LocalProtocolError):
        commitment(b"short")


def test_parsing_words_and_numbers() -> None:
    sas = Sas(0x00FF10)
    assert sas.words == (WORDS[0], WORDS[255], WORDS[16])
    assert sas_from_words("ACORN, zipper-" + WORDS[16].upper()) == sas
    assert sas_from_words(["acor", "zipp", WORDS[16][:4]]) == sas  # 4-letter prefixes
    assert sas_from_number("0006-5296") == sas
    for bad_words in ("acorn zipper", "acorn zipper cow cow", "acorn zipper nope", "aco zip cow"):
        with pytest.raises(LocalProtocolError):
            sas_from_words(bad_words)
    for bad_number in ("1234567", "123456789", "1677 7216", "abcd efgh", "١٢٣٤٥٦٧٨"):
        with pytest.raises(LocalProtocolError):
            sas_from_number(bad_number)
    with pytest.raises(LocalProtocolError):
        Sas(1 << SAS_BITS)


@given(keys, keys, keys, keys, nonces)
def test_both_sides_agree(id_a: bytes, id_b: bytes, fp_a: bytes, fp_b: bytes,
                          nonce: bytes) -> None:
    assume(fp_a != fp_b)
    alice, bob = both_sides(id_a, sdp_form(fp_a), id_b, sdp_form(fp_b).lower(), nonce)
    assert alice == bob
    assert alice == both_sides(id_a, fp_a, id_b, fp_b, nonce)[0]  # raw bytes or SDP text


@given(keys, keys, keys, keys, nonces, st.integers(0, 4), st.integers(0, 255),
       st.integers(1, 255))
def test_any_changed_input_changes_the_hash(id_a: bytes, id_b: bytes, fp_a: bytes,
                                            fp_b: bytes, nonce: bytes, which: int,
                                            position: int, flip: int) -> None:
    """A MITM changes what one side sees (its peer's identity or fingerprint, or the nonce)."""
    assume(fp_a != fp_b)
    inputs = [id_a, fp_a, id_b, fp_b, nonce or b"\x00" * 16]
    changed = list(inputs)
    target = bytearray(changed[which])
    target[position % len(target)] ^= flip
    changed[which] = bytes(target)
    assume(changed[1] != changed[3])

    def digest(values: list[bytes]) -> bytes:
        return sas_hash(local_identity=values[0], local_fingerprint=values[1],
                        remote_identity=values[2], remote_fingerprint=values[3],
                        nonce=values[4])

    assert digest(changed) != digest(inputs)


def test_a_swapped_pairing_changes_the_sas() -> None:
    """Each fingerprint is bound to the identity that announced it, not just present."""
    swapped = compute_sas(local_identity=ALICE, local_fingerprint=FP_B, remote_identity=BOB,
                          remote_fingerprint=FP_A)
    assert swapped != both_sides(ALICE, FP_A, BOB, FP_B)[0]


def test_mitm_views_disagree() -> None:
    """Alice sees Mallory's key and certificate as Bob's and vice versa."""
    mallory_b, mallory_a = bytes(range(50, 82)), bytes(range(60, 92))
    fp_m1, fp_m2 = sdp_form(bytes(range(70, 102))), sdp_form(bytes(range(80, 112)))
    alice = compute_sas(local_identity=ALICE, local_fingerprint=FP_A,
                        remote_identity=mallory_b, remote_fingerprint=fp_m1)
    bob = compute_sas(local_identity=BOB, local_fingerprint=FP_B,
                      remote_identity=mallory_a, remote_fingerprint=fp_m2)
    assert alice != bob


@given(st.integers(0, (1 << SAS_BITS) - 1))
def test_words_and_number_round_trip(value: int) -> None:
    sas = Sas(value)
    assert len(sas.words) == 3
    assert sas_from_words(sas.text) == sas
    assert sas_from_words(sas.words) == sas
    assert sas_from_number(sas.number) == sas
    assert re.fullmatch(r"\d{4} \d{4}", sas.number)


@given(st.text(max_size=120))
def test_parse_fingerprint_never_crashes(text: str) -> None:
    with contextlib.suppress(RemoteProtocolError):
        assert len(parse_fingerprint(text)) == 32
