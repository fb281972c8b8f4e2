"""The nodes view: one row per node, its state, the units holding it, its drain."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from hkconsole.tui.cells import (
    NO_TEXT,
    NO_TIME,
    STATE_STYLES,
    Cell,
    Query,
    fold,
    jobid_text,
    settle_heap,
)
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.views.base import TableView

NODE_COLUMNS = (
    ("rank", "RANK"),
    ("host", "HOST"),
    ("state", "STATE"),
    ("units", "UNITS"),
    ("reason", "REASON"),
    ("since", "SINCE"),
)
NODE_STATES = ("idle", "housekeeping", "draining", "drained", "offline")


class NodesView(TableView):
    COLUMNS = NODE_COLUMNS
    SORTABLE = tuple(key for key, _ in NODE_COLUMNS)

    def __init__(self, model: ConsoleModel, clock: Callable[[], float]) -> None:
        super().__init__(model, "nodes", id="nodes-view")
        self.clock = clock
        self.state_filter: str | None = None
        self._cells: dict[int, list[Cell]] = {}
        self._hay: dict[int, str] = {}
        self._measured: set[int] = set()
        self._cluster: object = None

    def cycle_state(self) -> None:
        """Cycle through all → idle → housekeeping → … → offline → all."""
        cycle = (None, *NODE_STATES)
        self.state_filter = cycle[(cycle.index(self.state_filter) + 1) % len(cycle)]
        self.refiltered = True
        self.apply(set())

    def node_cells(self, rank: int) -> list[Cell]:
        cluster = self.model.cluster
        assert cluster is not None
        state = self.model.node_state(rank)
        drain = self.model.drains.get(rank)
        holders = self.model.holders().get(rank)
        return [
            Cell(str(rank), rank, natural=rank),
            Cell(cluster.hostname(rank), rank),
            Cell(state, state, style=STATE_STYLES.get(state, "")),
            Cell(" ".join(jobid_text(j) for j in sorted(holders))) if holders else NO_TEXT,
            Cell(drain.reason) if drain else NO_TEXT,
            # One format down the column, seconds included: drains minutes apart (a
            # burst of failures) must read apart, and last month's must say so.
            Cell(time.strftime("%b %d %H:%M:%S", time.localtime(drain.t)), drain.t)
            if drain
            else NO_TIME,
        ]

    def matches(self, rank: int, cells: list[Cell], query: Query) -> bool:
        if self.state_filter is not None and cells[2].sort_value != self.state_filter:
            return False
        if not query.text or rank in query.ranks:
            return True
        hay = self._hay.get(rank)
        if hay is None:
            hay = self._hay[rank] = fold("\n".join(str(c) for c in cells))
        return query.folded in hay

    def refresh_rows(self, changed: set[int], full: bool) -> None:
        """Bring the table up to date.

        Only the rows of ranks the model reports changed are rebuilt; a new filter
        re-checks every rank. Cells are kept per rank, so a full pass over 16,384
        nodes formats nothing that did not change.
        """
        cluster = self.model.cluster
        if cluster is None:
            return
        table = self.table
        cells_of = self._cells
        dirty = self.model.take_dirty_ranks()
        refiltered, self.refiltered = self.refiltered, False
        if self._cluster is not cluster:
            # First show, or the service came back with another cluster: start afresh.
            self._cluster = cluster
            cells_of.clear()
            self._hay.clear()
            self._measured.clear()
            table.clear()
            full = True
        full = full or refiltered
        measured = self._measured
        for rank in dirty:
            cells_of.pop(rank, None)
            self._hay.pop(rank, None)
            measured.discard(rank)
        ranks: Iterable[int] = range(cluster.size) if full else sorted(dirty)
        query = self.filter_query
        rows = table.rows
        hidden: list[str] = []
        new_rows: list[tuple[str, list[Cell]]] = []
        back_rows: list[tuple[str, list[Cell]]] = []
        touched = False
        with self.app.batch_update():
            for rank in ranks:
                cells = cells_of.get(rank)
                if cells is None:
                    cells = cells_of[rank] = self.node_cells(rank)
                key = str(rank)
                visible = self.matches(rank, cells, query)
                if key in rows:
                    if not visible:
                        hidden.append(key)
                    elif rank in dirty:
                        for (column, _), cell in zip(NODE_COLUMNS, cells, strict=True):
                            if str(table.get_cell(key, column)) != str(cell):
                                table.update_cell(key, column, cell)
                                touched = True
                elif visible:
                    # Cells measured before fit the columns already (they never shrink).
                    (back_rows if rank in measured else new_rows).append((key, cells))
            table.remove_rows(hidden)
            table.add_keyed_rows(back_rows, measure=False)
            table.add_keyed_rows(new_rows)
            settle_heap(len(new_rows))
            measured.update(int(key) for key, _ in new_rows)
            added = bool(new_rows or back_rows)
            if added or (touched and self.sort.column is not None):
                self.apply_sort()
            # The node highlighted before stays so if the filter keeps it; if not, the
            # first row, never whatever now sits where it was.
            self.restore_cursor(first_if_gone=refiltered, scroll=refiltered)
