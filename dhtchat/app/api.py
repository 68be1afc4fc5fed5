"""The daemon's JSON-RPC methods (docs/api.md §3), over the services the daemon wires.

Theory of operation: every method has a params :class:`msgspec.Struct` (its names, types and
limits are the API's contract, checked against docs/api.md by tests/test_api_doc.py) and a
handler taking that Struct. :meth:`Api.call` is the one place where params are decoded and
errors are mapped: a decoding failure is ``INVALID_PARAMS`` with the field's message (the
``error`` of its ``Meta.extra``), a :class:`~dhtchat.core.errors.DhtChatError` ends the call
with the code it carries, an :class:`~dhtchat.app.rpc.RpcError` as it is. Handlers reach the
daemon's services through their public methods only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import msgspec

from dhtchat.app.api_calls import CallApi
from dhtchat.app.calls import CallManager
from dhtchat.app.files import file_json
from dhtchat.app.groups import Group
from dhtchat.app.jsontypes import JsonObject
from dhtchat.app.messenger import Messenger, message_json
from dhtchat.app.params import (
    BatchItem,
    CallAnswerParams,
    CallAutoAnswerParams,
    CallControlParams,
    CallIdParams,
    CallListParams,
    CallStartParams,
    CallVerifyParams,
    CallWaitParams,
    ConnectParams,
    ContactAcceptParams,
    ContactParams,
    ContactRemoveParams,
    ContactRenameParams,
    ContactRequestParams,
    EventsSubscribeParams,
    FileGetParams,
    FileIdParams,
    FileLimitsParams,
    FileSendParams,
    GroupCreateParams,
    GroupInviteParams,
    GroupParams,
    GroupRemoveParams,
    MessageBatchParams,
    MessageHistoryParams,
    MessageReceiveParams,
    MessageSearchParams,
    MessageSendParams,
    MessageTimerParams,
    MessageTypingParams,
    Params,
    SettingsSetParams,
    decode_params,
)
from dhtchat.app.rpc import (
    BLOCKED,
    CONNECTION_FAILED,
    INVALID_PARAMS,
    NOT_A_CONTACT,
    NOT_FOUND,
    NOT_READY,
    TIMEOUT,
    Handler,
    Reply,
    RpcError,
)
from dhtchat.app.settings import ProfileSettings, settings_reply
from dhtchat.core.addresses import format_address
from dhtchat.core.contacts import make_contact_request
from dhtchat.core.errors import DhtChatError, InvalidUserId
from dhtchat.core.identity import decode_user_id, encode_user_id
from dhtchat.store.contacts import ContactEntry
from dhtchat.store.history import ConversationRef, StoredMessage

if TYPE_CHECKING:
    from dhtchat.app.daemon import Daemon

log = logging.getLogger("dhtchat.api")

_P = TypeVar("_P", bound=Params)


class Method(NamedTuple):
    """One RPC method: its params Struct and the coroutine that decodes raw params into it
    and runs the handler."""

    params: type[Params]
    run: Callable[[JsonObject], Awaitable[object]]


def _method(kind: type[_P], handler: Callable[[_P], Awaitable[object]]) -> Method:
    async def run(params: JsonObject) -> object:
        return await handler(decode_params(kind, params))
    return Method(kind, run)


# ------------------------------------------------------------------ the API


class Api:
    """The RPC methods of one daemon (see :meth:`methods`)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.call_api = CallApi(daemon, self._accepted_contact)
        self._methods = self.methods()

    def methods(self) -> dict[str, Method]:
        """Method name -> (params Struct, handler)."""
        return {
            "status": _method(Params, self.status),
            "contact.request": _method(ContactRequestParams, self.contact_request),
            "contact.pending": _method(Params, self.contact_pending),
            "contact.accept": _method(ContactAcceptParams, self.contact_accept),
            "contact.refuse": _method(ContactParams, self.contact_refuse),
            "contact.block": _method(ContactParams, self.contact_block),
            "contact.unblock": _method(ContactParams, self.contact_unblock),
            "contact.list": _method(Params, self.contact_list),
            "contact.rename": _method(ContactRenameParams, self.contact_rename),
            "contact.remove": _method(ContactRemoveParams, self.contact_remove),
            "connect": _method(ConnectParams, self.connect),
            "message.send": _method(MessageSendParams, self.message_send),
            "message.send_batch": _method(MessageBatchParams, self.message_send_batch),
            "message.receive": _method(MessageReceiveParams, self.message_receive),
            "message.history": _method(MessageHistoryParams, self.message_history),
            "message.typing": _method(MessageTypingParams, self.message_typing),
            "message.search": _method(MessageSearchParams, self.message_search),
            "message.timer": _method(MessageTimerParams, self.message_timer),
            "group.create": _method(GroupCreateParams, self.group_create),
            "group.invite": _method(GroupInviteParams, self.group_invite),
            "group.remove": _method(GroupRemoveParams, self.group_remove),
            "group.leave": _method(GroupParams, self.group_leave),
            "group.list": _method(Params, self.group_list),
            "file.send": _method(FileSendParams, self.file_send),
            "file.list": _method(Params, self.file_list),
            "file.get": _method(FileGetParams, self.file_get),
            "file.accept": _method(FileIdParams, self.file_accept),
            "file.decline": _method(FileIdParams, self.file_decline),
            "file.cancel": _method(FileIdParams, self.file_cancel),
            "file.limits": _method(FileLimitsParams, self.file_limits),
            "call.start": _method(CallStartParams, self.call_api.call_start),
            "call.answer": _method(CallAnswerParams, self.call_api.call_answer),
            "call.decline": _method(CallIdParams, self.call_api.call_decline),
            "call.hangup": _method(CallIdParams, self.call_api.call_hangup),
            "call.status": _method(CallIdParams, self.call_api.call_status),
            "call.wait": _method(CallWaitParams, self.call_api.call_wait),
            "call.list": _method(CallListParams, self.call_api.call_list),
            "call.auto_answer": _method(CallAutoAnswerParams, self.call_api.call_auto_answer),
            "call.verify": _method(CallVerifyParams, self.call_api.call_verify),
            "call.control": _method(CallControlParams, self.call_api.call_control),
            "events.subscribe": _method(EventsSubscribeParams, self.events_subscribe),
            "settings.get": _method(Params, self.settings_get),
            "settings.set": _method(SettingsSetParams, self.settings_set),
            "shutdown": _method(Params, self.shutdown),
        }

    def handlers(self) -> dict[str, Handler]:
        """Method name -> coroutine taking the raw params (for :class:`RpcServer`)."""
        return {name: self._bind(name) for name in self.methods()}

    def _bind(self, method: str) -> Handler:
        async def handle(params: JsonObject) -> object:
            return await self.call(method, params)
        return handle

    async def call(self, method: str, params: JsonObject) -> object:
        """Decode ``params``, run the method; every error leaves as an :class:`RpcError`."""
        try:
            return await self._methods[method].run(params)
        except DhtChatError as exc:
            raise RpcError(exc.code, str(exc)) from None

    # -------------------------------------------------------------- lookups

    def _require_joined(self) -> None:
        if not self.daemon.joined:
            raise RpcError(NOT_READY, "the node is still joining the DHT; try again shortly")

    def _resolve(self, text: str, *, accepted_only: bool = False) -> ContactEntry | bytes:
        """A contact by user id or name (docs/api.md §2.1)."""
        if not text:
            raise RpcError(INVALID_PARAMS, "a contact name or user id is required")
        contacts = self.daemon.contacts
        try:
            key = decode_user_id(text)
        except InvalidUserId as exc:
            matches = [e for e in contacts.by_name(text)
                       if not accepted_only or e.state == "accepted"]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise RpcError(INVALID_PARAMS, f"several contacts are named {text!r}; "
                               "use the user id") from None
            if len(text) >= 50 or "fingerprint" in str(exc):
                raise RpcError(INVALID_PARAMS, str(exc)) from None
            raise RpcError(NOT_FOUND, f"no contact named {text!r}") from None
        entry = contacts.get(key)
        return entry if entry is not None else key

    def _accepted_contact(self, value: str) -> ContactEntry:
        found = self._resolve(value, accepted_only=True)
        if not isinstance(found, ContactEntry) or found.state != "accepted":
            raise RpcError(NOT_A_CONTACT, "not an accepted contact")
        return found

    def _group(self, value: str) -> Group:
        if not value:
            raise RpcError(INVALID_PARAMS, "a group name or id is required")
        groups = self._messenger.groups
        found = groups.by_name(value)
        with contextlib.suppress(ValueError):
            by_id = groups.get(bytes.fromhex(value))
            found = [by_id] if by_id is not None else found
        active = [g for g in found if g.active] or found
        if not active:
            raise RpcError(NOT_FOUND, f"no group named {value!r}")
        if len(active) > 1:
            raise RpcError(INVALID_PARAMS, f"several groups are named {value!r}; use the id")
        return active[0]

    def _contact_or_group(self, value: str) -> ContactEntry | Group:
        """``to`` of message.send / file.send / message.history: an accepted contact, else a
        group (the contact error if it is neither, the group error if the name is several
        groups')."""
        try:
            return self._accepted_contact(value)
        except RpcError as not_contact:
            try:
                return self._group(value)
            except RpcError as no_group:
                if no_group.code == NOT_FOUND or not value:
                    raise not_contact from None
                raise no_group from None

    def _members(self, values: list[str] | None) -> list[bytes]:
        if not values:
            raise RpcError(INVALID_PARAMS, "members must be a non-empty list of contacts")
        return [self._accepted_contact(v).public_key for v in values]

    @property
    def _messenger(self) -> Messenger:
        return self.daemon.messenger

    @property
    def _calls(self) -> CallManager:
        return self.daemon.calls

    def contact_json(self, entry: ContactEntry) -> JsonObject:
        """The API's contact object (docs/api.md §2.2), with the connection status."""
        contacts = self.daemon.contacts
        out: JsonObject = {"id": encode_user_id(entry.public_key), "name": entry.name,
                           "state": entry.state}
        if entry.state in ("incoming", "outgoing"):
            out["message"] = entry.message
            out["since"] = entry.created
            posing_as = contacts.verified_impersonated(entry.public_key, entry.name)
            if posing_as is not None:
                out["warning"] = (f"uses the name of your verified contact {posing_as!r} but "
                                  "is a different identity")
        verified = contacts.verified_at(entry.public_key)
        if verified is not None:
            out["verified"] = verified
        link = self.daemon.link_of(entry.public_key)
        if entry.state == "accepted" and link is not None:
            if link.unreachable:
                out["status"] = "unreachable"
                out["last_seen"] = round(link.last_seen, 1)
            else:
                out["status"] = link.status if link.status != "offline" or not link.online \
                    else "online"
            if link.presence is not None and link.presence.relay_only:
                out["relay_only"] = True  # the contact hides its IP: expect relayed paths
            if self._messenger.is_typing(entry.public_key):
                out["typing"] = True
            if link.status == "connected" and link.selected is not None:
                out["path"] = link.selected.path
                out["local"] = link.selected.local.as_dict()
                out["remote"] = link.selected.remote.as_dict()
            if link.reason:
                out["reason"] = link.reason
        elif entry.state == "accepted":
            out["status"] = "offline"
        return out

    def message_json(self, message: StoredMessage) -> JsonObject:
        """The API form of a message: its author (a group member, not the admin who relayed
        it) and, for a group message, the group, by id and name."""
        daemon = self.daemon
        group = self._messenger.groups.get(message.group_id) if message.group_id else None
        them = message.contact.hex() if message.outgoing and message.group_id \
            else encode_user_id(message.contact)
        author = None if message.outgoing else daemon.contacts.get(
            message.author if message.author is not None else message.contact)
        return message_json(message, daemon.identity.user_id, them,
                            author_name=author.name if author is not None else None,
                            group_name=group.state.name if group is not None else None)

    # -------------------------------------------------------------- status, contacts

    async def status(self, p: Params) -> JsonObject:
        """Identity, DHT and configuration summary."""
        daemon = self.daemon
        node = daemon.node
        outbox = daemon.history.outbox()
        return {
            "id": daemon.identity.user_id,
            "joined": daemon.joined,
            "dht_address": format_address(node.address),
            "dht_contacts": len(node.core.table),
            "stun_answered": node.stun_answered,
            "dht_mode": daemon.options.dht_mode,
            "dht_role": "client" if node.core.config.read_only else "server",
            "reachability": node.reachability.verdict if node.reachability else None,
            "relay_only": daemon.options.relay_only,
            "turn": daemon.options.turn.url if daemon.options.turn else None,
            "uptime": round(time.time() - daemon.started, 1),
            "dropped_signals": daemon.dropped_signals,
            "outbox": len(outbox),
            "outbox_in_mailbox": sum(e.mailbox_stored for e in outbox),
            "lan_discovery": daemon.running.lan.status(),
        }

    async def contact_request(self, p: ContactRequestParams) -> JsonObject:
        """Send a contact request."""
        self._require_joined()
        daemon = self.daemon
        recipient = decode_user_id(p.id)
        if recipient == daemon.identity.public_key:
            raise RpcError(INVALID_PARAMS, "that is your own id")
        my_name = p.name or daemon.options.display_name
        message = p.message or ""
        entry = daemon.contacts.get(recipient)
        if entry is not None and entry.state == "blocked":
            raise RpcError(BLOCKED, "you blocked this id; `dhtchat contact unblock ID` first")
        if entry is not None and entry.state == "accepted":
            return self.contact_json(entry)
        if entry is not None and entry.state == "incoming":
            return await self.contact_accept(ContactAcceptParams(id=p.id,
                                                                 name=p.contact_name))
        # sealing checks the sizes, before anything is recorded
        record = await asyncio.to_thread(
            make_contact_request, daemon.identity, recipient, kind="request", name=my_name,
            message=message, now=time.time(), random_bytes=secrets.token_bytes)
        label = p.contact_name or (entry.name if entry else "") \
            or encode_user_id(recipient)[:12]
        entry = daemon.contacts.put(recipient, name=label, state="outgoing", message=message)
        stored = await daemon.inbox.put(record)
        if not stored:
            raise RpcError(CONNECTION_FAILED, "no DHT node stored the request; is the node "
                           "joined? (it stays pending; send it again later)")
        out = self.contact_json(entry)
        out["stored_on"] = stored
        return out

    async def contact_pending(self, p: Params) -> list[JsonObject]:
        """Requests waiting for an answer (incoming) and sent ones (outgoing)."""
        return [self.contact_json(e) for e in self.daemon.contacts.all()
                if e.state in ("incoming", "outgoing")]

    async def contact_accept(self, p: ContactAcceptParams) -> JsonObject:
        """Accept a pending incoming request."""
        daemon = self.daemon
        found = self._resolve(p.id)
        if not isinstance(found, ContactEntry) or found.state not in ("incoming", "refused"):
            raise RpcError(NOT_FOUND, "no pending (or refused) request from that contact")
        entry = daemon.contacts.put(found.public_key, name=p.name or "", state="accepted",
                                    message="")
        daemon.link_contact(found.public_key)
        daemon.spawn(daemon.inbox.send(found.public_key, "accept",
                                                 daemon.options.display_name, ""))
        return self.contact_json(entry)

    async def contact_refuse(self, p: ContactParams) -> JsonObject:
        """Refuse a pending request."""
        found = self._resolve(p.id)
        if not isinstance(found, ContactEntry) or found.state != "incoming":
            raise RpcError(NOT_FOUND, "no pending request from that contact")
        return self.contact_json(self.daemon.contacts.put(found.public_key, name="",
                                                                 state="refused"))

    async def contact_block(self, p: ContactParams) -> JsonObject:
        """Block an id: its requests and signals are dropped from now on."""
        found = self._resolve(p.id)
        key = found.public_key if isinstance(found, ContactEntry) else found
        entry = self.daemon.contacts.put(key, name="", state="blocked")
        await self.daemon.connections.drop(key, "blocked")
        return self.contact_json(entry)

    async def contact_unblock(self, p: ContactParams) -> JsonObject:
        """Forget a block; the id can send requests again."""
        found = self._resolve(p.id)
        if not isinstance(found, ContactEntry) or found.state != "blocked":
            raise RpcError(NOT_FOUND, "that id is not blocked")
        self.daemon.contacts.delete(found.public_key)
        self.daemon.inbox.forget_seen()  # their requests show up on the next read
        return {"id": encode_user_id(found.public_key), "state": "unblocked"}

    async def contact_list(self, p: Params) -> list[JsonObject]:
        """Every contact with its state and, for accepted ones, the connection status."""
        return [self.contact_json(e) for e in self.daemon.contacts.all()]

    # contact.rename / contact.remove (issue 16)

    async def contact_rename(self, p: ContactRenameParams) -> JsonObject:
        """Change the local name of a contact (any state); nothing is sent."""
        found = self._resolve(p.id)
        if not isinstance(found, ContactEntry):
            raise RpcError(NOT_FOUND, "that id is not in your contact list")
        name = p.name.strip()
        if not name or any(ord(c) < 32 for c in name):
            raise RpcError(INVALID_PARAMS, "name must be 1-64 printable characters")
        entry = self.daemon.contacts.put(found.public_key, name=name, state=found.state,
                                         message=found.message)
        return self.contact_json(entry)

    async def contact_remove(self, p: ContactRemoveParams) -> JsonObject:
        """Forget a contact: the connection, presence and rendezvous stop, the pair's
        ratchet session is deleted; the history stays unless ``delete_history``."""
        found = self._resolve(p.id)
        if not isinstance(found, ContactEntry) or found.state == "blocked":
            raise RpcError(NOT_FOUND, "that id is blocked; `dhtchat contact unblock ID` "
                           "forgets it" if isinstance(found, ContactEntry)
                           else "that id is not in your contact list")
        deleted = await self.daemon.remove_contact(found.public_key,
                                                   delete_history=p.delete_history)
        return {"id": encode_user_id(found.public_key), "name": found.name, "state": "removed",
                "history_deleted": p.delete_history, "messages_deleted": deleted}

    async def connect(self, p: ConnectParams) -> JsonObject:
        """Connect to an accepted contact."""
        self._require_joined()
        found = self._resolve(p.contact, accepted_only=True)
        if not isinstance(found, ContactEntry):
            raise RpcError(NOT_A_CONTACT, "not a contact: send a contact request first")
        if found.state == "blocked":
            raise RpcError(BLOCKED, "that id is blocked")
        if found.state != "accepted":
            raise RpcError(NOT_A_CONTACT, f"contact request is {found.state}, not accepted")
        timeout = p.timeout if p.timeout is not None else self.daemon.options.connect_timeout
        return await self.daemon.connect(found.public_key, float(timeout))

    async def shutdown(self, p: Params) -> JsonObject:
        """Stop the daemon."""
        self.daemon.request_stop()
        return {"stopping": True}

    # -------------------------------------------------------------- messages

    async def message_send(self, p: MessageSendParams) -> JsonObject:
        """Queue a message to a contact or a group; returns once it is persisted, or with
        ``wait`` once the delivery receipt arrived."""
        message = await self._send_one(p.to, p.text, p.id)
        return self.message_json(await self._wait_delivered(p, message))

    async def message_send_batch(self, p: MessageBatchParams) -> list[JsonObject]:
        """Queue many messages in one call, in order (one round trip for all: the way to
        send fast). Each result is the message object, or ``{"error": {code, message}}``
        for one that was refused; the others are queued all the same.

        The sends start in order and each queues before its first ``await``, so they keep
        their order and the messenger commits them together (one transaction per batch)."""
        async def one(item: BatchItem) -> JsonObject:
            try:
                return self.message_json(await self._send_one(item.to, item.text, item.id))
            except RpcError as exc:
                return {"error": exc.as_dict()}
            except DhtChatError as exc:
                return {"error": RpcError(exc.code, str(exc)).as_dict()}
        return list(await asyncio.gather(*(one(item) for item in p.messages)))

    async def _send_one(self, to: str, text: str, message_id: str | None) -> StoredMessage:
        target = self._contact_or_group(to)
        if isinstance(target, Group):
            message: StoredMessage = await self._messenger.send_group_text(target.id, text)
            return message
        sent: StoredMessage = await self._messenger.send_text(
            target.public_key, text, bytes.fromhex(message_id) if message_id else None)
        return sent

    async def _wait_delivered(self, p: MessageSendParams,
                              message: StoredMessage) -> StoredMessage:
        """With ``wait``: the message once its delivery receipt arrived (for a group: every
        member's, or the admin's when we are a member), else a TIMEOUT error."""
        if not p.wait:
            return message
        messenger = self._messenger
        if not await messenger.wait_delivered(message.id, p.timeout):
            raise RpcError(TIMEOUT, f"no delivery receipt within {p.timeout:g} s (the message "
                           "stays queued and will be delivered)", {"id": message.id.hex()})
        stored: StoredMessage | None = messenger.history.message(message.id)
        return stored or message

    async def message_receive(self, p: MessageReceiveParams) -> Reply:
        """Messages not returned before, in order; marked as shown only once the reply is
        written."""
        messenger = self._messenger
        only: ConversationRef | None = None
        if p.contact is not None:
            target = self._contact_or_group(p.contact)
            only = ConversationRef(group=target.id) if isinstance(target, Group) \
                else ConversationRef(contact=target.public_key)
        messages = await messenger.receive(p.wait, p.limit, only)
        return Reply([self.message_json(m) for m in messages],
                     on_sent=lambda: messenger.shown(messages),
                     on_lost=lambda: messenger.release(messages))

    async def message_history(self, p: MessageHistoryParams) -> list[JsonObject]:
        """The conversation with a contact or a group."""
        history = self._messenger.history
        try:
            target: ContactEntry | Group = self._contact_or_group(p.contact)
        except RpcError:  # a removed contact's kept history, by user id (contact.remove)
            key = self._resolve(p.contact) if len(p.contact) >= 50 else None
            if not isinstance(key, bytes) or not history.history(key, 1):
                raise
            return [self.message_json(m) for m in history.history(key, p.limit)]
        before = None
        if p.before is not None:
            anchor = history.message(bytes.fromhex(p.before))
            in_it = anchor is not None and (
                anchor.group_id == target.id if isinstance(target, Group)
                else anchor.group_id is None and anchor.contact == target.public_key)
            if anchor is None or not in_it:
                raise RpcError(INVALID_PARAMS, "before: no such message in this conversation")
            before = anchor.id
        if isinstance(target, Group):
            return [self.message_json(m)
                    for m in history.group_history(target.id, p.limit, before=before)]
        return [self.message_json(m)
                for m in history.history(target.public_key, p.limit, before=before)]

    async def message_search(self, p: MessageSearchParams) -> list[JsonObject]:
        """The messages of a conversation whose text contains ``text`` (newest first)."""
        target = self._contact_or_group(p.contact)
        only = ConversationRef(group=target.id) if isinstance(target, Group) \
            else ConversationRef(contact=target.public_key)
        return [self.message_json(m)
                for m in self._messenger.history.search(only, p.text, p.limit)]

    async def message_typing(self, p: MessageTypingParams) -> JsonObject:
        """Tell a connected contact that we are typing."""
        entry = self._accepted_contact(p.contact)
        return {"sent": await self._messenger.typing(entry.public_key)}

    async def message_timer(self, p: MessageTimerParams) -> JsonObject:
        """Set disappearing messages for a conversation (0 = off)."""
        entry = self._accepted_contact(p.contact)
        return self.message_json(await self._messenger.set_timer(entry.public_key, p.seconds))

    # -------------------------------------------------------------- groups

    def _group_json(self, group_id: bytes) -> JsonObject:
        group = self._messenger.groups.get(group_id)
        if group is None:
            raise RpcError(NOT_FOUND, "no such group")
        out: JsonObject = group.as_json(self.daemon.identity.public_key)
        return out

    async def group_create(self, p: GroupCreateParams) -> JsonObject:
        """Create a group of accepted contacts."""
        messenger = self._messenger
        name = p.name
        if not name:
            raise RpcError(INVALID_PARAMS, "a group needs a name")
        # A name is how the CLI addresses a group: one that is already taken could not be.
        taken = [g for g in messenger.groups.by_name(name) if g.active]
        if taken:
            raise RpcError(INVALID_PARAMS, "you are already in a group named "
                           f"{taken[0].state.name!r} (id {taken[0].id.hex()}); choose "
                           "another name")
        if any(e.state == "accepted" for e in self.daemon.contacts.by_name(name)):
            raise RpcError(INVALID_PARAMS, f"a contact is named {name!r}; choose another "
                           "name for the group")
        state = await messenger.create_group(name, self._members(p.members))
        return self._group_json(state.id)

    async def group_invite(self, p: GroupInviteParams) -> JsonObject:
        """Admin: add contacts to a group."""
        members = self._members(p.members)
        group = self._group(p.group)
        state = await self._messenger.change_group(group.id, add=members, remove=None)
        return self._group_json(state.id)

    async def group_remove(self, p: GroupRemoveParams) -> JsonObject:
        """Admin: remove a member; it reads no later message."""
        group = self._group(p.group)
        try:
            member = decode_user_id(p.member)
        except InvalidUserId:
            member = self._accepted_contact(p.member).public_key
        if member not in group.state.members:
            raise RpcError(NOT_FOUND, "not a member of that group")
        state = await self._messenger.change_group(group.id, add=None, remove=[member])
        return self._group_json(state.id)

    async def group_leave(self, p: GroupParams) -> JsonObject:
        """Leave a group."""
        group = self._group(p.group)
        await self._messenger.leave_group(group.id)
        return {"id": group.id.hex(), "left": True}

    async def group_list(self, p: Params) -> list[JsonObject]:
        """Groups we are (or were) in."""
        me = self.daemon.identity.public_key
        return [g.as_json(me) for g in self._messenger.groups.all()]

    # -------------------------------------------------------------- files

    async def file_send(self, p: FileSendParams) -> JsonObject:
        """Offer a file to a contact or a group."""
        messenger = self._messenger
        target = self._contact_or_group(p.to)
        path = Path(p.path)
        try:
            if isinstance(target, Group):
                message = await messenger.send_group_file(target.id, path)
                return {"group": target.id.hex(), "message": self.message_json(message),
                        "name": path.name, "size": path.stat().st_size,
                        "id": message.id.hex()}
            transfer = await messenger.files.send(target.public_key, path)
        except OSError as exc:  # the path the client named: its reason, not ours
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        if p.wait:
            if not await messenger.files.wait_complete(transfer.id, p.timeout):
                raise RpcError(TIMEOUT, f"the transfer did not complete within {p.timeout:g} "
                               "s (it continues in the background)", {"id": transfer.id.hex()})
            transfer = messenger.files.get(transfer.id) or transfer
            if transfer.error is not None:
                raise RpcError(INVALID_PARAMS, f"the transfer failed: {transfer.error}",
                               {"id": transfer.id.hex()})
        return file_json(transfer, messenger.files.sent.get(transfer.id, 0))

    async def file_list(self, p: Params) -> list[JsonObject]:
        """Every transfer with its progress."""
        files = self._messenger.files
        out = []
        for entry in files.all():
            row = file_json(entry, files.sent.get(entry.id, 0))
            row["contact"] = encode_user_id(entry.contact)
            out.append(row)
        return out

    async def file_get(self, p: FileGetParams) -> JsonObject:
        """Copy a received file out of the profile."""
        files = self._messenger.files
        try:
            target = await asyncio.to_thread(files.export, bytes.fromhex(p.id), Path(p.dest))
        except OSError as exc:  # the destination the client named
            raise RpcError(INVALID_PARAMS, f"cannot write {p.dest}: {exc.strerror}") from None
        return {"path": str(target)}

    def _file_id(self, p: FileIdParams) -> bytes:
        file_id = bytes.fromhex(p.id)
        if self._messenger.files.get(file_id) is None:
            raise RpcError(NOT_FOUND, "no such file")
        return file_id

    async def file_accept(self, p: FileIdParams) -> JsonObject:
        """Download an offered file; refused over a quota or the free disk."""
        return file_json(await self._messenger.files.accept(self._file_id(p)))

    async def file_decline(self, p: FileIdParams) -> JsonObject:
        """Refuse an offered file."""
        return file_json(await self._messenger.files.end(self._file_id(p), "declined"))

    async def file_cancel(self, p: FileIdParams) -> JsonObject:
        """Stop a transfer in either direction; a partial download is deleted."""
        return file_json(await self._messenger.files.end(self._file_id(p), "cancelled"))

    async def file_limits(self, p: FileLimitsParams) -> JsonObject:
        """Show or set auto_accept / contact_quota / total_quota (bytes)."""
        files = self._messenger.files
        changes = {k: v for k, v in msgspec.structs.asdict(p).items() if v is not None}
        return dict(files.set_limits(**changes) if changes else files.limits())

    # -------------------------------------------------------------- events

    async def events_subscribe(self, p: EventsSubscribeParams) -> Reply:
        """Stream events after ``since`` to this connection as notifications."""
        return await self.daemon.events.subscribe_connection(p.since)

    # -------------------------------------------------------------- settings

    def _running_settings(self) -> JsonObject:
        options = self.daemon.options
        return {"name": options.display_name, "relay_only": options.relay_only,
                "turn": options.turn.url if options.turn is not None else None,
                "ice_addresses": list(options.ice_addresses or [])}

    async def settings_get(self, p: Params) -> JsonObject:
        """The settings saved in the profile and the ones the running daemon uses."""
        return settings_reply(ProfileSettings.load(self.daemon.profile.root),
                              self._running_settings())

    async def settings_set(self, p: SettingsSetParams) -> JsonObject:
        """Save settings in the profile; the name applies at once, the rest at the next
        start."""
        root = self.daemon.profile.root
        saved = ProfileSettings.load(root)
        changes = {k: v for k, v in msgspec.structs.asdict(p).items() if v is not None}
        updated = msgspec.structs.replace(saved, **changes)
        if "turn" in changes and not updated.turn:  # clearing the server clears its login
            updated = msgspec.structs.replace(updated, turn_user="", turn_pass="")
        updated.check()
        updated.save(root)
        if "name" in changes:
            self.daemon.set_display_name(updated.name)
        return settings_reply(updated, self._running_settings())
