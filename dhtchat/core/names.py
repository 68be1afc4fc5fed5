"""Names compared as a person reads them.

Theory of operation: a contact (or a stranger sending a request) chooses its display name, so
it can pick one that looks like a verified contact's (Unicode TR #36 section 2 / TR #39
section 4 for confusables). :func:`name_skeleton` reduces a name to what a reader sees:
NFKC, case folded, format characters and spaces dropped, common Cyrillic/Greek homoglyphs and
look-alike digits folded to Latin (a small subset of TR #39's confusables table, the letters
people actually mix up). Two names with the same skeleton look the same.
"""

from __future__ import annotations

import unicodedata
from typing import Final

# Homoglyphs folded to the Latin letter they imitate (after NFKC and casefold), written as
# escapes: Cyrillic, Greek and Latin look-alikes, then digits and signs.
_CONFUSABLES: Final = str.maketrans({
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y",
    "\u0445": "x", "\u0455": "s", "\u0456": "l", "\u0458": "j", "\u0501": "d", "\u04bb": "h",
    "\u051b": "q", "\u051d": "w", "\u04cf": "l", "\u0432": "b", "\u043a": "k", "\u043c": "m",
    "\u043d": "h", "\u0442": "t", "\u044c": "b", "\u0261": "g", "\u2113": "l", "\u03b1": "a",
    "\u03b2": "b", "\u03b5": "e", "\u03b7": "n", "\u03b9": "l", "\u03ba": "k", "\u03bd": "v",
    "\u03bf": "o", "\u03c1": "p", "\u03c4": "t", "\u03c5": "u", "\u03c7": "x", "\u03c9": "w",
    "0": "o", "1": "l", "i": "l", "|": "l", "!": "l", "5": "s", "$": "s", "@": "a",
})
_PAIRS: Final = (("rn", "m"), ("vv", "w"), ("cl", "d"))


def name_skeleton(name: str) -> str:
    """What a reader sees of ``name``: equal skeletons mean look-alike names."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    folded = "".join(c for c in folded
                     if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf", "Mn"))
    folded = unicodedata.normalize("NFKC", folded).translate(_CONFUSABLES)
    for pair, letter in _PAIRS:
        folded = folded.replace(pair, letter)
    return folded
