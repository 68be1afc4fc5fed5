"""Groups: a signed member list, messages fanned out over the pairwise ratchets.

Theory of operation (Signal's original "private groups", client-side fan-out):

* A group is ``GroupState(id, name, admin, version, members)`` signed by the admin's identity
  key. The admin creates it, invites and removes members; every change is a new version sent
  to every current and affected member as an ordinary sequenced message over the pairwise
  ratchet (so it is delivered exactly once, online or through the DHT mailbox). A member
  accepts a state only if the admin's signature verifies, the admin is the one who sent it
  and the version is newer than what it has.
* A group message is sent separately to every other member over the pair's own Double
  Ratchet session, tagged with the group id. A receiver accepts it only if the sender is in
  its current member list. A removed member gets the new member list and no later message:
  it is never encrypted to it (forward secrecy for the group follows from the pairwise
  ratchets).
* Members that are not each other's contacts talk as *group peers*: the pair secret exists for
  any two keys (X25519), so they use the same pair channels (prekeys, mailbox) as contacts, but
  only group messages are accepted from them, never 1:1 messages, presence or connection
  offers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id, verify_signature

MAX_MEMBERS: Final = 1000
_SIG_DOMAIN: Final = b"dhtchat/group-state/v1"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS groups (
    id BLOB PRIMARY KEY, name TEXT NOT NULL, admin BLOB NOT NULL, version INTEGER NOT NULL,
    members TEXT NOT NULL, state BLOB NOT NULL, active INTEGER NOT NULL DEFAULT 1);
"""


class GroupState(msgspec.Struct, array_like=True, frozen=True):
    """One version of a group's membership, signed by its admin."""

    id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    name: Annotated[str, msgspec.Meta(max_length=64)]
    admin: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    version: Annotated[int, msgspec.Meta(ge=1, le=2**62)]
    members: Annotated[list[Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]],
                       msgspec.Meta(max_length=MAX_MEMBERS)]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)] = b""

    def signed_bytes(self) -> bytes:
        """Bytes covered by the admin's signature."""
        return _SIG_DOMAIN + _encoder.encode(
            (self.id, self.name, self.admin, self.version, sorted(self.members)))


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(GroupState)


def sign_state(admin: SigningIdentity, state: GroupState) -> bytes:
    """Serialize ``state`` with the admin's signature."""
    unsigned = msgspec.structs.replace(state, admin=admin.public_key,
                                       members=sorted(set(state.members)), signature=b"")
    return _encoder.encode(msgspec.structs.replace(
        unsigned, signature=admin.sign(unsigned.signed_bytes())))


def open_state(data: bytes, sender: bytes) -> GroupState:
    """Decode and verify a group state received from ``sender`` (who must be its admin)."""
    try:
        state = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed group state: {exc}") from None
    if state.admin != sender:
        raise RemoteProtocolError("group state not sent by the group's admin")
    if state.admin not in state.members:
        raise RemoteProtocolError("the admin must be a member")
    if not verify_signature(state.admin, state.signed_bytes(), state.signature):
        raise RemoteProtocolError("group state signature is not the admin's")
    return state


@dataclass(frozen=True)
class Group:
    """A group as this daemon knows it."""

    state: GroupState
    active: bool  # False once we left or were removed

    @property
    def id(self) -> bytes:
        """The group id."""
        return self.state.id

    def as_json(self, me: bytes) -> dict[str, Any]:
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
    """Groups in the history database."""

    def __init__(self, db: Any) -> None:
        self._db = db
        db.execute(_SCHEMA)

    def get(self, group_id: bytes) -> Group | None:
        """A group by id."""
        row = self._db.execute("SELECT state, active FROM groups WHERE id = ?",
                               (group_id,)).fetchone()
        return Group(_decoder.decode(bytes(row[0])), bool(row[1])) if row else None

    def all(self) -> list[Group]:
        """Every group."""
        return [Group(_decoder.decode(bytes(s)), bool(a))
                for s, a in self._db.execute("SELECT state, active FROM groups ORDER BY name")]

    def by_name(self, name: str) -> list[Group]:
        """Groups with this name (case-insensitive)."""
        return [g for g in self.all() if g.state.name.lower() == name.lower()]

    def save(self, db: Any, state: GroupState, me: bytes) -> None:
        """Store a state inside a transaction (``active`` follows membership)."""
        db.execute("INSERT OR REPLACE INTO groups VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (state.id, state.name, state.admin, state.version,
                    json.dumps([m.hex() for m in state.members]), _encoder.encode(state),
                    int(me in state.members)))

    def deactivate(self, db: Any, group_id: bytes) -> None:
        """We left."""
        db.execute("UPDATE groups SET active = 0 WHERE id = ?", (group_id,))

    def peers(self, me: bytes) -> set[bytes]:
        """Every member of an active group we are in, except ourselves."""
        out: set[bytes] = set()
        for group in self.all():
            if group.active:
                out.update(m for m in group.state.members if m != me)
        return out
