"""Groups: a signed member list, messages fanned out over the pairwise ratchets.

Theory of operation (Signal's original "private groups", client-side fan-out):

* A group is ``GroupState(id, name, admin, version, members)`` signed by the admin's identity
  key. The admin creates it, invites and removes members; every change is a new version sent
  to every current and affected member as an ordinary sequenced message over the pairwise
  ratchet (so it is delivered exactly once, online or through the DHT mailbox). A member
  accepts a state only if the admin's signature verifies, the admin is the one who sent it
  and the version is newer than what it has.
* The admin is the group's hub. A member's group message is signed by its author's identity
  key (over group id, message id, time and text) and sent to the admin over their pairwise
  Double Ratchet; the admin stores it and, in the same transaction, queues a copy (same
  author, same signature) to every other member over each pair's own ratchet. The admin's own
  messages go straight to every member. A receiver accepts a group message only if its author
  is in the current member list, the author's signature verifies, and it came from the author
  or from the admin. So every member holds one session (with the admin) instead of n - 1, and
  the DHT carries O(n) prekey bundles and mailboxes per group instead of O(n^2). The price:
  while the admin is offline, members' messages wait in the admin's mailbox (nothing is lost,
  delivery is late), and the admin sees who sends what when (it is a member and reads the
  group anyway); it cannot forge another member's message.
* A group's id is ``BLAKE2b(admin key || salt)[:16]`` with the salt in the signed state, and
  every state received is checked against it: a member who knows a group's id cannot get an
  invitee to store a forged state under that id with itself as admin (it would need a
  second preimage), and a state for a known id signed by another admin is refused.
* A group file offer is signed by its author like a message (over group id, offer id, time,
  name, size and SHA-256); the admin relays the signature with its own copy, so it can serve
  a member's file but cannot attribute a file to someone who did not offer it.
* A removed member gets the new member list and no later message: nothing is ever encrypted
  to it again (forward secrecy for the group follows from the pairwise ratchets). A member
  who leaves tells the admin, who publishes the list without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from dhtchat.app.jsontypes import JsonObject
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id, verify_signature
from dhtchat.core.ids import blake2b_256
from dhtchat.store.groups import GroupTable
from dhtchat.store.history import History, Transaction

MAX_MEMBERS: Final = 1000
_SIG_DOMAIN: Final = b"dhtchat/group-state/v1"
_TEXT_DOMAIN: Final = b"dhtchat/group-text/v1"
_FILE_DOMAIN: Final = b"dhtchat/group-file/v1"
_ID_DOMAIN: Final = b"dhtchat/group-id/v1"
SALT_BYTES: Final = 16


class GroupState(msgspec.Struct, array_like=True, frozen=True):
    """One version of a group's membership, signed by its admin."""

    id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    name: Annotated[str, msgspec.Meta(max_length=64)]
    admin: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    version: Annotated[int, msgspec.Meta(ge=1, le=2**62)]
    members: Annotated[list[Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]],
                       msgspec.Meta(max_length=MAX_MEMBERS)]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)] = b""
    # The id is derived from the admin's key and this salt (empty: a group from before).
    salt: Annotated[bytes, msgspec.Meta(max_length=SALT_BYTES)] = b""

    def signed_bytes(self) -> bytes:
        """Bytes covered by the admin's signature."""
        return _SIG_DOMAIN + _encoder.encode(
            (self.id, self.name, self.admin, self.version, sorted(self.members)))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GroupState)


def group_id_for(admin: bytes, salt: bytes) -> bytes:
    """The id of the group ``admin`` creates with ``salt``."""
    return blake2b_256(_ID_DOMAIN, admin, salt)[:16]


def new_group(admin: bytes, name: str, members: list[bytes], salt: bytes) -> GroupState:
    """Version 1 of a group (unsigned), its id derived from the admin's key and ``salt``
    (``SALT_BYTES`` random bytes from the caller)."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"the salt is {SALT_BYTES} bytes")
    return GroupState(group_id_for(admin, salt), name, admin, 1, sorted({admin, *members}),
                      salt=salt)


def signed_state(admin: SigningIdentity, state: GroupState) -> GroupState:
    """``state`` as published by ``admin``: its key as admin, members sorted, signed."""
    unsigned = msgspec.structs.replace(state, admin=admin.public_key,
                                       members=sorted(set(state.members)), signature=b"")
    return msgspec.structs.replace(unsigned, signature=admin.sign(unsigned.signed_bytes()))


def encode_state(state: GroupState) -> bytes:
    """Wire (and stored) form of a state."""
    return _encoder.encode(state)


def sign_state(admin: SigningIdentity, state: GroupState) -> bytes:
    """Serialize ``state`` with the admin's signature."""
    return encode_state(signed_state(admin, state))


def claimed_group_id(data: bytes) -> bytes:
    """The id a serialized state claims, unverified (b"" if it is not a state)."""
    try:
        return _decoder.decode(data).id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return b""


def open_state(data: bytes, sender: bytes, known: GroupState | None = None) -> GroupState:
    """Decode and verify a group state received from ``sender`` (who must be its admin);
    ``known``: the state stored under the same id, if any. The id must be derived from the
    admin's key (only a group from before derived ids, already stored with the same admin,
    may go on without), and a known id cannot change admin."""
    try:
        state = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed group state: {exc}") from None
    if state.admin != sender:
        raise RemoteProtocolError("group state not sent by the group's admin")
    if state.admin not in state.members:
        raise RemoteProtocolError("the admin must be a member")
    if known is not None and known.admin != state.admin:
        raise RemoteProtocolError("a state for a known group signed by another admin")
    legacy = known is not None and not known.salt and not state.salt
    if not legacy and (len(state.salt) != SALT_BYTES
                       or group_id_for(state.admin, state.salt) != state.id):
        raise RemoteProtocolError("group id not derived from its admin's key")
    if not verify_signature(state.admin, state.signed_bytes(), state.signature):
        raise RemoteProtocolError("group state signature is not the admin's")
    return state


def _text_bytes(group_id: bytes, message_id: bytes, sent_at: float, text: str) -> bytes:
    return _TEXT_DOMAIN + _encoder.encode((group_id, message_id, sent_at, text))


def sign_group_text(author: SigningIdentity, group_id: bytes, message_id: bytes,
                    sent_at: float, text: str) -> bytes:
    """The author's signature over one group message (the admin relays it unchanged)."""
    return author.sign(_text_bytes(group_id, message_id, sent_at, text))


def verify_group_text(author: bytes, group_id: bytes, message_id: bytes, sent_at: float,
                      text: str, signature: bytes) -> bool:
    """Whether ``signature`` is ``author``'s over this group message."""
    return len(author) == 32 and verify_signature(
        author, _text_bytes(group_id, message_id, sent_at, text), signature)


class FileOrigin(msgspec.Struct, array_like=True, frozen=True):
    """Who offered a group file, with the author's signature (kept by the admin to relay)."""

    author: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    origin_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    origin_time: float
    name: Annotated[str, msgspec.Meta(max_length=255)]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)]

    def encode(self) -> bytes:
        """Stored form."""
        return _encoder.encode(self)


_origin_decoder = msgspec.msgpack.Decoder(FileOrigin)


def decode_file_origin(data: bytes) -> FileOrigin:
    """The stored form back (written by this daemon)."""
    return _origin_decoder.decode(data)


def _file_bytes(group_id: bytes, origin: FileOrigin, size: int, digest: bytes) -> bytes:
    return _FILE_DOMAIN + _encoder.encode(
        (group_id, origin.author, origin.origin_id, origin.origin_time, origin.name, size,
         digest))


def sign_group_file(author: SigningIdentity, group_id: bytes, origin_id: bytes,
                    origin_time: float, name: str, size: int, digest: bytes) -> FileOrigin:
    """The author's signed offer of a file to a group."""
    unsigned = FileOrigin(author.public_key, origin_id, origin_time, name, b"")
    return msgspec.structs.replace(
        unsigned, signature=author.sign(_file_bytes(group_id, unsigned, size, digest)))


def verify_group_file(group_id: bytes, origin: FileOrigin, size: int, digest: bytes) -> bool:
    """Whether ``origin.signature`` is its author's over this offer."""
    return len(origin.author) == 32 and verify_signature(
        origin.author, _file_bytes(group_id, origin, size, digest), origin.signature)


@dataclass(frozen=True)
class Group:
    """A group as this daemon knows it."""

    state: GroupState
    active: bool  # False once we left or were removed

    @property
    def id(self) -> bytes:
        """The group id."""
        return self.state.id

    def as_json(self, me: bytes) -> JsonObject:
        """API form."""
        return {
            "id": self.state.id.hex(),
            "name": self.state.name,
            "admin": encode_user_id(self.state.admin),
            "version": self.state.version,
            "members": [encode_user_id(m) for m in self.state.members],
            "i_am_admin": self.state.admin == me,
            "active": self.active,
        }


class GroupStore:
    """Groups in the history database (:class:`dhtchat.store.groups.GroupTable`), decoded."""

    def __init__(self, history: History) -> None:
        self._table = GroupTable(history)

    def get(self, group_id: bytes) -> Group | None:
        """A group by id."""
        row = self._table.get(group_id)
        return Group(_decoder.decode(row.state), row.active) if row else None

    def all(self) -> list[Group]:
        """Every group."""
        return [Group(_decoder.decode(row.state), row.active) for row in self._table.all()]

    def by_name(self, name: str) -> list[Group]:
        """Groups with this name (case-insensitive)."""
        return [g for g in self.all() if g.state.name.lower() == name.lower()]

    def save(self, db: Transaction, state: GroupState, me: bytes) -> None:
        """Store a state inside a transaction (``active`` follows membership)."""
        self._table.save(db, state.id, name=state.name, admin=state.admin,
                         version=state.version, members=state.members,
                         state=_encoder.encode(state), active=me in state.members)

    def deactivate(self, db: Transaction, group_id: bytes) -> None:
        """We left."""
        self._table.deactivate(db, group_id)
