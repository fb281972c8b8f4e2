"""The operator console: live tables of housekeeping units and nodes, with keys to act.

The App composes the parts and routes between them: the feed (hkconsole/tui/feed.py)
writes the model and posts messages; each view (views/) owns its table, sort, filter
and cursor, kept by key; the detail pane follows the highlighted unit; the acting keys
run flows (flows.py) that confirm in a dialog and check their target again when sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from textual import on
from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.dom import DOMNode
from textual.notifications import Notification, Notify
from textual.reactive import reactive
from textual.widgets import ContentSwitcher

from hkconsole.client import AsyncClient, CurveKeys
from hkconsole.tui import flows
from hkconsole.tui import keys as console_keys
from hkconsole.tui.cells import Queries, visible_lines
from hkconsole.tui.config import LONG_RUNNING_DEFAULT
from hkconsole.tui.detail import Detail, DetailPane, kept_on_nodes
from hkconsole.tui.feed import Feed
from hkconsole.tui.filterbar import FilterBar
from hkconsole.tui.footer import OperatorFooter
from hkconsole.tui.header import HeaderState, StatusHeader
from hkconsole.tui.help import HelpScreen
from hkconsole.tui.keys import NEEDS_SERVICE, all_bindings
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.views.base import TableView
from hkconsole.tui.views.finished import FinishedView
from hkconsole.tui.views.nodes import NodesView
from hkconsole.tui.views.units import UnitsView
from hkservice.text import plural


class HkConsole(App[int]):
    # Absolute: Textual resolves a relative path next to the module of a subclass.
    CSS_PATH = Path(__file__).with_name("hkconsole.tcss")
    TITLE = "hk housekeeping"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = console_keys.BINDINGS

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
        keys: CurveKeys | None = None,
    ) -> None:
        super().__init__()
        self.client = AsyncClient(endpoint, timeout=3.0, keys=keys)
        self.read_only = read_only
        self.clock = clock
        self.live = live
        self._keys_config = keymap or {}
        self.model = ConsoleModel()
        self.signal_name = "TERM"
        self.paused_at: float | None = None
        self.filter_text = ""
        self.status_line = "connecting…"
        self.label = label
        self._queries = Queries()
        self._rate_notice: Notification | None = None
        # Kept by reference: a query would look in whichever screen is on top, and a
        # dialog or the app's shutdown must not make a live update fail.
        self.feed = Feed(self.client, self.model)
        self.header_pane = StatusHeader()
        self.units = UnitsView(self.model, clock, long_running)
        self.nodes = NodesView(self.model, clock)
        self.finished = FinishedView(self.model, clock)
        self.views: dict[str, TableView] = {
            "units": self.units,
            "nodes": self.nodes,
            "finished": self.finished,
        }
        sample = None if live else self.detail_sample
        self.detail = DetailPane(self.model, clock, self.client, sample)
        self.filter_box = FilterBar()
        self.switcher = ContentSwitcher(initial="units-pane", id="views")

    def compose(self) -> ComposeResult:
        yield self.header_pane
        with self.switcher:
            with Vertical(id="units-pane"):
                yield self.units
                yield self.detail
            yield self.nodes
            yield self.finished
        yield self.filter_box
        yield OperatorFooter()
        yield self.feed

    def on_mount(self) -> None:
        if self._keys_config:
            self.set_keymap(self._keys_config)
        self.units.active = True
        self.units.table.focus()
        self.render_header()
        self.set_interval(1.0, self.tick)
        if self.live:
            self.feed.run()

    # -- what the views read ---------------------------------------------------

    @property
    def current(self) -> TableView:
        return self.views[self.view]

    def detail_sample(self, jobid: int) -> Detail | None:
        return None

    async def fetch_output(self, jobid: int) -> tuple[list[list[Any]], str | None]:
        """The unit's output lines, [rank, stream, text], oldest first; and where on the
        nodes it is kept instead, when node agents keep it there (`kept_on_nodes`)."""
        result = await self.client.call("housekeeping.output", {"jobid": jobid, "tail": 200})
        return list(result["lines"]), kept_on_nodes(result)

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:
        # Notices carry outside text (reasons, hosts, service messages): never markup,
        # and controls shown as escapes.
        super().notify(visible_lines(message), markup=False, **kwargs)

    # -- the feed's messages -----------------------------------------------------

    @on(Feed.Connected)
    def feed_connected(self) -> None:
        if not self.connected:
            self.notify(f"connected to {self.client.endpoint}")
        self.connected = True
        self.status_line = "connected"
        self.render_header()

    @on(Feed.Disconnected)
    def feed_disconnected(self, message: Feed.Disconnected) -> None:
        if message.lost:
            reason = message.status.partition("(")[2].rstrip(")")
            self.notify(f"lost the service: {reason}", title="Disconnected", severity="error")
        self.connected = False
        self.status_line = message.status
        self.render_header()

    @on(Feed.Changed)
    def feed_changed(self) -> None:
        self.feed.changes_taken()
        self.apply_changes(self.model.take_changes())

    def apply_changes(self, changed: set[int], full: bool = False) -> None:
        query = self._queries.get(self.filter_text, self.model.cluster)
        for view in self.views.values():
            view.set_query(query)
            view.apply(set(changed), full)
        # Once what changed is on screen and the console idle: a first switch to the
        # nodes view then costs what changed meanwhile, not 16,384 rows, and the
        # first key of a filter what the others do.
        for view in self.views.values():
            self.call_after_refresh(view.prepare)
        self.detail.gone()
        self.header_pane.soon()

    @on(TableView.Highlighted)
    def highlighted(self, message: TableView.Highlighted) -> None:
        if message.view is self.units:
            self.detail.show(message.key)

    # -- the clock -----------------------------------------------------------------

    def tick(self) -> None:
        """RUNTIME ticks on the client, only for the rows on screen."""
        self.render_header()
        # Stale data does not tick: a RUNTIME that kept counting would look live.
        if self.paused_at is not None or not self.connected:
            return
        self.current.clock_tick(self.clock())
        if self.current is self.units:
            self.detail.tick(self.units.now)

    def render_header(self) -> None:
        self.header_pane.show(HeaderState.of(self))
        self.set_class(not self.connected, "stale")

    # -- keys --------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """False hides a key (read-only); None greys it out (it waits for the service).
        The keys of a view's rows are that view's (views/), and its to check."""
        if action == "view":
            return parameters[0] != self.view  # the footer offers the other views
        return TableView.check_action(self.current, action, parameters)

    async def run_action(
        self, action: str | Any, default_namespace: DOMNode | None = None, *args: Any
    ) -> bool:
        # A key greyed out for want of the service says why instead of doing nothing.
        name = str(action).partition("(")[0].rpartition(".")[2]
        target = default_namespace or self
        if name in NEEDS_SERVICE and target.check_action(name, ()) is None:
            description = next((b.description for b in all_bindings() if b.action == name), name)
            self.notify(
                f"not connected to the service: {description} waits for it ({self.status_line})",
                severity="warning",
            )
            return True
        return await super().run_action(action, default_namespace, *args)

    def watch_view(self, old: str, view: str) -> None:
        self.switcher.current = "units-pane" if view == "units" else self.current.id
        self.views[old].active = False
        if self.paused_at is None:
            self.current.catch_up()
        self.current.table.focus()
        self.render_header()

    def action_view(self, view: str) -> None:
        self.view = view

    def run_flow(self, flow: Coroutine[Any, Any, None]) -> None:
        # A worker each, in no exclusive group: a second dialog never stops a kill
        # already being sent.
        self.run_worker(flow, group="flow", exit_on_error=False)

    @on(UnitsView.KillRequested)
    def kill_units(self, message: UnitsView.KillRequested) -> None:
        self.run_flow(flows.kill_units(self, message.target))

    def action_kill_targets(self) -> None:
        self.run_flow(flows.kill_targets(self, self.signal_name))

    def action_kill_all(self) -> None:
        self.run_flow(flows.kill_all(self, self.signal_name))

    def action_choose_signal(self) -> None:
        self.run_flow(flows.choose_signal(self))

    @on(NodesView.DrainRequested)
    def drain(self, message: NodesView.DrainRequested) -> None:
        flow = flows.undrain if message.undrain else flows.drain
        self.run_flow(flow(self, message.rank))

    @on(TableView.OutputRequested)
    def output(self, message: TableView.OutputRequested) -> None:
        self.run_flow(flows.output(self, message.jobid))

    @on(TableView.Reshaped)
    def reshaped(self) -> None:
        self.render_header()

    def action_filter(self) -> None:
        self.filter_box.open()

    @on(FilterBar.Filtered)
    def set_filter(self, message: FilterBar.Filtered) -> None:
        """Apply a new filter text to the view on screen; the other view catches up
        when shown: a filter typed over 16,384 nodes must not also rebuild 10,000 unit
        rows, out of sight, at every key stroke."""
        self.filter_text = message.text
        query = self._queries.get(message.text, self.model.cluster)
        for view in self.views.values():
            view.set_query(query)
        self.current.apply(set())
        self.render_header()

    @on(FilterBar.Done)
    def filter_done(self) -> None:
        self.current.table.focus()

    def action_clear(self) -> None:
        """Clear the filter; with no filter, clear the marks (units view)."""
        if not self.filter_box.is_clear:
            self.filter_box.clear_filter()
            self.set_filter(FilterBar.Filtered(""))
            self.current.table.focus()
        elif self.view == "units" and self.units.marked:
            cleared = self.units.clear_marks()
            self.notify(f"cleared {plural(len(cleared), 'mark')}")

    def action_sort(self, step: int) -> None:
        self.current.cycle_sort(step)
        self.render_header()

    def action_invert(self) -> None:
        self.current.invert()
        self.render_header()

    def action_pause(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.clock()
            for view in self.views.values():
                view.active = False
            self.units.now = self.paused_at
            self.units.tick()
        else:
            self.paused_at = None
            self.current.catch_up(full=True)
        self.render_header()

    def action_refresh_rate(self) -> None:
        self.feed.next_interval()
        # One toast, the latest rate: pressing `r` four times must not stack four.
        # (Textual's notify() gives no handle to take a toast back: built here.)
        if self._rate_notice is not None:
            self._unnotify(self._rate_notice)
        self._rate_notice = Notification(
            f"refresh every {self.feed.interval:g}s", timeout=self.NOTIFICATION_TIMEOUT
        )
        self.post_message(Notify(self._rate_notice))
        self.render_header()

    def action_help(self) -> None:
        # Read before the help screen opens: a modal screen cuts the binding chain.
        self.push_screen(HelpScreen.of(self.screen, self._keys_config))
