"""The three header lines: connection, counts, and what shapes the view."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.widgets import Static

from hkconsole.tui.cells import FLAPPING_STYLE, STATE_STYLES, Sort
from hkservice.fsd import format_duration_config
from hkservice.text import visible

if TYPE_CHECKING:
    from hkconsole.tui.app import HkConsole

Part = Text | str | tuple[str, str]


@dataclass
class HeaderState:
    endpoint: str
    read_only: bool
    label: str
    connected: bool = False
    status_line: str = "connecting…"
    paused_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    sort: Sort = field(default_factory=Sort)
    filter_text: str = ""
    shown: tuple[int, int] | None = None  # rows shown of rows there, while filtered
    state_filter: str | None = None
    stuck_only: bool = False  # on the units view: only units with stuck ranks
    node_counts: dict[str, int] | None = None  # on the nodes view: nodes per state
    flapping: int = 0  # on the nodes view: nodes failing run after run
    # On the finished view: (finished units, of which failed, failed ranks).
    finished_counts: tuple[int, int, int] | None = None
    signal_name: str = "TERM"
    refresh: float = 2.0

    @classmethod
    def of(cls, app: HkConsole) -> HeaderState:
        """What the header shows of the console now."""
        view = app.current
        nodes = view is app.nodes
        stuck_only = view is app.units and app.units.stuck_only
        state_filter = app.nodes.state_filter if nodes else None
        filtered = bool(app.filter_text) or stuck_only or state_filter is not None
        cluster = app.model.cluster
        return cls(
            endpoint=app.client.endpoint,
            read_only=app.read_only,
            label=app.label,
            connected=app.connected,
            status_line=app.status_line,
            paused_at=app.paused_at,
            counts=app.model.counts(),
            config=app.model.config,
            sort=view.sort,
            filter_text=app.filter_text,
            state_filter=state_filter,
            stuck_only=stuck_only,
            shown=(view.table.row_count, view.total()) if filtered else None,
            node_counts=app.model.node_counts(cluster.size) if nodes and cluster else None,
            flapping=len(app.model.flapping) if nodes else 0,
            finished_counts=app.finished.counts() if view is app.finished else None,
            signal_name=app.signal_name,
            refresh=app.feed.interval,
        )


def count(number: int, one: str, many: str, style: str) -> list[Part]:
    return [(f"{number}", style), f" {one}  " if number == 1 else f" {many}  "]


def header_text(h: HeaderState) -> Text:
    # Three lines, each clipped to the width (hkconsole.tcss): the connection first,
    # so a long DISCONNECTED reason is what gets cut, not the retry countdown.
    if h.connected:
        state = Text(" CONNECTED ", style="bold black on green")
    else:
        state = Text(f" {visible(h.status_line)} ", style="bold white on red")
    parts: list[Part] = [("hk ", "bold"), state]
    if h.paused_at is not None:
        frozen = time.strftime("%H:%M:%S", time.localtime(h.paused_at))
        parts += [" ", Text(f" PAUSED: rows as of {frozen} ", style="bold black on yellow")]
    if h.read_only:
        parts += [" ", Text(" READ-ONLY ", style="bold black on cyan")]
    if h.label:
        parts += ["  ", (h.label, "bold magenta")]
    # A DISCONNECTED reason usually names the endpoint already.
    if h.connected or h.endpoint not in h.status_line:
        parts += ["  ", (h.endpoint, "cyan")]
    c = h.counts
    failed = c.get("failed", 0)
    if h.node_counts is not None:
        parts += ["\n", (f"{sum(h.node_counts.values())}", "bold"), " nodes:"]
        for state, number in h.node_counts.items():
            style = f"bold {STATE_STYLES.get(state, '')}" if number else "dim"
            parts += ["  ", (f"{number}", style), f" {state}"]
        if h.flapping:
            parts += ["  ", (f"{h.flapping}", FLAPPING_STYLE), " flapping"]
    elif h.finished_counts is not None:
        units, failed_units, failed_ranks = h.finished_counts
        parts += [
            "\n",
            *count(units, "unit finished lately", "units finished lately", "bold"),
            *count(
                units - failed_units, "ok", "ok", "bold green" if units > failed_units else "bold"
            ),
            *count(failed_units, "failed", "failed", "bold red" if failed_units else "bold"),
            (f"{failed_ranks}", "bold red" if failed_ranks else "bold"),
            " failed rank" if failed_ranks == 1 else " failed ranks",
        ]
    else:
        parts += [
            "\n",
            *count(c.get("units", 0), "unit", "units", "bold"),
            *count(
                c.get("housekeeping", 0),
                "node in housekeeping",
                "nodes in housekeeping",
                "bold yellow",
            ),
            (f"{c.get('drained', 0)}", "bold red" if c.get("drained") else "bold"),
            " drained  ",
            (f"{failed}", "bold red" if failed else "bold"),
            " failed rank" if failed == 1 else " failed ranks",
        ]
        stuck = c.get("stuck", 0)
        if stuck:
            parts += ["  ", (f"{stuck}", "bold yellow"), " stuck"]
    if h.paused_at is not None:
        # The counts keep following the service while the rows hold still.
        parts += [("  (counts live)", "yellow")]
    # What shapes the current view comes before the (static) service settings.
    shaping: list[Part] = []
    if h.sort.column:
        shaping += [("sort ", "dim"), f"{h.sort.column} {'▼' if h.sort.reverse else '▲'}  "]
    if h.filter_text:
        shaping += [("filter ", "dim"), (visible(h.filter_text), "bold"), "  "]
    if h.state_filter:
        state_style = f"bold {STATE_STYLES.get(h.state_filter, '')}"
        shaping += [("state ", "dim"), (h.state_filter, state_style), "  "]
    if h.stuck_only:
        shaping += [("only ", "dim"), ("stuck", "bold yellow"), "  "]
    if h.shown is not None:
        shaping += [(f"{h.shown[0]} of {h.shown[1]}", "bold"), "  "]
    cfg = h.config
    if shaping or cfg:
        parts += ["\n", *shaping]
    if shaping and cfg:
        parts += [("│ ", "dim")]
    if cfg:
        # The signal first: armed with KILL, every kill is one no cleanup survives, and
        # that must show on the narrowest terminal; the static settings may be cut.
        parts += [
            ("signal ", "dim"),
            (f"SIG{h.signal_name}", "bold red" if h.signal_name == "KILL" else "bold"),
            ("  refresh ", "dim"),
            f"{h.refresh:g}s",
            ("  release-after ", "dim"),
            format_duration_config(cfg.get("release-after")),
            ("  timeout ", "dim"),
            format_duration_config(cfg.get("timeout")),
            ("  kill-grace ", "dim"),
            format_duration_config(cfg.get("kill-grace")),
        ]
    return Text.assemble(*parts)


class StatusHeader(Static):
    """Redrawn only when its text changed (the tick asks every second), and without a
    layout pass: three lines always."""

    def __init__(self) -> None:
        super().__init__(id="header")
        self._text: Text | None = None
        self._dirty = False

    def on_mount(self) -> None:
        # Data changes ask for a redraw a few times a second, not per event: the
        # header sums over every unit.
        self.set_interval(0.25, self._flush)

    def show(self, state: HeaderState) -> None:
        text = header_text(state)
        if text != self._text:
            self._text = text
            self.update(text, layout=False)

    def soon(self) -> None:
        self._dirty = True

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            render = getattr(self.app, "render_header", None)
            if render is not None:
                render()
