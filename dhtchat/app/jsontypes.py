"""The types of the JSON values the daemon's API returns and its events carry.

A result is built as a ``dict`` and handed to the JSON-RPC layer, which serialises it; the
Python side never reads it back by key, so its members are typed ``object`` (any value
``json.dumps`` accepts) rather than ``Any``: code that wants a member's type must narrow it.
"""

from __future__ import annotations

from typing import TypeAlias

JsonObject: TypeAlias = dict[str, object]
"""A JSON object: a result of the API, an event's data, a document written as JSON."""

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
"""Any JSON value, recursively (for values read back from JSON and narrowed)."""
