"""The operator console: live tables of housekeeping units and nodes, with keys to act.

One asyncio task (the feed) talks to the service: it subscribes to events, resyncs with
full snapshots periodically and after any gap, and backs off while the service is away.
Tables change by keyed diffs (`update_cell` by row key); the highlighted unit is tracked
by key, never by position, and a kill re-checks its target at the moment it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import signal as signal_module
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import zmq
import zmq.asyncio
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.notifications import Notification, Notify
from textual.reactive import reactive
from textual.widgets import ContentSwitcher, DataTable, Input, Static
from textual.widgets.data_table import CellDoesNotExist, RowKey

from hkconsole.client import AsyncClient, ServiceError
from hkconsole.tables import Unit
from hkconsole.tui.config import LONG_RUNNING_DEFAULT
from hkconsole.tui.footer import OperatorFooter
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.screens import ConfirmScreen, OutputScreen, PromptScreen, SignalScreen
from hkconsole.tui.table import LiveTable
from hkservice.cluster import Cluster, TargetError
from hkservice.fsd import format_duration_config, format_fsd
from hkservice.idset import format_idset
from hkservice.jobid import encode_jobid
from hkservice.protocol import unpack
from hkservice.text import plural

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
NODE_COLUMNS = (
    ("rank", "RANK"),
    ("host", "HOST"),
    ("state", "STATE"),
    ("units", "UNITS"),
    ("reason", "REASON"),
    ("since", "SINCE"),
)
WRITES = frozenset({"kill_unit", "kill_targets", "kill_all", "drain", "undrain", "choose_signal"})
NEEDS_SERVICE = WRITES | {"output"}
# Marks only ever feed a kill: read-only has no use for them.
READ_ONLY_HIDDEN = WRITES | {"mark"}
UNITS_ONLY = frozenset({"kill_unit", "mark", "output"})
NODES_ONLY = frozenset({"drain", "undrain", "state_filter"})
NODE_STATES = ("idle", "housekeeping", "draining", "drained", "offline")
REFRESH_CHOICES = (1.0, 2.0, 5.0, 10.0)
BACKOFF_MAX = 10.0
HEARTBEAT_TIMEOUT = 6.0
DETAIL_RANKS_SHOWN = 64
DETAIL_OUTPUT_LINES = 12
TARGET_UNITS_LISTED = 8
# Room for a nodelist in a notification (three lines of a toast).
HOSTS_WIDTH = 60
STATE_STYLES = {
    "running": "yellow",
    "ok": "green",
    "failed": "bold red",
    "released": "dim",
    "housekeeping": "yellow",
    "drained": "bold red",
    "draining": "red",
    "idle": "green",
    "offline": "magenta",
}


# The f58 prefix is read from the locale on every call: fixed for the console's life.
jobid_text = functools.lru_cache(maxsize=1 << 16)(encode_jobid)


def fold(text: str) -> str:
    """Text as the filter compares it: case folded, and ƒ spelled f.

    Tables show jobids as ƒ283AqxTPzKB, drain reasons as housekeeping@f283AqxTPzKB, and
    nobody types ƒ at 3 a.m.: either spelling finds both.
    """
    return text.lower().replace("ƒ", "f")


def hosts_text(cluster: Cluster, ranks: Iterable[int], width: int = HOSTS_WIDTH) -> str:
    """sim40; sim[0-1,4-5]; past `width` characters, 212 nodes: sim[0-3,5,7,…]."""
    ranks = set(ranks)
    nodes = cluster.nodelist(ranks)
    if len(nodes) <= width:
        return nodes
    return f"{plural(len(ranks), 'node')}: {nodes[: width - 1]}…"


def unit_names(jobids: list[int], shown: int = 3) -> str:
    """ƒA; ƒA and ƒB; ƒA, ƒB, ƒC and 4 more units."""
    names = [jobid_text(j) for j in jobids[:shown]]
    rest = len(jobids) - len(names)
    if rest:
        return f"{', '.join(names)} and {plural(rest, 'more unit')}"
    if len(names) > 1:
        return f"{', '.join(names[:-1])} and {names[-1]}"
    return names[0] if names else "no unit"


class Cell(Text):
    """Text that sorts by a value of its own (numbers as numbers)."""

    def __init__(
        self, text: str, sort_value: Any = None, style: str = "", right: bool = False
    ) -> None:
        super().__init__(text, style=style, justify="right" if right else None)
        self.sort_value = text if sort_value is None else sort_value


def settle_heap(new_rows: int) -> None:
    """After thousands of rows are built, take them out of the cyclic GC's sight.

    Rows and cells live long and hold no reference cycles (reference counting frees
    them), but each full collection walks every one: with 10,000 units and 16,384 nodes
    shown, a collection that happens to fall in a key stroke adds ~250 ms to it.
    """
    if new_rows >= 2000:
        gc.freeze()


# Shared by the many node rows with nothing to show there (never mutated).
NO_TEXT = Cell("")
NO_TIME = Cell("", 0.0)


def _sort_key(cell: Any) -> Any:
    value = getattr(cell, "sort_value", str(cell))
    return (0, value) if isinstance(value, int | float) else (1, str(value))


@dataclass
class Sort:
    column: str | None = None
    reverse: bool = False


@dataclass(frozen=True)
class Query:
    """A filter text, worked out for matching (`HkConsole.filter_query`)."""

    text: str
    cluster: Cluster | None
    folded: str
    ranks: frozenset[int]  # the ranks of the hosts it names


@dataclass
class Dialog:
    """What a kill dialog captured when it opened, so the action cannot drift."""

    jobids: tuple[int, ...]
    signal: str


class HkConsole(App[int]):
    # Absolute: Textual resolves a relative path next to the module of a subclass.
    CSS_PATH = Path(__file__).with_name("hkconsole.tcss")
    TITLE = "hk housekeeping"
    ENABLE_COMMAND_PALETTE = False

    # The footer shows every shown binding on a wide terminal and leaves a few to `?`
    # on a narrow one (OperatorFooter); show=False ones are only in `?`. All remappable.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "view('units')", "Units", id="view.units"),
        Binding("2", "view('nodes')", "Nodes", id="view.nodes"),
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

    connected: reactive[bool] = reactive(False, bindings=True)
    view: reactive[str] = reactive("units", bindings=True)

    def __init__(
        self,
        endpoint: str | None = None,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
        live: bool = True,
        keymap: dict[str, str] | None = None,
        long_running: float = LONG_RUNNING_DEFAULT,
        label: str = "",
    ) -> None:
        super().__init__()
        self.label = label
        self.client = AsyncClient(endpoint, timeout=3.0)
        self.endpoint = self.client.endpoint
        self.read_only = read_only
        self.clock = clock
        self.live = live
        self.long_running = long_running
        self.model = ConsoleModel()
        self.signal_name = "TERM"
        self.paused = False
        self.paused_at = 0.0
        self.refresh_interval = 2.0
        # Each view keeps its own sort: column key (None: natural order) and direction.
        self.sorting: dict[str, Sort] = {"units": Sort(), "nodes": Sort()}
        self.node_state_filter: str | None = None
        self.filter_text = ""
        self.marked: set[int] = set()
        self.selected: int | None = None
        self.selected_node: int | None = None
        self.status_line = "connecting…"
        self._resync_now = asyncio.Event()
        self._rate_notice: Notification | None = None
        self._applying = False
        self._keymap = keymap or {}
        self._detail_task: asyncio.Task[None] | None = None
        # What the detail pane shows, redrawn as RUNTIME ticks, and the tick's moment.
        self._detail: tuple[dict[str, Any], list[list[Any]]] | None = None
        self._now: float | None = None
        self._node_cells: dict[int, list[Cell]] = {}
        self._node_hay: dict[int, str] = {}
        self._node_measured: set[int] = set()
        self._nodes_cluster: object = None
        self._nodes_filter: tuple[str, str | None] = ("", None)
        self._header_dirty = False
        self._hay: dict[int, str] = {}
        self._query = Query("", None, "", frozenset())
        self._folded_hosts: tuple[object, list[str]] = (None, [])
        self._nodelists: dict[int, str] = {}
        self._hidden_cells: dict[int, list[Any]] = {}
        # (changed jobids, full) the units table has yet to apply, once a filter changed
        # on the nodes view; None while it is up to date (`refilter`).
        self._units_behind: tuple[set[int], bool] | None = None

    # -- layout -------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # Kept by reference: a query would look in whichever screen is on top, and a
        # dialog or the app's shutdown must not make a live update fail.
        self.header_pane = Static(id="header")
        self.units_table = LiveTable(id="units", cursor_type="row", zebra_stripes=True)
        self.detail_pane = Static(id="detail")
        self.nodes_table = LiveTable(id="nodes", cursor_type="row", zebra_stripes=True)
        self.filter_box = Input(placeholder="filter: jobid, user, host, state…", id="filter")
        self.switcher = ContentSwitcher(initial="units-view", id="views")
        yield self.header_pane
        with self.switcher:
            with Vertical(id="units-view"):
                yield self.units_table
                # Scrolls (mouse, or tab to it and arrows) when a big unit lists more
                # ranks than fit.
                with VerticalScroll(id="detail-scroll"):
                    yield self.detail_pane
            yield self.nodes_table
        yield self.filter_box
        yield OperatorFooter()

    def on_mount(self) -> None:
        if self._keymap:
            self.set_keymap(self._keymap)
        units = self.units_table
        for key, label in UNIT_COLUMNS:
            # Room for the ▲/▼ a sorted column gets, so sorting does not shift columns.
            units.add_column(Text(label if key == "mark" else label + "  "), key=key)
        nodes = self.nodes_table
        for key, label in NODE_COLUMNS:
            nodes.add_column(Text(label + "  "), key=key)
        self.filter_box.display = False
        units.focus()
        self.render_header()
        self.set_interval(1.0, self.tick)
        self.set_interval(0.25, self.flush_header)
        if self.live:
            self.run_feed()

    # -- the feed -----------------------------------------------------------

    @work(exclusive=True, group="feed", exit_on_error=False)
    async def run_feed(self) -> None:
        backoff = 0.5
        attempt = 0
        while True:
            try:
                await self._follow()
            except (TimeoutError, ServiceError, zmq.ZMQError, OSError) as exc:
                message = getattr(exc, "message", str(exc))
                if self.connected:
                    self.notify(
                        f"lost the service: {message}",
                        title="Disconnected",
                        severity="error",
                        markup=False,
                    )
                self.connected = False
                attempt += 1
                for left in range(int(backoff), 0, -1):
                    self.status_line = f"DISCONNECTED: retry {attempt} in {left}s ({message})"
                    self.render_header()
                    await asyncio.sleep(1)
                if backoff < 1:
                    self.status_line = f"DISCONNECTED: retry {attempt} ({message})"
                    self.render_header()
                    await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                self.client.close()
                continue
            backoff, attempt = 0.5, 0

    async def _follow(self) -> None:
        config = await self.client.call("service.config")
        self.model.set_config(config)
        ctx = zmq.asyncio.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(config["events-endpoint"])
        try:
            await self.resync()
            if not self.connected:
                self.notify(f"connected to {self.endpoint}", markup=False)
            self.connected = True
            self.status_line = "connected"
            self.render_header()
            last_heard = time.monotonic()
            next_resync = time.monotonic() + self.refresh_interval
            while True:
                timeout = max(0.0, next_resync - time.monotonic())
                if await sub.poll(int(min(timeout, 0.5) * 1000)):
                    topic, body = await sub.recv_multipart()
                    last_heard = time.monotonic()
                    changed, gap = self.model.apply_event(topic.decode(), unpack(body))
                    if gap:
                        next_resync = 0.0
                    elif changed or topic.startswith(b"resource."):
                        self.apply_changes(changed)
                if time.monotonic() - last_heard > HEARTBEAT_TIMEOUT:
                    raise ServiceError("EHOSTDOWN", "no heartbeat from the service")
                if time.monotonic() >= next_resync or self._resync_now.is_set():
                    self._resync_now.clear()
                    await self.resync()
                    next_resync = time.monotonic() + self.refresh_interval
        finally:
            sub.close(linger=0)

    async def resync(self) -> None:
        result = await self.client.call("housekeeping.list")
        status = await self.client.call("resource.status")
        changed = self.model.apply_list(result)
        self.model.apply_status(status)
        self.apply_changes(changed)

    def load(self, config: dict[str, Any], units: dict[str, Any], status: dict[str, Any]) -> None:
        """Show fixed data without a service (snapshots, screenshots, benchmarks)."""
        self.model.set_config(config)
        changed = self.model.apply_list(units)
        self.model.apply_status(status)
        self.connected = True
        self.status_line = "connected"
        self.apply_changes(changed, full=True)
        self.render_header()

    # -- applying changes ---------------------------------------------------

    def apply_changes(self, changed: Iterable[int], full: bool = False) -> None:
        changed = set(changed)
        if full:
            self._hay.clear()
            self._nodelists.clear()
        for jobid in changed:
            self._hay.pop(jobid, None)
            self._nodelists.pop(jobid, None)
        if not self.paused:
            if self.marked:
                # Marks of units that ended go with their rows (kept while paused: the
                # frozen row still shows its mark).
                self.marked = {j for j in self.marked if j in self.model.units}
            if self._units_behind is not None and self.view != "units":
                seen, was_full = self._units_behind
                self._units_behind = (seen | changed, was_full or full)
            else:
                self.refresh_units(changed, full)
            if self.view == "nodes":
                self.refresh_nodes()
            self.schedule_detail()
        # The header sums over every unit: redrawn a few times a second, not per event.
        self._header_dirty = True

    def flush_header(self) -> None:
        if self._header_dirty:
            self._header_dirty = False
            self.render_header()

    def unit_matches(self, unit: Unit, query: Query) -> bool:
        """Whether the filter shows `unit`: its cells contain the text, or it holds one of
        the hosts the text names (a nodelist like sim[0,3,28-29] contains no `sim28`)."""
        if not query.text:
            return True
        if not query.ranks.isdisjoint(unit.allocated):
            return True
        hay = self._hay.get(unit.jobid)
        if hay is None:
            # Kept until the unit changes: typing a filter over 10,000 units must not
            # format 10,000 jobids and nodelists per key stroke.
            fields = (jobid_text(unit.jobid), str(unit.jobid), str(unit.userid))
            hay = self._hay[unit.jobid] = fold("\n".join((*fields, self.unit_nodelist(unit))))
        return query.folded in hay

    def filter_query(self) -> Query:
        """The filter text, folded, and the ranks it names as hosts: those whose hostname
        contains it (as the nodes view's HOST column matches), or a hostlist's.

        Worked out once per filter text, over the hostnames (16,384 substring tests),
        so matching units is a set intersection per unit, not string work per host. A
        text that reads as an idset is not taken for ranks: `/1000` means a jobid or a
        user as much as rank 1000.
        """
        cluster = self.model.cluster
        text = self.filter_text
        known = self._query
        if known.text == text and known.cluster is cluster:
            return known
        folded = fold(text)
        ranks: set[int] = set()
        if cluster is not None and text:
            if self._folded_hosts[0] is not cluster:
                self._folded_hosts = (cluster, [fold(host) for host in cluster.hosts])
            ranks = {rank for rank, host in enumerate(self._folded_hosts[1]) if folded in host}
            numeric = all(c.isdigit() or c in ",-[]" for c in text)
            if not numeric and ("[" in text or "," in text):
                # A hostlist (sim[28-29], sim4,sim40): python-hostlist refuses to
                # expand more than 100,000 hosts, so no key stroke can hang on it.
                with contextlib.suppress(TargetError):
                    ranks |= cluster.parse_targets(text, strict=False)
        self._query = Query(text, cluster, folded, frozenset(ranks))
        return self._query

    def unit_nodelist(self, unit: Unit) -> str:
        nodes = self._nodelists.get(unit.jobid)
        if nodes is None:
            cluster = self.model.cluster
            nodes = cluster.nodelist(unit.allocated) if cluster is not None else ""
            self._nodelists[unit.jobid] = nodes
        return nodes

    def mark_cell(self, jobid: int) -> Cell:
        return Cell("●" if jobid in self.marked else "", style="bold yellow")

    def refresh_marks(self, jobids: Iterable[int]) -> None:
        """Redraw the mark cells of these units, and nothing else: paused stays paused."""
        table = self.units_table
        for jobid in jobids:
            # A row hidden by the filter is built afresh when it comes back.
            self._hidden_cells.pop(jobid, None)
            if str(jobid) in table.rows:
                table.update_cell(str(jobid), "mark", self.mark_cell(jobid))

    def unit_cells(self, unit: Unit, now: float) -> list[Cell]:
        runtime = max(0.0, now - unit.t_start)
        return [
            self.mark_cell(unit.jobid),
            Cell(jobid_text(unit.jobid), unit.t_start),
            Cell(str(unit.userid), unit.userid),
            Cell(str(len(unit.allocated)), len(unit.allocated), right=True),
            Cell(str(len(unit.pending)), len(unit.pending), right=True),
            Cell(
                str(len(unit.failed)) if unit.failed else "",
                len(unit.failed),
                style="bold red",
                right=True,
            ),
            self.runtime_cell(runtime),
            Cell(self.unit_nodelist(unit), min(unit.allocated, default=-1)),
        ]

    def refresh_units(
        self, changed: set[int], full: bool = False, refiltered: bool = False
    ) -> None:
        table = self.units_table
        now = self.clock()
        units = self.model.units
        if self.filter_text:
            query = self.filter_query()
            wanted = {j for j, u in units.items() if self.unit_matches(u, query)}
        else:
            wanted = set(units)
        present = {int(k.value or 0) for k in table.rows}
        stash = self._hidden_cells
        if full:
            stash.clear()
        for jobid in changed:
            stash.pop(jobid, None)
        self._applying = True
        touched = False
        try:
            with self.batch_update():
                gone = present - wanted
                if gone:
                    # Rows hidden by a filter keep their cells, to come back cheaply.
                    for jobid in gone & units.keys() - changed:
                        stash[jobid] = table.get_row(str(jobid))
                    table.remove_rows(str(jobid) for jobid in gone)
                    touched = True
                # Only new rows and changed units are visited: 1% changed costs 1%.
                fresh = wanted if full else (wanted - present) | (changed & wanted)
                visit = {str(j): units[j] for j in sorted(fresh, key=lambda j: units[j].t_start)}
                new_rows: list[tuple[str, list[Cell]]] = []
                back_rows: list[tuple[str, list[Cell]]] = []
                for key, unit in visit.items():
                    if key not in table.rows:
                        cells = stash.pop(unit.jobid, None)
                        if cells is None:
                            new_rows.append((key, self.unit_cells(unit, now)))
                        else:
                            cells[RUNTIME_INDEX] = self.runtime_cell(max(0.0, now - unit.t_start))
                            back_rows.append((key, cells))
                    else:
                        for (column, _), cell in zip(
                            UNIT_COLUMNS, self.unit_cells(unit, now), strict=True
                        ):
                            if str(table.get_cell(key, column)) != str(cell):
                                table.update_cell(key, column, cell)
                                touched = True
                table.add_keyed_rows(back_rows, measure=False)
                table.add_keyed_rows(new_rows)
                settle_heap(len(new_rows))
                added = bool(new_rows or back_rows)
                touched = touched or added
                sort = self.sorting["units"]
                if touched and sort.column is not None:
                    table.sort(sort.column, key=_sort_key, reverse=sort.reverse)
                elif added and not self.is_start_ordered(table):
                    # Rows coming back when a filter is cleared belong in start order,
                    # not at the bottom (the JOBID cell sorts by start time).
                    table.sort("jobid", key=_sort_key)
                self.restore_cursor(table, self.selected, refiltered)
        finally:
            self._applying = False
        for jobid in stash.keys() - units.keys():
            del stash[jobid]

    def is_start_ordered(self, table: DataTable[Any]) -> bool:
        starts = [
            self.model.units[int(row.key.value or 0)].t_start
            for row in table.ordered_rows
            if int(row.key.value or 0) in self.model.units
        ]
        return all(a <= b for a, b in itertools.pairwise(starts))

    def restore_cursor(
        self, table: DataTable[Any], jobid: int | None, refiltered: bool = False
    ) -> None:
        if jobid is not None and str(jobid) in table.rows:
            row = table.get_row_index(str(jobid))
            if table.cursor_row != row:
                table.move_cursor(row=row, animate=False, scroll=False)
        else:
            # The highlighted unit is gone: after a filter change the cursor goes to the
            # first row (as on the nodes view), after an update (it ended) it stays where
            # it is, on the next one. The detail pane follows.
            if refiltered and table.row_count:
                table.move_cursor(row=0, animate=False, scroll=True)
            selected = None
            if table.row_count:
                key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
                selected = int(key.value) if key.value else None
            if selected != self.selected:
                self.selected = selected
                self.schedule_detail(restart=True)

    def refresh_nodes(self, full: bool = False) -> None:
        """Bring the nodes table up to date.

        Only the rows of ranks the model reports changed are rebuilt; `full` re-checks
        every rank against the filter (after the filter changed). Cells are kept per rank,
        so a full pass over 16,384 nodes formats nothing that did not change.
        """
        cluster = self.model.cluster
        if cluster is None:
            return
        table = self.nodes_table
        cells_of = self._node_cells
        dirty = self.model.take_dirty_ranks()
        if self._nodes_cluster is not cluster:
            # First show, or the service came back with another cluster: start afresh.
            self._nodes_cluster = cluster
            cells_of.clear()
            self._node_hay.clear()
            self._node_measured.clear()
            table.clear()
            full = True
        refiltered = self._nodes_filter != self.node_filter_key()
        if refiltered:
            # The filter changed since the rows were chosen (perhaps on the units view).
            self._nodes_filter = self.node_filter_key()
            full = True
        highlighted = self.highlighted_node()
        measured = self._node_measured
        for rank in dirty:
            cells_of.pop(rank, None)
            self._node_hay.pop(rank, None)
            measured.discard(rank)
        ranks: Iterable[int] = range(cluster.size) if full else sorted(dirty)
        query = self.filter_query()
        rows = table.rows
        hidden: list[str] = []
        new_rows: list[tuple[str, list[Cell]]] = []
        back_rows: list[tuple[str, list[Cell]]] = []
        touched = False
        self._applying = True
        try:
            with self.batch_update():
                for rank in ranks:
                    cells = cells_of.get(rank)
                    if cells is None:
                        cells = cells_of[rank] = self.node_cells(rank)
                    key = str(rank)
                    visible = self.node_matches(rank, cells, query)
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
                new_rows += back_rows
                sort = self.sorting["nodes"]
                if sort.column is not None:
                    if touched or new_rows:
                        table.sort(sort.column, key=_sort_key, reverse=sort.reverse)
                elif new_rows and not self.is_rank_ordered(table):
                    # Rows back from a filter go where their rank says, not at the bottom.
                    table.sort("rank", key=_sort_key)
                if refiltered:
                    # The node highlighted before stays so if the filter keeps it; if
                    # not, the first row, never whatever now sits where it was.
                    if highlighted is None or str(highlighted) not in rows:
                        highlighted = None
                        if table.row_count:
                            first = table.coordinate_to_cell_key(Coordinate(0, 0)).row_key
                            highlighted = int(first.value or 0)
                    self.selected_node = highlighted
                    self.restore_node_cursor(scroll=True)
                else:
                    self.restore_node_cursor()
        finally:
            self._applying = False

    def restore_node_cursor(self, scroll: bool = False) -> None:
        table = self.nodes_table
        if self.selected_node is not None and str(self.selected_node) in table.rows:
            row = table.get_row_index(str(self.selected_node))
            if table.cursor_row != row:
                table.move_cursor(row=row, animate=False, scroll=scroll)

    def node_filter_key(self) -> tuple[str, str | None]:
        return (self.filter_text, self.node_state_filter)

    @staticmethod
    def is_rank_ordered(table: DataTable[Any]) -> bool:
        ranks = [int(row.key.value or 0) for row in table.ordered_rows]
        return all(a < b for a, b in itertools.pairwise(ranks))

    def node_cells(self, rank: int) -> list[Cell]:
        cluster = self.model.cluster
        assert cluster is not None
        state = self.model.node_state(rank)
        drain = self.model.drains.get(rank)
        holders = self.model.holders().get(rank)
        return [
            Cell(str(rank), rank),
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

    def node_matches(self, rank: int, cells: list[Cell], query: Query) -> bool:
        if self.node_state_filter is not None and cells[2].sort_value != self.node_state_filter:
            return False
        if not query.text or rank in query.ranks:
            return True
        hay = self._node_hay.get(rank)
        if hay is None:
            hay = self._node_hay[rank] = fold("\n".join(str(c) for c in cells))
        return query.folded in hay

    def tick(self) -> None:
        """RUNTIME ticks on the client, only for the rows on screen."""
        self.render_header()
        # Stale data does not tick: a RUNTIME that kept counting would look live.
        if self.paused or self.view != "units" or not self.connected:
            return
        table = self.units_table
        top = int(table.scroll_offset.y)
        now = self.clock()
        for row in table.ordered_rows[top : top + table.size.height]:
            unit = self.model.units.get(int(row.key.value or 0))
            if unit is None:
                continue
            with contextlib.suppress(CellDoesNotExist):
                table.update_cell(
                    row.key, "runtime", self.runtime_cell(max(0.0, now - unit.t_start))
                )
        self._now = now
        if self._detail is not None:
            self.show_detail(*self._detail)

    def runtime_cell(self, runtime: float) -> Cell:
        # Units cleaning for longer than the threshold stand out.
        slow = runtime >= self.long_running
        return Cell(format_fsd(runtime), runtime, style="bold yellow" if slow else "", right=True)

    def render_header(self) -> None:
        # Three lines, each clipped to the width (hkconsole.tcss): the connection first,
        # so a long DISCONNECTED reason is what gets cut, not the retry countdown.
        counts = self.model.counts()
        cfg = self.model.config
        if self.connected:
            state = Text(" CONNECTED ", style="bold black on green")
        else:
            state = Text(f" {self.status_line} ", style="bold white on red")
        parts: list[Text | str | tuple[str, str]] = [("hk ", "bold"), state]
        if self.paused:
            frozen = time.strftime("%H:%M:%S", time.localtime(self.paused_at))
            parts += [" ", Text(f" PAUSED: rows as of {frozen} ", style="bold black on yellow")]
        if self.read_only:
            parts += [" ", Text(" READ-ONLY ", style="bold black on cyan")]
        if self.label:
            parts += ["  ", (self.label, "bold magenta")]
        # A DISCONNECTED reason usually names the endpoint already.
        if self.connected or self.endpoint not in self.status_line:
            parts += ["  ", (self.endpoint, "cyan")]
        parts += [
            "\n",
            (f"{counts['units']}", "bold"),
            " unit  " if counts["units"] == 1 else " units  ",
            (f"{counts['housekeeping']}", "bold yellow"),
            " node in housekeeping  "
            if counts["housekeeping"] == 1
            else " nodes in housekeeping  ",
            (f"{counts['drained']}", "bold red" if counts["drained"] else "bold"),
            " drained  ",
            (f"{counts['failed']}", "bold red" if counts["failed"] else "bold"),
            " failed rank" if counts["failed"] == 1 else " failed ranks",
        ]
        if self.paused:
            # The counts keep following the service while the rows hold still.
            parts += [("  (counts live)", "yellow")]
        # What shapes the current view comes before the (static) service settings.
        shaping: list[Text | str | tuple[str, str]] = []
        sort = self.sorting[self.view]
        if sort.column:
            shaping += [("sort ", "dim"), f"{sort.column} {'▼' if sort.reverse else '▲'}  "]
        if self.filter_text:
            shaping += [("filter ", "dim"), (self.filter_text, "bold"), "  "]
        if self.view == "nodes" and self.node_state_filter:
            state_style = f"bold {STATE_STYLES.get(self.node_state_filter, '')}"
            shaping += [("state ", "dim"), (self.node_state_filter, state_style), "  "]
        if shaping or cfg:
            parts += ["\n", *shaping]
        if shaping and cfg:
            parts += [("│ ", "dim")]
        if cfg:
            parts += [
                ("release-after ", "dim"),
                format_duration_config(cfg.get("release-after")),
                ("  timeout ", "dim"),
                format_duration_config(cfg.get("timeout")),
                ("  kill-grace ", "dim"),
                format_duration_config(cfg.get("kill-grace")),
                ("  signal ", "dim"),
                # Armed with KILL, every kill is one no cleanup survives: it stands out.
                (f"SIG{self.signal_name}", "bold red" if self.signal_name == "KILL" else "bold"),
                ("  refresh ", "dim"),
                f"{self.refresh_interval:g}s",
            ]
        text = Text.assemble(*parts)
        self.header_pane.update(text)
        self.set_class(not self.connected, "stale")

    # -- detail pane --------------------------------------------------------

    @on(DataTable.RowHighlighted, "#units")
    def unit_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self._applying or event.row_key is None or event.row_key.value is None:
            return
        self.selected = int(event.row_key.value)
        self.schedule_detail(restart=True)

    @on(DataTable.RowHighlighted, "#nodes")
    def node_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self._applying or event.row_key is None or event.row_key.value is None:
            return
        self.selected_node = int(event.row_key.value)

    def schedule_detail(self, restart: bool = False) -> None:
        """Refresh the detail pane soon.

        A new highlight restarts the wait (the operator is moving); a change in the data
        never postpones a refresh already on its way, or a busy cluster would starve it.
        """
        if not self.live:
            self.show_detail(None, [])
            return
        pending = self._detail_task is not None and not self._detail_task.done()
        if pending and not restart:
            return
        if pending and self._detail_task is not None:
            self._detail_task.cancel()
        self._detail_task = asyncio.get_running_loop().create_task(self._load_detail())

    async def _load_detail(self) -> None:
        await asyncio.sleep(0.15)
        jobid = self.selected
        if jobid is None or jobid not in self.model.units or not self.connected:
            self.show_detail(None, [])
            return
        try:
            unit = await self.client.call("housekeeping.unit", {"jobid": jobid})
            output = await self.client.call("housekeeping.output", {"jobid": jobid, "tail": 3})
        except ServiceError:
            return
        self.show_detail(unit, output["lines"])

    def show_detail(self, unit: dict[str, Any] | None, lines: list[list[Any]]) -> None:
        pane = self.detail_pane
        if unit is None:
            if self.selected is not None and self.selected in self.model.units:
                return
            self._detail = None
            pane.update(Text("no unit selected", style="dim"))
            return
        self._detail = (unit, lines)
        # The moment RUNTIME last ticked to: a running rank's time never runs ahead of
        # its unit's, and the two tick together (`tick`).
        now = self._now if self._now is not None else self.clock()
        out = Text()
        out.append(jobid_text(unit["jobid"]), style="bold")
        noun = "rank" if len(unit["rank_detail"]) == 1 else "ranks"
        out.append(f"  user {unit['userid']}  {noun} {unit['ranks']}\n", style="dim")
        # What needs the operator first: failures, then what still runs, then the nodes
        # that finished cleanly (held, then already released), each with its duration.
        # Past DETAIL_RANKS_SHOWN rows, the rest of each group is one summary line.
        groups: dict[str, list[dict[str, Any]]] = {
            "failed": [],
            "running": [],
            "ok": [],
            "released": [],
        }
        for rank in unit["rank_detail"]:
            outcome = rank["outcome"]
            if rank["state"] == "running":
                groups["running"].append(rank)
            elif outcome and outcome["kind"] == "exit" and outcome["code"] == 0:
                groups["released" if rank["state"] == "released" else "ok"].append(rank)
            else:
                groups["failed"].append(rank)
        room = DETAIL_RANKS_SHOWN
        cluster = self.model.cluster
        for group, ranks in groups.items():
            shown, rest = ranks[:room], ranks[room:]
            room -= len(shown)
            for rank in shown:
                end = rank["t_end"] or now
                out.append(f"  {rank['rank']:>6} {rank['hostname']:<14}")
                out.append(f"{group:<9}", style=STATE_STYLES.get(group, ""))
                out.append(f" {format_fsd(max(0.0, end - rank['t_start'])):>8}")
                failure = rank["outcome"]["text"] if group == "failed" and rank["outcome"] else ""
                out.append(f"  {failure}" if failure else "", style="red")
                out.append("\n")
            if rest:
                nodes = cluster.nodelist(r["rank"] for r in rest) if cluster else ""
                out.append(f"  … {len(rest)} more {group}: ", style="dim")
                out.append(f"{nodes}\n", style=STATE_STYLES.get(group, ""))
        if lines:
            out.append("output (last lines per rank, o for all):\n", style="dim")
            # In a short pane the complaints are what must show: ranks that wrote to
            # stderr first, then the rest in the order of the rank list above (failed,
            # running, …). Each rank's lines stay together and in their order.
            by_rank: dict[int, list[list[Any]]] = {}
            for line in lines:
                by_rank.setdefault(line[0], []).append(line)
            listed = {r["rank"]: i for i, r in enumerate(x for g in groups.values() for x in g)}
            ranks_out = sorted(
                by_rank,
                key=lambda r: (
                    not any(x[1] == "err" for x in by_rank[r]),
                    listed.get(r, len(listed)),
                ),
            )
            ordered = [x for r in ranks_out for x in by_rank[r]]
            for rank, stream, text in ordered[:DETAIL_OUTPUT_LINES]:
                out.append(f"  [{rank}] ", style="dim")
                if stream == "err":
                    out.append("err: ", style="bold red")
                out.append(text + "\n", style="red" if stream == "err" else "")
        pane.update(out)

    # -- actions ------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """False hides a key (not for this view, or read-only); None greys it out."""
        if action == "view":
            return parameters[0] != self.view  # the footer offers the other view
        if action in UNITS_ONLY and self.view != "units":
            return False
        if action in NODES_ONLY and self.view != "nodes":
            return False
        if action in READ_ONLY_HIDDEN and self.read_only:
            return False
        if action in NEEDS_SERVICE and not self.connected:
            return None
        return True

    def watch_view(self, view: str) -> None:
        self.switcher.current = f"{view}-view" if view == "units" else "nodes"
        table = self.current_table()
        table.focus()
        if view == "nodes" and not self.paused:
            self.refresh_nodes()
        if view == "units" and self._units_behind is not None:
            changed, full = self._units_behind
            self._units_behind = None
            self.refresh_units(changed, full, refiltered=True)
        self.render_header()

    def action_view(self, view: str) -> None:
        self.view = view

    def current_table(self) -> LiveTable:
        return self.units_table if self.view == "units" else self.nodes_table

    def action_mark(self) -> None:
        if self.selected is None:
            return
        self.marked ^= {self.selected}
        self.refresh_marks({self.selected})
        table = self.units_table
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    @work(group="dialog", exclusive=True)
    async def action_kill_unit(self) -> None:
        # Marks, else the highlighted unit: read against the model, which follows the
        # service while the table is paused, so a unit that finished since is not
        # offered as running.
        targets = sorted(self.marked) or ([self.selected] if self.selected is not None else [])
        if not targets:
            self.notify("no unit selected", severity="warning")
            return
        jobids = tuple(j for j in targets if self.still_running(j))
        finished = [j for j in targets if j not in jobids]
        if not jobids:
            verb = "has" if len(finished) == 1 else "have"
            self.notify(
                f"{unit_names(finished)} {verb} already finished: nothing to kill",
                severity="warning",
                markup=False,
            )
            return
        captured = Dialog(jobids, self.signal_name)
        cluster = self.model.cluster
        # A marked unit the filter hides is killed too: the dialog says so.
        hidden = [j for j in jobids if str(j) not in self.units_table.rows]
        lines = []
        for jobid in jobids:
            unit = self.model.units[jobid]
            nodes = cluster.nodelist(unit.pending) if cluster else format_idset(unit.pending)
            where = "  (hidden by the filter)" if jobid in hidden else ""
            lines.append(f"  {jobid_text(jobid)}  running on {nodes}{where}")
        for jobid in finished:
            lines.append(f"  {jobid_text(jobid)}  already finished: nothing to send")
        if hidden:
            verb = "is" if len(hidden) == 1 else "are"
            some = "It" if len(jobids) == 1 else f"{len(hidden)} of these {len(jobids)} units"
            lines.append(f"\n{some} {verb} hidden by the filter '{self.filter_text}'.")
        body = "\n".join(lines) + f"\n\nsignal: SIG{captured.signal}"
        title = f"Kill housekeeping of {plural(len(jobids), 'unit')}?"
        if not await self.push_screen_wait(ConfirmScreen(title, body)):
            return
        killed: list[int] = []
        ranks = 0
        hosts: set[int] = set()
        for jobid in captured.jobids:
            # Checked again at send time: the unit may have finished while the dialog was open.
            if not self.still_running(jobid):
                self.notify(
                    f"{jobid_text(jobid)} already finished: nothing sent",
                    severity="warning",
                    markup=False,
                )
                continue
            pending = set(self.model.units[jobid].pending)
            result = await self.send_kill({"jobid": jobid}, captured.signal)
            if result is not None:
                killed.append(jobid)
                ranks += result["ranks"]
                hosts |= pending
        if killed:
            self.report_kill(killed, ranks, captured.signal, hosts)
        # Finished ones too: a mark on a unit that is over is no use.
        self.marked -= set(targets)
        self.refresh_marks(targets)

    def still_running(self, jobid: int) -> bool:
        """Whether the latest data has commands of the unit running (what a kill hits)."""
        unit = self.model.units.get(jobid)
        return unit is not None and bool(unit.pending)

    def running_on(self, ranks: set[int]) -> dict[int, set[int]]:
        """jobid -> its ranks among `ranks` still running (what a kill there hits)."""
        hits: dict[int, set[int]] = {}
        for jobid in sorted({j for r in ranks for j in self.model.holders().get(r, ())}):
            unit = self.model.units.get(jobid)
            if unit is not None and unit.pending & ranks:
                hits[jobid] = unit.pending & ranks
        return hits

    def report_kill(
        self, jobids: Iterable[int], ranks: int, signal_name: str, where: set[int]
    ) -> None:
        """Say what was signalled: `ranks` is the service's count, `where` the ranks the
        console expected to hit (named when the two agree, else just counted)."""
        jobids = list(jobids)
        if not ranks:
            self.notify(
                "nothing was running there: nothing signalled", severity="warning", markup=False
            )
            return
        whom = unit_names(jobids) if jobids else "housekeeping"
        cluster = self.model.cluster
        if cluster is not None and len(where) == ranks:
            nodes = hosts_text(cluster, where)
        else:
            nodes = plural(ranks, "node")
        self.notify(f"sent SIG{signal_name} to {whom} on {nodes}", title="Kill sent", markup=False)

    def validate_targets(self, text: str) -> str | None:
        if self.model.cluster is None:
            return "not connected"
        try:
            self.model.cluster.parse_targets(text, strict=True)
        except TargetError as exc:
            return str(exc)
        return None

    @work(group="dialog", exclusive=True)
    async def action_kill_targets(self) -> None:
        signal_name = self.signal_name
        cluster = self.model.cluster
        example = cluster.nodelist(range(min(4, cluster.size))) if cluster else "node[0-3]"
        targets = await self.push_screen_wait(
            PromptScreen(
                f"Kill housekeeping (SIG{signal_name}) on which ranks or hosts?",
                f"e.g. 0-3,7 or {example}",
                self.validate_targets,
            )
        )
        cluster = self.model.cluster
        if not targets or cluster is None:
            return
        ranks = cluster.parse_targets(targets, strict=True)
        # Which units it hits, from what the console knows now (the service decides at
        # send time: a unit that started since is hit too).
        hits = self.running_on(ranks)
        noun = "rank" if len(ranks) == 1 else "ranks"
        lines = [f"  on {cluster.nodelist(ranks)} ({noun} {format_idset(ranks)}):"]
        for jobid, where in list(hits.items())[:TARGET_UNITS_LISTED]:
            lines.append(f"    {jobid_text(jobid)}  running on {cluster.nodelist(where)}")
        if len(hits) > TARGET_UNITS_LISTED:
            lines.append(f"    … and {plural(len(hits) - TARGET_UNITS_LISTED, 'more unit')}")
        if not hits:
            lines.append("    no unit is running there now")
        body = "\n".join(lines) + f"\n\nsignal: SIG{signal_name}"
        title = f"Kill housekeeping of {plural(len(hits), 'unit')} on these nodes?"
        if await self.push_screen_wait(ConfirmScreen(title, body)):
            # What it hits as the console knows it at send time, to name in the notice.
            hits = self.running_on(ranks)
            result = await self.send_kill({"ranks": format_idset(ranks)}, signal_name)
            if result is not None:
                hit = set().union(*hits.values())
                self.report_kill(hits, result["ranks"], signal_name, hit)

    @work(group="dialog", exclusive=True)
    async def action_kill_all(self) -> None:
        signal_name = self.signal_name
        count = len(self.model.units)
        answer = await self.push_screen_wait(
            PromptScreen(
                f"Kill ALL housekeeping ({plural(count, 'unit')}) with SIG{signal_name}?"
                " Type 'all'",
                "all",
                lambda text: None if text == "all" else "type exactly: all",
                danger=True,
            )
        )
        if answer == "all":
            running = {j: set(unit.pending) for j, unit in self.model.units.items() if unit.pending}
            result = await self.send_kill({"all": True}, signal_name)
            if result is not None:
                hit = set().union(*running.values())
                self.report_kill(running, result["ranks"], signal_name, hit)

    async def send_kill(self, params: dict[str, Any], signal_name: str) -> dict[str, Any] | None:
        """The service's answer, or None (the failure is reported)."""
        signum = int(signal_module.Signals[f"SIG{signal_name}"])
        try:
            result = await self.client.call("housekeeping.kill", {**params, "signum": signum})
        except ServiceError as exc:
            self.notify(exc.message, title="Kill failed", severity="error", markup=False)
            return None
        self._resync_now.set()
        return dict(result)

    @work(group="dialog", exclusive=True)
    async def action_choose_signal(self) -> None:
        choice = await self.push_screen_wait(SignalScreen(self.signal_name))
        if choice is None:
            return
        if choice == "KILL":
            sure = await self.push_screen_wait(
                ConfirmScreen(
                    "Use SIGKILL?",
                    "SIGKILL gives cleanup commands no chance to clean up after\n"
                    "themselves. As with any signal, every node a kill hits is drained.",
                )
            )
            if not sure:
                return
        self.signal_name = choice
        self.notify(f"kills now send SIG{choice}", markup=False)
        self.render_header()

    def highlighted_node(self) -> int | None:
        table = self.nodes_table
        if not table.row_count:
            return None
        key: RowKey = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key
        return int(key.value) if key.value is not None else None

    @work(group="dialog", exclusive=True)
    async def action_drain(self) -> None:
        rank = self.highlighted_node()
        if rank is None or self.model.cluster is None:
            return
        host = self.model.cluster.hostname(rank)
        reason = await self.push_screen_wait(
            PromptScreen(
                f"Drain {host} (rank {rank}): reason?",
                "e.g. bad DIMM, ticket 1234",
                lambda text: None if text.strip() else "give a reason",
            )
        )
        if reason is None:
            return
        try:
            await self.client.call("resource.drain", {"ranks": str(rank), "reason": reason})
        except ServiceError as exc:
            self.notify(exc.message, title="Drain failed", severity="error", markup=False)
            return
        self.notify(f"drained {host}: {reason}", markup=False)
        self._resync_now.set()

    @work(group="dialog", exclusive=True)
    async def action_undrain(self) -> None:
        rank = self.highlighted_node()
        if rank is None or self.model.cluster is None:
            return
        host = self.model.cluster.hostname(rank)
        try:
            await self.client.call("resource.undrain", {"ranks": str(rank)})
        except ServiceError as exc:
            self.notify(exc.message, title="Undrain failed", severity="error", markup=False)
            return
        self.notify(f"undrained {host}", markup=False)
        self._resync_now.set()

    @work(group="dialog", exclusive=True)
    async def action_output(self) -> None:
        jobid = self.selected
        if jobid is None:
            return
        try:
            output = await self.fetch_output(jobid)
        except ServiceError as exc:
            self.notify(exc.message, title="No output", severity="error", markup=False)
            return
        lines = [(f"[{rank}] {stream}", text) for rank, stream, text in output]
        await self.push_screen_wait(OutputScreen(f"Output of {jobid_text(jobid)}", lines))

    async def fetch_output(self, jobid: int) -> list[list[Any]]:
        """The unit's output lines, [rank, stream, text], oldest first."""
        result = await self.client.call("housekeeping.output", {"jobid": jobid, "tail": 200})
        return list(result["lines"])

    def action_filter(self) -> None:
        box = self.filter_box
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        if event.value.strip() == self.filter_text:
            return  # esc already applied the cleared filter
        self.filter_text = event.value.strip()
        self.refilter()
        self.render_header()

    def refilter(self) -> None:
        """Apply a new filter text to the view on screen; the other view catches up
        when shown (the nodes view checks its filter then; the units one is marked
        behind): a filter typed over 16,384 nodes must not also rebuild 10,000 unit
        rows, out of sight, at every key stroke."""
        if self.view == "units":
            self.refresh_units(set(), refiltered=True)
        else:
            self._units_behind = self._units_behind or (set(), False)
            self.refresh_nodes()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.current_table().focus()

    def action_clear(self) -> None:
        """Clear the filter; with no filter, clear the marks (units view)."""
        box = self.filter_box
        if not self.filter_text and not box.display:
            if self.view == "units" and self.marked:
                cleared = self.marked
                self.marked = set()
                self.refresh_marks(cleared)
                self.notify(f"cleared {plural(len(cleared), 'mark')}", markup=False)
            return
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.refilter()
        self.current_table().focus()
        self.render_header()

    def action_sort(self, step: int) -> None:
        columns = [key for key, _ in (UNIT_COLUMNS if self.view == "units" else NODE_COLUMNS)]
        columns = [c for c in columns if c != "mark"]
        current = self.sorting[self.view].column
        index = columns.index(current) + step if current in columns else 0
        self.set_sort(columns[index % len(columns)])

    def set_sort(self, column: str, reverse: bool | None = None) -> None:
        """Sort the current view by `column` (keeping its direction unless given)."""
        sort = self.sorting[self.view]
        sort.column = column
        if reverse is not None:
            sort.reverse = reverse
        table = self.current_table()
        table.sort(column, key=_sort_key, reverse=sort.reverse)
        self.mark_sorted_column(table, sort)
        if self.view == "units":
            self.restore_cursor(table, self.selected)
        else:
            self.restore_node_cursor()
        self.render_header()

    def mark_sorted_column(self, table: LiveTable, sort: Sort) -> None:
        for key, label in UNIT_COLUMNS if table is self.units_table else NODE_COLUMNS:
            arrow = ("▼" if sort.reverse else "▲") if key == sort.column else ""
            table.set_column_label(key, f"{label} {arrow}" if arrow else label)

    @on(DataTable.HeaderSelected)
    def header_clicked(self, event: DataTable.HeaderSelected) -> None:
        if event.column_key.value and event.column_key.value != "mark":
            self.set_sort(event.column_key.value)

    def action_invert(self) -> None:
        sort = self.sorting[self.view]
        default = "jobid" if self.view == "units" else "rank"
        self.set_sort(sort.column or default, reverse=not sort.reverse)

    def action_state_filter(self) -> None:
        """Cycle the nodes view through all → idle → housekeeping → … → offline → all."""
        cycle = (None, *NODE_STATES)
        self.node_state_filter = cycle[(cycle.index(self.node_state_filter) + 1) % len(cycle)]
        self.refresh_nodes()
        self.render_header()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.paused_at = self.clock()
        if not self.paused:
            self.apply_changes(set(), full=True)
        self.render_header()

    def action_refresh_rate(self) -> None:
        index = (
            REFRESH_CHOICES.index(self.refresh_interval)
            if self.refresh_interval in REFRESH_CHOICES
            else 0
        )
        self.refresh_interval = REFRESH_CHOICES[(index + 1) % len(REFRESH_CHOICES)]
        # Resync now: the next one then comes at the new interval, not the old one.
        self._resync_now.set()
        # One toast, the latest rate: pressing `r` four times must not stack four.
        # (Textual's notify() gives no handle to take a toast back: built here.)
        if self._rate_notice is not None:
            self._unnotify(self._rate_notice)
        self._rate_notice = Notification(
            f"refresh every {self.refresh_interval:g}s", timeout=self.NOTIFICATION_TIMEOUT
        )
        self.post_message(Notify(self._rate_notice))
        self.render_header()

    def action_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()
