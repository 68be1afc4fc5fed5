"""Review item 7: text chosen by other people (names, messages, file names, group names)
never reaches the terminal as a control sequence, and look-alike names of a verified contact
are caught and shown."""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtchat import cli
from dhtchat.app.terminal import TerminalSafeWriter, one_line, terminal_safe
from dhtchat.cli import rpcclient
from dhtchat.core.names import name_skeleton
from dhtchat.store.contacts import ContactStore

REDRAW = "\x1b[1A\x1b[2K\rAlice accepted your request"
BIDI = "evil\u202etxt.exe"


def _dangerous(text: str, keep: str) -> list[str]:
    return [c for c in text if c not in keep and (
        unicodedata.category(c) in ("Cc", "Cf") or c in "\u2028\u2029\u0085")]


@given(st.text())
def test_no_control_or_format_character_survives(text: str) -> None:
    assert _dangerous(terminal_safe(text), "\n\t") == []
    assert _dangerous(one_line(text), "") == []
    assert "\n" not in one_line(text)


def test_escapes_are_visible_and_plain_text_is_unchanged() -> None:
    assert terminal_safe(REDRAW) == "\\x1b[1A\\x1b[2K\\x0dAlice accepted your request"
    assert terminal_safe(BIDI) == "evil\\u202etxt.exe"
    assert terminal_safe("héllo wörld ✓\nline two") == "héllo wörld ✓\nline two"
    assert one_line("Bob\nAlice: hi") == "Bob\\x0aAlice: hi"


def test_the_writer_escapes_everything_written_through_it() -> None:
    out = io.StringIO()
    writer = TerminalSafeWriter(out)
    print(REDRAW, file=writer)
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


@pytest.mark.parametrize("look_alike", [
    "alice", "ALICE", "Alice ", "\u0410lice",  # Cyrillic A
    "Al\u0456ce",  # Cyrillic i
    "A\u200blice",  # zero-width space inside
    "\uff21lice",  # fullwidth A (NFKC)
    "Al1ce",
])
def test_look_alike_names_share_a_skeleton(look_alike: str) -> None:
    assert name_skeleton(look_alike) == name_skeleton("Alice")


@pytest.mark.parametrize("other", ["Bob", "Alicia", "Alex"])
def test_different_names_differ(other: str) -> None:
    assert name_skeleton(other) != name_skeleton("Alice")


def test_a_look_alike_of_a_verified_contact_is_reported(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "contacts.sqlite")
    alice, mallory = b"A" * 32, b"M" * 32
    store.mark_verified(alice, "Alice", 1.0)
    assert store.verified_impersonated(mallory, "\u0410l\u0456ce") == "Alice"
    assert store.verified_impersonated(alice, "Alice") is None  # the real one
    assert store.verified_impersonated(mallory, "Bob") is None


def _fake_daemon(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> None:
    async def fake_call(path: Path, method: str, params: dict[str, Any],
                        timeout: float) -> Any:
        return answers[method]
    monkeypatch.setattr(rpcclient, "rpc_call", fake_call)


def test_cli_output_of_stranger_text_has_no_escape_sequences(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    me, mallory = "m" * 10, "x" * 10
    contacts = [{"name": REDRAW, "state": "incoming", "id": mallory, "message": BIDI,
                 "warning": "uses the name of your verified contact 'Alice' but is a "
                            "different identity"},
                {"name": "me", "state": "accepted", "id": me}]
    message = {"from": mallory, "text": "hi\n[12:00:00] Alice: send me the file\x1b]0;x\x07",
               "timestamp": 0.0, "read": False, "delivered": False}
    _fake_daemon(monkeypatch, {"contact.list": contacts, "message.history": [message],
                               "status": {"public_key": me, "id": me}})
    profile = ["--profile", str(tmp_path / "p")]
    assert cli.main([*profile, "contact", "list"]) == 0
    assert cli.main([*profile, "history", "anyone"]) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert _dangerous(text, "\n") == [], text
    assert "WARNING" in text and "verified contact 'Alice'" in text
    # The message's second line is indented: it cannot pass for a line of its own.
    assert "\n[12:00:00] Alice" not in text
