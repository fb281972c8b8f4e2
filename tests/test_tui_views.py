"""The console's finished view (`3`), its stuck and flapping marks and node agents."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from textual import events
from textual.binding import Binding
from textual.pilot import Pilot
from textual.widgets import RichLog

from hkconsole.tui.app import HkConsole
from hkconsole.tui.fixed import fixed_app, load_sample
from hkconsole.tui.footer import OperatorFooter
from hkconsole.tui.help import HelpScreen
from hkconsole.tui.model import ConsoleModel
from hkconsole.tui.sample import JOBID_BASE, T0
from hkconsole.tui.screens import OutputScreen
from hkservice.jobid import encode_jobid
from tests.conftest import RunningService, ServiceFactory
from tests.test_agents import Cluster, agents_cluster, cleanup_script  # noqa: F401 - a fixture
from tests.test_tui import SIZE, header_lines, rows, until


def help_text(app: HkConsole) -> str:
    assert isinstance(app.screen, HelpScreen)
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(app.screen.table())
    return console.export_text()


def node_rows(app: HkConsole) -> list[int]:
    return [int(key) for key in app.nodes.table.ordered_keys]


def finished_rows(app: HkConsole) -> list[int]:
    return [int(key) for key in app.finished.table.ordered_keys]


def cell(app: HkConsole, jobid: int, column: str) -> str:
    return str(app.finished.table.get_cell(str(jobid), column)).strip()


async def test_finished_view_keeps_a_failed_unit_with_its_hosts_and_reasons(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    # node2's cleanup fails, the others succeed: unit 201 ends with one failed node.
    fails_on_node2 = script('[ "$HK_HOSTNAME" = node2 ] && { echo dirty >&2; exit 3; }\nexit 0')
    svc = hk_service(hostlist="node[0-3]", command=[fails_on_node2], release_after="0")
    svc.call("housekeeping.start", {"jobid": 200, "ranks": "0"})
    svc.wait_idle()
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected)
        await pilot.press("3")
        # Fetched when the console connects: what ended before it opened is there.
        await until(pilot, lambda: finished_rows(app) == [200])
        # A unit that ends while the console watches appears at once, newest first.
        svc.call("housekeeping.start", {"jobid": 201, "ranks": "1-3"})
        await until(pilot, lambda: finished_rows(app) == [201, 200])
        assert cell(app, 201, "outcome") == "failed"
        assert cell(app, 201, "failed") == "1"
        assert cell(app, 201, "nnodes") == "3"
        assert cell(app, 201, "failures") == "node2: exited 3"
        assert cell(app, 200, "outcome") == "ok" and cell(app, 200, "failures") == ""
        assert cell(app, 201, "duration").endswith("s")
        assert ":" in cell(app, 201, "ended")
        # The highlight stayed on its unit; on the newest, the bar below has it in full.
        assert encode_jobid(200) in str(app.finished.bar.render())
        await pilot.press("g")
        await until(pilot, lambda: encode_jobid(201) in str(app.finished.bar.render()))
        bar = str(app.finished.bar.render())
        assert "failed" in bar and "node2: exited 3" in bar
        counts = "2 units finished lately  1 ok  1 failed  1 failed rank"
        await until(pilot, lambda: counts in header_lines(app)[1])
        # The filter finds it by the host that failed, and says N of M.
        await pilot.press("slash", *"node2", "enter")
        await until(pilot, lambda: finished_rows(app) == [201])
        assert "1 of 2" in header_lines(app)[2]
        # Its output, kept by the service after the unit ended: why node2 failed.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, OutputScreen))
        await until(pilot, lambda: bool(app.screen.query("#output-log")))
        log = app.screen.query_one("#output-log", RichLog)
        await until(pilot, lambda: "dirty" in "\n".join(str(x.text) for x in log.lines))


async def test_finished_view_keys_help_and_empty_reason() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        assert "no unit has finished housekeeping yet" in str(app.finished.empty.render())
        load_sample(app)
        await pilot.pause()
        # Newest first; JOBID sorts by jobid, and `<` past the first column goes back.
        first = finished_rows(app)
        assert first[0] == JOBID_BASE + 74 and first[-1] == JOBID_BASE + 12
        await pilot.press("greater_than_sign")
        assert finished_rows(app) == sorted(first)
        await pilot.press("less_than_sign")
        assert finished_rows(app) == first
        await pilot.press("slash", *"nothing-like-it", "enter")
        await pilot.pause()
        assert "no finished units match 'nothing-like-it'" in str(app.finished.empty.render())
        await pilot.press("escape", "question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "3  Finished: units that finished recently" in help_text(app)


def test_history_entries_the_console_cannot_read_are_left_out() -> None:
    model = ConsoleModel()
    good = {"jobid": 7, "userid": 1, "t_start": 1.0, "t_end": 2.0, "ranks": "0-1", "failed": "1"}
    reasons = [{"ranks": "1", "reason": "exited 2"}, {"ranks": "x"}, "junk", {"reason": 3}]
    changed = model.apply_history(
        {
            "units": [
                {**good, "reasons": reasons},
                {"jobid": "nan"},
                None,
                {**good, "jobid": 8, "ranks": "a"},
            ]
        }
    )
    assert changed and list(model.finished) == [7]
    assert model.finished[7].reasons == ((frozenset({1}), "exited 2"),)
    assert not model.apply_history({"units": [{**good, "reasons": reasons}]})
    assert model.apply_history({"units": "not a list"}) and model.finished == {}


async def test_stuck_only_filter_shows_units_running_past_warn_after(
    hk_service: ServiceFactory,
) -> None:
    # Warn-after is short so the test is (it waits twice for it); what races it is
    # only an event's trip to the console (milliseconds), never the console's start.
    svc = hk_service(command=["sleep", "600"], release_after="0", warn_after="1.5s")
    svc.call("housekeeping.start", {"jobid": 301, "ranks": "0-1"})
    svc.wait_for(lambda r: r["units"][0]["stuck"] == "0-1")
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [301])
        footer = lambda: {key.description: key.key for key in app.query_one(OperatorFooter).keys}  # noqa: E731
        await until(pilot, lambda: footer().get("Stuck") == "f")
        await pilot.press("f")
        await until(pilot, lambda: "only stuck" in header_lines(app)[2])
        # 302 starts under the filter: not stuck for 1.5 s, so hidden.
        svc.call("housekeeping.start", {"jobid": 302, "ranks": "2-3"})
        # The header says the filter is on, how many units show of how many, and how
        # many ranks are stuck.
        await until(pilot, lambda: "1 of 2" in header_lines(app)[2])
        assert rows(app) == [301]
        assert "2 stuck" in header_lines(app)[1]
        # 302 becomes stuck (its event): it joins the filtered rows.
        await until(pilot, lambda: rows(app) == [301, 302])
        await until(pilot, lambda: "2 of 2" in header_lines(app)[2])
        await pilot.press("f")
        await until(pilot, lambda: "only stuck" not in header_lines(app)[2])
        assert " of " not in header_lines(app)[2]


async def test_stuck_filter_empty_reason_help_and_flapping_mark() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        await pilot.press("f")
        await pilot.pause()
        assert rows(app) == []
        assert "no stuck units: no rank runs past warn-after" in str(app.units.empty.render())
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "f  Stuck: units view: only units with a rank running past warn-after" in (
            help_text(app)
        )
        await pilot.press("escape", "f", "2")
        # sim22 fails run after run: marked beside its state, counted in the header,
        # said in the bar, and found by the filter.
        await pilot.pause()
        assert str(app.nodes.table.get_cell("22", "state")) == "drained flapping"
        assert str(app.nodes.table.get_cell("21", "state")) == "idle"
        assert "1 flapping" in header_lines(app)[1]
        await pilot.press("slash", *"flap", "enter")
        await until(pilot, lambda: app.nodes.table.row_count == 1)
        flapping = "flapping: its cleanup failed run after run"
        await until(pilot, lambda: flapping in str(app.nodes.bar.render()))


async def test_nodes_view_marks_a_node_the_service_finds_flapping(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    fails_on_node1 = script('[ "$HK_HOSTNAME" = node1 ] && exit 4\nexit 0')
    svc = hk_service(
        command=[fails_on_node1], release_after="0", tables={"history": {"flapping-after": 1}}
    )
    svc.call("housekeeping.start", {"jobid": 401, "ranks": "0-1"})
    svc.wait_idle()
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: app.nodes.table.row_count == 4)
        await until(pilot, lambda: "flapping" in str(app.nodes.table.get_cell("1", "state")))
        assert str(app.nodes.table.get_cell("0", "state")) == "idle"


async def test_nodes_view_shows_each_nodes_agent_connected_or_offline_since_when(
    agents_cluster: Callable[..., Cluster],  # noqa: F811 - test_agents' fixture
) -> None:
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    cluster.start_agent("node0", cluster.key("node0", "node0"))
    status = cluster.wait_status(lambda s: s["offline"] == "1")
    assert status["agents"] is True
    away = time.strftime("%b %d %H:%M:%S", time.localtime(status["offline_since"][0]["t"]))
    app = HkConsole(cluster.svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: app.nodes.table.row_count == 2)
        await until(pilot, lambda: str(app.nodes.table.get_cell("1", "state")) == "offline")
        assert str(app.nodes.table.get_cell("1", "reason")) == "no agent"
        assert str(app.nodes.table.get_cell("1", "since")).endswith("s ago")
        await until(pilot, lambda: "agent connected" in str(app.nodes.bar.render()))  # node0's
        await pilot.press("down")
        await until(pilot, lambda: f"agent offline since {away} (" in str(app.nodes.bar.render()))
        # node1's agent connects: its node is idle, its agent connected.
        cluster.start_agent("node1", cluster.key("node1", "node1"))
        await until(pilot, lambda: str(app.nodes.table.get_cell("1", "state")) == "idle", 15)
        assert str(app.nodes.table.get_cell("1", "reason")) == ""
        await until(pilot, lambda: "agent connected" in str(app.nodes.bar.render()))


async def test_nodes_view_says_nothing_of_agents_without_node_agents(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: app.nodes.table.row_count == 8)
        assert "agent" not in str(app.nodes.bar.render())


async def typed(pilot: Pilot[Any], text: str) -> None:
    """Type `text` as a terminal delivers it: a key event per character (Pilot.press
    loses emoji: it looks each up by a key name)."""
    for character in text:
        pilot.app.post_message(events.Key(character, character))
    await pilot.pause()


async def test_filter_finds_a_jobid_typed_in_emoji_whole_or_in_part() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        jobid = rows(app)[3]
        emoji = encode_jobid(jobid, "emoji")
        others = [j for j in rows(app) if j != jobid]
        # Its last two emoji are its own among the sample's units (they differ there).
        tail = emoji[-2:]
        assert all(tail not in encode_jobid(j, "emoji") for j in others)
        await pilot.press("slash")
        await typed(pilot, emoji)
        await until(pilot, lambda: rows(app) == [jobid])
        # A part of it, each emoji followed by the presentation selector some
        # keyboards add: the same unit.
        await pilot.press("escape", "slash")
        await typed(pilot, "".join(c + "\ufe0f" for c in tail))
        await until(pilot, lambda: rows(app) == [jobid])
        # The nodes holding it, on the nodes view; a finished unit by its emoji.
        await pilot.press("enter", "2")
        held = sorted(app.model.units[jobid].allocated)
        await until(pilot, lambda: node_rows(app) == held)
        ended = next(iter(app.model.finished))
        await pilot.press("escape", "3", "slash")
        await typed(pilot, encode_jobid(ended, "emoji"))
        await until(pilot, lambda: finished_rows(app) == [ended])


async def test_the_keys_of_a_views_rows_are_that_views_and_shown_in_the_footer() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        for view, keys in (("1", "k space o f"), ("2", "d u f"), ("3", "o")):
            await pilot.press(view)
            await pilot.pause()
            shown = app.current
            active = app.screen.active_bindings
            for key in keys.split():
                assert active[key].node is shown, (view, key)
            footer = {key.key for key in app.query_one(OperatorFooter).keys}
            assert set(keys.split()) <= footer
        # None of them is the App's: on another view they do not exist.
        view_actions = {"kill_unit", "mark", "output", "drain", "undrain", "state_filter"}
        assert not view_actions & {b.action for b in app.BINDINGS if isinstance(b, Binding)}


async def test_a_tick_draws_only_the_rows_it_changed_and_draws_them_right() -> None:
    """Idle cost: a tick draws again the rows whose RUNTIME changed and nothing else,
    and what it draws is what a table drawn from nothing draws, the highlighted row
    included."""
    now = [T0]
    app = fixed_app()
    app.clock = app.units.clock = lambda: now[0]
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.press("down")
        await pilot.pause()
        table = app.units.table
        drawn: list[int] = []  # the rows drawn anew (not taken from what was drawn)
        painter = table.painter
        row_strip = painter.row

        def counted(key: str, index: int, *args: Any) -> Any:
            before = len(painter.drawn)
            strip = row_strip(key, index, *args)
            if len(painter.drawn) > before:
                drawn.append(index)
            return strip

        painter.row = counted  # type: ignore[method-assign]
        [table.render_line(y) for y in range(1, table.row_count + 1)]
        drawn.clear()
        now[0] += 3.5
        app.tick()
        after_tick = [table.render_line(y) for y in range(1, table.row_count + 1)]
        assert len(after_tick) == 9
        assert sorted(drawn) == list(range(9))  # every RUNTIME moved on
        assert "1.932m" in after_tick[0].text  # the first unit: 112.4 s + 3.5 s
        drawn.clear()
        again = [table.render_line(y) for y in range(1, table.row_count + 1)]
        assert drawn == [] and again == after_tick  # nothing changed: nothing drawn
        # Drawn from nothing: the same segments, styles included.
        painter.forget()
        repainted = [table.render_line(y) for y in range(1, table.row_count + 1)]
        assert [list(s) for s in after_tick] == [list(s) for s in repainted]
        # The highlighted row (the second) stands out from both its neighbours.
        backgrounds = [next(iter(strip)).style.bgcolor for strip in after_tick[:3]]
        assert backgrounds[1] not in (backgrounds[0], backgrounds[2])


async def test_a_tick_that_widens_a_cell_widens_its_column() -> None:
    """SINCE ticks from `9m ago` to `10m ago`: the column grows with it instead of the
    row running past its cells."""
    from textual.app import App, ComposeResult

    from hkconsole.tui.cells import Cell
    from hkconsole.tui.table import LiveTable

    class OneTable(App[None]):
        def compose(self) -> ComposeResult:
            yield LiveTable()

    app = OneTable()
    async with app.run_test(size=(60, 6)) as pilot:
        table = app.query_one(LiveTable)
        table.add_column("NODE", key="node")
        table.add_column("SINCE", key="since")
        table.add_keyed_rows([("a", [Cell("sim1"), Cell("9m ago")])])
        await pilot.pause()
        since = table.columns["since"]
        assert since.width == 6
        table.update_cells([("a", "since", Cell("10m ago"))])
        await pilot.pause()
        assert since.width == 7
        assert "10m ago" in table.render_line(1).text


async def test_the_mouse_sorts_by_a_header_picks_a_row_opens_it_and_presses_footer_keys() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        table = app.units.table
        # A click on a column's header sorts by it (NNODES: after the mark, JOBID, USER).
        nnodes = table.columns["nnodes"]
        x = sum(c.width + 2 for c in table.columns.values()[: table.columns.index("nnodes")])
        await pilot.click(table, offset=(x + 1, 0))
        assert app.units.sort.column == "nnodes" and nnodes.label.endswith("▲")
        counts = [int(str(table.get_cell(str(j), "nnodes"))) for j in rows(app)]
        assert counts == sorted(counts)
        # A click on a row highlights it; a second one opens its output.
        third = rows(app)[2]
        await pilot.click(table, offset=(2, 3))
        await until(pilot, lambda: app.units.key_at_cursor() == third)
        assert app.detail.jobid == third
        await pilot.click(table, offset=(2, 3))
        await until(pilot, lambda: isinstance(app.screen, OutputScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, OutputScreen))
        # A key in the footer does what pressing it does.
        footer = app.query_one(OperatorFooter)
        line = footer.line().plain
        await pilot.click(footer, offset=(line.index("Nodes"), 0))
        await until(pilot, lambda: app.view == "nodes")


def test_scrolling_through_many_rows_keeps_a_bounded_number_of_drawings() -> None:
    from rich.style import Style

    from hkconsole.tui.cells import Cell
    from hkconsole.tui.columns import Columns
    from hkconsole.tui.paint import DRAWN_KEPT, Painter

    columns = Columns()
    columns.add("node", "NODE NAME")  # wide enough for every name below
    painter = Painter()
    styles = (Style(), Style(), Style(reverse=True), Style(bold=True))
    for index in range(3 * DRAWN_KEPT):
        strip = painter.row(str(index), index, [Cell(f"n{index}")], columns, styles, False, 20)
        assert f"n{index}" in strip.text
        assert len(painter.drawn) <= DRAWN_KEPT
