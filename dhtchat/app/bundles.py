"""Our prekey bundles in the DHT, and fetching a contact's (X3DH, design sec. 6).

Theory of operation: the daemon keeps one :class:`PrekeyStore` (signed prekey and one-time
prekeys, :mod:`dhtchat.messaging.prekeys`), saved in the history. Each contact gets its own
view of it (``bundle_for``), sealed as a record on the pair's prekey channel (7-day TTL,
republished by our node while it runs). The maintenance pass republishes every bundle when
the store changed (a one-time prekey used up, a signed prekey rotated), and every bundle
whose last put failed: without one the contact cannot start a session with us.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Final

from dhtchat.core.contacts import Pair, Purpose
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity
from dhtchat.messaging.mailbox import MAILBOX_EPOCH
from dhtchat.messaging.session import PrekeyStore
from dhtchat.net.udp import UdpDhtNode
from dhtchat.store.history import History

PREKEYS_TTL: Final = 7 * 24 * 3600


class Bundles:
    """Our prekey store, its per-contact bundles in the DHT, and the contacts' bundles."""

    def __init__(self, history: History, identity: SigningIdentity,
                 node: Callable[[], UdpDhtNode | None],
                 pair: Callable[[bytes], Pair | None]) -> None:
        """``node`` gives the running DHT node (None before it starts); ``pair`` the
        contact's pair keys (None if not a contact)."""
        self.history = history
        self._node = node
        self._pair = pair
        stored = history.get_meta("prekeys")
        if stored is None:
            self.prekeys = PrekeyStore.create(identity.seed, time.time())
        else:
            self.prekeys = PrekeyStore.from_json(identity.seed, stored.decode())
        self.prekeys.maintain(time.time())
        self.save()
        self._published: tuple[int, bytes] | None = None
        self._stored: set[bytes] = set()  # contacts whose bundle reached the DHT

    def save(self) -> None:
        """Write the prekey store to the history."""
        with self.history.transaction() as db:
            self.history.set_meta(db, "prekeys", self.prekeys.to_json().encode())

    async def fetch(self, contact: bytes) -> bytes | None:
        """The contact's bundle for us from the DHT (None if not found)."""
        node = self._node()
        pair = self._pair(contact)
        if node is None or pair is None:
            return None
        key = pair.channel_key(Purpose.PREKEYS, contact, MAILBOX_EPOCH)
        with contextlib.suppress(TimeoutError):
            for record in await node.get(key):
                with contextlib.suppress(RemoteProtocolError):
                    return pair.open_record(Purpose.PREKEYS, MAILBOX_EPOCH, record)
        return None

    async def publish(self, contact: bytes) -> None:
        """Publish our prekey bundle, sealed, on the pair's prekey channel."""
        pair = self._pair(contact)
        node = self._node()
        if pair is None or node is None:
            return
        now = time.time()
        record = pair.seal_record(Purpose.PREKEYS, MAILBOX_EPOCH,
                                  self.prekeys.bundle_for(contact), seq=int(now * 1000),
                                  expires=int(now) + PREKEYS_TTL,
                                  random_bytes=secrets.token_bytes)
        try:
            result = await node.put(record, republish=True)
        except TimeoutError:
            return
        if result.stored:
            self._stored.add(contact)

    def to_publish(self, contacts: list[bytes]) -> list[bytes]:
        """Maintain the store; the contacts whose bundle must be published (again)."""
        changed = self.prekeys.maintain(time.time())
        stock = (self.prekeys.one_time_prekeys_left(), self.prekeys.bundle(0))
        if changed or stock != self._published:
            # Any consumed prekey may sit in some contact's bundle_for() view: republish all.
            self.save()
            self._published = stock
            self._stored.difference_update(contacts)
        return [c for c in contacts if c not in self._stored]
