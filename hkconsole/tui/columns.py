"""A table's columns: their widths, measured from the cells, and how they give way.

Pure (no widgets): the table (table.py) asks it how wide each column is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hkconsole.tui.cells import Cell, cell_width

PAD = 1  # blank cells each side of a column


@dataclass
class Column:
    key: str
    label: str
    # The widest of its label and cells; `width` is what it is given on screen (`fit`).
    content_width: int
    width: int


class Columns:
    def __init__(self) -> None:
        self._by_key: dict[str, Column] = {}
        self._index: dict[str, int] = {}
        # (column key, narrowest width) of the columns that give way, in that order,
        # when the table is wider than its room: they show `…` where cut.
        self.give_way: Sequence[tuple[str, int]] = ()
        self.room = 0

    def __iter__(self) -> Iterator[Column]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def __getitem__(self, key: str) -> Column:
        return self._by_key[key]

    def keys(self) -> list[str]:
        return list(self._by_key)

    def values(self) -> list[Column]:
        return list(self._by_key.values())

    def index(self, key: str) -> int:
        return self._index[key]

    def add(self, key: str, label: str) -> None:
        width = cell_width(label)
        self._index[key] = len(self._by_key)
        self._by_key[key] = Column(key, label, width, width)
        self.fit()

    def label(self, key: str, label: str) -> bool:
        """A new label; True if the column is drawn wider for it."""
        column = self._by_key[key]
        column.label = label
        return self.widen(column, cell_width(label))

    def widen(self, column: Column, width: int) -> bool:
        if width <= column.content_width:
            return False
        column.content_width = width
        return self.fit()

    def measure(self, rows: Sequence[Sequence[Cell]]) -> bool:
        """Widen the columns to these rows' cells (columns never shrink: rows coming
        back from a filter fit already); True if any is drawn wider."""
        grown = False
        for index, column in enumerate(self._by_key.values()):
            widest = max((row[index].width for row in rows), default=0)
            if widest > column.content_width:
                column.content_width = widest
                grown = True
        return self.fit() if grown else False

    def fit(self, room: int | None = None) -> bool:
        """Narrow the columns that give way until every column fits the room there is
        (`room` cells, 0 for no bound); widen them back as room comes. True if any
        column's width changed."""
        if room is not None:
            self.room = room
        widths = {key: column.content_width for key, column in self._by_key.items()}
        if self.room > 0:
            excess = sum(widths.values()) + 2 * PAD * len(widths) - self.room
            for key, least in self.give_way:
                if excess > 0 and key in widths and widths[key] > least:
                    narrowed = max(least, widths[key] - excess)
                    excess -= widths[key] - narrowed
                    widths[key] = narrowed
        changed = False
        for key, width in widths.items():
            if self._by_key[key].width != width:
                self._by_key[key].width = width
                changed = True
        return changed

    @property
    def total(self) -> int:
        """How wide the columns are drawn, padding included."""
        return sum(column.width + 2 * PAD for column in self)

    def at(self, x: int) -> Column | None:
        """The column drawn at `x` cells from the left edge."""
        for column in self:
            x -= column.width + 2 * PAD
            if x < 0:
                return column
        return None
