"""Files: the transfers of a conversation (or all of them) with progress bars; accept,
decline and save an offered file; send a file by path, with completion.

The list is ``file.list`` (filtered to the conversation's contact), read again after each
``file.*`` event (the daemon sends ``file.progress`` every 4 MiB and at the end) and once a
second while a transfer runs, so the bars move between checkpoints too. Paths are paths on
the daemon's machine: the client talks to its daemon over a local socket, so that is this
machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Input, ListItem, ListView, ProgressBar, Static

from dhtchat.ui import format as fmt
from dhtchat.ui.events import ApiEvent, FileEvent
from dhtchat.ui.records import FileInfo
from dhtchat.ui.screens.base import ApiScreen, guarded
from dhtchat.ui.widgets import KeyFooter

MAX_MATCHES = 200  # directory entries looked at for one completion


def size_text(size: int) -> str:
    """A size for people: 1.5 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def complete_path(value: str) -> tuple[str, list[str]]:
    """Complete a typed path: the longest common extension of the entries it starts, and
    those entries (a lone directory gets its ``/``). ``~`` stands for the home directory."""
    expanded = os.path.expanduser(value) if value.startswith("~") else value
    folder, start = os.path.split(expanded)
    try:
        with os.scandir(folder or ".") as entries:
            names = []
            for entry in entries:
                if entry.name.startswith(start) and (start.startswith(".")
                                                     or not entry.name.startswith(".")):
                    names.append(entry.name + ("/" if entry.is_dir() else ""))
                if len(names) >= MAX_MATCHES:
                    break
    except OSError:
        return value, []
    names.sort()
    if not names:
        return value, []
    common = os.path.commonprefix(names)  # noqa: RUF071 - characters, by intent
    head = value[: len(value) - len(start)] if start else value
    if head and not head.endswith("/") and not start:
        head += "/"
    return head + common, names


class PathSuggester(Suggester):
    """Suggests the rest of a path as it is typed (→ or Tab takes it)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        completed, _ = complete_path(value)
        return completed if completed != value else None


class PathInput(Input):
    """A path, completed with Tab."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("tab", "complete", "Complete path")]

    def __init__(self, value: str = "", **kwargs: str) -> None:
        super().__init__(value, suggester=PathSuggester(), **kwargs)  # type: ignore[arg-type]

    def action_complete(self) -> None:
        """Complete to the longest common extension; list the choices when several."""
        completed, names = complete_path(self.value)
        if completed != self.value:
            self.value = completed
            self.cursor_position = len(completed)
        elif len(names) > 1:
            self.notify("  ".join(names[:20]) + (" …" if len(names) > 20 else ""),
                        title="matches")


class PathScreen(ModalScreen[str]):
    """Ask for a path (Enter: take it, Esc: cancel)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    PathScreen { align: center middle; }
    PathScreen Vertical { width: 76; height: auto; padding: 1 2; border: thick $accent;
                          background: $surface; }
    PathScreen Static { height: auto; }
    """

    def __init__(self, title: str, value: str, hint: str) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, markup=False)
            yield PathInput(self.value, id="path")
            yield Static(self.hint, markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one(PathInput).focus()

    @on(Input.Submitted, "#path")
    def _take(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(os.path.expanduser(event.value.strip()))

    def action_cancel(self) -> None:
        """Close without a path."""
        self.dismiss("")


class FileRow(ListItem):
    """One transfer: name, size, direction and state in words, and its progress bar."""

    DEFAULT_CSS = """
    FileRow { height: 2; padding: 0 1; }
    FileRow ProgressBar { height: 1; }
    FileRow ProgressBar Bar { width: 40; }
    """

    def __init__(self, info: FileInfo, who: str) -> None:
        super().__init__()
        self.info = info
        self.who = who

    def compose(self) -> ComposeResult:
        yield Static(self.label(), markup=False)
        yield ProgressBar(total=max(self.info.size, 1), show_eta=False)

    def on_mount(self) -> None:
        self.query_one(ProgressBar).update(progress=self._done())

    def _done(self) -> int:
        return self.info.size if self.info.complete or self.info.size == 0 \
            else self.info.transferred

    def label(self) -> Text:
        """The transfer's line."""
        info = self.info
        line = Text()
        line.append("⇣ from " if info.direction == "in" else "⇡ to ")
        line.append(fmt.name(self.who), style="bold")
        line.append(f": {fmt.preview(info.name, 36)} ({size_text(info.size)}) · ")
        line.append(info.status, style="bold" if info.waiting else "")
        return line

    def set_info(self, info: FileInfo) -> None:
        """Redraw with new numbers."""
        self.info = info
        self.query_one(Static).update(self.label())
        self.query_one(ProgressBar).update(total=max(info.size, 1), progress=self._done())


class FilesScreen(ApiScreen):
    """The transfers of one conversation (``key``), or all of them (None)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "accept", "Accept"),
        Binding("d", "decline", "Decline"),
        Binding("s", "save", "Save"),
        Binding("o", "send", "Send file"),
        Binding("escape", "back", "Back"),
        # (room in an 80-column footer: F3 is this screen, F2 works here too)
        Binding("f2", "app.desk_call", "Call", show=False),
        Binding("f3", "app.desk_files", "Files", show=False),
    ]
    DEFAULT_CSS = """
    FilesScreen #head { height: 1; background: $boost; padding: 0 1; }
    FilesScreen ListView { height: 1fr; }
    FilesScreen #empty { height: auto; padding: 1 2; }
    """

    def __init__(self, key: str | None) -> None:
        super().__init__()
        self.key = key
        self.rows: dict[str, FileRow] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="head", markup=False)
        yield ListView(id="files")
        yield Static("", id="empty", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        state = self.ui.state
        where = "all conversations" if self.key is None else fmt.name(state.name_of(self.key))
        self.query_one("#head", Static).update(f"Files · {where}")
        self.query_one(ListView).focus()
        self.reload()
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        if any(not r.info.complete and r.info.error is None and not r.info.waiting
               for r in self.rows.values()):
            self.reload()

    def _mine(self, info: FileInfo) -> bool:
        if self.key is None:
            return True
        group = self.ui.state.groups.get(self.key)
        return info.contact == self.key or (group is not None and info.contact in group.members)

    @work(exclusive=True, group="files")
    async def reload(self) -> None:
        """Read the transfers again; update the rows in place, add new ones on top."""
        files = await guarded(self.app, self.ui.client.files())
        if files is None:
            return
        view = self.query_one(ListView)
        fresh = []
        for info in (f for f in files if self._mine(f)):
            row = self.rows.get(info.id)
            if row is None:
                row = FileRow(info, self.ui.state.name_of(info.contact))
                self.rows[info.id] = row
                fresh.append(row)
            elif row.info != info:
                row.set_info(info)
        if fresh:
            await view.extend(fresh)
            if view.index is None:
                view.index = 0
        empty = self.query_one("#empty", Static)
        empty.display = not self.rows
        empty.update("No files yet. o: send a file (its path on this machine).")

    def api_event(self, event: ApiEvent) -> None:
        if isinstance(event, FileEvent):
            self.reload()

    def _selected(self) -> FileInfo | None:
        item = self.query_one(ListView).highlighted_child
        return item.info if isinstance(item, FileRow) else None

    async def action_accept(self) -> None:
        """Download the highlighted offer."""
        info = self._selected()
        if info is None or not info.waiting:
            self.notify("Highlight a file offered to you to accept it.", title="files")
            return
        if await guarded(self.app, self.ui.client.file_accept(info.id)) is not None:
            self.reload()

    async def action_decline(self) -> None:
        """Refuse the highlighted offer."""
        info = self._selected()
        if info is None or not info.waiting:
            self.notify("Highlight a file offered to you to decline it.", title="files")
            return
        if await guarded(self.app, self.ui.client.file_decline(info.id)) is not None:
            self.reload()

    def action_save(self) -> None:
        """Copy the highlighted received file to a folder or file name."""
        info = self._selected()
        if info is None or info.direction != "in" or not info.complete:
            self.notify("Highlight a received, complete file to save it.", title="files")
            return
        downloads = Path.home() / "Downloads"
        start = str(downloads if downloads.is_dir() else Path.home()) + "/"

        async def chosen(dest: str | None) -> None:
            if dest:
                path = await guarded(self.app, self.ui.client.file_get(info.id, dest))
                if path is not None:
                    self.notify(f"saved to {path}", title="files")

        self.app.push_screen(PathScreen(f"Save {fmt.name(info.name)} to (a folder or a file "
                                        "name; never overwritten):", start,
                                        "Tab: complete · Enter: save · Esc: cancel"), chosen)

    def action_send(self) -> None:
        """Offer a file to the conversation."""
        if self.key is None:
            self.notify("Open the files of a conversation (F3 there) to send one.",
                        title="files")
            return
        key = self.key

        async def chosen(path: str | None) -> None:
            if path:
                self.notify("hashing and offering the file…", title="files")
                if await guarded(self.app, self.ui.client.file_send(key, path)) is not None:
                    self.reload()

        self.app.push_screen(PathScreen(f"Send a file to {fmt.name(self.ui.state.name_of(key))}"
                                        ":", str(Path.cwd()) + "/",
                                        "Tab: complete · Enter: send · Esc: cancel"), chosen)

    def action_back(self) -> None:
        """Back."""
        self.app.pop_screen()
