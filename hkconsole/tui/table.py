"""A DataTable whose cell updates cost what is on screen, not what is in the table.

Textual's `update_cell` bumps the table's update counter, which invalidates every cache
keyed on it, the row order and row offsets included: O(rows) work on the next repaint
for a one-cell change. A cell update changes neither the rows nor their order, so here
it drops only the render caches. Textual is pinned (pyproject.toml) because this leans
on the names of those caches; tests cover the rendering of updated cells.
"""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowKey


class LiveTable(DataTable[Any]):
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
        for cache in (
            self._row_renderable_cache,
            self._cell_render_cache,
            self._row_render_cache,
            self._line_cache,
        ):
            cache.clear()
        self.refresh()
