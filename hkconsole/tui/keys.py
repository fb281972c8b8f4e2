"""The console's keys: the App's bindings, each view's, and which actions need what.

Keys that act on a view's rows live on that view (views/), so they exist only while it
is shown; the App keeps the keys that work everywhere. All remappable by binding id.
"""

from __future__ import annotations

from textual.binding import Binding, BindingType

WRITES = frozenset({"kill_unit", "kill_targets", "kill_all", "drain", "undrain", "choose_signal"})
NEEDS_SERVICE = WRITES | {"output"}
# Marks only ever feed a kill: read-only has no use for them.
READ_ONLY_HIDDEN = WRITES | {"mark"}
REFRESH_CHOICES = (1.0, 2.0, 5.0, 10.0)

# The footer shows every shown binding on a wide terminal and leaves a few to `?`
# on a narrow one (OperatorFooter); show=False ones are only in `?`.
BINDINGS: list[BindingType] = [
    Binding("1", "view('units')", "Units", id="view.units"),
    Binding("2", "view('nodes')", "Nodes", id="view.nodes"),
    Binding("3", "view('finished')", "Finished", id="view.finished"),
    Binding("t", "kill_targets", "Kill on nodes", id="kill.targets"),
    Binding("A", "kill_all", "Kill all", id="kill.all"),
    Binding("s", "choose_signal", "Signal", id="signal"),
    Binding("slash", "filter", "Filter", id="filter"),
    Binding("escape", "clear", "Clear filter/marks", show=False, id="clear"),
    Binding("less_than_sign", "sort(-1)", "Sort ←", show=False, id="sort.prev"),
    Binding("greater_than_sign", "sort(1)", "Sort →", show=False, id="sort.next"),
    Binding("I", "invert", "Invert", show=False, id="sort.invert"),
    Binding("p", "pause", "Pause", id="pause"),
    Binding("r", "refresh_rate", "Refresh rate", show=False, id="refresh"),
    Binding("question_mark", "help", "Help", id="help"),
    Binding("q", "quit", "Quit", id="quit"),
]

UNITS_BINDINGS: list[BindingType] = [
    Binding("k", "kill_unit", "Kill", id="kill.unit"),
    Binding("space", "mark", "Mark", id="mark"),
    Binding("o", "output", "Output", id="output"),
    Binding("f", "stuck_only", "Stuck", id="units.stuck"),
]
NODES_BINDINGS: list[BindingType] = [
    Binding("d", "drain", "Drain", id="drain"),
    Binding("u", "undrain", "Undrain", id="undrain"),
    Binding("f", "state_filter", "State", id="nodes.state"),
]
FINISHED_BINDINGS: list[BindingType] = [
    Binding("o", "output", "Output", id="finished.output"),
]

# The footer's order (the binding chain would put the App's keys first): the views,
# what acts on the highlighted row, then the rest; by action name.
FOOTER_ORDER = (
    "view",
    "kill_unit",
    "kill_targets",
    "kill_all",
    "choose_signal",
    "mark",
    "drain",
    "undrain",
    "output",
    "stuck_only",
    "state_filter",
    "filter",
    "pause",
    "help",
    "quit",
)


def all_bindings() -> list[Binding]:
    """Every binding of the console, for `?` (a modal screen hides the views' own)."""
    from hkconsole.tui.table import LiveTable

    found = (*BINDINGS, *UNITS_BINDINGS, *NODES_BINDINGS, *FINISHED_BINDINGS)
    return [b for b in (*found, *LiveTable.BINDINGS) if isinstance(b, Binding)]
