"""Short authentication string of calls (core, no I/O)."""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dhtchat.core.calls import CallMachine
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
               offer_nonce: bytes = b"", answer_nonce: bytes = b"") -> tuple[Sas, Sas]:
    alice = compute_sas(local_identity=id_a, local_fingerprint=fp_a, remote_identity=id_b,
                        remote_fingerprint=fp_b, offer_nonce=offer_nonce,
                        answer_nonce=answer_nonce)
    bob = compute_sas(local_identity=id_b, local_fingerprint=fp_b, remote_identity=id_a,
                      remote_fingerprint=fp_a, offer_nonce=offer_nonce,
                      answer_nonce=answer_nonce)
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
    assert sas.value == 0x081322
    assert sas.text == "bagel blanket camel"
    assert sas.number == "0052 9186"
    assert str(sas) == "bagel blanket camel (0052 9186)"
    with_nonces = both_sides(ALICE, FP_A, BOB, FP_B, bytes(range(16)), bytes(range(100, 116)))
    assert with_nonces[0] == with_nonces[1]
    assert with_nonces[0].value == 0x8F2B34 and with_nonces[0].text == "ocean cherry cookie"


def test_the_sas_covers_both_nonces_in_their_roles() -> None:
    """The callee's nonce changes the SAS (v1 had none), and so does the caller's; the two
    are not interchangeable (the caller's is always hashed first)."""
    caller, callee = bytes(range(16)), bytes(range(100, 116))
    base = both_sides(ALICE, FP_A, BOB, FP_B, caller, callee)[0]
    other_callee = both_sides(ALICE, FP_A, BOB, FP_B, caller, bytes(range(1, 17)))[0]
    assert other_callee != base
    assert both_sides(ALICE, FP_A, BOB, FP_B, bytes(range(1, 17)), callee)[0] != base
    assert both_sides(ALICE, FP_A, BOB, FP_B, callee, caller)[0] != base
    assert both_sides(ALICE, FP_A, BOB, FP_B, caller)[0] != base  # no callee nonce


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
                        remote_fingerprint=FP_B, offer_nonce=nonce)
        with pytest.raises(RemoteProtocolError):
            compute_sas(local_identity=ALICE, local_fingerprint=FP_A, remote_identity=BOB,
                        remote_fingerprint=FP_B, answer_nonce=nonce)


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


@given(keys, keys, keys, keys, nonces, nonces)
def test_both_sides_agree(id_a: bytes, id_b: bytes, fp_a: bytes, fp_b: bytes,
                          offer_nonce: bytes, answer_nonce: bytes) -> None:
    assume(fp_a != fp_b)
    alice, bob = both_sides(id_a, sdp_form(fp_a), id_b, sdp_form(fp_b).lower(), offer_nonce,
                            answer_nonce)
    assert alice == bob
    # raw bytes or SDP text
    assert alice == both_sides(id_a, fp_a, id_b, fp_b, offer_nonce, answer_nonce)[0]


@given(keys, keys, keys, keys, nonces, nonces, st.integers(0, 5), st.integers(0, 255),
       st.integers(1, 255))
def test_any_changed_input_changes_the_hash(id_a: bytes, id_b: bytes, fp_a: bytes,
                                            fp_b: bytes, offer_nonce: bytes,
                                            answer_nonce: bytes, which: int,
                                            position: int, flip: int) -> None:
    """A MITM changes what one side sees (its peer's identity or fingerprint, or a nonce)."""
    assume(fp_a != fp_b)
    inputs = [id_a, fp_a, id_b, fp_b, offer_nonce or b"\x00" * 16,
              answer_nonce or b"\x00" * 16]
    changed = list(inputs)
    target = bytearray(changed[which])
    target[position % len(target)] ^= flip
    changed[which] = bytes(target)
    assume(changed[1] != changed[3])

    def digest(values: list[bytes]) -> bytes:
        return sas_hash(local_identity=values[0], local_fingerprint=values[1],
                        remote_identity=values[2], remote_fingerprint=values[3],
                        offer_nonce=values[4], answer_nonce=values[5])

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


# ---------------------------------------------------------------- grinding (review item 2)
#
# Mallory holds both identities: Alice's "Bob" is M_b, Bob's "Alice" is M_a. She relays a
# call Alice -> Mallory -> Bob and wants the two SAS to match. To make a search observable
# the test compares only the top GRIND_BITS bits of each SAS (a chance match is 2^-8).

GRIND_BITS = 8
M_A, M_B = bytes(range(50, 82)), bytes(range(60, 92))
RAW_A, RAW_B = bytes(range(200, 232)), bytes(range(10, 42))  # Bob's: kept per contact
RAW_M1, RAW_M2 = bytes(range(70, 102)), bytes(range(80, 112))  # Mallory's two certificates
CALL = bytes(16)
SEARCH_LIMIT = 1 << 12  # 16x the expected number of tries; a miss has odds e^-16
TRIALS = 400  # per leg and scheme


def short(sas: Sas) -> int:
    return sas.value >> (SAS_BITS - GRIND_BITS)


def alice_leg(offer: bytes, answer: bytes) -> int:
    """What Alice (the caller) sees: her peer is M_b with certificate M1."""
    return short(compute_sas(local_identity=ALICE, local_fingerprint=RAW_A,
                             remote_identity=M_B, remote_fingerprint=RAW_M1,
                             offer_nonce=offer, answer_nonce=answer))


def bob_leg(offer: bytes, answer: bytes) -> int:
    """What Bob (the callee) sees: his peer is M_a with certificate M2."""
    return short(compute_sas(local_identity=BOB, local_fingerprint=RAW_B,
                             remote_identity=M_A, remote_fingerprint=RAW_M2,
                             offer_nonce=offer, answer_nonce=answer))


def grind(matches: Callable[[bytes], int], target: int) -> tuple[bytes, int] | None:
    """The first 16-byte value whose SAS (by ``matches``) equals ``target``, and the tries."""
    for tries in range(1, SEARCH_LIMIT + 1):
        candidate = tries.to_bytes(16, "big")
        if matches(candidate) == target:
            return candidate, tries
    return None


def test_grinding_matches_at_once_when_only_the_caller_contributes() -> None:
    """The v1 scheme: Bob's SAS has only the caller's nonce and Bob's known certificate, so
    Mallory, calling Bob after learning Alice's words, searches her nonce until they match."""
    rng = random.Random(1102)
    tries_needed = []
    for _ in range(TRIALS // 20):
        target = alice_leg(rng.randbytes(16), b"")  # Alice's nonce, revealed to Mallory
        found = grind(lambda nonce: bob_leg(nonce, b""), target)
        assert found is not None  # every trial: Bob hears Alice's words
        assert bob_leg(found[0], b"") == target
        tries_needed.append(found[1])
    print(f"\nv1: a match in every trial, {sum(tries_needed) / len(tries_needed):.0f} tries "
          f"on average (max {max(tries_needed)}) for a {GRIND_BITS}-bit SAS")
    assert max(tries_needed) < SEARCH_LIMIT


def test_grinding_is_at_chance_with_the_commitment() -> None:
    """The v2 protocol, run through the real call machines. Leg 1 (Mallory calls Bob after
    learning Alice's words): she grinds her nonce against her best guess of Bob's before
    committing, then, seeing Bob's real nonce, grinds a nonce that would match and tries to
    reveal it instead. Leg 2 (Mallory answers Alice after learning Bob's words): she grinds
    her answer nonce against a guess of Alice's, which is hidden behind the commitment.
    Either way she matches only at chance (2^-8), where v1 matched every time."""
    rng = random.Random(2024)
    guess = bytes(16)
    hits = {"caller": 0, "callee": 0}
    refused = 0
    for _ in range(TRIALS):
        # Leg 1: Mallory -> Bob. Alice's words are known to her.
        target = alice_leg(rng.randbytes(16), rng.randbytes(16))
        precommit = grind(lambda nonce: bob_leg(nonce, guess), target)
        mallory = CallMachine(CALL, "outgoing", 0.0,
                              nonce=precommit[0] if precommit else guess)
        bob = CallMachine(CALL, "incoming", 0.0, nonce=rng.randbytes(16),
                          peer_commitment=mallory.commitment)
        bob.send("accept", 1.0)
        mallory.receive("accept", 1.0, nonce=bob.nonce)
        if bob_leg(mallory.reveal(1.0), bob.nonce) == target:
            reveal = mallory.nonce  # her committed nonce happens to match
        else:  # she knows Bob's nonce now: find one that matches and reveal that
            better = grind(lambda nonce: bob_leg(nonce, bob.nonce), target)  # noqa: B023
            reveal = better[0] if better else guess
        try:
            bob.receive_reveal(reveal, 2.0)
        except RemoteProtocolError:
            assert bob.ended and "does not open its commitment" in bob.reason
            refused += 1
        nonces = bob.sas_nonces
        if nonces is not None and bob_leg(*nonces) == target:
            hits["caller"] += 1

        # Leg 2: Alice -> Mallory. Bob's words are known to her.
        target = bob_leg(rng.randbytes(16), rng.randbytes(16))
        alice = CallMachine(CALL, "outgoing", 0.0, nonce=rng.randbytes(16))
        chosen = grind(lambda nonce: alice_leg(guess, nonce), target)
        answering = CallMachine(CALL, "incoming", 0.0, nonce=chosen[0] if chosen else guess,
                                peer_commitment=alice.commitment)
        answering.send("accept", 1.0)
        alice.receive("accept", 1.0, nonce=answering.nonce)
        alice.reveal(1.0)
        nonces = alice.sas_nonces
        assert nonces is not None
        if alice_leg(*nonces) == target:
            hits["callee"] += 1
    print(f"\nv2, {TRIALS} trials per leg, {GRIND_BITS}-bit SAS (chance: "
          f"{TRIALS / 2 ** GRIND_BITS:.1f}): Mallory calling Bob matched {hits['caller']} "
          f"times ({refused} false reveals refused), answering Alice {hits['callee']} times")
    # Binomial(400, 2^-8): mean 1.6; P(X >= 12) < 1e-6. v1 matched 400 of 400.
    assert hits["caller"] < 12 and hits["callee"] < 12
    assert refused >= TRIALS - 12  # every substituted reveal was refused
