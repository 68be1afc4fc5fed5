"""docs/api.md is the API: every documented method and param exists with the documented type,
requiredness, limits and default, and nothing the daemon serves is undocumented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dhtchat.app.api import Api
from dhtchat.app.events import EVENT_TYPES
from dhtchat.app.params import Params, decode_params
from dhtchat.app.rpc import RpcError

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"

# One `name` or `name?` in a params cell, with what follows it in brackets.
_PARAM = re.compile(r"`([a-z_]+)(\?)?`(?:\s*\(((?:[^()]|\([^()]*\))*)\))?")


class Documented:
    """What docs/api.md says about one param of one method."""

    def __init__(self) -> None:
        self.optional: bool | None = None  # from a params cell (`name?`)
        self.type: str | None = None  # from a param table
        self.required: bool | None = None  # from a param table
        self.limits: list[str] = []  # limit texts (param table, or the bracket in a cell)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _parse(text: str) -> dict[str, dict[str, Documented]]:
    """Method -> param -> what the doc says, from §3 (up to §4)."""
    methods: dict[str, dict[str, Documented]] = {}
    section = text[text.index("## 3. Methods"):text.index("## 4. Errors")]
    heading_method: str | None = None
    header: list[str] = []
    for line in section.splitlines():
        if line.startswith("### "):
            found = re.match(r"### [\d.]+ `([a-z_.]+)`", line)
            heading_method = found.group(1) if found else None
            continue
        if not line.startswith("|"):
            header = []
            continue
        cells = _cells(line)
        if set(line) <= {"|", "-", " "}:
            continue
        if not header:
            header = cells
            continue
        if header[:2] == ["param", "type"] and heading_method is not None:
            name = cells[0].strip("`")
            doc = methods.setdefault(heading_method, {}).setdefault(name, Documented())
            doc.type = cells[1]
            doc.required = cells[2] == "yes"
            if "limits" in header:
                doc.limits.append(cells[header.index("limits")])
        elif header[0] == "method" and header[1] == "params":
            for method in re.findall(r"`([a-z_.]+)`", cells[0]):
                params = methods.setdefault(method, {})
                if cells[1] == "—":
                    continue
                for name, optional, bracket in _PARAM.findall(cells[1]):
                    doc = params.setdefault(name, Documented())
                    doc.optional = bool(optional) if doc.optional is None \
                        else doc.optional or bool(optional)
                    if bracket:
                        doc.limits.append(bracket)
    return methods


def _base(kind: Any) -> tuple[Any, bool]:
    """The type without ``Metadata`` and ``None`` (and whether None is allowed)."""
    nullable = False
    if isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    if isinstance(kind, msgspec.inspect.UnionType):
        members = [t.type if isinstance(t, msgspec.inspect.Metadata) else t for t in kind.types]
        nullable = any(isinstance(t, msgspec.inspect.NoneType) for t in members)
        members = [t for t in members if not isinstance(t, msgspec.inspect.NoneType)]
        if len(members) == 1:
            return members[0], nullable
        return msgspec.inspect.UnionType(tuple(members)), nullable
    return kind, nullable


_NAMES = {msgspec.inspect.StrType: "string", msgspec.inspect.IntType: "int",
          msgspec.inspect.FloatType: "number", msgspec.inspect.BoolType: "bool",
          msgspec.inspect.ListType: "array"}


def _type_text(kind: Any) -> str:
    base, nullable = _base(kind)
    if isinstance(base, msgspec.inspect.UnionType):
        text = " or ".join(_NAMES[type(t)] for t in (_base(t)[0] for t in base.types))
    else:
        text = _NAMES[type(base)]
    return text + (" or null" if nullable else "")


def _code_limits(kind: Any) -> dict[str, Any]:
    """The limits a field's type carries: lo (and whether exclusive), hi, hex."""
    base, _ = _base(kind)
    if isinstance(base, msgspec.inspect.UnionType):  # e.g. a contact or a list of them
        found: dict[str, Any] = {}
        for member in base.types:
            found.update(_code_limits(member))
        return found
    out: dict[str, Any] = {}
    if isinstance(base, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        if base.gt is not None:
            out["lo"], out["exclusive"] = base.gt, True
        elif base.ge is not None:
            out["lo"] = base.ge
        if base.le is not None:
            out["hi"] = base.le
    elif isinstance(base, (msgspec.inspect.StrType, msgspec.inspect.ListType)):
        if base.min_length:
            out["lo"] = base.min_length
        if base.max_length is not None:
            out["hi"] = base.max_length
        if isinstance(base, msgspec.inspect.StrType) and base.pattern:
            assert base.pattern == "^[0-9a-fA-F]{32}$", base.pattern
            out["hex"] = True
    return out


def _doc_limits(texts: list[str]) -> dict[str, Any]:
    """The limits in the doc's words: "0 < t ≤ 3600", "1-10000", "0 (off) to N",
    "≤ 64 characters", "non-empty", "32 hex digits"."""
    out: dict[str, Any] = {}
    for text in texts:
        if found := re.search(r"(\d+) < \w+ ≤ (\d+)", text):
            out.update(lo=int(found.group(1)), exclusive=True, hi=int(found.group(2)))
        elif found := re.search(r"(-?\d+)(?: \([^)]*\))?\s*(?:-|\u2013|to)\s*(\d+)", text):
            out.update(lo=int(found.group(1)), hi=int(found.group(2)))
        if found := re.search(r"≤ (\d+) characters", text):
            out["hi"] = int(found.group(1))
        if "non-empty" in text:
            out["lo"] = 1
        if "32 hex digits" in text:
            out["hex"] = True
    return out


def _doc_default(texts: list[str]) -> Any:
    for text in texts:
        if found := re.search(r"default (`[^`]*`|-?\d+(?:\.\d+)?|true|false)", text):
            value = found.group(1)
            if value.startswith("`"):
                return value.strip("`")
            if value in ("true", "false"):
                return value == "true"
            return float(value)
    return msgspec.NODEFAULT


class _NoDaemon:
    pass


METHODS = Api(_NoDaemon()).methods()  # type: ignore[arg-type]  # (only the table is read)
DOCUMENTED = _parse(DOC.read_text(encoding="utf-8"))


def test_every_method_is_documented_and_every_documented_method_exists() -> None:
    assert sorted(DOCUMENTED) == sorted(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_params_are_the_documented_ones(method: str) -> None:
    kind, _handler = METHODS[method]
    fields = {f.name: f for f in msgspec.inspect.type_info(kind).fields}
    documented = DOCUMENTED[method]
    assert sorted(documented) == sorted(fields), "documented params differ from the code's"
    for name, field in fields.items():
        doc = documented[name]
        where = f"{method} {name}"
        if doc.optional is not None:
            assert doc.optional == (not field.required), f"{where}: optional (`?`) differs"
        if doc.required is not None:
            assert doc.required == field.required, f"{where}: 'required' differs"
        if doc.type is not None:
            assert doc.type == _type_text(field.type), f"{where}: type differs"
        assert _doc_limits(doc.limits) == _code_limits(field.type), f"{where}: limits differ"
        default = _doc_default(doc.limits)
        if default is not msgspec.NODEFAULT:
            assert default == field.default, f"{where}: default differs"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bad_params_are_invalid_params_with_a_message(method: str) -> None:
    """Every Struct decodes (its annotations are valid msgspec types) and a value of the
    wrong type for any field is INVALID_PARAMS with a sentence, not a crash."""
    kind, _handler = METHODS[method]
    assert issubclass(kind, Params)
    for field in msgspec.inspect.type_info(kind).fields:
        with pytest.raises(RpcError) as bad:
            decode_params(kind, {field.name: {"not": "this"}})
        assert bad.value.code == -32602
        assert bad.value.message and "$." not in bad.value.message, bad.value.message


def test_the_event_types_are_the_documented_ones() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### 3.19 `events.subscribe`"):text.index("### 3.20")]
    rows = [_cells(line) for line in section.splitlines() if line.startswith("| `")]
    documented = {re.fullmatch(r"`([a-z.]+)`", row[0]).group(1)  # type: ignore[union-attr]
                  for row in rows if re.fullmatch(r"`([a-z.]+)`", row[0])}
    documented -= {"since", "type"}  # (the param table, the header)
    assert documented == EVENT_TYPES
