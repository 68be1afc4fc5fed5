"""Files in the desktop client against real daemons on a loopback DHT: an offer over the
auto-accept size waits, is accepted in the files screen and its progress bar fills to the
end; it is saved with a completed path and has the sender's SHA-256; a file sent from the
screen arrives. Path completion on its own too."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhtchat.app.rpc import call
from dhtchat.ui.app import DhtchatApp
from dhtchat.ui.screens.conversations import ConversationsScreen
from dhtchat.ui.screens.files import FileRow, FilesScreen, PathInput, PathScreen, complete_path
from tests.daemons import DhtProcess, make_contacts
from tests.test_ui_support import screen_text, start_daemon, until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SIZE = 12 << 20  # over the 1 MiB auto-accept: the offer waits; progress every 4 MiB


@pytest.fixture(scope="module")
def dht() -> Iterator[DhtProcess]:
    net = DhtProcess(16)
    yield net
    net.stop()


async def _api(profile: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    return await call(profile / "daemon.sock", method, params or {}, 60.0)


def test_complete_path(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "report-1.txt").write_text("x")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    assert complete_path(str(tmp_path / "no")) == (str(tmp_path / "notes.md"), ["notes.md"])
    value, names = complete_path(str(tmp_path / "rep"))
    assert value == str(tmp_path / "report") and names == ["report-1.txt", "reports/"]
    assert complete_path(str(tmp_path / "reports")) == (str(tmp_path / "reports") + "/",
                                                        ["reports/"])
    assert ".hidden" not in complete_path(str(tmp_path) + "/")[1]
    assert complete_path(str(tmp_path / "zzz")) == (str(tmp_path / "zzz"), [])
    assert complete_path("/nonexistent-dir/x") == ("/nonexistent-dir/x", [])


def test_accept_a_file_watch_its_progress_save_it_and_send_one(tmp_path: Path,
                                                               dht: DhtProcess) -> None:
    alice, alice_id = start_daemon(tmp_path, "alice", dht)
    bob, bob_id = start_daemon(tmp_path, "bob", dht)
    make_contacts(alice, alice_id, bob, bob_id)
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(SIZE))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    small = tmp_path / "note.txt"
    small.write_text("a small file for Alice\n")
    (tmp_path / "out").mkdir()
    app = DhtchatApp(bob.profile)
    seen: list[int] = []

    def rows() -> list[FileRow]:
        return list(app.screen.query(FileRow)) if isinstance(app.screen, FilesScreen) else []

    async def scenario() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, ConversationsScreen), 30,
                        "conversations")
            await until(pilot, lambda: "alice" in screen_text(app).lower(), 30, "Alice")
            await pilot.press("f3")
            await until(pilot, lambda: isinstance(app.screen, FilesScreen), 5, "files")
            await _api(alice.profile, "file.send", {"to": bob_id, "path": str(source)})
            await until(pilot, lambda: any(r.info.waiting for r in rows()), 60, "the offer")
            await until(pilot, lambda: "offered: accept or decline" in screen_text(app)
                        and "report.bin (12.0 MiB)" in screen_text(app), 5, "the offer shown")
            assert any(note.kind == "message" and note.body == "sent a file"
                       for _, note in app.notifier.shown), list(app.notifier.shown)
            await pilot.press("a")
            deadline = time.monotonic() + 120
            while not (rows() and rows()[0].info.complete):
                assert time.monotonic() < deadline, f"not complete; progress seen {seen}"
                bar = rows()[0].query_one("ProgressBar")
                done = int(bar.progress)  # type: ignore[attr-defined]
                if not seen or seen[-1] != done:
                    seen.append(done)
                await pilot.pause(0.02)
            bar = rows()[0].query_one("ProgressBar")
            seen.append(int(bar.progress))  # type: ignore[attr-defined]
            assert bar.total == SIZE  # type: ignore[attr-defined]
            assert seen[0] == 0 and seen[-1] == SIZE and seen == sorted(seen), seen
            print("progress seen", seen)
            await until(pilot, lambda: "complete" in screen_text(app), 5, "complete shown")
            # Save it: a path completed with Tab.
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, PathScreen), 5, "save as")
            path_input = app.screen.query_one(PathInput)
            path_input.value = str(tmp_path / "ou")
            await pilot.press("tab")
            assert path_input.value == str(tmp_path / "out") + "/"
            await pilot.press("enter")
            saved = tmp_path / "out" / "report.bin"
            await until(pilot, lambda: saved.exists() and saved.stat().st_size == SIZE, 30,
                        "the saved file")
            assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest
            # Send one from the screen.
            await until(pilot, lambda: isinstance(app.screen, FilesScreen), 5, "files again")
            await pilot.press("o")
            await until(pilot, lambda: isinstance(app.screen, PathScreen), 5, "send")
            app.screen.query_one(PathInput).value = str(small)
            await pilot.press("enter")
            await until(pilot, lambda: any(r.info.direction == "out" for r in rows()), 30,
                        "my offer listed")
            deadline = time.monotonic() + 90
            while True:
                theirs = [f for f in await _api(alice.profile, "file.list")
                          if f["name"] == "note.txt" and f["complete"]]
                if theirs:
                    break
                assert time.monotonic() < deadline, "Alice never got note.txt"
                await pilot.pause(0.3)
            assert theirs[0]["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
            await until(pilot, lambda: "delivered" in screen_text(app), 30, "delivered")
            await pilot.press("ctrl+q")
            await until(pilot, lambda: not app.is_running, 10, "exit")

    try:
        asyncio.run(scenario())
    finally:
        alice.stop()
        bob.stop()
