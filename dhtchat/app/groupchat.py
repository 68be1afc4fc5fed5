"""Group chat on top of the 1:1 streams: member lists, relayed messages and files.

Theory of operation (design sec. 6, "Groups"; the signed structures are in
:mod:`dhtchat.app.groups`): a group has one admin, the hub. Its signed member list
(:class:`GroupState`, versioned) travels as a ``group_update`` payload in every member's 1:1
stream. A member sends a group message or file (signed by itself) to the admin only; the
admin checks the author's signature and relays it unchanged to every other member, queued in
the same transaction that stored it (:meth:`Streams.enqueue_in`), so a crash cannot lose a
relay. A member's leave goes to the admin, which publishes the list without it. Outgoing
group messages have one history row; each member's copy is tracked in ``group_copies`` until
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

import msgspec

from dhtchat.app.files import FileTransfers, sha256_file
from dhtchat.app.groups import (
    SALT_BYTES,
    FileOrigin,
    GroupState,
    GroupStore,
    claimed_group_id,
    decode_file_origin,
    encode_state,
    new_group,
    open_state,
    sign_group_file,
    sign_group_text,
    signed_state,
    verify_group_file,
    verify_group_text,
)
from dhtchat.app.stream import Streams
from dhtchat.core.errors import LocalProtocolError, RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.messaging.payload import MAX_TEXT_BYTES, Payload
from dhtchat.store.files import FileEntry
from dhtchat.store.history import History, StoredMessage, Transaction

log = logging.getLogger("dhtchat.messages")


class GroupChat:
    """The groups of one daemon: what arrives for them, and what we send to them."""

    def __init__(self, identity: SigningIdentity, history: History, groups: GroupStore,
                 stream: Streams, files: FileTransfers) -> None:
        """``stream`` queues the payloads (in the caller's transaction when there is one);
        ``files`` sends group files."""
        self.identity = identity
        self.history = history
        self.groups = groups
        self.stream = stream
        self.files = files

    def file_offer(self, db: Transaction, sender: bytes,
                   payload: Payload) -> tuple[bytes | None, bytes | None]:
        """A group file offer arrived (inside its transaction): the group (None: refused,
        stored hidden) and the author if not the sender. As the admin, the author's signed
        offer is kept to relay the file once it is here."""
        group_id, file_author = self.file_origin(sender, payload)
        author = file_author if file_author != sender else None
        if group_id is not None and author is None and self.is_admin(group_id):
            self.history.set_meta(db, _origin_meta(payload.file_id),
                                  _file_origin(sender, payload).encode())
        return group_id, author

    async def send_group_file(self, group_id: bytes, path: Path) -> StoredMessage:
        """Offer a file to a group: to every member if we are the admin, else to the admin,
        who offers its copy to the others once it has it (as for group messages)."""
        group = self.groups.get(group_id)
        me = self.identity.public_key
        if group is None or not group.active:
            raise LocalProtocolError("not a member of that group")
        path = path.expanduser().resolve()
        if not path.is_file():
            raise LocalProtocolError(f"{path} is not a readable file")
        digest = await asyncio.to_thread(sha256_file, path)
        size = path.stat().st_size
        targets = [m for m in group.state.members if m != me] if group.state.admin == me \
            else [group.state.admin]
        message_id, now = secrets.token_bytes(16), time.time()
        origin = sign_group_file(self.identity, group_id, message_id, now, path.name, size,
                                 digest)
        with self.history.transaction() as db:
            db.add_group_outgoing(message_id, group_id, now, file_text(path.name, size),
                                  kind="file")
        for member in targets:
            await self.files.send(member, path, group_id=group_id, digest=digest,
                                  origin=origin)
        stored = self.history.message(message_id)
        assert stored is not None
        return stored

    async def relay_group_file(self, entry: FileEntry, path: Path) -> None:
        """As a group's admin, a member's file for the group arrived whole: offer our copy
        to every other member."""
        assert entry.group_id is not None
        group = self.groups.get(entry.group_id)
        me = self.identity.public_key
        if group is None or not group.active or group.state.admin != me:
            return
        stored = self.history.get_meta(_origin_meta(entry.id))
        if stored is None:  # an offer from before signed group files: not relayed
            log.warning("not relaying group file %s: its offer carries no author signature",
                        entry.name)
            return
        origin = decode_file_origin(stored)
        for member in group.state.members:
            if member not in (me, entry.contact):
                await self.files.send(member, path, group_id=group.id, author=entry.contact,
                                      name=entry.name, source=entry, origin=origin)

    def on_payload(self, db: Transaction, sender: bytes,
                          payload: Payload) -> tuple[bytes | None, str, bytes | None]:
        """Apply a group payload inside the message's transaction; returns the group id, the
        history text ("" to keep it out of the conversation) and the author when the admin
        relayed someone else's message. As the admin, relays and membership changes are
        queued in the same transaction, so a crash cannot lose them."""
        me = self.identity.public_key
        if payload.kind == "group_update":
            try:
                claimed = self.groups.get(claimed_group_id(payload.group))
                state = open_state(payload.group, sender,
                                   claimed.state if claimed is not None else None)
            except RemoteProtocolError as exc:
                log.warning("refused a group update: %s", exc)
                return None, "", None
            current = self.groups.get(state.id)
            if current is not None and current.state.version >= state.version:
                return state.id, "", None  # stale: ignore
            self.groups.save(db, state, me)
            if me not in state.members:
                return state.id, f"[group] you were removed from {state.name}", None
            return state.id, f"[group] {state.name}: {len(state.members)} members", None
        group = self.groups.get(payload.group_id)
        if group is None or not group.active or sender not in group.state.members:
            log.warning("dropped a %s for a group the sender is not in", payload.kind)
            return None, "", None
        admin = group.state.admin
        if payload.kind == "group_leave":
            if admin != me:
                return None, "", None  # only the admin acts on it (a new member list)
            members = [m for m in group.state.members if m != sender]
            state = msgspec.structs.replace(group.state, version=group.state.version + 1,
                                            members=members)
            self._publish_group_in(db, state, set(members) - {me})
            return group.id, f"[group] {encode_user_id(sender)[:12]} left {group.state.name}", \
                None
        author = payload.author
        if author not in group.state.members or author == me:
            log.warning("dropped a group message whose author is not a member")
            return None, "", None
        if sender not in (author, admin):
            log.warning("dropped a group message relayed by a member who is not the admin")
            return None, "", None
        if not verify_group_text(author, group.id, payload.origin_id, payload.origin_time,
                                 payload.text, payload.signature):
            log.warning("dropped a group message with a bad author signature")
            return None, "", None
        if admin == me and sender == author:  # we are the hub: relay it to everyone else
            relay = Payload("group_text", group_id=group.id, text=payload.text,
                            author=author, origin_id=payload.origin_id,
                            origin_time=payload.origin_time, signature=payload.signature)
            now = time.time()
            for member in group.state.members:
                if member not in (me, author):
                    self.stream.enqueue_in(db, member, relay, secrets.token_bytes(16), now)
                    self.stream.flush_after_commit(member)
        return group.id, payload.text, author if author != sender else None

    def file_origin(self, sender: bytes,
                           payload: Payload) -> tuple[bytes | None, bytes | None]:
        """The group and author of a group file offer, or (None, None) if the sender may
        not offer it there (the same rules as group messages: a member of the current
        list, from the author or the admin, signed by the author)."""
        group = self.groups.get(payload.group_id)
        me = self.identity.public_key
        author = payload.author or sender
        if group is None or not group.active or sender not in group.state.members \
                or author not in group.state.members or author == me \
                or sender not in (author, group.state.admin):
            log.warning("dropped a file offer for a group the sender may not write to")
            return None, None
        if len(payload.origin_id) != 16 or not verify_group_file(
                group.id, _file_origin(sender, payload), payload.size, payload.sha256):
            log.warning("dropped a group file offer without its author's signature")
            return None, None
        return group.id, author

    def is_admin(self, group_id: bytes) -> bool:
        group = self.groups.get(group_id)
        return group is not None and group.state.admin == self.identity.public_key

    async def create_group(self, name: str, members: list[bytes]) -> GroupState:
        """Create a group we administer and send its member list to everyone."""
        state = new_group(self.identity.public_key, name, members,
                          secrets.token_bytes(SALT_BYTES))
        return self._publish_group(state, notify=set(members))

    async def change_group(self, group_id: bytes, *, add: list[bytes] | None = None,
                           remove: list[bytes] | None = None) -> GroupState:
        """Admin: invite or remove members (a new signed version to everyone concerned)."""
        group = self.groups.get(group_id)
        me = self.identity.public_key
        if group is None or group.state.admin != me:
            raise LocalProtocolError("only the group's admin can change its members")
        members = set(group.state.members) | set(add or []) - set(remove or [])
        members -= set(remove or [])
        if me not in members:
            raise LocalProtocolError("the admin cannot remove itself; leave instead")
        state = msgspec.structs.replace(group.state, version=group.state.version + 1,
                                        members=sorted(members))
        notify = (set(group.state.members) | members) - {me}
        return self._publish_group(state, notify=notify)

    def _publish_group(self, state: GroupState, notify: set[bytes]) -> GroupState:
        with self.stream.transaction() as db:
            state = self._publish_group_in(db, state, notify)
        self.stream.flush_queued()
        return state

    def _publish_group_in(self, db: Transaction, state: GroupState,
                          notify: set[bytes]) -> GroupState:
        """Sign and store a new member list and queue it to ``notify``, in one transaction."""
        state = signed_state(self.identity, state)
        signed = encode_state(state)
        self.groups.save(db, state, self.identity.public_key)
        now = time.time()
        for member in sorted(notify):
            self.stream.enqueue_in(db, member, Payload("group_update", group=signed),
                             secrets.token_bytes(16), now)
            self.stream.flush_after_commit(member)
        return state

    async def send_group_text(self, group_id: bytes, text: str) -> StoredMessage:
        """Send a message to the group: signed by us, to every member if we are the admin,
        else to the admin, who relays it (one transaction either way)."""
        group = self.groups.get(group_id)
        me = self.identity.public_key
        if group is None or not group.active:
            raise LocalProtocolError("not a member of that group")
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise LocalProtocolError(f"a message holds at most {MAX_TEXT_BYTES} bytes")
        message_id, now = secrets.token_bytes(16), time.time()
        payload = Payload("group_text", group_id=group_id, text=text, author=me,
                          origin_id=message_id, origin_time=now,
                          signature=sign_group_text(self.identity, group_id, message_id, now,
                                                    text))
        targets = [m for m in group.state.members if m != me] if group.state.admin == me \
            else [group.state.admin]
        with self.stream.transaction() as db:
            db.add_group_outgoing(message_id, group_id, now, text)
            for member in targets:
                seq = self.stream.enqueue_in(db, member, payload, secrets.token_bytes(16), now)
                # The group row is marked delivered when the last copy is acknowledged.
                db.add_group_copy(member, seq, message_id)
                self.stream.flush_after_commit(member)
        self.stream.flush_queued()
        stored = self.history.message(message_id)
        assert stored is not None
        return stored

    async def leave_group(self, group_id: bytes) -> None:
        """Tell the admin we leave (it publishes the list without us), and stop accepting
        the group's messages."""
        group = self.groups.get(group_id)
        if group is None or not group.active:
            raise LocalProtocolError("not a member of that group")
        me = self.identity.public_key
        if group.state.admin == me:
            raise LocalProtocolError("the admin cannot leave its group")
        with self.stream.transaction() as db:
            self.stream.enqueue_in(db, group.state.admin, Payload("group_leave", group_id=group_id),
                             secrets.token_bytes(16), time.time())
            self.stream.flush_after_commit(group.state.admin)
            self.groups.deactivate(db, group_id)
        self.stream.flush_queued()


def file_text(name: str, size: int) -> str:
    """The history text of a file offer."""
    return f"[file] {name} ({size} bytes)"


def _origin_meta(file_id: bytes) -> str:
    return "group-file:" + file_id.hex()


def _file_origin(sender: bytes, payload: Payload) -> FileOrigin:
    """The signed origin a group file offer claims (``author`` empty: the sender)."""
    return FileOrigin(payload.author or sender, payload.origin_id, payload.origin_time,
                      payload.name, payload.signature)
