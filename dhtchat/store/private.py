"""Files only their owner can read, written atomically (the databases, the identity file)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` readable only by the owner.

    The temporary file has a unique random name and is created exclusively
    (``O_EXCL|O_NOFOLLOW``, mode 0600 whatever the umask), so a planted file or symlink in
    the directory can neither be written through nor pre-opened by someone else."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
