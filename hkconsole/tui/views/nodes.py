"""The nodes view: one row per node, its state, the units holding it, its drain."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.message import Message
from textual.widgets import Static

from hkconsole.tui.cells import (
    FLAPPING_STYLE,
    NO_QUERY,
    NO_TEXT,
    NO_TIME,
    STATE_STYLES,
    Cell,
    Query,
    age_text,
    fold,
    folded_jobid_names,
    heap_at_rest,
    jobid_text,
)
from hkconsole.tui.keys import NODES_BINDINGS
from hkconsole.tui.model import NODE_STATES, ConsoleModel
from hkconsole.tui.views.base import TableView
from hkservice.cluster import Cluster
from hkservice.text import visible

NODE_COLUMNS = (
    ("rank", "RANK"),
    ("host", "HOST"),
    ("state", "STATE"),
    ("units", "UNITS"),
    ("by", "BY"),
    ("reason", "REASON"),
    ("since", "SINCE"),
)
SINCE_AT = len(NODE_COLUMNS) - 1


@functools.cache
def state_cell(state: str) -> Cell:
    """One cell per state, shared by every row in it (never mutated)."""
    return Cell(state, state, style=STATE_STYLES.get(state, ""))


@functools.lru_cache(maxsize=1 << 14)
def holders_cell(jobids: tuple[int, ...]) -> Cell:
    """The units holding a node: shared by the nodes of one unit (never mutated)."""
    return Cell(" ".join(map(jobid_text, jobids)))


class NodeBar(Static):
    """The highlighted node in full, under the table: its reason uncut, who drained it
    and since when, the units holding it, its node agent."""

    def __init__(self, model: ConsoleModel) -> None:
        super().__init__(id="node-detail")
        self.model = model

    def show(self, rank: int | None, now: float) -> None:
        cluster = self.model.cluster
        if rank is None or cluster is None or rank >= cluster.size:
            self.update("")
            return
        state = self.model.node_state(rank)
        out = Text.assemble(
            (visible(cluster.hostname(rank)), "bold"),
            (f" (rank {rank})  ", "dim"),
            (state, STATE_STYLES.get(state, "")),
        )
        drain = self.model.drains.get(rank)
        if drain is not None and drain.by is not None:
            out.append(" by ", style="dim")
            out.append(visible(drain.by), style="bold")
        if drain is not None:
            since = time.strftime("%b %d %H:%M:%S", time.localtime(drain.t))
            out.append(f"  since {since} ({age_text(now - drain.t)})")
        holders = self.model.holders().get(rank)
        if holders:
            out.append("  units ", style="dim")
            out.append(" ".join(jobid_text(j) for j in sorted(holders)))
        if rank in self.model.flapping:
            out.append("  flapping", style=FLAPPING_STYLE)
            out.append(": its cleanup failed run after run", style="dim")
        if self.model.agents:
            # Node agents: is this node's connected, and if not, since when.
            away = self.model.offline_since.get(rank)
            if rank not in self.model.offline:
                out.append("  agent connected", style=STATE_STYLES["idle"])
            elif away is None:
                out.append("  agent offline", style=STATE_STYLES["offline"])
            else:
                stamp = time.strftime("%b %d %H:%M:%S", time.localtime(away))
                out.append("  agent offline", style=STATE_STYLES["offline"])
                out.append(f" since {stamp} ({age_text(now - away)})")
        if drain is not None:
            out.append("\nreason ", style="dim")
            out.append(visible(drain.reason))
        self.update(out)


class NodesView(TableView):
    COLUMNS = NODE_COLUMNS
    SORTABLE = tuple(key for key, _ in NODE_COLUMNS)
    BINDINGS: ClassVar[list[BindingType]] = NODES_BINDINGS

    class DrainRequested(Message):
        """`d` (or `u`: undrain) on the highlighted node."""

        def __init__(self, rank: int, undrain: bool) -> None:
            super().__init__()
            self.rank = rank
            self.undrain = undrain

    def __init__(self, model: ConsoleModel, clock: Callable[[], float]) -> None:
        super().__init__(model, "nodes", id="nodes-view")
        self.clock = clock
        self.now = clock()
        # The highlighted node in full: its reason uncut, and when its drain began.
        self.bar = NodeBar(model)
        self.table.columns.give_way = (("reason", 12), ("units", 12), ("by", 5), ("host", 6))
        self.state_filter: str | None = None
        self._cells: dict[int, list[Cell]] = {}
        self._hay: dict[int, str] = {}
        self._units_matching: tuple[Query, set[int]] = (NO_QUERY, set())
        self._row_keys: list[str] = []
        self._names: dict[int, tuple[Cell, Cell]] = {}
        # Ranks whose cells, as kept, the table has measured (`add_keyed_rows`).
        self._measured: set[int] = set()
        self._cluster: Cluster | None = None
        # The table holds the rows of every node the filters let through.
        self._filled = False

    def compose(self) -> ComposeResult:
        yield from super().compose()
        yield self.bar

    def _follow_cursor(self) -> None:
        super()._follow_cursor()
        self.show_node()

    def show_node(self) -> None:
        self.bar.show(self.cursor_key, self.now)

    def total(self) -> int:
        return self.model.cluster.size if self.model.cluster is not None else 0

    def empty_reason(self) -> str:
        what = f"{self.state_filter} nodes" if self.state_filter else "nodes"
        if not self.filter_query.text:
            return f"no {what}" if self.state_filter else "no nodes"
        return f"no {what} match '{self.filter_query.text}'"

    def since_cell(self, t: float) -> Cell:
        return Cell(age_text(self.now - t), t, right=True)

    def since(self, rank: int) -> float | None:
        """Since when the node is as it is: drained, or without its node agent."""
        drain = self.model.drains.get(rank)
        if drain is not None:
            return drain.t
        if rank in self.model.offline:
            return self.model.offline_since.get(rank)
        return None

    def clock_tick(self, now: float) -> None:
        self.tick()

    def tick(self) -> None:
        """SINCE ages of the rows on screen, all taken at one moment (`now`)."""
        self.now = self.clock()
        table = self.table
        top = int(table.scroll_offset.y)
        changed = []
        # A table just shown may not be laid out yet (height 0): a screenful, then.
        for key in table.ordered_keys[top : top + max(table.size.height, self.app.size.height)]:
            rank = int(key)
            since = self.since(rank)
            cells = self._cells.get(rank)
            if since is None or cells is None:
                continue
            cell = self.since_cell(since)
            if str(cells[SINCE_AT]) != str(cell):
                cells[SINCE_AT] = cell
                changed.append((key, "since", cell))
        table.update_cells(changed)
        self.show_node()

    def action_state_filter(self) -> None:
        """Cycle through all → idle → housekeeping → … → offline → all."""
        cycle = (None, *NODE_STATES)
        self.state_filter = cycle[(cycle.index(self.state_filter) + 1) % len(cycle)]
        self.refiltered = True
        self.apply(set())
        self.post_message(self.Reshaped())

    def action_drain(self) -> None:
        rank = self.key_at_cursor()
        if rank is not None:
            self.post_message(self.DrainRequested(rank, undrain=False))

    def action_undrain(self) -> None:
        rank = self.key_at_cursor()
        if rank is not None:
            self.post_message(self.DrainRequested(rank, undrain=True))

    def node_cells(self, rank: int) -> list[Cell]:
        model = self.model
        names = self._names.get(rank)
        if names is None:
            # A node's rank and name never change: made once, not at each show.
            cluster = model.cluster
            assert cluster is not None
            names = self._names[rank] = (
                Cell(str(rank), rank, natural=rank),
                Cell(cluster.hostname(rank), rank),
            )
        holders = model.holders().get(rank)
        units = holders_cell(tuple(sorted(holders))) if holders else NO_TEXT
        drain = model.drains.get(rank)
        if drain is None and rank not in model.offline and rank not in model.flapping:
            # Most nodes: idle or in housekeeping, nothing more to say (16,384 of them
            # are built when the view is first shown).
            state = state_cell("housekeeping" if holders else "idle")
            return [*names, state, units, NO_TEXT, NO_TEXT, NO_TIME]
        state_name = model.node_state(rank)
        since = self.since(rank)
        if drain is not None:
            reason = Cell(drain.reason)
        elif state_name == "offline" and model.agents:
            reason = Cell("no agent", style=STATE_STYLES["offline"])
        else:
            reason = NO_TEXT
        return [
            *names,
            self.state_cell(rank, state_name),
            units,
            Cell(drain.by) if drain is not None and drain.by is not None else NO_TEXT,
            reason,
            # An age reads at a glance (the timestamp is in the bar below the table).
            self.since_cell(since) if since is not None else NO_TIME,
        ]

    def state_cell(self, rank: int, state: str) -> Cell:
        """The state, and `flapping` beside it (its cleanups fail run after run)."""
        if rank not in self.model.flapping:
            return state_cell(state)
        cell = Cell(f"{state} flapping", state)
        cell.stylize(STATE_STYLES.get(state, ""), 0, len(state))
        # A badge: it must not read as part of a red `drained`.
        cell.stylize(f"{FLAPPING_STYLE} reverse", len(state) + 1)
        return cell

    def matches(self, rank: int, cells: list[Cell], query: Query) -> bool:
        """Whether the filters show the node: its state is the one chosen, and the text
        names its host (`Query.ranks`), one of the units holding it by any name of its
        jobid, emoji too, or is in what the row says of it."""
        if self.state_filter is not None and cells[2].sort_value != self.state_filter:
            return False
        if not query.text or rank in query.ranks:
            return True
        held = self.model.holders().get(rank)
        if held and not self.units_matching(query).isdisjoint(held):
            return True
        hay = self._hay.get(rank)
        if hay is None:
            # Its rank, state, who drained it and why (its host and units are above).
            said = (cells[0], cells[2], cells[4], cells[5])
            hay = self._hay[rank] = fold("\n".join(cell.plain for cell in said))
        return query.folded in hay

    def units_matching(self, query: Query) -> set[int]:
        """The units whose jobid the filter text is in: worked out once per text, so a
        key stroke over 16,384 nodes is a set test per node, not string work."""
        if self._units_matching[0] is not query:
            units = {j for j in self.model.units if query.folded in folded_jobid_names(j)}
            self._units_matching = (query, units)
        return self._units_matching[1]

    def adopt(self, cluster: Cluster) -> bool:
        """Start afresh on another cluster (the first, or the service came back with
        another): True if it did."""
        if self._cluster is cluster:
            return False
        self._cluster = cluster
        for kept in (self._cells, self._hay, self._names, self._measured):
            kept.clear()
        self.table.clear()
        self._filled = False
        return True

    def prepare(self) -> None:
        """Make every node's cells before the view is first shown, once the console is
        idle after its first load: switching to 16,384 nodes then fills the table from
        them, and makes anew only the nodes that changed meanwhile."""
        cluster = self.model.cluster
        if cluster is None or self._cluster is cluster:
            return
        with heap_at_rest():
            self.adopt(cluster)
            self.model.take_dirty_ranks()
            for rank in range(cluster.size):
                self._cells[rank] = self.node_cells(rank)
            self.table.measure(list(self._cells.values()))
            self._measured.update(self._cells)

    def refresh_rows(self, changed: set[int], full: bool) -> None:
        """Bring the table up to date.

        Only the rows of ranks the model reports changed are rebuilt; a new filter
        re-checks every rank. Cells are kept per rank, so a full pass over 16,384
        nodes formats nothing that did not change.
        """
        cluster = self.model.cluster
        if cluster is None:
            return
        cells_of = self._cells
        dirty = self.model.take_dirty_ranks()
        refiltered = self.take_refiltered()
        if self.adopt(cluster) or not self._filled:
            full = True
        self._filled = True
        full = full or refiltered
        for rank in dirty:
            cells_of.pop(rank, None)
            self._hay.pop(rank, None)
            self._measured.discard(rank)
        with self.app.batch_update():
            if full:
                self._fill(cluster.size)
            else:
                self._patch(sorted(dirty))
            # The node highlighted before stays so if the filter keeps it; if not, the
            # first row, never whatever now sits where it was.
            self.restore_cursor(first_if_gone=refiltered, scroll=refiltered)
            self.tick()
            self.show_empty()

    def _cells_of(self, rank: int) -> list[Cell]:
        cells = self._cells.get(rank)
        if cells is None:
            cells = self._cells[rank] = self.node_cells(rank)
        return cells

    def _keys(self, size: int) -> list[str]:
        """The row key of each rank, made once (a full pass visits every node)."""
        if len(self._row_keys) != size:
            self._row_keys = [str(rank) for rank in range(size)]
        return self._row_keys

    def _fill(self, size: int) -> None:
        """Every node the filters show, in rank order, the table's rows at once: no
        row removed, added or sorted one by one."""
        query = self.filter_query
        measured = self._measured
        cells_of = self._cells
        keys = self._keys(size)
        matches = self.matches
        shown: list[tuple[str, list[Cell]]] = []
        unmeasured: list[list[Cell]] = []
        for rank in range(size):
            cells = cells_of.get(rank) or self._cells_of(rank)
            if matches(rank, cells, query):
                shown.append((keys[rank], cells))
                # Cells measured before fit the columns already (they never shrink).
                if rank not in measured:
                    unmeasured.append(cells)
                    measured.add(rank)
        self.table.measure(unmeasured)
        self.table.set_rows(shown)
        if self.sort.column is not None:
            self.apply_sort()

    def _patch(self, ranks: list[int]) -> None:
        """The rows of these nodes (they changed) made anew, shown or hidden."""
        table = self.table
        query = self.filter_query
        hidden: list[str] = []
        appearing: list[tuple[str, list[Cell]]] = []
        updated: list[tuple[str, str, Cell]] = []
        for rank in ranks:
            cells = self._cells_of(rank)
            key = str(rank)
            visible = self.matches(rank, cells, query)
            if key in table.rows:
                if not visible:
                    hidden.append(key)
                    continue
                for (column, _), old, cell in zip(
                    NODE_COLUMNS, table.rows[key], cells, strict=True
                ):
                    if old is not cell:
                        updated.append((key, column, cell))
            elif visible:
                appearing.append((key, cells))
        table.remove_rows(hidden)
        table.update_cells(updated)
        table.add_keyed_rows(appearing)
        self._measured.update(int(key) for key, _ in appearing)
        if appearing or (updated and self.sort.column is not None):
            self.apply_sort()
