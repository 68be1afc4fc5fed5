"""File transfer: any size, chunked, authenticated, resumable across restarts of either side.

Theory of operation (the attachment scheme of Signal, over our own data channel):

* The sender hashes the file (SHA-256), draws a fresh 32-byte key and sends a *file offer*
  (name, size, hash, key) as an ordinary sequenced message: it goes through the outbox and the
  Double Ratchet, so the offer is delivered exactly once and only the contact gets the key.
* The receiver pulls the content over the data channel with ``file_request(offset)``; the
  sender streams 64 KiB chunks from that offset, each sealed with XChaCha20-Poly1305 under
  the file key, nonce = BLAKE2b(file id || offset), additional data = file id || offset, so a
  chunk cannot be moved, replayed at another offset or forged.
* The receiver writes chunks in order into ``files/partial/ID`` and records the contiguous
  byte count (after an fsync) every 4 MiB and at the end. After a crash or a reconnection it
  asks again from the recorded offset. When all bytes are there it checks the SHA-256, moves
  the file to ``files/ID``, and sends ``file_done``.
* At rest, a received file stays encrypted: the receiver stores each chunk's ciphertext as it
  arrived (chunk i at byte i * SEALED_CHUNK_BYTES), and the file key lives only in the
  SQLCipher history, so the file opens only with the passphrase. Hash check, export
  (``file get``) and relaying a group file decrypt it chunk by chunk. Files received in clear
  by an older version are sealed this way when the daemon starts.
* Flow control: the sender waits while the SCTP send buffer holds more than 4 MiB.
* Consent: an offer over the user's auto-accept size (or a quota) waits for ``file accept``.
  Declining, cancelling (either side) or refusing an offer (more than
  MAX_PENDING_OFFERS waiting from one contact) sends ``file_end`` with a reason code, so
  the other side's transfer ends with that error instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Protocol

import nacl.bindings
import nacl.exceptions

from dhtchat.app.jsontypes import JsonObject
from dhtchat.core.errors import LocalProtocolError, NotFound
from dhtchat.core.identity import encode_user_id
from dhtchat.core.ids import blake2b_256
from dhtchat.store.files import FileEntry, FileTable

if TYPE_CHECKING:
    from aiortc import RTCDataChannel

    from dhtchat.app.events import EventLog
    from dhtchat.app.groups import FileOrigin
    from dhtchat.app.services import Spawner
    from dhtchat.store.history import History, Transaction

log = logging.getLogger("dhtchat.files")

CHUNK_BYTES: Final = 64 * 1024
SEALED_CHUNK_BYTES: Final = CHUNK_BYTES + 16  # one stored chunk: ciphertext + Poly1305 tag
CHUNK_MARK: Final = b"\x01"  # first byte of a chunk datagram (frames start with 0x92)
SEND_BUFFER_HIGH: Final = 4 * 1024 * 1024
CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
MAX_FILE_BYTES: Final = 1 << 40
DONE_REPEAT_WINDOW: Final = 24 * 3600
HASH_MISMATCH: Final = "the content does not match the offer's SHA-256"
STORE_DAMAGED: Final = "the stored file is damaged (a chunk failed authentication)"
DECLINED: Final = "declined"
CANCELLED: Final = "cancelled"
DISK_RESERVE: Final = 256 * 1024 * 1024  # never fill the disk past this much free space
MAX_PENDING_OFFERS: Final = 32  # offers waiting for the user, per contact; more are refused
TOO_MANY_OFFERS: Final = f"refused: {MAX_PENDING_OFFERS} offers from this contact already wait"
# What the other side's ``file_end`` reason code means here, by the direction of our entry.
END_REASONS_OUTGOING: Final = {"declined": "declined by the contact",
                               "cancelled": "cancelled by the contact",
                               "refused": "refused by the contact (too many offers waiting)"}
END_REASONS_INCOMING: Final = {"cancelled": "cancelled by the sender"}
DEFAULT_LIMITS: Final = {"auto_accept": 1 << 20, "contact_quota": 4 << 30, "total_quota": 16 << 30}

def chunk_nonce(file_id: bytes, offset: int) -> bytes:
    """The XChaCha20 nonce of the chunk at ``offset``."""
    return blake2b_256(b"dhtchat/file-chunk/v1", file_id, offset.to_bytes(8, "big"))[:24]


def seal_chunk(key: bytes, file_id: bytes, offset: int, data: bytes) -> bytes:
    """The datagram carrying ``data`` at ``offset`` of a file."""
    ad = file_id + offset.to_bytes(8, "big")
    return CHUNK_MARK + ad + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        data, ad, chunk_nonce(file_id, offset), key)


def sealed_size(plain_bytes: int) -> int:
    """Bytes on disk of the first ``plain_bytes`` of a received file (whole chunks, or all)."""
    return plain_bytes + 16 * -(-plain_bytes // CHUNK_BYTES)


def read_sealed(path: Path | str, key: bytes, file_id: bytes, offset: int = 0,
                ) -> Iterator[bytes]:
    """The plaintext of a stored (sealed) received file, chunk by chunk from ``offset`` (a
    multiple of CHUNK_BYTES). Raises LocalProtocolError if a chunk fails authentication."""
    with open(path, "rb") as handle:
        handle.seek(offset // CHUNK_BYTES * SEALED_CHUNK_BYTES)
        while sealed := handle.read(SEALED_CHUNK_BYTES):
            ad = file_id + offset.to_bytes(8, "big")
            try:
                chunk = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    sealed, ad, chunk_nonce(file_id, offset), key)
            except nacl.exceptions.CryptoError:
                raise LocalProtocolError(STORE_DAMAGED) from None
            yield chunk
            offset += len(chunk)


def _already_sealed(path: Path, key: bytes, file_id: bytes, plain_bytes: int) -> bool:
    """Whether a received file is already in the sealed layout (its first chunk opens)."""
    if path.stat().st_size != sealed_size(plain_bytes):
        return False
    if plain_bytes == 0:
        return True
    try:
        next(read_sealed(path, key, file_id), None)
    except LocalProtocolError:
        return False
    return True


def seal_file_in_place(path: Path, key: bytes, file_id: bytes, plain_bytes: int) -> None:
    """Encrypt the first ``plain_bytes`` of a file received in clear (by an older version)
    into the sealed layout, through a temporary file renamed over it."""
    temp = path.with_name(path.name + ".sealing")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(path, "rb") as source, open(fd, "wb") as out:
        offset = 0
        while offset < plain_bytes:
            data = source.read(min(CHUNK_BYTES, plain_bytes - offset))
            if not data:
                break
            out.write(seal_chunk(key, file_id, offset, data)[25:])
            offset += len(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def safe_file_name(name: str) -> str:
    """A contact's file name made harmless: no directories, no leading dots (no ``.bashrc``),
    only letters, digits and ``._- ``, at most 100 characters."""
    kept = "".join(c for c in name if c.isalnum() or c in "._- ").strip().lstrip(".")
    return kept[:100] or "file"


def open_private(path: Path) -> int:
    """A descriptor for writing ``path``, created 0600 (exclusively when new, never through a
    symlink); an existing file is kept and tightened to 0600."""
    flags = os.O_RDWR | os.O_NOFOLLOW
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = os.open(path, flags)
        os.fchmod(fd, 0o600)
        return fd


def sha256_file(path: Path) -> bytes:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()


class FileMessages(Protocol):
    """What file transfer needs of the messenger: the history database and the control
    messages of the transfer protocol, sent inside the contact's ratchet."""

    @property
    def history(self) -> History:
        """The history database (the ``files`` table lives there)."""
        ...

    async def send_file_offer(self, contact: bytes, file_id: bytes, name: str, size: int,
                              digest: bytes, key: bytes, *, group_id: bytes = b"",
                              origin: FileOrigin | None = None) -> object:
        """Queue the offer of a file to ``contact``."""
        ...

    async def request_file(self, contact: bytes, file_id: bytes, offset: int) -> None:
        """Ask the contact to stream the file from ``offset``."""
        ...

    async def confirm_file(self, contact: bytes, file_id: bytes) -> None:
        """Tell the contact the file arrived whole."""
        ...

    async def end_file(self, contact: bytes, file_id: bytes, reason: str) -> None:
        """Tell the contact a transfer ended here."""
        ...

    async def relay_group_file(self, entry: FileEntry, path: Path) -> None:
        """As a group's admin, offer a member's file to the other members."""
        ...


class FileTransfers:
    """Both directions of file transfer for one daemon (state in the history database)."""

    def __init__(self, messenger: FileMessages, root: Path, *, tasks: Spawner,
                 channel: Callable[[bytes], RTCDataChannel | None], events: EventLog) -> None:
        """``messenger`` sends the control messages; ``tasks`` runs the streams;
        ``channel`` gives a contact's open data channel (None when not connected);
        ``events`` tells API clients of offers, progress and completion."""
        self.messenger = messenger
        self.events = events
        self._tasks = tasks
        self._channel_of = channel
        self.history = messenger.history
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "partial").mkdir(exist_ok=True, mode=0o700)
        self.table = FileTable(self.history)
        self._seal_files_in_clear()
        self._streams: dict[bytes, asyncio.Task[None]] = {}
        self._handles: dict[bytes, BinaryIO] = {}
        self._unsynced: dict[bytes, int] = {}
        self._finishing: set[bytes] = set()
        self._changed = asyncio.Condition()
        self.sent: dict[bytes, int] = {}  # outgoing: bytes handed to the channel so far

    # ------------------------------------------------------------------ state

    def _seal_files_in_clear(self) -> None:
        """Encrypt at rest the received files an older version stored in clear.

        Idempotent and safe to interrupt: a file already sealed (killed between the rename
        and the commit) is only marked; a file that cannot be sealed now (no space, an I/O
        error) stays readable in clear and is tried again at the next start. A partial
        download in clear is fetched again from 0 (sealed as it arrives), except one whose
        bytes were all there (stopped after its final rename), which is sealed and finished."""
        for entry in self.table.in_clear():
            file_id, key, stored = entry.id, entry.key, Path(entry.path)
            received, complete, size = entry.received, entry.complete, entry.size
            final = self.root / file_id.hex()
            if not complete and not stored.exists() and final.exists() and received >= size:
                stored = final  # an older version stopped after the rename
            elif not complete:
                with contextlib.suppress(OSError):
                    os.unlink(stored)
                self.table.restart_sealed(file_id)
                continue
            try:
                if stored.exists() and not _already_sealed(stored, key, file_id, size):
                    free = shutil.disk_usage(self.root).free
                    if free < sealed_size(size) + DISK_RESERVE:
                        raise OSError(28, "not enough free disk space to encrypt it")
                    seal_file_in_place(stored, key, file_id, size)
            except OSError as exc:
                log.warning("could not encrypt a received file at rest (%s); it stays in "
                            "clear and is tried again at the next start", exc)
                continue
            self.table.mark_sealed(file_id, str(stored))
            log.info("encrypted at rest a file received in clear (%d bytes)", size)

    def _plain_content(self, entry: FileEntry, offset: int = 0) -> Iterator[bytes]:
        """A received file's plaintext from ``offset`` (sealed, or in clear if it could not
        be sealed yet)."""
        if entry.sealed:
            yield from read_sealed(entry.path, entry.key, entry.id, offset)
            return
        with open(entry.path, "rb") as handle:
            handle.seek(offset)
            while data := handle.read(CHUNK_BYTES):
                yield data

    def get(self, file_id: bytes) -> FileEntry | None:
        """A transfer by id."""
        return self.table.get(file_id)

    def all(self) -> list[FileEntry]:
        """Every transfer, newest first."""
        return self.table.all()

    # ------------------------------------------------------------------ sending

    async def send(self, contact: bytes, path: Path, *, group_id: bytes | None = None,
                   author: bytes | None = None, name: str | None = None,
                   digest: bytes | None = None, source: FileEntry | None = None,
                   origin: FileOrigin | None = None) -> FileEntry:
        """Offer a file to a contact (the offer is a queued message; content is pulled).
        ``group_id``/``author``: a file for a group (the admin relays members' files);
        ``source``: a complete received file to offer on (read decrypted from its store);
        ``origin``: its author's signed offer, sent with it."""
        source_id: bytes | None = None
        if source is not None:
            source = self.get(source.id)  # as stored now (it moved when it completed)
            if source is None or source.outgoing or not source.complete:
                raise LocalProtocolError("only a complete received file can be passed on")
            path, size, digest, source_id = Path(source.path), source.size, source.sha256, \
                source.id
            name = name or source.name
        else:
            path = path.expanduser().resolve()
            if not path.is_file():
                raise LocalProtocolError(f"{path} is not a readable file")
            size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise LocalProtocolError("file too large")
        if digest is None:
            digest = await asyncio.to_thread(sha256_file, path)
        name = name or path.name
        file_id, key = secrets.token_bytes(16), secrets.token_bytes(32)
        self.table.add_outgoing(file_id, contact, name=name, size=size, digest=digest, key=key,
                                path=str(path), created=time.time(), group_id=group_id,
                                author=author, source_id=source_id)
        await self.messenger.send_file_offer(contact, file_id, name, size, digest, key,
                                             group_id=group_id or b"", origin=origin)
        entry = self.get(file_id)
        assert entry is not None
        return entry

    def on_request(self, contact: bytes, file_id: bytes, offset: int) -> None:
        """The contact asks for the content from ``offset``: (re)start streaming."""
        entry = self.get(file_id)
        if entry is None or not entry.outgoing or entry.contact != contact \
                or not 0 <= offset <= entry.size or entry.error is not None:
            log.info("ignored a request for an unknown file")
            return
        if offset % CHUNK_BYTES:
            log.info("ignored a file request not at a chunk boundary")
            return
        old = self._streams.pop(file_id, None)
        if old is not None:
            old.cancel()
        self._streams[file_id] = self._tasks.spawn(self._stream(entry, offset))

    def _plain_chunks(self, entry: FileEntry, offset: int) -> Generator[bytes, None, None]:
        """An outgoing file's content from ``offset``, chunk by chunk."""
        if entry.source_id is not None:  # a received file passed on: decrypt its store
            source = self.get(entry.source_id)
            if source is None or not source.complete:
                raise LocalProtocolError("the received file to pass on is gone")
            yield from self._plain_content(source, offset)
            return
        with open(entry.path, "rb") as handle:
            handle.seek(offset)
            while data := handle.read(CHUNK_BYTES):
                yield data

    async def _stream(self, entry: FileEntry, offset: int) -> None:
        channel = self._channel_of(entry.contact)
        if channel is None:
            return
        chunks = self._plain_chunks(entry, offset)
        try:
            while offset < entry.size:
                while channel.bufferedAmount > SEND_BUFFER_HIGH:
                    if channel.readyState != "open":
                        return
                    await asyncio.sleep(0.005)
                if channel.readyState != "open":
                    return
                data = next(chunks, b"")
                if not data:
                    log.warning("%s shrank while being sent", entry.path)
                    return
                channel.send(seal_chunk(entry.key, entry.id, offset, data))
                offset += len(data)
                self.sent[entry.id] = offset
        except (OSError, LocalProtocolError) as exc:
            log.warning("cannot read %s for %s: %s", entry.name, entry.contact.hex()[:12], exc)
        finally:
            chunks.close()

    def on_done(self, contact: bytes, file_id: bytes) -> None:
        """The contact has the whole file, hash checked."""
        entry = self.get(file_id)
        if entry is None or not entry.outgoing or entry.contact != contact:
            return
        self.table.mark_delivered(file_id)
        self.events.emit("file.complete", id=file_id.hex(), direction="out", error=None)
        self._tasks.spawn(self._notify())

    # ------------------------------------------------------------------ receiving

    def on_offer(self, db: Transaction, contact: bytes, file_id: bytes, name: str, size: int,
                 digest: bytes, key: bytes, group_id: bytes | None = None,
                 author: bytes | None = None) -> None:
        """Record an incoming offer (inside the message's transaction)."""
        safe = safe_file_name(name)
        partial = self.root / "partial" / file_id.hex()
        # Only a file within the user's auto-accept size (and the quotas) downloads at once;
        # any other offer waits for `file accept`.
        accepted = size <= self.limits()["auto_accept"] and self.refusal(contact, size) is None
        error: str | None = None
        if not accepted and self.pending_offers(contact) >= MAX_PENDING_OFFERS:
            error = TOO_MANY_OFFERS  # one contact cannot bury the list; it is told
        inserted = self.table.add_offer(db, file_id, contact, name=safe, size=size,
                                        digest=digest, key=key, path=str(partial),
                                        created=time.time(), group_id=group_id,
                                        author=author, accepted=accepted, error=error)
        if inserted:
            self.events.emit("file.offer", id=file_id.hex(), contact=encode_user_id(contact),
                             name=safe, size=size, accepted=bool(accepted))
        if inserted and error is not None:
            log.warning("refused a file offer: %s", error)
            self._tasks.spawn(self.messenger.end_file(contact, file_id, "refused"))

    def pending_offers(self, contact: bytes) -> int:
        """Incoming offers from ``contact`` that wait for the user's accept or decline."""
        return self.table.pending_offers(contact)

    # ------------------------------------------------------------------ consent and limits

    def limits(self) -> dict[str, int]:
        """The user's auto-accept size and quotas (bytes)."""
        raw = self.history.get_meta("file_limits")
        stored = json.loads(raw) if raw else {}
        return {k: int(stored.get(k, v)) for k, v in DEFAULT_LIMITS.items()}

    def set_limits(self, **changes: int) -> dict[str, int]:
        """Change some of the limits (each 0 .. 1 TiB)."""
        limits = self.limits()
        for name, value in changes.items():
            if name not in DEFAULT_LIMITS or not 0 <= value <= MAX_FILE_BYTES:
                raise LocalProtocolError(f"{name} must be 0 to {MAX_FILE_BYTES} bytes")
            limits[name] = value
        with self.history.transaction() as db:
            self.history.set_meta(db, "file_limits", json.dumps(limits).encode())
        return limits

    def refusal(self, contact: bytes, size: int) -> str | None:
        """Why accepting ``size`` more bytes from ``contact`` is refused, or None."""
        limits = self.limits()
        by_contact = self.table.held_bytes(contact)
        total = self.table.held_bytes()
        if by_contact + size > limits["contact_quota"]:
            return (f"over the per-contact quota ({by_contact} of {limits['contact_quota']} "
                    "bytes held; see `file limits --contact-quota`)")
        if total + size > limits["total_quota"]:
            return (f"over the total quota ({total} of {limits['total_quota']} bytes held; "
                    "see `file limits --total-quota`)")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(self.root).free
        if free < size + DISK_RESERVE:
            return f"not enough free disk space ({free} bytes free, {size} needed + reserve)"
        return None

    def _incoming(self, file_id: bytes) -> FileEntry:
        entry = self.get(file_id)
        if entry is None or entry.outgoing:
            raise LocalProtocolError("no such incoming file")
        return entry

    async def accept(self, file_id: bytes) -> FileEntry:
        """The user accepts an offer: start the download (now if connected, else later)."""
        entry = self._incoming(file_id)
        if entry.error is not None:
            raise LocalProtocolError(f"{entry.name} is {entry.error}")
        if not entry.accepted:
            reason = self.refusal(entry.contact, entry.size)
            if reason is not None:
                raise LocalProtocolError(reason)
            self.table.mark_accepted(file_id)
            entry = self._incoming(file_id)
            await self.request(entry)  # asks only over a live connection, else on resume
        return entry

    async def end(self, file_id: bytes, reason: str) -> FileEntry:
        """Decline an offer or cancel a transfer (``reason``: ``declined`` or ``cancelled``):
        it ends on both sides (the contact is sent ``file_end``); a partial download is
        deleted."""
        entry = self.get(file_id)
        if entry is None:
            raise LocalProtocolError("no such file")
        if entry.complete:
            raise LocalProtocolError(f"{entry.name} is already complete")
        ended = await self._end_here(entry, reason)
        if entry.error is None:
            await self.messenger.end_file(entry.contact, file_id, reason)
        return ended

    async def on_end(self, contact: bytes, file_id: bytes, code: str) -> None:
        """The contact ended a transfer (declined, refused or cancelled it)."""
        entry = self.get(file_id)
        if entry is None or entry.contact != contact or entry.complete \
                or entry.error is not None:
            return
        reasons = END_REASONS_OUTGOING if entry.outgoing else END_REASONS_INCOMING
        reason = reasons.get(code, "ended by the contact")
        log.info("file %s: %s", entry.name, reason)
        await self._end_here(entry, reason)

    async def _end_here(self, entry: FileEntry, reason: str) -> FileEntry:
        file_id = entry.id
        stream = self._streams.pop(file_id, None)
        if stream is not None:
            stream.cancel()
        self._close_handle(file_id)
        self.table.end(file_id, reason)
        if not entry.outgoing:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        await self._notify()
        ended = self.get(file_id)
        assert ended is not None
        return ended

    async def resume(self, contact: bytes) -> None:
        """After (re)connecting: finish or ask for every incomplete incoming file of this
        contact, and repeat ``file_done`` for recent complete ones (it may have been lost)."""
        for entry in self.all():
            if entry.contact != contact or entry.outgoing:
                continue
            if entry.complete:
                if time.time() - entry.created < DONE_REPEAT_WINDOW:
                    await self.messenger.confirm_file(contact, entry.id)
            elif entry.error is None and entry.accepted:
                await self.request(entry)  # finishes at once when all bytes are there

    async def request(self, entry: FileEntry) -> None:
        """Pull the rest of a file from the recorded offset."""
        self._close_handle(entry.id)
        if entry.error is not None or entry.complete or not entry.accepted:
            return
        final = self.root / entry.id.hex()
        if entry.received >= entry.size and final.exists():
            await self._finish(entry.id)  # stopped after the rename
            return
        fd = open_private(Path(entry.path))  # create it 0600; keep what was checkpointed
        try:
            os.ftruncate(fd, sealed_size(entry.received))
        finally:
            os.close(fd)
        if entry.received >= entry.size:  # a 0-byte file, or all bytes checkpointed
            await self._finish(entry.id)
            return
        await self.messenger.request_file(entry.contact, entry.id, entry.received)

    def on_chunk(self, contact: bytes, data: bytes) -> None:
        """A chunk datagram from the contact (synchronous: chunks arrive in order)."""
        if len(data) < 1 + 16 + 8 + 16:
            return
        file_id, offset = data[1:17], int.from_bytes(data[17:25], "big")
        entry = self.get(file_id)
        if entry is None or entry.outgoing or entry.contact != contact or entry.complete \
                or entry.error is not None or not entry.accepted:
            return
        expected = entry.received + self._unsynced.get(file_id, 0)
        if offset != expected:
            return  # a stale stream from before a restart; the current one follows
        if len(data) - 25 - 16 != min(CHUNK_BYTES, entry.size - offset):
            log.warning("dropped a file chunk of the wrong length")
            return  # only whole chunks (the last may be short): the stored layout needs it
        try:
            chunk = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                data[25:], data[1:25], chunk_nonce(file_id, offset), entry.key)
        except nacl.exceptions.CryptoError:
            log.warning("dropped a forged or corrupted file chunk")
            return
        if offset + len(chunk) > entry.size:
            log.warning("file chunk beyond the announced size")
            return
        handle = self._handles.get(file_id)
        if handle is None:
            handle = open(entry.path, "r+b")  # noqa: SIM115 - kept open while receiving
            self._handles[file_id] = handle
        handle.seek(offset // CHUNK_BYTES * SEALED_CHUNK_BYTES)
        handle.write(data[25:])  # stored as it came: encrypted at rest
        unsynced = self._unsynced.get(file_id, 0) + len(chunk)
        self._unsynced[file_id] = unsynced
        total = entry.received + unsynced
        if unsynced >= CHECKPOINT_BYTES or total == entry.size:
            handle.flush()
            os.fsync(handle.fileno())
            self.table.set_received(file_id, total)
            self._unsynced[file_id] = 0
            self.events.emit("file.progress", id=file_id.hex(), received=total,
                             size=entry.size)
            self._tasks.spawn(self._notify())
            if total == entry.size:
                self._close_handle(file_id)
                self._tasks.spawn(self._finish(file_id))

    async def _finish(self, file_id: bytes) -> None:
        # One check at a time per file: a reconnection's resume can reach here while the
        # last chunk's check still runs (both would hash, the second rename would fail).
        if file_id in self._finishing:
            return
        self._finishing.add(file_id)
        try:
            await self._check_and_complete(file_id)
        finally:
            self._finishing.discard(file_id)

    async def _check_and_complete(self, file_id: bytes) -> None:
        entry = self.get(file_id)
        if entry is None or entry.complete:
            return
        final = self.root / file_id.hex()
        if not Path(entry.path).exists() and final.exists():  # stopped after the rename
            entry = FileEntry(**{**entry.__dict__, "path": str(final)})

        def plain_digest(stored: FileEntry) -> bytes:
            digest = hashlib.sha256()
            for chunk in self._plain_content(stored):
                digest.update(chunk)
            return digest.digest()
        try:
            digest = await asyncio.to_thread(plain_digest, entry)
        except LocalProtocolError:
            digest = b""
        if digest != entry.sha256:
            # The chunks were authentic (sealed with the offer's key), so the sender itself
            # sent content that does not match its offer: fetching again would loop forever.
            log.warning("file %s failed its SHA-256 check; the transfer ends", entry.name)
            self.table.fail(file_id, HASH_MISMATCH)
            self.events.emit("file.complete", id=file_id.hex(), direction="in",
                             error=HASH_MISMATCH)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            await self._notify()
            return
        if Path(entry.path) != final:
            os.replace(entry.path, final)
        self.table.complete(file_id, str(final))
        log.info("received file %s (%d bytes)", entry.name, entry.size)
        self.events.emit("file.complete", id=file_id.hex(), direction="in", error=None)
        await self.messenger.confirm_file(entry.contact, file_id)
        await self._notify()
        if entry.group_id is not None and entry.author is None:
            await self.messenger.relay_group_file(entry, final)

    def _close_handle(self, file_id: bytes) -> None:
        handle = self._handles.pop(file_id, None)
        if handle is not None:
            handle.close()
        self._unsynced.pop(file_id, None)

    def close(self) -> None:
        """Close open partial files (what was checkpointed survives)."""
        for file_id in list(self._handles):
            self._close_handle(file_id)

    # ------------------------------------------------------------------ API helpers

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_complete(self, file_id: bytes, timeout: float) -> bool:
        """Wait until the transfer is complete on both sides or has ended with an error."""
        async def done() -> None:
            async with self._changed:
                while True:
                    entry = self.get(file_id)
                    if entry is not None and (entry.complete or entry.error is not None):
                        return
                    await self._changed.wait()
        try:
            await asyncio.wait_for(done(), timeout)
        except TimeoutError:
            return False
        return True

    def export(self, file_id: bytes, dest: Path) -> Path:
        """Copy a received file to ``dest`` (a directory or a file path)."""
        entry = self.get(file_id)
        if entry is None:
            raise NotFound("no such file")
        if not entry.complete:
            raise NotFound(
                f"{entry.name} is not complete yet ({entry.received} of {entry.size} bytes)")
        target = dest / safe_file_name(entry.name) if dest.is_dir() else dest
        try:  # never overwrite: the name came from the contact; private like the original
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise NotFound(f"{target} exists; choose another destination") from None
        try:
            with open(fd, "wb") as out:
                for chunk in self._plain_content(entry):
                    out.write(chunk)
        except LocalProtocolError:
            os.unlink(target)  # never leave a half-decrypted copy
            raise
        return target


def file_json(entry: FileEntry, sent: int = 0) -> JsonObject:
    """The API form of a transfer (``sent``: bytes streamed so far, for outgoing ones)."""
    progress = entry.size if entry.complete else max(entry.received, sent)
    return {
        "id": entry.id.hex(),
        "direction": "out" if entry.outgoing else "in",
        "name": entry.name,
        "size": entry.size,
        "sha256": entry.sha256.hex(),
        "transferred": progress,
        "progress": round(100.0 * progress / entry.size, 1) if entry.size else 100.0,
        "complete": entry.complete,
        "error": entry.error,
        "accepted": entry.accepted,
    }

