"""The units view: one row per unit in housekeeping, marks for kills, RUNTIME ticking."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual.binding import BindingType
from textual.message import Message

from hkconsole.tables import Unit
from hkconsole.tui.cells import (
    Cell,
    Query,
    failed_cell,
    fold,
    folded_jobid_names,
    heap_at_rest,
    jobid_text,
    runtime_cell,
)
from hkconsole.tui.flows import KillTarget
from hkconsole.tui.keys import UNITS_BINDINGS
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.views.base import TableView

UNIT_COLUMNS = (
    ("mark", " "),
    ("jobid", "JOBID"),
    ("user", "USER"),
    ("nnodes", "NNODES"),
    ("active", "#ACTIVE"),
    ("failed", "FAILED"),
    ("runtime", "RUNTIME"),
    ("nodelist", "NODELIST"),
)
RUNTIME_INDEX = [key for key, _ in UNIT_COLUMNS].index("runtime")


class UnitsView(TableView):
    COLUMNS = UNIT_COLUMNS
    SORTABLE = tuple(key for key, _ in UNIT_COLUMNS if key != "mark")
    BINDINGS: ClassVar[list[BindingType]] = UNITS_BINDINGS

    class KillRequested(Message):
        """`k`: kill these units (captured when the key was pressed)."""

        def __init__(self, target: KillTarget) -> None:
            super().__init__()
            self.target = target

    def __init__(
        self, model: ConsoleModel, clock: Callable[[], float], long_running: float
    ) -> None:
        super().__init__(model, "units", id="units-view")
        # On a narrow terminal a long nodelist gives way first (cut with `…`), then
        # USER, then the room the other headers keep for a sort arrow.
        self.table.columns.give_way = (
            ("nodelist", 10),
            ("user", 4),
            *((key, len(label)) for key, label in UNIT_COLUMNS[2:7]),
            ("nodelist", 6),
        )
        self.clock = clock
        self.long_running = long_running
        self.marked: set[int] = set()
        # Only units with a rank running past warn-after (`f`).
        self.stuck_only = False
        # The one moment every RUNTIME on screen is taken at (`tick`).
        self.now = clock()
        self._hay: dict[int, str] = {}
        self._unprepared: set[int] = set()
        self._nodelists: dict[int, str] = {}
        # Rows hidden by the filter keep their cells, to come back cheaply.
        self._stash: dict[int, list[Any]] = {}

    def on_mount(self) -> None:
        # (TableView's on_mount runs too: Textual calls each class's handler.)
        # Rows scrolled onto the screen show the same moment as the others at once.
        self.watch(self.table, "scroll_y", lambda: self.tick(), init=False)

    # -- cells ---------------------------------------------------------------

    def nodelist(self, unit: Unit) -> str:
        nodes = self._nodelists.get(unit.jobid)
        if nodes is None:
            cluster = self.model.cluster
            nodes = cluster.nodelist(unit.allocated) if cluster is not None else ""
            self._nodelists[unit.jobid] = nodes
        return nodes

    def mark_cell(self, jobid: int) -> Cell:
        return Cell("●" if jobid in self.marked else "", style="bold yellow")

    def runtime(self, unit: Unit) -> Cell:
        # Sorted by start (the longest running first): an order that stays true
        # between ticks, for rows whose RUNTIME was taken at another moment.
        runtime = max(0.0, self.now - unit.t_start)
        return runtime_cell(runtime, self.long_running, sort_value=-unit.t_start)

    def cells(self, unit: Unit) -> list[Cell]:
        return [
            self.mark_cell(unit.jobid),
            Cell(jobid_text(unit.jobid), unit.jobid, natural=(unit.t_start, unit.jobid)),
            Cell(str(unit.userid), unit.userid),
            Cell(str(len(unit.allocated)), len(unit.allocated), right=True),
            Cell(str(len(unit.pending)), len(unit.pending), right=True),
            failed_cell(len(unit.failed)),
            self.runtime(unit),
            Cell(self.nodelist(unit), min(unit.allocated, default=-1)),
        ]

    def matches(self, unit: Unit, query: Query) -> bool:
        """Whether the filter shows `unit`: its cells contain the text, or it holds one of
        the hosts the text names (a nodelist like sim[0,3,28-29] contains no `sim28`)."""
        if self.stuck_only and not unit.stuck:
            return False
        if not query.text:
            return True
        if not query.ranks.isdisjoint(unit.allocated):
            return True
        hay = self._hay.get(unit.jobid)
        return query.folded in (hay if hay is not None else self.hay(unit))

    def hay(self, unit: Unit) -> str:
        """What the filter text is looked for in: the unit's jobid by every name, its
        user and its nodelist. Kept until the unit changes: typing a filter over 10,000
        units must not format 10,000 jobids and nodelists per key stroke."""
        fields = fold(f"{unit.userid}\n{self.nodelist(unit)}")
        hay = self._hay[unit.jobid] = f"{folded_jobid_names(unit.jobid)}\n{fields}"
        return hay

    def prepare(self) -> None:
        """Ready what a filter reads of units that came or changed, while the console
        is idle: the first key stroke of a filter then costs what the others do."""
        units = self.model.units
        missing = [units[j] for j in self._unprepared & units.keys() if j not in self._hay]
        self._unprepared = set()
        with heap_at_rest():
            for unit in missing:
                self.hay(unit)

    # -- marks ---------------------------------------------------------------

    def action_kill_unit(self) -> None:
        app = self.app
        target = self.kill_target(getattr(app, "signal_name", "TERM"), self.filter_query.text)
        if target is None:
            app.notify("no unit selected", severity="warning")
        else:
            self.post_message(self.KillRequested(target))

    def action_mark(self) -> None:
        self.toggle_mark()

    def toggle_mark(self) -> None:
        """Space: mark or unmark the unit under the cursor, then move down."""
        jobid = self.key_at_cursor()
        if jobid is None:
            return
        self.marked ^= {jobid}
        self.refresh_marks({jobid})
        table = self.table
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def kill_target(self, signal: str, filter_text: str) -> KillTarget | None:
        """The marked units, else the one under the cursor, read from the table now."""
        key = self.key_at_cursor()
        jobids = tuple(sorted(self.marked)) or ((key,) if key is not None else ())
        if not jobids:
            return None
        hidden = tuple(j for j in jobids if str(j) not in self.table.rows)
        return KillTarget(jobids, signal, hidden, filter_text)

    def clear_marks(self) -> set[int]:
        cleared, self.marked = self.marked, set()
        self.refresh_marks(cleared)
        return cleared

    def refresh_marks(self, jobids: Iterable[int]) -> None:
        """Redraw the mark cells of these units, and nothing else: paused stays paused."""
        table = self.table
        for jobid in jobids:
            # A row hidden by the filter is built afresh when it comes back.
            self._stash.pop(jobid, None)
            if str(jobid) in table.rows:
                table.update_cell(str(jobid), "mark", self.mark_cell(jobid))

    def shown_keys(self) -> set[int]:
        return {int(k) for k in self.table.rows}

    # -- applying changes ----------------------------------------------------

    def refresh_rows(self, changed: set[int], full: bool) -> None:
        table = self.table
        units = self.model.units
        refiltered = self.take_refiltered()
        if full:
            self._hay.clear()
            self._nodelists.clear()
            self._stash.clear()
        # What `prepare` has to make again: not a walk over every unit per event.
        self._unprepared |= units.keys() if full else changed
        for jobid in changed:
            self._hay.pop(jobid, None)
            self._nodelists.pop(jobid, None)
            self._stash.pop(jobid, None)
        # Marks of units that ended go with their rows.
        self.marked &= units.keys()
        self.now = self.clock()
        query = self.filter_query
        if query.text or self.stuck_only:
            wanted = {j for j, u in units.items() if self.matches(u, query)}
        else:
            wanted = set(units)
        present = self.shown_keys()
        stash = self._stash
        touched = False
        with self.app.batch_update():
            if refiltered and not full:
                self._refill(wanted, present, changed)
                self.restore_cursor(first_if_gone=True)
                self.tick()
                self.show_empty()
                return
            gone = present - wanted
            if gone:
                for jobid in gone & units.keys() - changed:
                    stash[jobid] = table.get_row(str(jobid))
                table.remove_rows(str(jobid) for jobid in gone)
                touched = True
            # Only new rows and changed units are visited: 1% changed costs 1%.
            fresh = wanted if full else (wanted - present) | (changed & wanted)
            visit = {str(j): units[j] for j in sorted(fresh, key=lambda j: units[j].t_start)}
            new_rows: list[tuple[str, list[Cell]]] = []
            back_rows: list[tuple[str, list[Cell]]] = []
            updated: list[tuple[str, str, Cell]] = []
            for key, unit in visit.items():
                if key not in table.rows:
                    cells = stash.pop(unit.jobid, None)
                    if cells is None:
                        new_rows.append((key, self.cells(unit)))
                    else:
                        # (Its RUNTIME is drawn anew by `tick` if it is on screen.)
                        back_rows.append((key, cells))
                else:
                    row = table.rows[key]
                    for (column, _), old, cell in zip(
                        UNIT_COLUMNS, row, self.cells(unit), strict=True
                    ):
                        if old.plain != cell.plain or old.style != cell.style:
                            updated.append((key, column, cell))
            # One update for them all: each is a repaint request.
            table.update_cells(updated)
            touched = touched or bool(updated)
            # Rows back from the filter were measured when first shown.
            table.add_keyed_rows(back_rows, measure=False)
            table.add_keyed_rows(new_rows)
            added = bool(new_rows or back_rows)
            if added or (touched and self.sort.column is not None):
                self.apply_sort()
            self.restore_cursor(first_if_gone=refiltered)
            self.tick()
            self.show_empty()
        for jobid in stash.keys() - units.keys():
            del stash[jobid]

    def _refill(self, wanted: set[int], present: set[int], changed: set[int]) -> None:
        """A new filter: the table's rows at once, in start order, each row kept or
        back from the stash with its cells (made anew only for units that changed)."""
        table, units, stash = self.table, self.model.units, self._stash
        for jobid in present - wanted - changed:
            stash[jobid] = table.rows[str(jobid)]
        rows: list[tuple[str, list[Cell]]] = []
        made: list[list[Cell]] = []
        for jobid in sorted(wanted, key=lambda j: (units[j].t_start, j)):
            key = str(jobid)
            cells = None if jobid in changed else table.rows.get(key) or stash.pop(jobid, None)
            if cells is None:
                cells = self.cells(units[jobid])
                made.append(cells)
            rows.append((key, cells))
        table.measure(made)
        table.set_rows(rows)
        if self.sort.column is not None:
            self.apply_sort()
        for jobid in stash.keys() - units.keys():
            del stash[jobid]

    def total(self) -> int:
        return len(self.model.units)

    def empty_reason(self) -> str:
        if not self.model.units:
            return "no units in housekeeping"
        what = "stuck units" if self.stuck_only else "units"
        if not self.filter_query.text:
            return f"no {what}: no rank runs past warn-after"
        return f"no {what} match '{self.filter_query.text}'"

    def action_stuck_only(self) -> None:
        """Show only the units with a rank running past warn-after, or all again."""
        self.stuck_only = not self.stuck_only
        self.refiltered = True
        self.apply(set())
        self.post_message(self.Reshaped())

    def clock_tick(self, now: float) -> None:
        self.now = now
        self.tick()

    def tick(self) -> None:
        """RUNTIME of the rows on screen, all taken at one moment (`now`)."""
        table = self.table
        top = int(table.scroll_offset.y)
        changed = []
        # A table just shown may not be laid out yet (height 0): a screenful, then.
        for key in table.ordered_keys[top : top + max(table.size.height, self.app.size.height)]:
            unit = self.model.units.get(int(key))
            if unit is None:
                continue
            cell = self.runtime(unit)
            if table.rows[key][RUNTIME_INDEX].plain != cell.plain:
                changed.append((key, "runtime", cell))
        table.update_cells(changed)
