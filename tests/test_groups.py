"""Groups: a large group of in-process daemons over a real loopback DHT; removal; a
message between members who are not each other's contacts (relayed by the admin); forged,
foreign and wrongly relayed messages."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dhtchat.app.daemon import Daemon, DaemonOptions
from dhtchat.app.groups import (
    GroupState,
    new_group,
    open_state,
    sign_group_file,
    sign_group_text,
    sign_state,
)
from dhtchat.app.messenger import Payload
from dhtchat.app.profile import Profile
from dhtchat.app.rpc import RpcError
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from tests.daemons import next_host

# The issue asks for at least 100 members; DHTCHAT_GROUP_SIZE changes it for experiments.
GROUP_SIZE = int(os.environ.get("DHTCHAT_GROUP_SIZE", "100"))
PHASE_LIMIT = 600.0


def _identity(n: int) -> SigningIdentity:
    return SigningIdentity.from_seed(n.to_bytes(2, "big") * 16)


async def _daemon(tmp: Path, n: int, bootstrap: list[tuple[str, int]], *,
                  auto_connect: bool = False) -> Daemon:
    # Each daemon on its own /24, as on a real network (storers' per-subnet quotas).
    options = DaemonOptions(port=0, host=next_host(), bootstrap=bootstrap,
                            ice_addresses=["127.0.0.1"], auto_connect=auto_connect)
    daemon = Daemon(Profile(tmp / f"d{n}"), _identity(n), options)
    await daemon.start()
    return daemon


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _texts(daemon: Daemon, group_id: bytes) -> list[str]:
    assert daemon.history is not None
    return [m.text for m in daemon.history.group_history(group_id, 1000)]


def _stuck(admin: Daemon, members: list[Daemon], group_id: bytes, text: str) -> str:
    """Why members lack ``text``: their receive counters and the admin's outbox to them."""
    assert admin.history is not None
    lines = []
    for i, m in enumerate(members):
        if text in _texts(m, group_id):
            continue
        assert m.history is not None
        theirs = m.history.conversation(admin.identity.public_key)
        ours = admin.history.conversation(m.identity.public_key)
        outbox = [(e.seq, e.mailbox_index, e.mailbox_stored)
                  for e in admin.history.outbox(m.identity.public_key)]
        lines.append(f"member {i}: next_in_seq {theirs.next_in_seq}, mailbox_in_index "
                     f"{theirs.mailbox_in_index}; admin next_out_seq {ours.next_out_seq}, "
                     f"mailbox_out_index {ours.mailbox_out_index}, outbox (seq, slot, "
                     f"stored) {outbox}")
    return "\n".join(lines)


async def _poll(members: list[Daemon], sender: Daemon) -> None:
    """What each member's maintenance loop does every 15 s, done now (bounded batches)."""
    for start in range(0, len(members), 10):
        batch = members[start:start + 10]
        await asyncio.gather(*(m.messenger.poll_mailbox(sender.identity.public_key)
                               for m in batch if m.messenger is not None))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_large_group_and_removal(tmp_path: Path) -> None:
    async def scenario() -> None:
        admin = await _daemon(tmp_path, 1, [])
        assert admin.node is not None
        members: list[Daemon] = []
        try:
            for n in range(2, GROUP_SIZE + 1):
                members.append(await _daemon(tmp_path, n, [admin.node.address]))
            everyone = [admin, *members]
            await _until(lambda: all(d.joined for d in everyone), 120, "joins")
            for member in members:
                admin.contacts.put(member.identity.public_key, name=f"m{len(admin.links)}",
                                   state="accepted")
                member.contacts.put(admin.identity.public_key, name="admin", state="accepted")
                admin.link_contact(member.identity.public_key)
                member.link_contact(admin.identity.public_key)
            assert admin.messenger is not None
            started = time.monotonic()
            state = await admin.messenger.create_group(
                "hundred", [m.identity.public_key for m in members])
            assert len(state.members) == GROUP_SIZE

            def got_update() -> bool:
                return all(m.messenger is not None and m.messenger.groups.get(state.id)
                           is not None for m in members)
            def have_update() -> int:
                return sum(m.messenger is not None and m.messenger.groups.get(state.id)
                           is not None for m in members)
            while not got_update() and time.monotonic() - started < PHASE_LIMIT:
                await admin.messenger.maintenance([m.identity.public_key for m in members])
                await _poll(members, admin)
                print(f"  {time.monotonic() - started:5.0f} s: {have_update()} of "
                      f"{len(members)} members have the member list", flush=True)
            assert got_update(), f"only {have_update()} members got the member list"

            await admin.messenger.send_group_text(state.id, "hello hundred")
            deadline = time.monotonic() + PHASE_LIMIT
            while time.monotonic() < deadline:
                if all("hello hundred" in _texts(m, state.id) for m in members):
                    break
                await _poll(members, admin)
            missing = [i for i, m in enumerate(members) if "hello hundred" not in
                       _texts(m, state.id)]
            assert not missing, _stuck(admin, members, state.id, "hello hundred")
            delivered_in = time.monotonic() - started
            print(f"  {delivered_in:5.0f} s: the first message reached all members", flush=True)
            # A member who is a contact of the admin only writes to the group: the admin
            # relays it to the 98 others.
            author = members[0]
            assert author.messenger is not None
            await author.messenger.send_group_text(state.id, "from a member")
            deadline = time.monotonic() + PHASE_LIMIT
            while time.monotonic() < deadline:
                if all("from a member" in _texts(m, state.id) for m in members[1:]):
                    break
                await admin.messenger.poll_mailbox(author.identity.public_key)
                await _poll(members[1:], admin)
            missing = [i for i, m in enumerate(members[1:]) if "from a member" not in
                       _texts(m, state.id)]
            assert not missing, _stuck(admin, members[1:], state.id, "from a member")
            relayed_in = time.monotonic() - started - delivered_in
            print(f"  {time.monotonic() - started:5.0f} s: the relayed message reached all",
                  flush=True)
            # Remove one member: it learns it was removed and gets nothing later.
            removed = members[len(members) // 2]
            await admin.messenger.change_group(state.id,
                                               remove=[removed.identity.public_key])
            await admin.messenger.send_group_text(state.id, "after the removal")
            deadline = time.monotonic() + PHASE_LIMIT
            stayed = [m for m in members if m is not removed]
            while time.monotonic() < deadline:
                if all("after the removal" in _texts(m, state.id) for m in stayed) and \
                        removed.messenger is not None and \
                        removed.messenger.groups.get(state.id) is not None and \
                        not removed.messenger.groups.get(state.id).active:  # type: ignore[union-attr]
                    break
                await _poll(members, admin)
            assert all("after the removal" in _texts(m, state.id) for m in stayed), \
                _stuck(admin, stayed, state.id, "after the removal")
            assert "after the removal" not in _texts(removed, state.id)
            assert removed.history is not None
            # Not even a ciphertext of it was addressed to the removed member.
            assert admin.history is not None
            outbox_to_removed = admin.history.outbox(removed.identity.public_key)
            assert all(b"after the removal" not in e.payload for e in outbox_to_removed)
            print(f"\n{GROUP_SIZE}-member group: member list + first message at all "
                  f"{GROUP_SIZE - 1} in "
                  f"{delivered_in:.0f} s; a member's message relayed to all in "
                  f"{relayed_in:.0f} s (DHT mailboxes, in-process daemons)")
        finally:
            await asyncio.gather(*(d.stop() for d in [admin, *members]))

    asyncio.run(scenario())


def test_members_who_are_not_contacts_talk_through_the_admin(tmp_path: Path) -> None:
    """Bob and Carol are contacts of Alice (the admin) only; in Alice's group they still talk:
    Alice relays Bob's signed message to Carol. Forged, foreign and wrongly relayed group
    messages are dropped; a member who leaves is taken off the list by the admin."""
    async def scenario() -> None:
        alice = await _daemon(tmp_path, 1, [])
        assert alice.node is not None
        bob = await _daemon(tmp_path, 2, [alice.node.address])
        carol = await _daemon(tmp_path, 3, [alice.node.address])
        eve = await _daemon(tmp_path, 4, [alice.node.address])
        everyone = [alice, bob, carol, eve]
        try:
            await _until(lambda: all(d.joined for d in everyone), 60, "joins")
            for other in (bob, carol, eve):
                alice.contacts.put(other.identity.public_key, name="x", state="accepted")
                other.contacts.put(alice.identity.public_key, name="alice", state="accepted")
                alice.link_contact(other.identity.public_key)
                other.link_contact(alice.identity.public_key)
            assert alice.messenger and bob.messenger and carol.messenger and eve.messenger
            state = await alice.messenger.create_group(
                "trio", [bob.identity.public_key, carol.identity.public_key])

            async def pump(rounds: int, done: Callable[[], bool]) -> None:
                for _ in range(rounds):
                    if done():
                        return
                    for d in everyone:
                        keys = list(d.links)
                        assert d.messenger is not None
                        await d.messenger.maintenance(keys)
                        for key in keys:
                            await d.messenger.poll_mailbox(key)
                    await asyncio.sleep(0.2)

            await pump(40, lambda: bob.messenger.groups.get(state.id) is not None  # type: ignore[union-attr]
                       and carol.messenger.groups.get(state.id) is not None)  # type: ignore[union-attr]
            sent = await bob.messenger.send_group_text(state.id, "bob to the group")
            await pump(60, lambda: "bob to the group" in _texts(carol, state.id)
                       and "bob to the group" in _texts(alice, state.id))
            assert "bob to the group" in _texts(carol, state.id)
            assert "bob to the group" in _texts(alice, state.id)
            assert carol.history is not None
            relayed = next(m for m in carol.history.group_history(state.id, 10)
                           if m.text == "bob to the group")
            # Carol got it from Alice but shows Bob as its author, with Bob's timestamp.
            assert relayed.contact == alice.identity.public_key
            assert relayed.author == bob.identity.public_key
            assert relayed.sent_at == sent.sent_at
            # Bob's row is marked delivered once the admin (the hub) acknowledged his copy.
            assert bob.history is not None
            await pump(40, lambda: bob.history.message(sent.id).delivered)  # type: ignore[union-attr]
            assert bob.history.message(sent.id).delivered  # type: ignore[union-attr]
            # The admin's own message: delivered once both members acknowledged it.
            from_admin = await alice.messenger.send_group_text(state.id, "from the admin")
            assert alice.history is not None
            assert not alice.history.message(from_admin.id).delivered  # type: ignore[union-attr]
            await pump(60, lambda: alice.history.message(from_admin.id).delivered)  # type: ignore[union-attr]
            assert "from the admin" in _texts(bob, state.id)
            assert "from the admin" in _texts(carol, state.id)
            assert alice.history.message(from_admin.id).delivered  # type: ignore[union-attr]
            # Carol and Bob are still not contacts, and nothing went between them directly.
            assert carol.contacts.get(bob.identity.public_key) is None
            assert bob.history is not None
            assert not bob.history.outbox(carol.identity.public_key)

            # Eve (a contact of Alice, not in the group) forges a group update: refused.
            forged = sign_state(eve.identity, GroupState(state.id, "trio", eve.identity.public_key,
                                                         99, [eve.identity.public_key,
                                                              bob.identity.public_key]))
            with pytest.raises(RemoteProtocolError):
                open_state(forged, alice.identity.public_key)  # claims to come from Alice
            with pytest.raises(RemoteProtocolError, match="derived"):  # Alice's id, Eve's key
                open_state(forged, eve.identity.public_key)

            # The receiving rules, applied to crafted payloads as they would arrive at Carol.
            group_id, now = state.id, time.time()

            def text_payload(author: SigningIdentity, text: str, *,
                             signer: SigningIdentity | None = None) -> Payload:
                origin = os.urandom(16)
                return Payload("group_text", group_id=group_id, text=text,
                               author=author.public_key, origin_id=origin, origin_time=now,
                               signature=sign_group_text(signer or author, group_id, origin,
                                                         now, text))

            class Verdict(Exception):  # rolls the transaction back: only the verdict counts
                pass

            def accepted(sender: Daemon, payload: Payload) -> bool:
                assert carol.history is not None and carol.messenger is not None
                try:
                    with carol.history.transaction() as db:
                        group, text, _ = carol.messenger.group_chat.on_payload(
                            db, sender.identity.public_key, payload)
                        raise Verdict
                except Verdict:
                    pass
                return group is not None and text != ""

            assert accepted(alice, text_payload(bob.identity, "relayed by the admin"))
            assert accepted(bob, text_payload(bob.identity, "straight from its author"))
            # Bob claims Alice wrote it (the signature is Bob's): dropped.
            assert not accepted(alice, text_payload(alice.identity, "x", signer=bob.identity))
            # Bob relays Alice's genuine message: only the admin relays.
            assert not accepted(bob, text_payload(alice.identity, "x"))
            # Eve is not a member: neither her own message nor one "relayed" by her counts.
            assert not accepted(eve, text_payload(eve.identity, "x"))
            assert not accepted(eve, text_payload(bob.identity, "x"))
            # The text was changed after signing.
            tampered = msgspec.structs.replace(text_payload(bob.identity, "original"),
                                               text="changed")
            assert not accepted(alice, tampered)

            # Carol leaves: the admin publishes the list without her; Bob's next message
            # reaches Alice and not Carol.
            await carol.messenger.leave_group(state.id)
            await pump(60, lambda: (g := bob.messenger.groups.get(state.id)) is not None  # type: ignore[union-attr]
                       and carol.identity.public_key not in g.state.members)
            group = bob.messenger.groups.get(state.id)
            assert group is not None and carol.identity.public_key not in group.state.members
            await bob.messenger.send_group_text(state.id, "after carol left")
            await pump(60, lambda: "after carol left" in _texts(alice, state.id))
            assert "after carol left" in _texts(alice, state.id)
            assert alice.history is not None
            assert all(b"after carol left" not in e.payload
                       for e in alice.history.outbox(carol.identity.public_key))
            assert "after carol left" not in _texts(carol, state.id)
        finally:
            for daemon in everyone:
                await daemon.stop()

    asyncio.run(scenario())


def test_group_file_relayed_by_the_admin(tmp_path: Path) -> None:
    """Bob (a member who is not Carol's contact) sends a file to the group: the admin pulls
    it, checks its hash and offers its copy to Carol, who gets it whole with Bob as author."""
    async def scenario() -> None:
        options = {"auto_connect": True}
        alice = await _daemon(tmp_path, 1, [], **options)
        assert alice.node is not None
        bob = await _daemon(tmp_path, 2, [alice.node.address], **options)
        carol = await _daemon(tmp_path, 3, [alice.node.address], **options)
        extra = await _daemon(tmp_path, 4, [alice.node.address], **options)
        everyone = [alice, bob, carol, extra]
        try:
            await _until(lambda: all(d.joined for d in everyone), 60, "joins")
            for other in (bob, carol):
                alice.contacts.put(other.identity.public_key, name="x", state="accepted")
                other.contacts.put(alice.identity.public_key, name="alice", state="accepted")
                alice.link_contact(other.identity.public_key)
                other.link_contact(alice.identity.public_key)
            assert alice.messenger and bob.messenger and carol.messenger
            state = await alice.messenger.create_group(
                "trio", [bob.identity.public_key, carol.identity.public_key])
            await _until(lambda: bob.messenger.groups.get(state.id) is not None  # type: ignore[union-attr]
                         and carol.messenger.groups.get(state.id) is not None, 60,  # type: ignore[union-attr]
                         "the member list")
            source = tmp_path / "minutes.bin"
            source.write_bytes(os.urandom(300_000))
            await bob.messenger.send_group_file(state.id, source)

            def carol_has_it() -> bool:
                assert carol.messenger is not None
                return any(e.complete and e.name == "minutes.bin"
                           for e in carol.messenger.files.all())
            await _until(carol_has_it, 120, "Carol to receive the file")
            got = next(e for e in carol.messenger.files.all() if e.name == "minutes.bin")
            out = carol.messenger.files.export(got.id, tmp_path / "carol-minutes.bin")
            assert out.read_bytes() == source.read_bytes()  # relayed from the admin's store
            assert source.read_bytes()[:4096] not in Path(got.path).read_bytes()  # at rest
            assert got.group_id == state.id and got.author == bob.identity.public_key
            assert got.contact == alice.identity.public_key  # it came from the admin's copy
            assert "[file] minutes.bin (300000 bytes)" in _texts(carol, state.id)
            assert any(e.complete and e.name == "minutes.bin"
                       for e in alice.messenger.files.all())
            # A member who is not the admin cannot make Carol fetch a file "from" someone
            # else: an offer claiming another author is dropped (checked directly).
            assert carol.messenger.group_chat.file_origin(
                bob.identity.public_key, Payload("file", group_id=state.id,
                                                 author=alice.identity.public_key)) == (
                None, None)
        finally:
            await asyncio.gather(*(d.stop() for d in everyone))

    asyncio.run(scenario())


# --- review items 9, 10, 12 on one daemon (payloads arrive as they would from the network) ---

class _Session:
    """Stands for the ratchet a payload came through (no session is stored)."""

    def to_json(self) -> None:
        return None


def _arrive(daemon: Daemon, sender: SigningIdentity, payload: Payload) -> None:
    """``payload`` arrives from ``sender`` in order, as if decrypted from its next frame."""
    assert daemon.messenger is not None and daemon.history is not None
    key = sender.public_key
    seq = daemon.history.conversation(key).next_in_seq
    payload = msgspec.structs.replace(payload, seq=seq, id=os.urandom(16),
                                      sent_at=time.time())
    daemon.messenger._store_incoming(key, payload, _Session(), False)  # type: ignore[arg-type]


def _invite(admin: SigningIdentity, name: str, members: list[SigningIdentity]) -> GroupState:
    return new_group(admin.public_key, name, [m.public_key for m in members], os.urandom(16))


def _update(admin: SigningIdentity, state: GroupState) -> Payload:
    return Payload("group_update", group=sign_state(admin, state))


def _one_daemon(tmp_path: Path, test: Callable[[Daemon], Any]) -> None:
    async def scenario() -> None:
        daemon = await _daemon(tmp_path, 9, [])
        try:
            await test(daemon)
        finally:
            await daemon.stop()
    asyncio.run(scenario())


ALICE, CAROL, MALLORY = _identity(101), _identity(102), _identity(103)


def test_a_group_id_cannot_be_squatted_by_a_member() -> None:
    """Item 9: Mallory knows Alice's group id and signs a state for it with herself as
    admin: refused (the id is derived from the admin's key), with or without the real one
    known."""
    bob = _identity(104)
    real = signed = _invite(ALICE, "desk", [MALLORY, bob])
    assert open_state(sign_state(ALICE, signed), ALICE.public_key).id == real.id
    squat = GroupState(real.id, "desk", MALLORY.public_key, 5,
                       [MALLORY.public_key, bob.public_key], salt=os.urandom(16))
    with pytest.raises(RemoteProtocolError, match="derived"):
        open_state(sign_state(MALLORY, squat), MALLORY.public_key)
    with pytest.raises(RemoteProtocolError, match="another admin"):
        open_state(sign_state(MALLORY, squat), MALLORY.public_key, known=real)
    # Reusing Alice's salt does not help either: the id comes from the admin's key too.
    copied = msgspec.structs.replace(squat, salt=real.salt)
    with pytest.raises(RemoteProtocolError, match="derived"):
        open_state(sign_state(MALLORY, copied), MALLORY.public_key)


def test_a_forged_first_state_does_not_capture_an_invitee(tmp_path: Path) -> None:
    """Item 9: Mallory's forged state for Alice's group id reaches the invitee first; it is
    refused, and Alice's real invitation is then accepted with Alice as admin."""
    async def test(bob: Daemon) -> None:
        assert bob.messenger is not None
        me = SigningIdentity.from_seed(_identity(9).seed)
        real = _invite(ALICE, "desk", [MALLORY, me])
        squat = GroupState(real.id, "desk", MALLORY.public_key, 9,
                           [MALLORY.public_key, me.public_key], salt=os.urandom(16))
        _arrive(bob, MALLORY, _update(MALLORY, squat))
        assert bob.messenger.groups.get(real.id) is None
        _arrive(bob, ALICE, _update(ALICE, real))
        group = bob.messenger.groups.get(real.id)
        assert group is not None and group.state.admin == ALICE.public_key
        # A later state for the known id signed by Mallory: refused, Alice stays admin.
        _arrive(bob, MALLORY, _update(MALLORY, squat))
        group = bob.messenger.groups.get(real.id)
        assert group is not None and group.state.admin == ALICE.public_key
    _one_daemon(tmp_path, test)


def test_group_history_and_receive_show_the_author_not_the_admin(tmp_path: Path) -> None:
    """Item 9: Carol's message relayed by Alice (the admin) shows Carol as author and sender
    in history and receive, with the group marked; notices and texts are typed (item 10)."""
    async def test(bob: Daemon) -> None:
        assert bob.messenger is not None
        bob.contacts.put(ALICE.public_key, name="alice", state="accepted")
        bob.contacts.put(CAROL.public_key, name="carol", state="accepted")
        state = _invite(ALICE, "desk", [CAROL, _identity(9)])
        _arrive(bob, ALICE, _update(ALICE, state))
        origin, now = os.urandom(16), time.time()
        _arrive(bob, ALICE, Payload(
            "group_text", group_id=state.id, text="carol's words",
            author=CAROL.public_key, origin_id=origin, origin_time=now,
            signature=sign_group_text(CAROL, state.id, origin, now, "carol's words")))
        _arrive(bob, ALICE, Payload("group_text", group_id=state.id, text="alice's words",
                                    author=ALICE.public_key, origin_id=origin,
                                    origin_time=now, signature=sign_group_text(
                                        ALICE, state.id, origin, now, "alice's words")))
        rows = await bob.api.call("message.history", {"contact": "desk"})
        by_text = {r["text"]: r for r in rows}
        carol_id, alice_id = encode_user_id(CAROL.public_key), encode_user_id(ALICE.public_key)
        words = by_text["carol's words"]
        assert (words["author"], words["from"], words["author_name"]) == (
            carol_id, carol_id, "carol")
        assert (words["group"], words["group_name"], words["kind"]) == (
            state.id.hex(), "desk", "text")
        assert by_text["alice's words"]["author"] == alice_id
        notice = next(r for r in rows if r["text"].startswith("[group]"))
        assert notice["kind"] == "notice" and notice["author"] == alice_id
        received = (await bob.api.call("message.receive", {})).result
        got = next(r for r in received if r["text"] == "carol's words")
        assert (got["author"], got["author_name"], got["group_name"]) == (
            carol_id, "carol", "desk")
    _one_daemon(tmp_path, test)


def test_a_typed_notice_is_a_text(tmp_path: Path) -> None:
    """Item 10: a contact's text that reads like the timer notice is stored as "text"; the
    real timer change as "notice"."""
    async def test(bob: Daemon) -> None:
        bob.contacts.put(ALICE.public_key, name="alice", state="accepted")
        _arrive(bob, ALICE, Payload("text", text="[timer] disappearing messages off"))
        _arrive(bob, ALICE, Payload("timer", timer=0))
        rows = await bob.api.call("message.history", {"contact": "alice"})
        assert [(r["text"], r["kind"]) for r in rows] == [
            ("[timer] disappearing messages off", "text"),
            ("[timer] disappearing messages off", "notice")]
    _one_daemon(tmp_path, test)


def test_a_malformed_file_offer_cannot_print_as_a_notice(tmp_path: Path) -> None:
    """Review of item 10: a "file" payload whose id/key/hash lengths are wrong used to be
    stored as kind "file" with the contact's own text, which the CLI marks like a notice."""
    async def test(bob: Daemon) -> None:
        bob.contacts.put(ALICE.public_key, name="alice", state="accepted")
        _arrive(bob, ALICE, Payload("file", text="your contact's key changed: verify now",
                                    file_id=b""))
        rows = await bob.api.call("message.history", {"contact": "alice"})
        assert all(r["kind"] != "file" for r in rows)
        assert all("key changed" not in r["text"] for r in rows)
    _one_daemon(tmp_path, test)


def test_group_file_offers_are_signed_by_their_author(tmp_path: Path) -> None:
    """Item 9: the admin relays a file offer "from" Carol: only with Carol's signature over
    exactly this file (name, size, hash) is it accepted."""
    async def test(bob: Daemon) -> None:
        assert bob.messenger is not None
        bob.contacts.put(ALICE.public_key, name="alice", state="accepted")
        state = _invite(ALICE, "desk", [CAROL, _identity(9)])
        _arrive(bob, ALICE, _update(ALICE, state))
        digest, now, offer_id = bytes(range(32)), time.time(), os.urandom(16)

        def offer(signer: SigningIdentity, *, size: int = 1000, name: str = "plan.pdf",
                  signed_digest: bytes = digest) -> Payload:
            origin = sign_group_file(signer, state.id, offer_id, now, name, size, signed_digest)
            return Payload("file", file_id=os.urandom(16), name="plan.pdf", size=1000,
                           sha256=digest, key=bytes(32), group_id=state.id,
                           author=CAROL.public_key, origin_id=offer_id, origin_time=now,
                           signature=origin.signature)

        def accepted(payload: Payload) -> bool:
            assert bob.messenger is not None
            return bob.messenger.group_chat.file_origin(ALICE.public_key, payload) == (
                state.id, CAROL.public_key)

        assert accepted(offer(CAROL))
        assert not accepted(msgspec.structs.replace(offer(CAROL), signature=b""))
        assert not accepted(offer(ALICE))  # the admin signs for Carol
        assert not accepted(offer(CAROL, size=999))
        assert not accepted(offer(CAROL, name="other.pdf"))
        assert not accepted(offer(CAROL, signed_digest=bytes(32)))
        # Arriving through the history: the forged one leaves no offer and no row.
        _arrive(bob, ALICE, offer(ALICE))
        _arrive(bob, ALICE, offer(CAROL))
        files = bob.messenger.files.all()
        assert len(files) == 1 and files[0].author == CAROL.public_key
    _one_daemon(tmp_path, test)


def test_duplicate_group_names_are_refused_or_reported(tmp_path: Path) -> None:
    """Item 12: `group create` refuses a name already used by one of our groups (or a
    contact); a name shared by two groups others made is reported as such, not as
    "no contact named"."""
    async def test(alice: Daemon) -> None:
        alice.contacts.put(CAROL.public_key, name="carol", state="accepted")
        alice.contacts.put(MALLORY.public_key, name="mallory", state="accepted")
        created = await alice.api.call("group.create", {"name": "desk", "members": ["carol"]})
        assert created["members"]
        with pytest.raises(RpcError, match="already in a group named 'desk'"):
            await alice.api.call("group.create", {"name": "Desk", "members": ["carol"]})
        with pytest.raises(RpcError, match="a contact is named 'carol'"):
            await alice.api.call("group.create", {"name": "carol", "members": ["mallory"]})
        me = _identity(9)
        for admin in (CAROL, MALLORY):  # two others invite us to groups named "team"
            _arrive(alice, admin, _update(admin, _invite(admin, "team", [me])))
        with pytest.raises(RpcError, match="several groups are named 'team'"):
            await alice.api.call("message.send", {"to": "team", "text": "hi"})
        with pytest.raises(RpcError, match="several groups are named 'team'"):
            await alice.api.call("message.history", {"contact": "team"})
        with pytest.raises(RpcError, match="no contact named 'nobody'"):
            await alice.api.call("message.send", {"to": "nobody", "text": "hi"})
    _one_daemon(tmp_path, test)
