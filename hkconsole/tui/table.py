"""A DataTable whose cell updates and row removals cost what changed, not the table size.

Textual's `update_cell` bumps the table's update counter, which invalidates every cache
keyed on it, the row order and row offsets included: O(rows) work on the next repaint
for a one-cell change. A cell update changes neither the rows nor their order, so here
it drops only the render caches.

Textual's `remove_row` rebuilds the whole row-location map for each row removed, so a
filter hiding 9,000 of 10,000 rows took 40 s (O(N²)). `remove_rows` removes any number
of rows with one rebuild, keeping the survivors' order. `add_keyed_rows` adds many keyed
rows with the per-table work (column order, cursor clamp) done once, not per row, and
new rows of one-line `Text` cells are measured by their length instead of through Rich's
measuring protocol: together a third of the cost of bringing back 9,000 rows.

A tick (`update_cells`) goes further: it draws the new cells straight into each row's
cached rendering (`_patch_row`, `text_line`) instead of having the row rendered again.

Textual is pinned (pyproject.toml) because this leans on the names of those internals;
tests cover the rendering of updated cells and the order and cursor after removals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import zip_longest
from typing import Any, ClassVar

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import (
    CellDoesNotExist,
    CellKey,
    ColumnKey,
    DuplicateKey,
    Row,
    RowKey,
)


class LiveTable(DataTable[Any]):
    # First and last row, as in less and vi (`home`/`end` only scroll sideways here).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home,g", "first_row", "First row", show=False, id="table.first"),
        Binding("end,G", "last_row", "Last row", show=False, id="table.last"),
    ]

    # (column key, narrowest width) of the columns that give way, in that order, when
    # the table is wider than its room: they show `…` where cut (`Cell`).
    give_way: Sequence[tuple[str, int]] = ()

    def fit(self) -> None:
        """Narrow the columns that give way until every column fits the room there is;
        widen them back as room comes (a resize, or narrower data)."""
        room = self.scrollable_content_region.width
        if room <= 0:
            return
        pad = 2 * self.cell_padding
        columns = {key.value: column for key, column in self.columns.items()}
        excess = sum(c.content_width + pad for c in columns.values()) - room
        widths = {key: columns[key].content_width for key, _ in self.give_way if key in columns}
        for key, least in self.give_way:
            if excess > 0 and key in widths and widths[key] > least:
                narrowed = max(least, widths[key] - excess)
                excess -= widths[key] - narrowed
                widths[key] = narrowed
        changed = False
        for key, width in widths.items():
            column = columns[key]
            auto = width == column.content_width
            if column.auto_width != auto or column.width != width:
                column.auto_width, column.width = auto, width
                changed = True
        if changed:
            self._require_update_dimensions = True
            self._update_count += 1
            self.refresh()
            self.check_idle()

    def on_resize(self) -> None:
        self.fit()
        # A shorter table must still show the highlighted row.
        if self.row_count:
            self.move_cursor(row=self.cursor_row, animate=False, scroll=True)

    def action_first_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=0)

    def action_last_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)

    def update_cell(
        self,
        row_key: RowKey | str,
        column_key: ColumnKey | str,
        value: Any,
        *,
        update_width: bool = False,
    ) -> None:
        if update_width:
            super().update_cell(row_key, column_key, value, update_width=True)
            return
        row = RowKey(row_key) if isinstance(row_key, str) else row_key
        column = ColumnKey(column_key) if isinstance(column_key, str) else column_key
        if row not in self._row_locations or column not in self._column_locations:
            raise CellDoesNotExist(f"No cell exists for row_key={row!r}, column_key={column!r}.")
        self._data[row][column] = value
        if isinstance(value, Text) and value.cell_len > self.columns[column].content_width:
            # Grown (a node held by one more unit): the column widens, or gives way.
            self.columns[column].content_width = value.cell_len
            self._require_update_dimensions = True
            self.check_idle()
        self._forget_all()

    def _forget_all(self) -> None:
        """Drop every rendering the caches hold (rows, order and offsets stay)."""
        for cache in (
            self._row_renderable_cache,
            self._cell_render_cache,
            self._row_render_cache,
            self._line_cache,
        ):
            cache.clear()
        self.refresh()

    def update_cells(self, cells: Sequence[tuple[RowKey, str, Text]]) -> None:
        """Many cells, most as wide as before (a tick): only they are drawn again. One
        wider than its column (`9m ago` -> `10m ago`) widens it, or it gives way, and
        then the whole table is drawn again, as for `update_cell`."""
        rows: set[RowKey] = set()
        columns: set[ColumnKey] = set()
        grown = False
        for row, column_key, value in cells:
            column = ColumnKey(column_key)
            if row in self._data and column in self._data[row]:
                self._data[row][column] = value
                rows.add(row)
                columns.add(column)
                if value.cell_len > self.columns[column].content_width:
                    self.columns[column].content_width = value.cell_len
                    grown = True
        if grown:
            self._require_update_dimensions = True
            self.check_idle()
            self._forget_all()
        elif rows:
            self._forget(rows, columns)

    def _forget(self, rows: set[RowKey], columns: set[ColumnKey]) -> None:
        """Drop what the render caches hold of these cells, and nothing else: a tick of
        the RUNTIME column repaints the cells it changed, not every cell on screen.

        A row's rendering is patched, not dropped: its other cells' segments stay, and
        only the changed cells are rendered again (a whole row costs ~1 ms, and a tick
        changes every row on screen)."""
        # (Textual's LRUCache is not iterable: its keys() is the way in.)
        cells = self._cell_render_cache
        for key in [k for k in cells.keys() if k[0] in rows and k[1] in columns]:  # noqa: SIM118
            cells.discard(key)
        indexes = {self._row_locations.get(row) for row in rows}
        renderables = self._row_renderable_cache
        for key in [k for k in renderables.keys() if k[1] in indexes]:  # noqa: SIM118
            renderables.discard(key)
        row_renders = self._row_render_cache
        # A row's style is its zebra stripe's: worked out once per stripe, not per row.
        styles: dict[tuple[Any, int], Any] = {}
        for key in [k for k in row_renders.keys() if k[0] in rows]:  # noqa: SIM118
            if not self._patch_row(key, row_renders[key], columns, styles):
                row_renders.discard(key)
        # The lines of these rows (one line a row: no row here is taller).
        lines = self._line_cache
        ys = {index + self.header_height for index in indexes if index is not None}
        for key in [k for k in lines.keys() if k[0] in ys]:  # noqa: SIM118
            lines.discard(key)
        for index in indexes:
            if index is not None:
                self.refresh_row(index)

    def _patch_row(
        self,
        key: tuple[Any, ...],
        render: Any,
        columns: set[ColumnKey],
        styles: dict[tuple[Any, int], Any],
    ) -> bool:
        """Render again, in a cached row rendering, the cells of `columns`; False where
        it cannot be patched (then it is rendered anew when next drawn)."""
        row_key, line_no, base_style, cursor, hover, cursor_type = key[:6]
        if line_no or self.fixed_columns or key[8] != self._update_count:
            return False
        row_index = self._row_locations.get(row_key)
        if row_index is None:
            return False
        _, scrollable = render
        stripe = (base_style, row_index % 2)
        row_style = styles.get(stripe)
        if row_style is None:
            row_style = styles[stripe] = self._get_row_style(row_index, base_style)
        for column in columns:
            index = self._column_locations.get(column)
            if index is None or index >= len(scrollable) - 1:
                return False
            where = Coordinate(row_index, index)
            on_cursor = self._should_highlight(cursor, where, cursor_type)
            on_hover = self._should_highlight(hover, where, cursor_type)
            width = self.ordered_columns[index].get_render_width(self)
            line = self._text_cell(row_index, index, row_style, width, on_cursor, on_hover)
            if line is None:
                line = self._render_cell(
                    row_index, index, row_style, width, cursor=on_cursor, hover=on_hover
                )[0]
            scrollable[index] = line
        return True

    def _text_cell(
        self,
        row_index: int,
        column_index: int,
        row_style: Style,
        width: int,
        cursor: bool,
        hover: bool,
    ) -> list[Segment] | None:
        """What `_render_cell` draws of a one-line Text cell (`text_line`); None for
        any other cell (drawn the usual way)."""
        cell = self._data[self._row_locations.get_key(row_index)].get(
            self._column_locations.get_key(column_index)
        )
        if not isinstance(cell, Text) or "\n" in cell.plain or "\t" in cell.plain:
            return None
        component, post = self._get_styles_to_render_cell(
            False,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre = row_style + Style.from_meta({"row": row_index, "column": column_index})
        return text_line(cell, width, self.cell_padding, pre + component, post, self.app.console)

    def remove_rows(self, row_keys: Iterable[RowKey | str]) -> None:
        """Remove rows in one pass; unknown keys are ignored. The rest keep their order."""
        doomed = {RowKey(k) if isinstance(k, str) else k for k in row_keys}
        doomed &= self.rows.keys()
        if not doomed:
            return
        if len(doomed) == 1:
            self.remove_row(next(iter(doomed)))
            return
        locations = self._row_locations
        survivors = sorted((locations.get(key), key) for key in locations if key not in doomed)
        self._row_locations = TwoWayDict({key: i for i, (_, key) in enumerate(survivors)})
        columns = list(self.columns)
        for key in doomed:
            if self._updated_cells:
                for column in columns:
                    self._updated_cells.discard(CellKey(key, column))
            self._new_rows.discard(key)
            del self.rows[key]
            del self._data[key]
        self._require_update_dimensions = True
        self.check_idle()
        # Re-assigning clamps the cursor and hover into the shorter table.
        self.cursor_coordinate = self.cursor_coordinate
        self.hover_coordinate = self.hover_coordinate
        self._update_count += 1
        self.refresh(layout=True)

    def add_keyed_rows(
        self, rows: Iterable[tuple[str, Sequence[Any]]], *, measure: bool = True
    ) -> None:
        """Add (key, cells) rows at the bottom, like `add_row` for each.

        `measure=False` is for rows that were in the table before with the same cells
        (back from a filter): columns never shrink, so they fit already.
        """
        columns = [column.key for column in self.ordered_columns]
        locations = self._row_locations
        before = index = self.row_count
        for key, cells in rows:
            row_key = RowKey(key)
            if row_key in locations:
                raise DuplicateKey(f"The row key {row_key!r} already exists.")
            if len(cells) > len(columns):
                raise ValueError("More values provided than there are columns.")
            locations[row_key] = index
            index += 1
            self._data[row_key] = dict(zip_longest(columns, cells))
            self.rows[row_key] = Row(row_key, 1)
            if measure:
                self._new_rows.add(row_key)
        if index == before:
            return
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate
        if before == 0 and columns and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()
        self._update_count += 1
        self.check_idle()

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        # Rich's measure of a one-line Text is its cell length; anything else (labels,
        # multi-line or non-Text cells) goes through Textual's own measuring.
        columns = self.ordered_columns
        slow: list[RowKey] = []
        for key in new_rows:
            data = self._data.get(key)
            row = self.rows.get(key)
            if data is None or row is None:
                continue
            if row.label is not None or row.auto_height:
                slow.append(key)
                continue
            for column in columns:
                cell = data.get(column.key)
                if not isinstance(cell, Text) or "\n" in cell.plain or "\t" in cell.plain:
                    slow.append(key)
                    break
                width = cell.cell_len
                if width > column.content_width:
                    column.content_width = width
        super()._update_dimensions(slow)
        self.fit()

    def set_column_label(self, column_key: str, label: str) -> None:
        column = self.columns[ColumnKey(column_key)]
        if column.label.plain == label:
            return
        column.label = Text(label)
        if column.label.cell_len > column.content_width:
            column.content_width = column.label.cell_len
            self._require_update_dimensions = True
            self.check_idle()
        # Row renderables (the header's included) are cached by update count.
        self._update_count += 1
        self.refresh()


def text_line(
    cell: Text, width: int, pad: int, pre: Style, post: Style | None, console: Console
) -> list[Segment] | None:
    """A one-line Text cell drawn straight to segments, as Padding and Styled draw it
    (padded, justified, cut with its overflow, the cell's styles between `pre` and
    `post`), without Rich's generic render path, which was most of a tick's cost."""
    inner = width - 2 * pad
    if inner <= 0:
        return None
    (line,) = cell.wrap(
        console,
        inner,
        justify=cell.justify or "default",
        overflow=cell.overflow or "fold",
        no_wrap=True,
    )
    segments = [Segment(" " * pad)] if pad else []
    segments += line.render(console, end="")
    used = sum(segment.cell_length for segment in segments) - pad
    if used < inner:
        segments.append(Segment(" " * (inner - used)))
    if pad:
        segments.append(Segment(" " * pad))
    return [Segment(text, (pre + style if style else pre) + post) for text, style, _ in segments]
