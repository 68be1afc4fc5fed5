"""Encrypted backups of a profile (``dhtchat backup`` / ``dhtchat restore``).

Theory of operation (format: docs/protocol.md, "Backup files"): a backup is one file, a
clear header (magic, version, Argon2id parameters and salt) followed by a libsodium
*secretstream* (XChaCha20-Poly1305, one authenticated chunk per record, the last one tagged
``FINAL``) under a key derived from a passphrase of the backup's own (Argon2id, RFC 9106).
Each chunk's plaintext is one msgpack record: the header record, the identity seed, the rows
of the profile's databases (:mod:`dhtchat.store.backup`), optionally the received files in
chunks, and an end record with the counts. Everything is streamed: neither writing nor
reading holds more than one record in memory, whatever the size of the history.

Replay rule: ratchet sessions, prekeys and already encrypted frames are never in a backup.
A restored profile starts a fresh X3DH session with each contact from the contact's
published prekey bundle (its first message carries the X3DH header); frames the contacts
encrypted under the old sessions fail to decrypt and trigger the existing session reset
(:meth:`~dhtchat.app.messenger.Messenger` ``_ask_reset``), after which the contacts encrypt
their pending messages again. So an old copy can never reuse a message key or resurrect a
consumed one-time prekey, however old the backup.

Both commands need the daemon stopped: backup holds the profile lock while it reads (a
running daemon is a clear error), restore writes into a new staging directory that becomes
the profile only once the whole file has been read and authenticated.
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import msgspec
import nacl.bindings as sodium
import nacl.exceptions
import nacl.pwhash

from dhtchat.app.keystore import MEMLIMIT, OPSLIMIT, KeystoreError, save_identity_file
from dhtchat.app.lifecycle import DaemonAlreadyRunning, ProfileLock
from dhtchat.app.profile import Profile, make_private
from dhtchat.core.errors import DhtChatError
from dhtchat.core.identity import SEED_BYTES, SigningIdentity
from dhtchat.store.backup import (
    ACCOUNT_TABLES,
    CONTACT_TABLES,
    HISTORY_TABLES,
    BackupRowError,
    dump_rows,
    load_rows,
)
from dhtchat.store.calls import CallStore
from dhtchat.store.contacts import ContactStore, contacts_key
from dhtchat.store.files import FileTable
from dhtchat.store.groups import GroupTable
from dhtchat.store.history import History, history_key

MAGIC: Final = b"dhtchat-backup\n\x00"
VERSION: Final = 1
_PREFIX: Final = struct.Struct(">16sHIQ16s")  # magic, version, opslimit, memlimit, salt
_LENGTH: Final = struct.Struct(">I")
MAX_RECORD: Final = 1 << 20  # plaintext bytes of one record (chunk)
DATA_CHUNK: Final = 256 * 1024  # file bytes per data record
ROW_BATCH: Final = 500  # rows per transaction while restoring
_ABYTES: Final = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_HEADERBYTES: Final = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
_TAG_FINAL: Final = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_TAG_MESSAGE: Final = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


class BackupError(DhtChatError):
    """The backup cannot be written or read (damaged, truncated, not a backup...)."""


class WrongBackupPassphrase(KeystoreError):
    """The passphrase does not open the backup."""


@dataclass(frozen=True)
class BackupSummary:
    """What a backup holds (or a restore wrote)."""

    user_id: str
    contacts: int
    rows: int
    files: int
    file_bytes: int
    history: bool
    created: float  # when the backup was written (UNIX time)


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES,
                                    passphrase.encode("utf-8"), salt,
                                    opslimit=opslimit, memlimit=memlimit)


class _Writer:
    """The secretstream of a backup being written: one chunk per record."""

    def __init__(self, handle: IO[bytes], passphrase: str) -> None:
        salt = secrets.token_bytes(nacl.pwhash.argon2id.SALTBYTES)
        self._prefix = _PREFIX.pack(MAGIC, VERSION, OPSLIMIT, MEMLIMIT, salt)
        key = _derive(passphrase, salt, OPSLIMIT, MEMLIMIT)
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._handle = handle
        handle.write(self._prefix + header)

    def record(self, record: list[object], *, final: bool = False) -> None:
        plain = msgspec.msgpack.encode(record)
        if len(plain) > MAX_RECORD:
            raise BackupError(f"a {record[0]} record is larger than {MAX_RECORD} bytes")
        chunk = sodium.crypto_secretstream_xchacha20poly1305_push(
            self._state, plain, self._prefix, _TAG_FINAL if final else _TAG_MESSAGE)
        self._handle.write(_LENGTH.pack(len(chunk)) + chunk)


def _read_exactly(handle: IO[bytes], size: int) -> bytes | None:
    data = handle.read(size)
    return data if len(data) == size else None


def _records(handle: IO[bytes], passphrase: str) -> Iterator[list[object]]:
    """The records of a backup, authenticated one by one; the last one yielded is the one
    tagged FINAL (anything after it, or a stream without it, is an error)."""
    prefix = _read_exactly(handle, _PREFIX.size)
    if prefix is None or not prefix.startswith(MAGIC):
        raise BackupError("not a dhtchat backup file")
    _, version, opslimit, memlimit, salt = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise BackupError(f"backup format version {version} is not supported (this dhtchat "
                          f"reads version {VERSION})")
    if not (1 <= opslimit <= 64 and 8192 <= memlimit <= 4 * 1024**3):
        raise BackupError("the backup's Argon2id parameters are out of range (damaged?)")
    header = _read_exactly(handle, _HEADERBYTES)
    if header is None:
        raise BackupError("the backup is truncated (no stream header)")
    key = _derive(passphrase, salt, opslimit, memlimit)
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    first = True
    while True:
        offset = handle.tell()
        raw_length = handle.read(_LENGTH.size)
        if not raw_length:
            raise BackupError(f"the backup is truncated: it ends at byte {offset} before its "
                              "end record")
        if len(raw_length) != _LENGTH.size:
            raise BackupError(f"the backup is truncated at byte {offset}")
        (length,) = _LENGTH.unpack(raw_length)
        if not _ABYTES < length <= MAX_RECORD + _ABYTES:
            raise BackupError(f"the backup is damaged at byte {offset} (bad chunk length)")
        chunk = _read_exactly(handle, length)
        if chunk is None:
            raise BackupError(f"the backup is truncated at byte {offset}")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, chunk, prefix)
        except nacl.exceptions.CryptoError:
            if first:
                raise WrongBackupPassphrase("wrong backup passphrase (or the backup file is "
                                            "damaged at its start)") from None
            raise BackupError(f"the backup is damaged at byte {offset} (it does not "
                              "authenticate)") from None
        first = False
        try:
            record = msgspec.msgpack.decode(plain)
        except msgspec.DecodeError:
            raise BackupError(f"the backup holds a malformed record at byte {offset}") \
                from None
        if not isinstance(record, list) or not record or not isinstance(record[0], str):
            raise BackupError(f"the backup holds a malformed record at byte {offset}")
        yield record
        if tag == _TAG_FINAL:
            if handle.read(1):
                raise BackupError("the backup has data after its end record")
            return


# ---------------------------------------------------------------------- writing


def write_backup(profile: Profile, identity: SigningIdentity, dest: Path, passphrase: str,
                 *, history: bool) -> BackupSummary:
    """Write a backup of ``profile`` to ``dest`` (atomically, mode 0600). Holds the profile
    lock meanwhile: a running daemon is a :class:`BackupError`."""
    try:
        lock = ProfileLock.acquire(profile.root)
    except DaemonAlreadyRunning as exc:
        raise BackupError(f"{exc}: stop it first (a backup reads the databases the daemon "
                          "writes)") from None
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            summary = _write(profile, identity, handle, passphrase, history)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
        return summary
    except OSError as exc:
        raise BackupError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
        lock.release()


def _write(profile: Profile, identity: SigningIdentity, handle: IO[bytes], passphrase: str,
           with_history: bool) -> BackupSummary:
    writer = _Writer(handle, passphrase)
    created = time.time()
    writer.record(["header", {"version": VERSION, "created": created,
                              "user_id": identity.user_id, "history": with_history,
                              "root": str(profile.root.resolve())}])
    writer.record(["identity", identity.seed])
    rows = files = file_bytes = 0
    contacts = ContactStore(profile.root / "contacts.sqlite", contacts_key(identity.seed))
    try:
        for table in CONTACT_TABLES:
            for row in dump_rows(contacts.connection, table):
                writer.record(["row", "contacts", table, row])
                rows += 1
        contact_count = len(contacts.all("accepted"))
    finally:
        contacts.close()
    messages = History(profile.root / "messages.db", history_key(identity.seed))
    try:
        for table in ACCOUNT_TABLES + (HISTORY_TABLES if with_history else ()):
            for row in dump_rows(messages.connection, table):
                writer.record(["row", "history", table, row])
                rows += 1
    finally:
        messages.close()
    if with_history:
        folder = profile.root / "files"
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if not path.is_file() or path.is_symlink():
                continue  # (partial/ is a directory: unfinished downloads start over)
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                writer.record(["file", path.name, size])
                left = size
                while left > 0:
                    data = source.read(min(DATA_CHUNK, left))
                    if not data:
                        raise BackupError(f"{path} shrank while it was backed up")
                    writer.record(["data", data])
                    left -= len(data)
            files += 1
            file_bytes += size
    writer.record(["end", {"rows": rows, "files": files, "bytes": file_bytes}], final=True)
    return BackupSummary(identity.user_id, contact_count, rows, files, file_bytes,
                         with_history, created)


# ---------------------------------------------------------------------- reading


def _is_empty_dir(root: Path) -> bool:
    return root.is_dir() and not any(root.iterdir())


def restore_backup(source: Path, root: Path, passphrase: str,
                   identity_passphrase: str | None) -> BackupSummary:
    """Build the profile ``root`` (which must not exist, or be empty) from the backup
    ``source``; the identity is stored under ``identity_passphrase`` (None: in clear).
    Nothing is left behind when the backup does not open or is damaged."""
    if root.exists() and not _is_empty_dir(root):
        raise BackupError(f"profile {root} is not empty: restore into a new profile "
                          "(--profile DIR); stop and move away the old one first")
    root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = root.parent / f".{root.name}.restoring-{secrets.token_hex(6)}"
    make_private(staging)
    try:
        try:
            with open(source, "rb") as handle:
                summary = _restore(handle, Profile(staging), root, passphrase,
                                   identity_passphrase)
        except FileNotFoundError:
            raise BackupError(f"no backup file {source}") from None
        except OSError as exc:
            raise BackupError(f"cannot read {source}: {exc.strerror or exc}") from None
        if root.exists():
            root.rmdir()  # (checked empty above)
        os.replace(staging, root)
        return summary
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _field(record: list[object], index: int, kind: type) -> object:
    if len(record) <= index or not isinstance(record[index], kind):
        raise BackupError(f"the backup holds a malformed {record[0]} record")
    return record[index]


class _Restorer:
    """Rows and files of a backup going into a staging profile (rows in batches)."""

    def __init__(self, staging: Profile, final_root: Path, old_root: str,
                 contacts: ContactStore, history: History) -> None:
        self.staging = staging
        self.contacts = contacts
        self.history = history
        self._old_files = old_root.rstrip("/") + "/files/"
        self._new_files = str(final_root.resolve()) + "/files/"
        self._batch: list[dict[str, object]] = []
        self._batch_of: tuple[str, str] | None = None
        self.rows = 0

    def row(self, database: str, table: str, row: dict[str, object]) -> None:
        if database not in ("contacts", "history"):
            raise BackupError("the backup holds rows of an unknown database")
        if table == "files" and isinstance(row.get("path"), str):
            path = str(row["path"])
            if path.startswith(self._old_files):  # a received file: it moves with the profile
                row["path"] = self._new_files + path[len(self._old_files):]
        if self._batch_of != (database, table) or len(self._batch) >= ROW_BATCH:
            self.flush()
            self._batch_of = (database, table)
        self._batch.append(row)
        self.rows += 1

    def flush(self) -> None:
        if self._batch_of is None or not self._batch:
            return
        database, table = self._batch_of
        try:
            if database == "contacts":
                with self.contacts.connection:
                    load_rows(self.contacts.connection, table, self._batch)
            else:
                with self.history.transaction():
                    load_rows(self.history.connection, table, self._batch)
        except BackupRowError as exc:
            raise BackupError(str(exc)) from None
        self._batch = []


def _restore(handle: IO[bytes], staging: Profile, final_root: Path, passphrase: str,
             identity_passphrase: str | None) -> BackupSummary:
    records = _records(handle, passphrase)
    none: list[object] = ["none"]
    header = next(records, none)
    if header[0] != "header":
        raise BackupError("the backup does not start with its header record")
    meta = _field(header, 1, dict)
    assert isinstance(meta, dict)
    identity_record = next(records, none)
    seed = _field(identity_record, 1, bytes) if identity_record[0] == "identity" else b""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise BackupError("the backup holds no identity")
    identity = SigningIdentity.from_seed(seed)
    if meta.get("user_id") != identity.user_id:
        raise BackupError("the backup's identity does not match its header")
    stamp = meta.get("created")
    created = float(stamp) if isinstance(stamp, (int, float)) else 0.0
    save_identity_file(staging.identity_path, identity, identity_passphrase)
    key = contacts_key(identity.seed)
    contacts = ContactStore(staging.root / "contacts.sqlite", key)
    history = History(staging.root / "messages.db", history_key(identity.seed))
    try:
        FileTable(history)  # the tables of the store modules, at today's schema
        GroupTable(history)
        CallStore(history)
        restorer = _Restorer(staging, final_root, str(meta.get("root", "")), contacts,
                             history)
        files = file_bytes = 0
        summary: BackupSummary | None = None
        for record in records:
            kind = str(record[0])
            if summary is not None:
                raise BackupError("the backup holds records after its end record")
            if kind == "row":
                database, table = _field(record, 1, str), _field(record, 2, str)
                row = _field(record, 3, dict)
                assert isinstance(row, dict)
                restorer.row(str(database), str(table), row)
            elif kind == "file":
                restorer.flush()
                name, size = str(_field(record, 1, str)), _field(record, 2, int)
                assert isinstance(size, int)
                file_bytes += _restore_file(records, staging.root / "files", name, size)
                files += 1
            elif kind == "end":
                restorer.flush()
                counts = _field(record, 1, dict)
                assert isinstance(counts, dict)
                if counts.get("rows") != restorer.rows or counts.get("files") != files:
                    raise BackupError("the backup's end record does not match its contents")
                summary = BackupSummary(identity.user_id, len(contacts.all("accepted")),
                                        restorer.rows, files, file_bytes,
                                        bool(meta.get("history")), created)
            else:
                raise BackupError(f"the backup holds an unknown record {kind[:20]!r}")
        if summary is None:
            raise BackupError("the backup ended without its end record")
        return summary
    finally:
        contacts.close()
        history.close()


def _restore_file(records: Iterator[list[object]], folder: Path, name: str, size: int) -> int:
    if len(name) != 32 or any(c not in "0123456789abcdef" for c in name) or size < 0:
        raise BackupError("the backup holds a file with a malformed name")
    folder.mkdir(exist_ok=True, mode=0o700)
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        written = 0
        while written < size:
            record = next(records, None)
            if record is None or record[0] != "data":
                raise BackupError(f"the backup's file {name[:12]} is incomplete")
            data = _field(record, 1, bytes)
            assert isinstance(data, bytes)
            if written + len(data) > size:
                raise BackupError(f"the backup's file {name[:12]} is longer than it says")
            out.write(data)
            written += len(data)
    return size


def ensure_stopped(root: Path) -> None:
    """Raise :class:`BackupError` when a daemon runs on the profile ``root``."""
    if not (root / "daemon.lock").exists():
        return
    try:
        ProfileLock.acquire(root).release()
    except DaemonAlreadyRunning as exc:
        raise BackupError(f"{exc}: stop it first (`dhtchat backup` reads the databases the "
                          "daemon writes)") from None
