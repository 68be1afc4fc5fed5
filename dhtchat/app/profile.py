"""The profile directory: where a person's identity and a node's state live.

Resolution order: ``--profile DIR``, then ``$DHTCHAT_HOME``, then the platform's user data
directory (``platformdirs.user_data_dir("dhtchat")``, e.g. ``~/.local/share/dhtchat``).

Node state (``node.sqlite``, :class:`dhtchat.store.node.NodeState`) holds the node key
(separate from the identity key, so the DHT never links an IP address to a person), the UDP
port the daemon used last (reused when ``dhtchat daemon`` gets no ``--port``) and the DHT
peers that answered, so a restarted node rejoins the network without a bootstrap address.
``dhtchat node`` keeps node state only when a profile is given explicitly (``--profile`` or
``$DHTCHAT_HOME``); otherwise it runs with an ephemeral node key, as a throwaway bootstrap
node would.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from dhtchat.core.errors import DhtChatError
from dhtchat.store.node import NodeState

__all__ = ["NodeState", "Profile", "ProfileNotPrivate", "make_private", "resolve_profile_dir"]


def resolve_profile_dir(explicit: str | None) -> tuple[Path, bool]:
    """The profile directory and whether the user chose it (flag or environment)."""
    if explicit:
        return Path(explicit).expanduser(), True
    env = os.environ.get("DHTCHAT_HOME")
    if env:
        return Path(env).expanduser(), True
    return Path(platformdirs.user_data_dir("dhtchat", appauthor=False)), False


class ProfileNotPrivate(DhtChatError):
    """The profile directory cannot be made private (a symlink, or another user's)."""


def make_private(root: Path) -> None:
    """Create ``root`` (mode 0700) or tighten an existing profile: the directory and every
    directory under it become 0700, every file 0600, whatever the umask or who created it
    (symlinks are neither followed nor changed). Refuses a profile that is a symlink or is
    owned by another user, as ssh refuses a loose ``~/.ssh``."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ProfileNotPrivate(f"profile {root} is not a directory (a symlink?)")
    if info.st_uid != os.getuid():
        raise ProfileNotPrivate(f"profile {root} belongs to another user (uid {info.st_uid})")
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o700)
            elif stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
                os.chmod(path, 0o600)


@dataclass(frozen=True)
class Profile:
    """Paths inside a profile directory."""

    root: Path

    @property
    def identity_path(self) -> Path:
        """The encrypted identity file."""
        return self.root / "identity.json"

    @property
    def node_db_path(self) -> Path:
        """SQLite database with the node key, its port and the DHT peers that answered."""
        return self.root / "node.sqlite"

    def has_identity(self) -> bool:
        """Whether an identity file exists."""
        return self.identity_path.exists()
