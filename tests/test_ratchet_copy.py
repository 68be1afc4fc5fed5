"""The ratchet's state copy (dhtchat.messaging.ratchet._DHRatchet.__deepcopy__): the library
copies the DH ratchet before every decryption and keeps the copy only on success, so the
copy must be deep -- a forged message must leave the state exactly as it was."""

from __future__ import annotations

import asyncio
import copy

import pytest

from dhtchat.core.identity import SigningIdentity
from dhtchat.messaging.prekeys import PrekeyStore
from dhtchat.messaging.ratchet import SessionError, _plain_copy
from dhtchat.messaging.session import Conversation

A_SEED, B_SEED = bytes(32), bytes([1]) * 32
A = SigningIdentity.from_seed(A_SEED).public_key
B = SigningIdentity.from_seed(B_SEED).public_key


class _Chain:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.length = 0
        self.kdf = bytes  # a class: shared, as deepcopy does


class _Holder:
    def __init__(self) -> None:
        self.chain = _Chain(b"k")
        self.same = self.chain  # shared twice: copied once
        self.items = [1, 2]  # not a plain object: copy.deepcopy


def test_the_plain_copy_is_deep_keeps_sharing_and_classes() -> None:
    original = _Holder()
    twin = _plain_copy(original, {})
    assert isinstance(twin, _Holder)
    assert twin.chain is not original.chain and twin.chain is twin.same
    assert twin.chain.kdf is bytes and twin.items == [1, 2] and twin.items is not original.items
    twin.chain.length = 5
    twin.items.append(3)
    assert original.chain.length == 0 and original.items == [1, 2]


def test_a_forged_message_between_genuine_ones_leaves_the_state_as_it_was() -> None:
    async def main() -> None:
        alice = Conversation(PrekeyStore.create(A_SEED, 0.0), A, B)
        bob_prekeys = PrekeyStore.create(B_SEED, 0.0)
        bob = Conversation(bob_prekeys, B, A)
        assert await bob.decrypt(await alice.encrypt(b"hello", bob_prekeys.bundle_for(A))) \
            == b"hello"
        await alice.decrypt(await bob.encrypt(b"back", None))
        for round_ in range(3):
            genuine = await alice.encrypt(b"message %d" % round_, None)
            forged = bytearray(genuine)
            forged[-1] ^= 1  # the tag no longer matches: the decryption fails at the end
            with pytest.raises(SessionError):
                await bob.decrypt(bytes(forged))
            assert await bob.decrypt(genuine) == b"message %d" % round_
    asyncio.run(main())


def test_copy_deepcopy_of_a_conversation_state_uses_the_plain_copy() -> None:
    async def main() -> None:
        alice = Conversation(PrekeyStore.create(A_SEED, 0.0), A, B)
        bob_prekeys = PrekeyStore.create(B_SEED, 0.0)
        bob = Conversation(bob_prekeys, B, A)
        await bob.decrypt(await alice.encrypt(b"hello", bob_prekeys.bundle_for(A)))
        # the JSON state round-trips identically through a deep copy of the session
        assert copy.deepcopy(bob).to_json() == bob.to_json()
    asyncio.run(main())
