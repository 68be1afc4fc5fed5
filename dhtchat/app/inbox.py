"""The identity's public contact inbox: sending, reading and acting on contact requests.

Theory of operation (docs/protocol.md "Contact requests", docs/threat-model.md item 1):

* A request is a CONTACT_REQUEST record sealed to the recipient and signed by a one-time
  envelope key whose proof of work binds it (core/contacts.py). It is put on the recipient's
  inbox key; the recipient ``listen``s there and also reads it every INBOX_POLL seconds, which
  covers a missed push.
* A request is known by its envelope key, so re-signed variants of one solved request (new
  ``seq`` or ``expires``, no new work) count once. The envelopes seen recently are kept in a
  bounded in-memory set; the ones acted upon are also committed to the contact store, so a
  restart does not show them again. Nothing is written for a request seen before, a blocked
  sender, junk, or a request that changes nothing.
* Pushes from one storer IP are rate-limited (INBOX_PUSH_RATE after INBOX_PUSH_BURST), so a
  flooding storer is cut off without delaying the others.
* A pending incoming request lives as long as its record type (REQUEST_TTL); at most a fixed
  number wait, and the oldest is dropped first (ContactStore.add_incoming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

from dhtchat.app.events import EventLog
from dhtchat.core.addresses import Address
from dhtchat.core.contacts import (
    REQUEST_TTL,
    RecentIds,
    inbox_key,
    make_contact_request,
    open_contact_request,
    request_id,
)
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.ratelimit import TokenBuckets
from dhtchat.core.records import Record
from dhtchat.net.udp import Subscription, UdpDhtNode
from dhtchat.store.contacts import ContactStore

log = logging.getLogger("dhtchat.daemon")

INBOX_POLL: Final = 20.0  # a get per 20 s covers a missed listen push
INBOX_PUSH_RATE: Final = 0.5  # inbox pushes per second accepted from one storer...
INBOX_PUSH_BURST: Final = 20.0  # ...after a burst of this many
INBOX_SEEN_MEMORY: Final = 4096  # request envelopes remembered in memory
INBOX_PUSH_SOURCES: Final = 4096  # storer IPs the push limiter tracks at once

RequestKind = Literal["request", "accept"]
Spawn = Callable[[Awaitable[object]], object]


class ContactInbox:
    """Owns the inbox subscription, the seen-envelope memory and the push limiter.

    ``node()`` is the daemon's DHT node; ``on_accepted(public_key)`` is called when a contact
    becomes accepted through the inbox (their accept of our request, or crossed requests);
    ``spawn`` runs background work on the daemon's task set; ``events`` tells API clients of
    requests and acceptances."""

    def __init__(self, identity: SigningIdentity, contacts: ContactStore, *,
                 node: Callable[[], UdpDhtNode], display_name: str,
                 on_accepted: Callable[[bytes], object], spawn: Spawn,
                 events: EventLog) -> None:
        self.identity = identity
        self.events = events
        self.contacts = contacts
        self.display_name = display_name
        self.on_accepted = on_accepted
        self.spawn = spawn
        self.dropped_pushes = 0
        self._node = node
        self.reading = False  # run() has started: we read the inbox (and answer from it)
        self.subscription: Subscription | None = None
        self._seen = RecentIds(INBOX_SEEN_MEMORY)
        self._push_limit = TokenBuckets(INBOX_PUSH_RATE, INBOX_PUSH_BURST, INBOX_PUSH_SOURCES)

    # ------------------------------------------------------------------ sending

    async def seal_request(self, recipient: bytes, kind: RequestKind, name: str,
                           message: str) -> Record:
        """A solved, sealed request record (the proof of work runs off the event loop).
        Raises LocalProtocolError for a name or message over its size limit."""
        return await asyncio.to_thread(
            make_contact_request, self.identity, recipient, kind=kind, name=name,
            message=message, now=time.time(), random_bytes=secrets.token_bytes)

    async def put(self, record: Record) -> int:
        """Store ``record``; the number of DHT nodes that took it (0 on a timeout)."""
        try:
            result = await self._node().put(record)
        except TimeoutError:
            return 0
        return result.stored

    async def send(self, recipient: bytes, kind: RequestKind, name: str, message: str) -> int:
        """Seal and store a request or accept; the number of DHT nodes that took it."""
        return await self.put(await self.seal_request(recipient, kind, name, message))

    # ------------------------------------------------------------------ reading

    async def run(self, stopping: asyncio.Event) -> None:
        """Listen on the inbox and read it every INBOX_POLL seconds until ``stopping``."""
        node = self._node()
        self.reading = True
        key = inbox_key(self.identity.public_key)
        while not stopping.is_set():
            if self.subscription is None:
                try:
                    self.subscription = await node.listen(key)
                    self.subscription.admit = self.admit_push
                    self.spawn(self._consume(self.subscription))
                except TimeoutError:
                    log.debug("inbox listen timed out; retrying")
            with contextlib.suppress(TimeoutError):
                for record in await node.get(key):
                    await self.handle_record(record)
            self.contacts.expire_incoming(time.time(), REQUEST_TTL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), INBOX_POLL)

    async def _consume(self, subscription: Subscription) -> None:
        async for record in subscription:
            try:
                await self.handle_record(record)
            except Exception:
                log.exception("error handling a pushed record")

    def close(self) -> None:
        """Stop listening."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    def admit_push(self, record: Record, source: Address | None) -> bool:
        """Rate limit for records pushed to the inbox subscription, per storer IP (not port:
        a storer could send from new ports): a storer flooding pushes is cut to
        INBOX_PUSH_RATE without delaying the others."""
        key = source[0] if source is not None else "local"
        if self._push_limit.allow(key, time.monotonic()):
            return True
        self.dropped_pushes += 1
        return False

    def forget_seen(self) -> None:
        """Forget the in-memory seen set (after an unblock, so that id's requests still in
        the inbox show up on the next read)."""
        self._seen.clear()

    async def handle_record(self, record: Record) -> None:
        """Act on a record from the inbox (pushed or read).

        A request is known by its one-time envelope key (the proof of work binds it), so
        re-signed variants of one request count once. Nothing is written to disk for a
        request seen before, a blocked sender, or a request that changes nothing."""
        now = time.time()
        envelope = request_id(record)
        if envelope in self._seen:
            return
        self._seen.add(envelope)  # in memory only: bounded, and costs no disk write
        if self.contacts.seen(envelope):
            return
        try:
            request = open_contact_request(self.identity, record, now)
        except RemoteProtocolError as exc:
            log.info("dropped an inbox record: %s", exc)
            return
        sender = request.sender
        entry = self.contacts.get(sender)
        who = encode_user_id(sender)
        if entry is not None and entry.state == "blocked":
            log.info("dropped a %s from blocked %s", request.kind, who[:12])
            return
        if request.kind == "accept":
            if entry is not None and entry.state == "outgoing":
                default_label = entry.name == who[:12]
                name = request.name if request.name and default_label else entry.name
                self.contacts.put(sender, name=name, state="accepted", now=now)
                self.contacts.mark_seen(envelope, now)
                self.on_accepted(sender)
                log.info("%s accepted the contact request", entry.name)
                self.events.emit("contact.accepted", contact=who, name=name)
            return
        if entry is not None and entry.state == "accepted":
            return  # they may have lost their contact list; nothing to do until they ask again
        if entry is not None and entry.state == "outgoing":
            # Both asked: that is consent on both sides.
            self.contacts.put(sender, name=entry.name, state="accepted", now=now)
            self.contacts.mark_seen(envelope, now)
            self.on_accepted(sender)
            self.spawn(self.answer(sender))
            self.events.emit("contact.accepted", contact=who, name=entry.name)
            return
        if self.contacts.add_incoming(sender, name=request.name or who[:12],
                                      message=request.message, now=now, envelope=envelope,
                                      lifetime=REQUEST_TTL) is None:
            return  # older than every one of the (full) pending requests
        log.info("contact request from %s (%s)", request.name, who[:12])
        self.events.emit("contact.request", contact=who, name=request.name,
                         message=request.message)
        posing_as = self.contacts.verified_impersonated(sender, request.name or who[:12])
        if posing_as is not None:
            log.warning("WARNING: the contact request from %s uses the name of your verified "
                        "contact %r but is a DIFFERENT identity; do not accept it unless you "
                        "check its user id out of band", who[:12], posing_as)

    async def answer(self, sender: bytes) -> int:
        """Send our accept to ``sender`` (not before :meth:`run` reads the inbox: then 0, and
        the accept is sent when the contact asks again)."""
        if not self.reading:
            return 0
        return await self.send(sender, "accept", self.display_name, "")
