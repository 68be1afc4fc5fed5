"""Rendezvous channels with each accepted contact: presence and signalling over the DHT.

Theory of operation (docs/protocol.md, Part II, "epochs", "presence", "signalling"):

* For every accepted contact the daemon publishes sealed presence on the pair's rendezvous
  key of the current epoch, republishing before expiry, and listens on the keys where the
  contact publishes presence and signalling to it: the current epoch, and the adjacent one
  near a boundary (``wanted_epochs``).
* A presence record goes to the contact's :class:`~dhtchat.core.link.LinkMachine`, which says
  whether it is news, whether to retry at once and whether our pending offer is now hopeless;
  a signalling record is opened, verified and handed to :class:`~dhtchat.app.links.Links`.
* Every record arrives twice (``listen`` push and ``get``); :meth:`Link.first_time` drops the
  copy. Nothing here waits for another contact: each refresh is its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Final

from dhtchat.app.links import Link, Links
from dhtchat.core.contacts import (
    EPOCH_SECONDS,
    SIGNAL_MAX_AGE,
    Purpose,
    epoch_of,
    make_presence,
    open_presence,
    open_signal,
)
from dhtchat.core.errors import RemoteProtocolError
from dhtchat.core.identity import SigningIdentity, encode_user_id
from dhtchat.core.link import PRESENCE_TTL
from dhtchat.core.records import Record
from dhtchat.net.udp import Subscription, UdpDhtNode

log = logging.getLogger("dhtchat.daemon")

PRESENCE_REPUBLISH: Final = 1200
EPOCH_OVERLAP: Final = SIGNAL_MAX_AGE


def wanted_epochs(now: float) -> set[int]:
    """The epochs whose channels to listen on at ``now``: the current one, and the adjacent
    one within EPOCH_OVERLAP of a boundary."""
    epoch = epoch_of(now)
    epochs = {epoch}
    if now >= (epoch + 1) * EPOCH_SECONDS - EPOCH_OVERLAP:
        epochs.add(epoch + 1)
    if now < epoch * EPOCH_SECONDS + EPOCH_OVERLAP:
        epochs.add(epoch - 1)
    return epochs


class Rendezvous:
    """Presence publishing and the presence/signalling subscriptions of every link."""

    def __init__(self, identity: SigningIdentity, run_id: bytes, links: Links, *,
                 node: Callable[[], UdpDhtNode],
                 spawn: Callable[[Awaitable[None]], object],
                 next_seq: Callable[[], int], stopping: asyncio.Event,
                 relay_only: bool, clock: Callable[[], float]) -> None:
        self.identity = identity
        self.run_id = run_id  # this daemon run, as our presence says
        self.links = links
        self._node = node
        self._spawn = spawn
        self._next_seq = next_seq
        self._stopping = stopping
        self.relay_only = relay_only
        self._clock = clock

    async def refresh(self, link: Link) -> None:
        """Listen on the contact's channels for the wanted epochs and publish presence."""
        if link.refreshing:
            return  # the maintenance loop and a new link may both ask: one at a time
        link.refreshing = True
        try:
            await self._refresh_now(link)
        finally:
            link.refreshing = False

    async def _refresh_now(self, link: Link) -> None:
        now = self._clock()
        epochs = wanted_epochs(now)
        for (purpose, epoch), sub in list(link.subscriptions.items()):
            if epoch not in epochs:
                sub.close()
                del link.subscriptions[(purpose, epoch)]
        current = epoch_of(now)
        jobs: list[Awaitable[None]] = [
            self.publish_presence(link, epoch, now) for epoch in sorted(epochs)
            if epoch >= current and now - link.presence_published.get(epoch, 0.0)
            >= PRESENCE_REPUBLISH]
        jobs += [self._subscribe(link, purpose, epoch) for epoch in sorted(epochs)
                 for purpose in (Purpose.SIGNAL, Purpose.PRESENCE)
                 if (purpose, epoch) not in link.subscriptions]
        # All at once: each is a DHT lookup that may wait out a dead node's timeout, and the
        # contact is waiting for our presence.
        await asyncio.gather(*jobs)

    async def _subscribe(self, link: Link, purpose: Purpose, epoch: int) -> None:
        """Listen on one of the contact's channels, then read what is already there."""
        node = self._node()
        key = link.pair.channel_key(purpose, link.public_key, epoch)
        try:
            sub = await node.listen(key)
        except TimeoutError:
            return
        if self._stopping.is_set() or (purpose, epoch) in link.subscriptions:
            sub.close()
            return
        link.subscriptions[(purpose, epoch)] = sub
        handler = self.signal_handler(link, epoch) if purpose is Purpose.SIGNAL \
            else self.presence_handler(link, epoch)
        self._spawn(_consume(sub, handler))
        with contextlib.suppress(TimeoutError):
            for record in await node.get(key):
                await handler(record)

    async def publish_presence(self, link: Link, epoch: int, now: float, *,
                               online: bool = True) -> None:
        """Put our sealed presence for ``epoch`` on the pair's channel (best effort)."""
        plaintext = make_presence(self.identity, link.pair, epoch, self.run_id, int(now),
                                  self.relay_only, online=online)
        record = link.pair.seal_record(Purpose.PRESENCE, epoch, plaintext, seq=self._next_seq(),
                                       expires=int(now) + PRESENCE_TTL,
                                       random_bytes=secrets.token_bytes)
        try:
            result = await self._node().put(record)
        except TimeoutError:
            return
        if result.stored:
            link.presence_published[epoch] = now
            for old in [e for e in link.presence_published if e < epoch - 1]:
                del link.presence_published[old]

    def presence_handler(self, link: Link,
                         epoch: int) -> Callable[[Record], Awaitable[None]]:
        """The handler of records on the contact's presence channel of ``epoch``."""
        async def handle(record: Record) -> None:
            if not link.first_time(record):
                return
            try:
                presence = open_presence(link.pair, epoch,
                                         link.pair.open_record(Purpose.PRESENCE, epoch, record))
            except RemoteProtocolError as exc:
                log.info("ignored a presence record: %s", exc)
                return
            update = link.machine.on_presence(presence, self._clock())
            if update.accepted:
                self.links.events.emit("presence", contact=encode_user_id(link.public_key),
                                       online=presence.online)
            if update.wake:
                self.links.wake.set()
            if update.abort:
                self.links.abort_offer(link, update.abort)
        return handle

    def signal_handler(self, link: Link, epoch: int) -> Callable[[Record], Awaitable[None]]:
        """The handler of records on the contact's signalling channel of ``epoch``."""
        async def handle(record: Record) -> None:
            if not link.first_time(record):
                return
            try:
                opened = open_signal(link.pair,
                                     link.pair.open_record(Purpose.SIGNAL, epoch, record))
            except RemoteProtocolError as exc:
                self.links.dropped_signals += 1
                link.reason = f"refused a signalling message: {exc}"
                log.warning("refused a signalling message from %s: %s",
                            self.links.name(link.public_key), exc)
                return
            await self.links.handle_signal(link.public_key, opened)
        return handle

    async def poll_presence(self, link: Link, now: float) -> None:
        """Read the contact's presence channel of the current epoch (a missed push)."""
        epoch = epoch_of(now)
        key = link.pair.channel_key(Purpose.PRESENCE, link.public_key, epoch)
        with contextlib.suppress(TimeoutError):
            for record in await self._node().get(key):
                await self.presence_handler(link, epoch)(record)


    async def run(self, accepted: Callable[[bytes], bool], period: float) -> None:
        """Epoch rollover, presence republishing and reconnection of the wanted contacts
        (``accepted``), every ``period`` seconds until stopping.

        Nothing slow is awaited here: channel refreshes and presence polls run as their own
        tasks (one per link at a time), so a DHT timeout on one contact never delays a
        connection attempt to another. A fresh presence record wakes the loop at once."""
        wake = self.links.wake
        while not self._stopping.is_set():
            wake.clear()
            now = self._clock()
            for link in list(self.links.by_key.values()):
                if accepted(link.public_key) and not link.refreshing:
                    self._spawn(self.refresh(link))
            for link in self.links.maintain(now, accepted):
                self._spawn(self.poll_presence(link, now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), period)


    async def goodbye(self, over_channel: Callable[[bytes], Awaitable[object]]) -> None:
        """Tell every contact that we leave, so they show us offline at once instead of in
        30 min: ``over_channel(public_key)`` over an open data connection (instant, whatever
        the DHT's state), a signed bye where a connection is set up, offline presence to
        all."""
        now = self._clock()
        links = list(self.links.by_key.values())
        jobs: list[Awaitable[object]] = []
        for link in links:
            if link.channel is not None:
                jobs.append(over_channel(link.public_key))
            if link.pc is not None and link.session:
                jobs.append(self.links.send_bye(link, link.session, "daemon stopped"))
            jobs.append(self.publish_presence(link, epoch_of(now), now, online=False))
        if any(link.channel is not None for link in links):
            # Let the goodbye frames leave before the connections close (the DHT jobs
            # take longer anyway).
            jobs.append(asyncio.sleep(0.3))
        await asyncio.gather(*jobs, return_exceptions=True)

async def _consume(sub: Subscription, handler: Callable[[Record], Awaitable[None]]) -> None:
    async for record in sub:
        try:
            await handler(record)
        except Exception:
            log.exception("error handling a pushed record")
