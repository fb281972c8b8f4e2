"""A table that draws only the rows on screen: 16,384 rows cost what 50 rows cost.

Its rows are keys in an order, each with its cells (`Cell`, cells.py). Filtering and
sorting are list operations on keys; measuring a column is a max over lengths the cells
already know; only the rows inside the window become segments (`render_line`), and a
row's drawing is kept until its cells, the column widths, its stripe or the cursor
change. Textual's DataTable renders through Rich and invalidates its caches on every
change: a view switch over 16,384 nodes took 1.5 s there.

The cursor is a row index; a view keeps its own by key (views/base.py) and moves this
one back after every change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from hkconsole.tui.cells import Cell
from hkconsole.tui.columns import Columns
from hkconsole.tui.paint import Painter


@dataclass
class RowHighlighted(Message):
    """The cursor moved onto another row (keys, mouse or `move_cursor`)."""

    table: LiveTable
    cursor_row: int
    row_key: str | None


@dataclass
class RowSelected(Message):
    """Enter, or a click on the highlighted row."""

    table: LiveTable
    cursor_row: int
    row_key: str


@dataclass
class HeaderSelected(Message):
    table: LiveTable
    column_key: str


# More changed rows than this (a screenful or so) repaint the whole table at once.
ROWS_REFRESHED_APART = 64


class LiveTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "live-table--header",
        "live-table--even-row",
        "live-table--cursor",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Up", show=False),
        Binding("down", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("enter", "select", "Select", show=False),
        # First and last row, as in less and vi.
        Binding("home,g", "first_row", "First row", show=False, id="table.first"),
        Binding("end,G", "last_row", "Last row", show=False, id="table.last"),
    ]

    # Its messages, as views name them (`@on(LiveTable.RowSelected)`).
    RowHighlighted = RowHighlighted
    RowSelected = RowSelected
    HeaderSelected = HeaderSelected

    def __init__(self, *, id: str | None = None, zebra_stripes: bool = True) -> None:
        super().__init__(id=id)
        self.zebra_stripes = zebra_stripes
        self.columns = Columns()
        self.rows: dict[str, list[Cell]] = {}
        self._order: list[str] = []
        self._where: dict[str, int] | None = None
        self.cursor_row = 0
        # The key of the row the cursor was last moved to, known at once (the view
        # hears of a move by a message, which may come after its next update).
        self.highlighted: str | None = None
        self.painter = Painter()
        self._styles: tuple[Style, Style, Style, Style] | None = None

    # -- columns -------------------------------------------------------------

    def add_column(self, label: str, *, key: str) -> None:
        self.columns.add(key, label)
        self._reshaped()

    def set_column_label(self, key: str, label: str) -> None:
        if self.columns[key].label == label:
            return
        if self.columns.label(key, label):
            self._reshaped()
        self.painter.forget_header()
        self.refresh()

    def fit(self) -> None:
        """Columns that give way narrowed to the room there is, or widened back."""
        if self.columns.fit(self.scrollable_content_region.width):
            self._reshaped()

    def measure(self, cells: Sequence[Sequence[Cell]]) -> None:
        """Widen the columns to these cells (`Columns.measure`)."""
        if self.columns.measure(cells):
            self._reshaped()

    # -- rows ----------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def ordered_keys(self) -> list[str]:
        return self._order

    def get_row_index(self, key: str) -> int:
        if self._where is None:
            self._where = {k: i for i, k in enumerate(self._order)}
        return self._where[key]

    def key_at(self, row: int) -> str | None:
        return self._order[row] if 0 <= row < len(self._order) else None

    def get_cell(self, key: str, column: str) -> Cell:
        return self.rows[key][self.columns.index(column)]

    def get_row(self, key: str) -> list[Cell]:
        return list(self.rows[key])

    def add_keyed_rows(
        self, rows: Iterable[tuple[str, Sequence[Cell]]], *, measure: bool = True
    ) -> None:
        """Add (key, cells) rows at the bottom. `measure=False` is for rows that were
        in the table before with the same cells (back from a filter): columns never
        shrink, so they fit already."""
        added = []
        for key, cells in rows:
            if key in self.rows:
                raise ValueError(f"the row key {key!r} already exists")
            if len(cells) != len(self.columns):
                raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
            # Kept as given, not copied: `set_rows` knows a row by its cells.
            self.rows[key] = cells if isinstance(cells, list) else list(cells)
            self._order.append(key)
            added.append(cells)
        if added:
            if measure:
                self.measure(added)
            self._reordered()

    def set_rows(self, rows: Sequence[tuple[str, list[Cell]]]) -> None:
        """The table's rows, all of them, in order, at once. A row given the very cells
        it had keeps what was drawn of it; the columns are measured apart (`measure`)."""
        kept, given = self.rows, dict(rows)
        # Only rows drawn before have drawings to drop: a few screenfuls, not 16,384.
        drawn = {key for key, _, _ in self.painter.drawn}
        self.painter.forget(key for key in drawn if given.get(key) is not kept.get(key))
        self.rows = given
        self._order = [key for key, _ in rows]
        self._reordered()

    def remove_rows(self, keys: Iterable[str]) -> None:
        """Remove rows in one pass; unknown keys are ignored. The rest keep their order."""
        doomed = {key for key in keys if key in self.rows}
        if not doomed:
            return
        for key in doomed:
            del self.rows[key]
        self.painter.forget(doomed)
        self._order = [key for key in self._order if key not in doomed]
        self._reordered()

    def clear(self) -> None:
        self.rows.clear()
        self.painter.forget()
        self._order = []
        self.cursor_row = 0
        self._reordered()

    def sort(self, column: str, *, key: Callable[[Cell], Any], reverse: bool = False) -> None:
        index = self.columns.index(column)
        rows = self.rows
        self._order.sort(key=lambda row: key(rows[row][index]), reverse=reverse)
        self._reordered()

    def update_cell(self, key: str, column: str, value: Cell) -> None:
        self.update_cells([(key, column, value)])

    def update_cells(self, cells: Iterable[tuple[str, str, Cell]]) -> None:
        """New values for cells: only their rows are drawn again, unless one is wider
        than its column (`9m ago` -> `10m ago`), which widens it, or it gives way."""
        columns = self.columns
        changed: set[str] = set()
        wider = False
        for key, column, value in cells:
            row = self.rows.get(key)
            if row is None:
                continue
            row[columns.index(column)] = value
            changed.add(key)
            wider = columns.widen(columns[column], value.width) or wider
        if wider:
            self._reshaped()
        if changed:
            self.painter.forget(changed)
            if wider or len(changed) > ROWS_REFRESHED_APART:
                self.refresh()
            else:
                self.refresh_rows_at(self.get_row_index(key) for key in changed)

    def refresh_rows_at(self, rows: Iterable[int]) -> None:
        """Repaint these rows where they are on screen, and nothing else."""
        top = int(self.scroll_y)
        shown = self.scrollable_content_region.height - 1
        for row in rows:
            if top <= row < top + shown:
                self.refresh_line(row + 1)  # (the header is line 0)

    def _reordered(self) -> None:
        """Rows came, went or moved: positions are stale. (What was drawn of a row
        stays good: it is kept by stripe and highlight, not by place.)"""
        self._where = None
        self.virtual_size = Size(self.virtual_size.width, len(self._order) + 1)
        if self.cursor_row >= len(self._order):
            self.cursor_row = max(0, len(self._order) - 1)
        self.refresh()

    def _reshaped(self) -> None:
        """Column widths changed: every drawing is stale."""
        self.painter.forget()
        self.virtual_size = Size(self.columns.total, len(self._order) + 1)
        self.refresh()

    # -- the cursor ----------------------------------------------------------

    def move_cursor(self, *, row: int, animate: bool = False, scroll: bool = True) -> None:
        row = max(0, min(row, len(self._order) - 1))
        self.highlighted = self.key_at(row)
        if row != self.cursor_row:
            # Only the two rows the highlight leaves and reaches are drawn again.
            self.refresh_rows_at((self.cursor_row, row))
            self.cursor_row = row
            self.post_message(RowHighlighted(self, row, self.key_at(row)))
        if scroll:
            self.scroll_to_row(row)

    def scroll_to_row(self, row: int) -> None:
        # A table not laid out yet (height 0) scrolls once it is (on_resize).
        shown = self.scrollable_content_region.height - 1
        if shown <= 0:
            return
        top = int(self.scroll_y)
        if row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + shown:
            self.scroll_to(y=row - shown + 1, animate=False, immediate=True)

    def page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self.cursor_row + 1)

    def action_page_up(self) -> None:
        self.move_cursor(row=self.cursor_row - self.page())

    def action_page_down(self) -> None:
        self.move_cursor(row=self.cursor_row + self.page())

    def action_first_row(self) -> None:
        self.move_cursor(row=0)

    def action_last_row(self) -> None:
        self.move_cursor(row=len(self._order) - 1)

    def action_select(self) -> None:
        key = self.key_at(self.cursor_row)
        if key is not None:
            self.post_message(RowSelected(self, self.cursor_row, key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            column = self.columns.at(offset.x + int(self.scroll_x))
            if column is not None:
                self.post_message(HeaderSelected(self, column.key))
            return
        row = int(self.scroll_y) + offset.y - 1
        if row < len(self._order):
            event.stop()
            again = row == self.cursor_row
            self.move_cursor(row=row)
            if again:
                self.action_select()

    def on_resize(self) -> None:
        self.painter.forget()
        self.fit()
        # A shorter table must still show the highlighted row.
        if self._order:
            self.scroll_to_row(self.cursor_row)

    # -- drawing -------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self.painter.forget()

    def _on_focus(self, event: events.Focus) -> None:
        self.notify_style_update()

    def _on_blur(self, event: events.Blur) -> None:
        self.notify_style_update()

    def styles_now(self) -> tuple[Style, Style, Style, Style]:
        """(odd row, even row, cursor, header): worked out once per style change."""
        if self._styles is None:
            base = self.rich_style
            even = base + self.get_component_rich_style("live-table--even-row")
            cursor = self.get_component_rich_style("live-table--cursor")
            header = base + self.get_component_rich_style("live-table--header")
            self._styles = (base, even if self.zebra_stripes else base, cursor, header)
        return self._styles

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        room = self.scrollable_content_region.width
        styles = self.styles_now()
        if y == 0:
            strip = self.painter.header(self.columns, styles[3], room)
            return strip.crop(scroll_x, scroll_x + room)
        index = scroll_y + y - 1
        if index >= len(self._order):
            return Strip.blank(room, styles[0])
        key = self._order[index]
        on_cursor = index == self.cursor_row
        strip = self.painter.row(key, index, self.rows[key], self.columns, styles, on_cursor, room)
        return strip.crop(scroll_x, scroll_x + room)
