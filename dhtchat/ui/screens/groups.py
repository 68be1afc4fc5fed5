"""Groups: the groups I am (or was) in with their members; create, invite, remove, leave.

The admin is who signs a group's member list (protocol.md §36): only the admin invites and
removes, and the admin cannot leave. Every change goes through the API (``group.*``); the
list follows the ``group.changed`` events. Group messages show their author in the
conversation (Enter opens it).
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, ListItem, ListView, SelectionList, Static

from dhtchat.ui import format as fmt
from dhtchat.ui.events import ApiEvent, GroupChangedEvent, Reconnected
from dhtchat.ui.models import Group
from dhtchat.ui.screens.base import ApiScreen, guarded
from dhtchat.ui.state import ChatState
from dhtchat.ui.widgets import KeyFooter


def group_line(group: Group, me: str) -> Text:
    """One group in the list: name, size, my role, whether I left."""
    line = Text()
    line.append(f"# {fmt.name(group.name)}", style="bold")
    line.append(f" · {len(group.members)} members")
    line.append(" · you are the admin" if group.i_am_admin else "")
    if not group.active:
        line.append(" · you left (or were removed)")
    return line


def members_text(group: Group, state: ChatState) -> Text:
    """The members of a group, the admin and me marked in words."""
    out = Text()
    out.append(f"Members of {fmt.name(group.name)}\n", style="bold")
    for member in sorted(group.members, key=lambda m: (m != group.admin,
                                                        state.name_of(m).lower())):
        tags = []
        if member == group.admin:
            tags.append("admin")
        if member == state.me:
            tags.append("you")
        elif member not in state.contacts:
            tags.append("not your contact")
        name = "me" if member == state.me else fmt.name(state.name_of(member))
        out.append(f"• {name}" + (f" ({', '.join(tags)})" if tags else "") + "\n")
        out.append(f"  {member[:29]}\n", style="dim")
    return out


class GroupItem(ListItem):
    """A group in the list."""

    def __init__(self, group: Group, me: str) -> None:
        super().__init__(Static(group_line(group, me), markup=False))
        self.group = group


class PickScreen(ModalScreen[list[str]]):
    """Choose people from a list (Space marks, Ctrl+S takes them); with ``ask_name``, a group
    name first."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "done", "Done", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]
    DEFAULT_CSS = """
    PickScreen { align: center middle; }
    PickScreen Vertical { width: 70; height: auto; max-height: 22; padding: 1 2;
                          border: thick $accent; background: $surface; }
    PickScreen SelectionList { height: auto; max-height: 12; }
    PickScreen Static { height: auto; }
    """

    def __init__(self, title: str, people: list[tuple[str, str]], ask_name: bool = False,
                 single: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.people = people
        self.ask_name = ask_name
        self.single = single

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, markup=False)
            if self.ask_name:
                yield Input(placeholder="group name", id="name", max_length=64)
            yield SelectionList[str](*[(fmt.name(label), key) for key, label in self.people],
                                     id="people")
            yield Static("Space: mark · Ctrl+S: done · Esc: cancel", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        (self.query_one("#name", Input) if self.ask_name
         else self.query_one(SelectionList)).focus()

    @on(Input.Submitted, "#name")
    def _to_people(self) -> None:
        self.query_one(SelectionList).focus()

    def action_done(self) -> None:
        """Take the marked people (and the name, first in the list)."""
        chosen: list[str] = list(self.query_one(SelectionList).selected)
        if not chosen:
            self.notify("Mark at least one person (Space).", title="groups")
            return
        if self.single and len(chosen) > 1:
            self.notify("Mark one person.", title="groups")
            return
        if self.ask_name:
            name = self.query_one("#name", Input).value.strip()
            if not name:
                self.notify("Give the group a name.", title="groups")
                self.query_one("#name", Input).focus()
                return
            chosen = [name, *chosen]
        self.dismiss(chosen)

    def action_cancel(self) -> None:
        """Close without a choice."""
        self.dismiss([])


class LeaveScreen(ModalScreen[bool]):
    """Leave a group? y / n."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Leave"),
                                             Binding("n,escape", "answer(False)", "Stay")]
    DEFAULT_CSS = """
    LeaveScreen { align: center middle; }
    LeaveScreen Vertical { width: 60; height: auto; padding: 1 2; border: thick $warning;
                           background: $surface; }
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.group_name = name

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Leave {fmt.name(self.group_name)}? You will get none of its "
                         "messages afterwards.\n\n  y  leave\n  n  stay", markup=False)
        yield KeyFooter()

    def action_answer(self, leave: bool) -> None:
        """Close with the answer."""
        self.dismiss(leave)


class GroupsScreen(ApiScreen):
    """The groups and the members of the highlighted one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", priority=True),
        Binding("n", "new", "New"),
        Binding("i", "invite", "Invite"),
        Binding("r", "remove", "Remove"),
        Binding("l", "leave", "Leave"),
        Binding("escape", "back", "Back"),
        Binding("f4", "app.desk_groups", "Groups", show=False),  # (here already)
    ]
    DEFAULT_CSS = """
    GroupsScreen #head { height: 1; background: $boost; padding: 0 1; }
    GroupsScreen Horizontal { height: 1fr; }
    GroupsScreen ListView { width: 1fr; }
    GroupsScreen #members { width: 36; padding: 0 1; border-left: solid $accent; }
    GroupsScreen ListItem { padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Groups", id="head", markup=False)
        with Horizontal():
            yield ListView(id="groups")
            yield Static("", id="members", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self.redraw()
        self.query_one(ListView).focus()

    def on_screen_resume(self) -> None:
        self.redraw()

    def api_event(self, event: ApiEvent) -> None:
        if isinstance(event, GroupChangedEvent | Reconnected):
            self.redraw()

    def selected(self) -> Group | None:
        """The highlighted group (as the state has it now)."""
        item = self.query_one(ListView).highlighted_child
        if not isinstance(item, GroupItem):
            return None
        return self.ui.state.groups.get(item.group.id, item.group)

    def redraw(self) -> None:
        """The list from the state, keeping the highlighted group."""
        state = self.ui.state
        view = self.query_one(ListView)
        keep = self.selected()
        groups = sorted(state.groups.values(), key=lambda g: (not g.active, g.name.lower()))
        view.clear()
        view.extend([GroupItem(g, state.me) for g in groups])
        index = next((i for i, g in enumerate(groups) if keep and g.id == keep.id),
                     0 if groups else None)
        view.index = index
        self.show_members()

    @on(ListView.Highlighted)
    def show_members(self) -> None:
        """The highlighted group's members."""
        group = self.selected()
        self.query_one("#members", Static).update(
            members_text(group, self.ui.state) if group is not None else
            "No groups yet. n: create one with some of your contacts.")

    def _accepted(self, exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        return sorted(((c.id, c.label) for c in self.ui.state.contacts.values()
                       if c.state == "accepted" and c.id not in exclude),
                      key=lambda p: p[1].lower())

    async def _changed(self, group: Group | None) -> None:
        if group is None:
            return
        self.ui.state.groups[group.id] = group
        self.redraw()

    def action_open(self) -> None:
        """The group's conversation (its messages with their authors)."""
        group = self.selected()
        if group is not None:
            from dhtchat.ui.screens.conversation import ConversationScreen  # noqa: PLC0415

            self.app.push_screen(ConversationScreen(group.id, True))

    def action_new(self) -> None:
        """Create a group with some of my contacts."""
        people = self._accepted()
        if not people:
            self.notify("A group needs some of your contacts; add contacts first.",
                        title="groups")
            return

        async def chosen(picked: list[str] | None) -> None:
            if picked:
                name, *members = picked
                await self._changed(await guarded(self.app,
                                                  self.ui.client.group_create(name, members)))

        self.app.push_screen(PickScreen("New group: its name, then mark its members",
                                        people, ask_name=True), chosen)

    def _admin_group(self) -> Group | None:
        group = self.selected()
        if group is None:
            return None
        if not group.i_am_admin or not group.active:
            self.notify("Only the group's admin changes its members.", title="groups")
            return None
        return group

    def action_invite(self) -> None:
        """Add contacts to the highlighted group (admin only)."""
        group = self._admin_group()
        if group is None:
            return
        people = self._accepted(exclude=group.members)
        if not people:
            self.notify("All your contacts are in this group already.", title="groups")
            return

        async def chosen(picked: list[str] | None) -> None:
            if picked:
                await self._changed(await guarded(
                    self.app, self.ui.client.group_invite(group.id, picked)))

        self.app.push_screen(PickScreen(f"Invite to {fmt.name(group.name)}", people), chosen)

    def action_remove(self) -> None:
        """Remove a member from the highlighted group (admin only)."""
        group = self._admin_group()
        if group is None:
            return
        state = self.ui.state
        people = [(m, state.name_of(m)) for m in group.members if m != state.me]
        if not people:
            self.notify("Nobody else is in this group.", title="groups")
            return

        async def chosen(picked: list[str] | None) -> None:
            if picked:
                await self._changed(await guarded(
                    self.app, self.ui.client.group_remove(group.id, picked[0])))

        self.app.push_screen(PickScreen(f"Remove one member from {fmt.name(group.name)}",
                                        people, single=True), chosen)

    def action_leave(self) -> None:
        """Leave the highlighted group (not for its admin)."""
        group = self.selected()
        if group is None:
            return
        if group.i_am_admin:
            self.notify("The admin cannot leave its group.", title="groups")
            return

        async def chosen(leave: bool | None) -> None:
            if leave and await guarded(self.app, self.ui.client.group_leave(group.id)):
                groups = await guarded(self.app, self.ui.client.groups())
                if groups is not None:
                    self.ui.state.groups = {g.id: g for g in groups}
                self.redraw()

        self.app.push_screen(LeaveScreen(group.name), chosen)

    def action_back(self) -> None:
        """Back."""
        self.app.pop_screen()
