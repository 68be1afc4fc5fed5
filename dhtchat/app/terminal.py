"""Text from the network made safe to print on a terminal.

Theory of operation: a contact (or a stranger sending a request) chooses names, messages and
file names. Printed raw, an ESC sequence could move the cursor and redraw a line, a carriage
return could overwrite one, a bidi override (U+202E) could reverse what follows, and a
newline inside a name could fake a whole line of output (see Boucher & Anderson, "Trojan
Source", 2021, and Unicode TR #36 section 2 / TR #39 section 4 for confusables). So:

* :func:`terminal_safe` escapes every C0/C1 control character (Unicode category ``Cc``)
  except newline and tab, every format character (``Cf``: bidi embeddings, overrides and
  isolates, zero-width joiners, the BOM) and the line/paragraph separators, as a visible
  ``\\x1b`` / ``\\u202e``; :func:`one_line` escapes newlines and tabs too, for fields that
  must fit on one line (names). :class:`TerminalSafeWriter` applies ``terminal_safe`` to
  everything the CLI writes, so no print site can forget it.
* Names are compared as a reader sees them by :func:`dhtchat.core.names.name_skeleton`.
"""

from __future__ import annotations

import io
import unicodedata
from typing import Final, TextIO

_SEPARATORS: Final = {"\u2028", "\u2029", "\u0085"}


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(char: str, keep: str) -> bool:
    if char in keep:
        return False
    return char in _SEPARATORS or unicodedata.category(char) in ("Cc", "Cf")


def terminal_safe(text: str) -> str:
    """``text`` with every control, format and separator character except newline and tab
    replaced by a visible escape."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if _unsafe(c, "\n\t") else c for c in text)


def one_line(text: str) -> str:
    """Like :func:`terminal_safe`, and newlines and tabs escaped too (for names)."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if _unsafe(c, "") else c for c in text)


class TerminalSafeWriter(io.TextIOBase):
    """A text stream that passes everything through :func:`terminal_safe`."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(terminal_safe(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    @property
    def wrapped(self) -> TextIO:
        """The stream this one writes to."""
        return self._stream
