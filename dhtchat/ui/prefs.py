"""The desktop client's own preferences (``PROFILE/ui-prefs.json``, mode 0600): the media of
the calls it places and answers, and what its notifications may say. The daemon's settings
are not here (``settings.get``/``settings.set``, ``file.limits``): only what no daemon uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

FILE_NAME: Final = "ui-prefs.json"


@dataclass
class UiPrefs:
    """What this client does on its side."""

    audio_in: str = "alsa:default"  # the microphone (a media spec, docs/api.md §3.18)
    audio_out: str = "alsa:default"  # the speaker
    video_in: str = "v4l2:/dev/video0"  # the camera of video calls
    notifications: bool = True  # notify at all (desktop, else the terminal bell)
    notify_text: bool = False  # show message text in notifications (off: withheld)

    @classmethod
    def load(cls, profile: Path) -> UiPrefs:
        """Read the preferences; missing or unreadable values: the defaults."""
        try:
            doc = json.loads((profile / FILE_NAME).read_text("utf-8"))
        except (OSError, ValueError):
            return cls()
        prefs = cls()
        if not isinstance(doc, dict):
            return prefs
        for item in fields(cls):
            value = doc.get(item.name)
            if isinstance(value, type(getattr(prefs, item.name))) and value != "":
                setattr(prefs, item.name, value)
        return prefs

    def save(self, profile: Path) -> None:
        """Write the preferences (0600, atomically)."""
        path = profile / FILE_NAME
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)
        os.replace(tmp, path)

    def media(self, video: bool = False) -> dict[str, str]:
        """The media params of ``call.start`` / ``call.answer``."""
        out = {"audio_in": self.audio_in, "audio_out": self.audio_out}
        if video:
            out["video_in"] = self.video_in
        return out
