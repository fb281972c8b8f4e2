"""`?`: the console's own keys, grouped, one line each, read from the live bindings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

# Binding id -> group; in the order the help lists them.
GROUPS: dict[str, tuple[str, ...]] = {
    "View": ("view.units", "view.nodes", "view.finished", "pause", "refresh"),
    "Act": (
        "kill.unit",
        "mark",
        "kill.targets",
        "kill.all",
        "signal",
        "output",
        "finished.output",
        "drain",
        "undrain",
    ),
    "Filter and sort": (
        "filter",
        "clear",
        "units.stuck",
        "nodes.state",
        "sort.next",
        "sort.prev",
        "sort.invert",
    ),
    "Move": ("table.first", "table.last"),
    "": ("help", "quit"),
}
# What a one-word description leaves unsaid.
MORE = {
    "kill.unit": "the marked units, else the highlighted one (confirmed first)",
    "mark": "mark or unmark the highlighted unit and move down",
    "kill.targets": "every unit running on the ranks or hosts you type",
    "kill.all": "every unit running now (type 'all' to confirm)",
    "signal": "the signal kills send (SIGKILL asks first)",
    "output": "the highlighted unit's output (enter too)",
    "drain": "take the highlighted node out of service, with a reason",
    "undrain": "put the highlighted node back in service",
    "filter": "show rows containing the text (jobid, user, host, reason…)",
    "clear": "clear the filter; with none, clear the marks",
    "nodes.state": "nodes view: show one state at a time",
    "units.stuck": "units view: only units with a rank running past warn-after",
    "finished.output": "the highlighted finished unit's output, while the service keeps it",
    "sort.next": "sort by the next column; past the last, the natural order",
    "sort.prev": "sort by the previous column",
    "sort.invert": "reverse the sort",
    "pause": "hold the rows still (the counts stay live)",
    "refresh": "how often to resync with the service",
    "view.finished": "units that finished recently: outcome, failures, duration",
}
# Keys that are the table's own, shown with ours.
BUILT_IN = (("↑ ↓  pgup pgdn", "move the highlight"), ("enter", "the highlighted unit's output"))


@dataclass(frozen=True)
class HelpLine:
    keys: str
    description: str
    enabled: bool | None  # None: not now (not connected); False: not on this view


def help_lines(
    bindings: Iterable[Binding], active: Mapping[str, bool | None], keys: Mapping[str, str]
) -> dict[str, list[HelpLine]]:
    """Group the bindings; `active` maps a binding id to its state on screen (absent:
    not on this view), `keys` a binding id to the keys it is bound to now."""
    by_id = {binding.id: binding for binding in bindings if binding.id}
    groups: dict[str, list[HelpLine]] = {}
    for group, ids in GROUPS.items():
        for binding_id in ids:
            binding = by_id.get(binding_id)
            if binding is None:
                continue
            description = binding.description
            if binding_id in MORE:
                description = f"{description}: {MORE[binding_id]}"
            state = active.get(binding_id, False)
            lines = groups.setdefault(group, [])
            lines.append(HelpLine(keys.get(binding_id, binding.key), description, state))
    return groups


def key_names(keys: str) -> str:
    names = {
        "slash": "/",
        "question_mark": "?",
        "less_than_sign": "<",
        "greater_than_sign": ">",
        "escape": "esc",
    }
    return " ".join(names.get(k.strip(), k.strip()) for k in keys.split(","))


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def __init__(self, groups: dict[str, list[HelpLine]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog"):
            yield Label(Text("hk console keys", style="bold"), id="dialog-title")
            yield Static(self.table(), id="help-body")
            yield Label(Text("esc, ? or q closes; dim keys do not apply here", style="dim"))

    def table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold")
        table.add_column()
        for group, lines in self.groups.items():
            if group:
                table.add_row("", Text(group, style="bold underline"))
            for line in lines:
                style = "" if line.enabled else "dim"
                table.add_row(
                    Text(key_names(line.keys), style=style or "bold"),
                    Text(line.description, style=style),
                )
            if group == "Move":
                for keys, description in BUILT_IN:
                    table.add_row(Text(keys, style="bold"), description)
        return table

    def action_close(self) -> None:
        self.dismiss(None)

    @classmethod
    def of(cls, screen: Screen[Any], configured: Mapping[str, str]) -> HelpScreen:
        """The help for what `screen` shows now; `configured`: binding id -> keys."""
        from hkconsole.tui.keys import all_bindings

        active: dict[str, bool | None] = {}
        keys: dict[str, list[str]] = {}
        for key, found in screen.active_bindings.items():
            binding_id = found.binding.id
            if binding_id:
                active[binding_id] = True if found.enabled else None
                keys.setdefault(binding_id, []).append(key)
        bound = {**configured, **{i: ",".join(k) for i, k in keys.items()}}
        return cls(help_lines(all_bindings(), active, bound))
