"""The JSON types of the daemon's API (params in, results and events out).

``JsonValue`` is what :func:`json.loads` returns; a result the daemon builds is a
``JsonObject`` (``dict[str, object]``: its values are JSON values too, but a ``dict`` of a
narrower value type would not be one of ``JsonValue`` for mypy, as ``dict`` is invariant).
"""

from __future__ import annotations

from typing import TypeAlias

JsonValue: TypeAlias = (bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
                        | None)
"""A value JSON can carry."""

JsonObject: TypeAlias = dict[str, object]
"""A JSON object: the params of a request, a result, an event."""
