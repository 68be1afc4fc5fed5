"""The desktop client's compose box and id field (pilot, no daemon), and how it words marks,
timers and names that others chose."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult
from textual.events import Paste

from dhtchat.ui import format as fmt
from dhtchat.ui.models import Message, parse_message
from dhtchat.ui.widgets import ComposeArea, IdInput

ME = "me" * 29


class _Box(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def compose(self) -> ComposeResult:
        yield ComposeArea(id="compose")
        yield IdInput(id="id")

    def on_compose_area_submitted(self, message: ComposeArea.Submitted) -> None:
        self.sent.append(message.text)


def test_enter_sends_ctrl_n_breaks_the_line_and_a_paste_never_sends() -> None:
    async def scenario() -> None:
        app = _Box()
        async with app.run_test() as pilot:
            box = app.query_one(ComposeArea)
            box.focus()
            await pilot.press("enter")  # nothing typed: nothing sent
            await pilot.press(*"one", "ctrl+n", *"two", "enter")
            await pilot.pause()
            assert app.sent == ["one\ntwo"]
            box.clear()
            app.post_message(Paste("pasted\nlines\n"))  # as the terminal driver does
            await pilot.pause()
            assert app.sent == ["one\ntwo"] and box.text == "pasted\nlines\n"
            await pilot.press("enter")
            await pilot.pause()
            assert app.sent[-1] == "pasted\nlines\n"
            field = app.query_one(IdInput)
            field.focus()
            app.post_message(Paste("abcd efgh\nijkl\n"))
            await pilot.pause()
            assert field.value == "abcd efgh ijkl"

    asyncio.run(scenario())


def _msg(**fields: object) -> Message:
    base: dict[str, object] = {"id": "00" * 16, "kind": "text", "author": ME, "from": ME,
                               "to": "x", "text": "hi", "timestamp": 1.0, "received": None,
                               "seq": 1, "delivered": False, "read": False}
    return parse_message(base | fields)  # type: ignore[arg-type]


def test_marks_timers_and_names() -> None:
    assert fmt.mark(_msg(), ME) == "…"
    assert fmt.mark(_msg(delivered=True), ME) == "✓"
    assert fmt.mark(_msg(delivered=True, read=True), ME) == "✓✓"
    assert fmt.mark(_msg(author="them", **{"from": "them"}), ME) == ""  # theirs: no mark
    assert fmt.mark_word(_msg(delivered=True), ME) == "delivered"
    notice = _msg(kind="notice", text="[timer] messages disappear 3600 s after they are read")
    assert fmt.timer_of([notice]) == 3600 and fmt.timer_text(3600) == "⏱ 1 h"
    off = _msg(kind="notice", text="[timer] disappearing messages off")
    assert fmt.timer_of([notice, off]) == 0 and fmt.timer_text(0) == ""
    assert fmt.timer_of([_msg(text="[timer] 5 typed by a person")]) is None  # kind text
    assert fmt.timer_text(90) == "⏱ 90 s" and fmt.timer_text(86400 * 7) == "⏱ 7 d"
    # Someone else's name or text cannot move the cursor or fake a line.
    assert fmt.name("Eve\x1b[2J\nroot") == "Eve\\x1b[2J\\x0aroot"
    line = fmt.message_line(_msg(author="them", **{"from": "them"}, author_name="Eve\u202e",
                                 text="a\x1bb\nc"), ME)
    assert "\x1b" not in line.plain and "\u202e" not in line.plain
    assert line.plain.endswith("Eve\\u202e: a\\x1bb\n    c")
