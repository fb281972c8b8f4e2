"""A view: one live table with its own sort, filter and cursor, kept by key.

The cursor is the operator's: a row key (`cursor_key`), never a row index. Every sort,
refilter or update moves the table's cursor back to that key, with the table's own
`RowHighlighted` prevented (it would arrive late and name whatever row sat there);
`Highlighted` is posted when, and only when, the key under the cursor changes.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from hkconsole.tui.cells import NO_QUERY, Query, Sort, heap_at_rest, natural_key, sort_key
from hkconsole.tui.keys import NEEDS_SERVICE, READ_ONLY_HIDDEN
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.table import LiveTable
from hkservice.text import visible


class TableView(Widget):
    DEFAULT_CSS = """
    TableView { height: 1fr; }
    TableView > LiveTable { height: 1fr; }
    TableView > .empty { display: none; height: 1fr; padding: 0 2; color: $text-muted; }
    TableView.-empty > .empty { display: block; }
    TableView.-empty > LiveTable { height: 1; }
    """
    # (key, header label) of each column; the first one's sort is the natural order.
    COLUMNS: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Columns the sort keys cycle through (all but marks).
    SORTABLE: ClassVar[tuple[str, ...]] = ()

    class Reshaped(Message):
        """The view's own filter or sort changed: what the header says of it."""

    class Highlighted(Message):
        def __init__(self, view: TableView, key: int | None) -> None:
            super().__init__()
            self.view = view
            self.key = key

    class OutputRequested(Message):
        """`o` or enter: the output of this unit (in housekeeping, or finished)."""

        def __init__(self, jobid: int) -> None:
            super().__init__()
            self.jobid = jobid

    def __init__(self, model: ConsoleModel, table_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.table = LiveTable(id=table_id)
        # Why the table is empty, where its rows would be (`empty_reason`).
        self.empty = Static(classes="empty")
        self.sort = Sort()
        self.filter_query = NO_QUERY
        self.cursor_key: int | None = None
        # Changes that came while the view was off screen: applied when it is shown.
        self.behind: set[int] = set()
        self.behind_full = False
        # The view's own filters (stuck only, a state) changed since its rows were made.
        self.refiltered = False
        # The filter its rows were made with (`take_refiltered`).
        self.shown_query = NO_QUERY
        # On screen, and not paused: only then do changes reach the table.
        self.active = False

    def compose(self) -> ComposeResult:
        yield self.table
        yield self.empty

    def empty_reason(self) -> str:
        raise NotImplementedError

    def total(self) -> int:
        """How many rows there would be without the filter."""
        raise NotImplementedError

    def show_empty(self) -> None:
        empty = not self.table.row_count
        if empty:
            self.empty.update(Text(visible(self.empty_reason())))
        self.set_class(empty, "-empty")

    def on_mount(self) -> None:
        for key, label in self.COLUMNS:
            # Room for the ▲/▼ a sorted column gets, so sorting does not shift columns.
            self.table.add_column(label if key == "mark" else label + "  ", key=key)

    # -- keys ----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """False hides a key (read-only); None greys it out (it waits for the service)."""
        if action in READ_ONLY_HIDDEN and getattr(self.app, "read_only", False):
            return False
        if action in NEEDS_SERVICE and not getattr(self.app, "connected", True):
            return None
        return True

    def action_output(self) -> None:
        jobid = self.key_at_cursor()
        if jobid is not None:
            self.post_message(self.OutputRequested(jobid))

    @on(LiveTable.RowSelected)
    def _selected(self, event: LiveTable.RowSelected) -> None:
        """Enter on a unit: its output, where the view has the key for it."""
        event.stop()
        offered = any(getattr(b, "action", "") == "output" for b in self.BINDINGS)
        if offered and self.check_action("output", ()):
            self.action_output()

    # -- the cursor, by key --------------------------------------------------

    def key_at_cursor(self) -> int | None:
        """The row under the table's cursor now (not a mirror that may lag it)."""
        key = self.table.key_at(self.table.cursor_row)
        return int(key) if key is not None else None

    @on(LiveTable.RowHighlighted)
    def _moved(self, event: LiveTable.RowHighlighted) -> None:
        event.stop()
        self._follow_cursor()

    def _follow_cursor(self) -> None:
        key = self.key_at_cursor()
        if key is not None:
            self.table.highlighted = str(key)
        if key != self.cursor_key:
            self.cursor_key = key
            self.post_message(self.Highlighted(self, key))

    def restore_cursor(self, first_if_gone: bool = False, scroll: bool = False) -> None:
        """Put the cursor back on the row it was last moved to (`LiveTable.highlighted`:
        a move whose message is still on its way counts); if that row is gone, on the
        first row (`first_if_gone`: a filter hid it) or on whatever took its place (it
        ended)."""
        table = self.table
        key = table.highlighted
        with self.prevent(LiveTable.RowHighlighted):
            if key is not None and key in table.rows:
                row = table.get_row_index(key)
                if table.cursor_row != row:
                    table.move_cursor(row=row, animate=False, scroll=scroll)
            elif first_if_gone and table.row_count:
                table.move_cursor(row=0, animate=False, scroll=True)
        self._follow_cursor()

    # -- sorting -------------------------------------------------------------

    def set_sort(self, column: str | None, reverse: bool | None = None) -> None:
        """Sort by `column` (None: the natural order), keeping the direction unless given."""
        self.sort.column = column
        if reverse is not None:
            self.sort.reverse = reverse
        self.apply_sort()
        self.mark_sorted_column()
        self.restore_cursor()

    def cycle_sort(self, step: int) -> None:
        """`<`/`>`: the next column, and past the last one the natural order again."""
        cycle = (None, *self.SORTABLE)
        index = cycle.index(self.sort.column) if self.sort.column in cycle else 0
        self.set_sort(cycle[(index + step) % len(cycle)])

    def invert(self) -> None:
        self.set_sort(self.sort.column or self.SORTABLE[0], reverse=not self.sort.reverse)

    def apply_sort(self) -> None:
        if self.sort.column is not None:
            self.table.sort(self.sort.column, key=sort_key, reverse=self.sort.reverse)
        elif not self.in_natural_order():
            self.table.sort(self.COLUMNS[self.natural_column()][0], key=natural_key)

    def natural_column(self) -> int:
        return 1 if self.COLUMNS[0][0] == "mark" else 0

    def in_natural_order(self) -> bool:
        column = self.COLUMNS[self.natural_column()][0]
        table = self.table
        index = table.columns.index(column)
        order = [natural_key(table.rows[key][index]) for key in table.ordered_keys]
        return all(a <= b for a, b in itertools.pairwise(order))

    def mark_sorted_column(self) -> None:
        for key, label in self.COLUMNS:
            arrow = ("▼" if self.sort.reverse else "▲") if key == self.sort.column else ""
            self.table.set_column_label(key, f"{label} {arrow}" if arrow else label)

    @on(LiveTable.HeaderSelected)
    def _header_clicked(self, event: LiveTable.HeaderSelected) -> None:
        event.stop()
        if event.column_key != "mark":
            self.set_sort(event.column_key)

    # -- data ----------------------------------------------------------------

    def set_query(self, query: Query) -> None:
        self.filter_query = query

    def take_refiltered(self) -> bool:
        """Whether the rows must be filtered anew: a filter of the view's own changed,
        or the filter text did since they were made (a text typed, then cleared, on
        another view leaves them as they are)."""
        query, shown = self.filter_query, self.shown_query
        changed = query.text != shown.text or (query.text and query.cluster is not shown.cluster)
        refiltered = self.refiltered or bool(changed)
        self.refiltered, self.shown_query = False, query
        return refiltered

    def apply(self, changed: set[int], full: bool = False) -> None:
        """New data: applied now if the view is on screen, else when it is shown."""
        if self.active:
            with heap_at_rest():
                self.refresh_rows(changed, full)
        else:
            self.behind |= changed
            self.behind_full = self.behind_full or full

    def catch_up(self, full: bool = False) -> None:
        """Active again (shown, or unpaused): apply what happened meanwhile."""
        self.active = True
        changed, full = self.behind, self.behind_full or full
        self.behind, self.behind_full = set(), False
        with heap_at_rest():
            self.refresh_rows(changed, full)

    def refresh_rows(self, changed: set[int], full: bool) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Work ahead, while the console is idle, on what the next key will need."""

    def clock_tick(self, now: float) -> None:
        """A second passed (not paused, connected): what on screen shows time moves on."""
