"""Drawing a table's rows as strips, and keeping what was drawn (table.py).

Only the rows on screen are drawn; a row's drawing is kept by (key, stripe, under the
cursor) until its cells or the column widths change, so scrolling back, sorting or a
filter draw nothing anew, and a tick draws only the rows whose cells it changed.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Sequence

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

from hkconsole.tui.cells import Cell
from hkconsole.tui.columns import PAD, Columns

# Rows drawn and kept, a few screenfuls: past that, drawn anew.
DRAWN_KEPT = 1000


@functools.lru_cache(maxsize=256)
def parse_style(style: str) -> Style:
    return Style.parse(style) if style else Style.null()


def cell_segments(cell: Cell, width: int, base: Style, over: Style | None) -> list[Segment]:
    """A cell drawn `width` wide: padded, justified, cut with a visible `…`; its own
    styles between the row's (`base`) and the cursor's (`over`), which wins."""
    text, used = cell.plain, cell.width
    if used > width:
        text = set_cell_size(text, width - 1) + "…" if width > 0 else ""
        used = width
    fill = " " * (width - used)
    style = base + parse_style(cell.style)
    if over is not None:
        style += over
    pad_style = base + over if over is not None else base
    pieces = [Segment(" " * PAD, pad_style)]
    if cell.right and fill:
        pieces.append(Segment(fill, pad_style))
    if cell.spans:
        pieces += span_segments(text, cell.spans, style, over)
    elif text:
        pieces.append(Segment(text, style))
    if not cell.right and fill:
        pieces.append(Segment(fill, pad_style))
    pieces.append(Segment(" " * PAD, pad_style))
    return pieces


def span_segments(
    text: str, spans: Sequence[tuple[int, int, str]], style: Style, over: Style | None
) -> list[Segment]:
    """Text with parts styled apart (`Cell.stylize`), cut to what is shown."""
    cuts = sorted({0, len(text), *(p for s, e, _ in spans for p in (s, e) if p < len(text))})
    out = []
    for start, end in itertools.pairwise(cuts):
        piece = style
        for s, e, extra in spans:
            if s <= start and end <= e:
                piece += parse_style(extra)
        if over is not None:
            piece += over
        out.append(Segment(text[start:end], piece))
    return out


class Painter:
    """Draws the header and rows of a table `room` cells wide, with its styles:
    (odd row, even row, highlighted row, header)."""

    def __init__(self) -> None:
        self.drawn: dict[tuple[str, int, bool], Strip] = {}
        self._header: Strip | None = None

    def forget(self, keys: Iterable[str] | None = None) -> None:
        """Drop what was drawn of these rows (None: of every row, the header too)."""
        if keys is None:
            self.drawn.clear()
            self._header = None
            return
        gone = set(keys)
        for cached in [k for k in self.drawn if k[0] in gone]:
            del self.drawn[cached]

    def forget_header(self) -> None:
        self._header = None

    def header(self, columns: Columns, style: Style, room: int) -> Strip:
        if self._header is None:
            segments = []
            for column in columns:
                segments += cell_segments(Cell(column.label), column.width, style, None)
            self._header = filled(segments, style, room)
        return self._header

    def row(
        self,
        key: str,
        index: int,
        cells: Sequence[Cell],
        columns: Columns,
        styles: tuple[Style, Style, Style, Style],
        on_cursor: bool,
        room: int,
    ) -> Strip:
        cached = (key, index % 2, on_cursor)
        strip = self.drawn.get(cached)
        if strip is None:
            # Scrolling through 16,384 rows must not keep a drawing of each.
            if len(self.drawn) >= DRAWN_KEPT:
                self.drawn.clear()
            odd, even, cursor, _ = styles
            base = even if index % 2 == 0 else odd
            over = cursor if on_cursor else None
            segments = []
            for cell, column in zip(cells, columns, strict=False):
                segments += cell_segments(cell, column.width, base, over)
            fill = base + over if over is not None else base
            strip = self.drawn[cached] = filled(segments, fill, room)
        return strip


def filled(segments: list[Segment], style: Style, room: int) -> Strip:
    """A row drawn across all the room there is, its stripe or highlight too."""
    strip = Strip(segments)
    if strip.cell_length < room:
        strip = strip.extend_cell_length(room, style)
    return strip
