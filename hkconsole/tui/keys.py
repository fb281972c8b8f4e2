"""The console's keys: its bindings, and which actions need what."""

from __future__ import annotations

from textual.binding import Binding, BindingType

WRITES = frozenset({"kill_unit", "kill_targets", "kill_all", "drain", "undrain", "choose_signal"})
NEEDS_SERVICE = WRITES | {"output"}
# Marks only ever feed a kill: read-only has no use for them.
READ_ONLY_HIDDEN = WRITES | {"mark"}
UNITS_ONLY = frozenset({"kill_unit", "mark", "output"})
NODES_ONLY = frozenset({"drain", "undrain", "state_filter"})
REFRESH_CHOICES = (1.0, 2.0, 5.0, 10.0)

# The footer shows every shown binding on a wide terminal and leaves a few to `?`
# on a narrow one (OperatorFooter); show=False ones are only in `?`. All remappable.
BINDINGS: list[BindingType] = [
    Binding("1", "view('units')", "Units", id="view.units"),
    Binding("2", "view('nodes')", "Nodes", id="view.nodes"),
    Binding("3", "view('finished')", "Finished", id="view.finished"),
    Binding("k", "kill_unit", "Kill", id="kill.unit"),
    Binding("t", "kill_targets", "Kill on nodes", id="kill.targets"),
    Binding("A", "kill_all", "Kill all", id="kill.all"),
    Binding("s", "choose_signal", "Signal", id="signal"),
    Binding("space", "mark", "Mark", id="mark"),
    Binding("d", "drain", "Drain", id="drain"),
    Binding("u", "undrain", "Undrain", id="undrain"),
    Binding("f", "state_filter", "State", id="nodes.state"),
    Binding("o", "output", "Output", id="output"),
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
