"""The console's defects of issue 13 and its share of issue 11, one test each.

Each test failed on the console before its fix; the defect's number is in its name.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq
from textual import events
from textual.message import Message
from textual.widgets import RichLog, Static

from hkconsole.tui.app import HkConsole
from hkconsole.tui.cells import hosts_text
from hkconsole.tui.fixed import fixed_app, load, load_sample
from hkconsole.tui.sample import T0
from hkconsole.tui.screens import ConfirmScreen, OutputScreen, PromptScreen
from hkconsole.tui.table import LiveTable
from hkconsole.tui.views.base import TableView
from hkservice.cluster import Cluster
from hkservice.fsd import format_fsd
from hkservice.jobid import encode_jobid
from tests.conftest import RunningService
from tests.test_tui import BY, SIZE, notes_into, rows, running, until


def clocked(clock: list[float]) -> Any:
    """The sample console on a clock the test moves."""
    app = fixed_app()
    app.clock = app.units.clock = app.nodes.clock = lambda: clock[0]
    return app


def runtimes(app: HkConsole) -> dict[int, str]:
    table = app.units.table
    return {j: str(table.get_cell(str(j), "runtime")).strip() for j in rows(app)}


def unit_wire(jobid: int, t_start: float, ranks: str) -> dict[str, Any]:
    return {
        "jobid": jobid,
        "userid": 1000,
        "t_start": t_start,
        "ranks": ranks,
        "allocated": ranks,
        "pending": ranks,
        "failed": "",
    }


def ended(app: HkConsole, jobid: int) -> None:
    """The service says the unit ended, as the feed would pass it on."""
    app.model.apply_event("housekeeping.ended", {"jobid": jobid})
    app.apply_changes(app.model.take_changes())


async def test_1_kill_all_kills_the_units_it_counted(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("A")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        title = str(app.screen.query_one("#dialog-title").render())
        assert "(3 units)" in title
        # A unit starts while the operator types 'all': it was not counted, so it lives.
        busy.call("housekeeping.start", {"jobid": 104, "ranks": "6-7"})
        await until(pilot, lambda: 104 in app.model.units)
        await pilot.press(*"all", "enter")
        await until(pilot, lambda: set(running(busy)) == {104})
        await until(pilot, lambda: bool(notes))
        names = f"{encode_jobid(101)}, {encode_jobid(102)} and {encode_jobid(103)}"
        assert notes == [f"sent SIGTERM to {names} on node[0-5]{BY}"]
    assert running(busy) == {104: "6-7"}


async def test_2_a_view_shows_current_data_the_moment_it_is_shown() -> None:
    now = [T0]
    app = clocked(now)
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        first, second, *_ = rows(app)
        await pilot.press("2")
        await pilot.pause()
        now[0] += 20
        app.tick()
        ended(app, first)
        await pilot.press("1")
        # No tick between: what shows right after the switch is already current.
        assert first not in rows(app)
        t_start = app.model.units[second].t_start
        assert runtimes(app)[second] == format_fsd(now[0] - t_start)


async def test_3_jobid_sorts_by_jobid_and_the_natural_order_comes_back() -> None:
    app = HkConsole("ipc:///nowhere", clock=lambda: 100.0, live=False)
    config = {"hostlist": "n[0-3]", "events-endpoint": ""}
    # Job 5 started before job 3: start order is 5, 3, 4.
    units = [unit_wire(5, 10.0, "0"), unit_wire(3, 20.0, "1"), unit_wire(4, 30.0, "2")]
    async with app.run_test(size=SIZE) as pilot:
        load(app, config, {"units": units}, {"drained": []})
        await pilot.pause()
        assert rows(app) == [5, 3, 4]
        await pilot.press("greater_than_sign")
        assert app.units.sort.column == "jobid"
        assert rows(app) == [3, 4, 5]
        await pilot.press("I")
        assert rows(app) == [5, 4, 3]
        # `<` from the first column goes back to the natural order (no sort).
        await pilot.press("less_than_sign")
        assert app.units.sort.column is None
        assert rows(app) == [5, 3, 4]
        labels = [c.label for c in app.units.table.columns.values()]
        assert not any("▲" in label or "▼" in label for label in labels)


class SlowService:
    """An endpoint that takes requests and never answers (a stopped service)."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind(endpoint)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


async def test_5_a_retry_countdown_never_stays_on_a_second_longer(tmp_path: Any) -> None:
    endpoint = f"ipc://{tmp_path}/hung.sock"
    hung = SlowService(endpoint)
    app = HkConsole(endpoint)
    app.client.timeout = 1.0
    seen: list[tuple[float, str]] = []
    try:
        async with app.run_test(size=SIZE):
            deadline = time.monotonic() + 5.5
            while time.monotonic() < deadline:
                seen.append((time.monotonic(), app.status_line))
                await asyncio.sleep(0.05)
    finally:
        hung.close()
    # How long each status stayed up.
    spans: dict[str, float] = {}
    start, status = seen[0]
    for t, text in seen[1:]:
        if text != status:
            spans[status] = spans.get(status, 0.0) + t - start
            start, status = t, text
    counting = {s: d for s, d in spans.items() if " in 1s " in s}
    assert counting, spans
    assert all(d < 1.6 for d in counting.values()), counting


async def test_5_acting_keys_say_why_they_do_nothing_while_disconnected(tmp_path: Any) -> None:
    app = fixed_app()
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        load_sample(app)
        app.connected = False
        app.status_line = "DISCONNECTED: retry 3 in 4s (no hk service at x)"
        await pilot.pause()
        await pilot.press("k")
        await pilot.press("2", "d")
        await pilot.pause()
        assert app.screen is app.screen_stack[0]
        assert len(notes) == 2
        assert all(note.startswith("not connected to the service") for note in notes)


async def test_6_messages_name_hosts_when_the_operator_works_in_hosts(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("t", *"node[6-7]", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: bool(notes))
        assert notes == ["no housekeeping running on node[6-7]"]
        notes.clear()
        await pilot.press("2")
        await until(pilot, lambda: app.nodes.table.row_count == 8)
        app.nodes.table.move_cursor(row=6)
        await pilot.press("u")
        await until(pilot, lambda: bool(notes))
        assert notes == ["node6 is not drained"]


def test_8_a_cut_hostlist_never_ends_inside_a_number() -> None:
    cluster = Cluster("sim[0-99]")
    ranks = set(range(0, 100, 3)) | {50, 51, 52, 53, 54, 55}
    text = hosts_text(cluster, ranks, width=41)
    assert text.endswith(",…") or text.endswith("[…")
    listed = text.split(": ", 1)[1].rstrip("…").rstrip(",").lstrip("sim[")
    full = cluster.nodelist(ranks)
    assert full.startswith(f"sim[{listed}")
    assert full[len(f"sim[{listed}")] in ",]"


async def test_8_notices_leave_the_filter_box_clear() -> None:
    app = fixed_app()
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        load_sample(app)
        await pilot.press("slash")
        app.notify("sent SIGTERM to ƒMk93AV8cQF and ƒMk93AV8cQT on sim[0-15,60]")
        await pilot.pause(0.3)
        from textual.widgets._toast import Toast

        box = app.filter_box.region
        assert app.screen.query(Toast)
        for toast in app.screen.query(Toast):
            assert not toast.region.overlaps(box), (toast.region, box)


async def test_9_every_runtime_on_screen_is_taken_at_one_moment() -> None:
    now = [T0]
    app = HkConsole("ipc:///nowhere", clock=lambda: now[0], live=False)
    config = {"hostlist": "n[0-199]", "events-endpoint": ""}
    units = [unit_wire(1000 + i, T0 - 1000 + i, str(i)) for i in range(200)]
    async with app.run_test(size=(100, 30)) as pilot:
        load(app, config, {"units": units}, {"drained": []})
        await pilot.pause()
        now[0] += 600
        app.tick()
        await pilot.press("p")
        paused_at = app.paused_at
        assert paused_at is not None
        await pilot.press("end")
        await pilot.pause()
        table = app.units.table
        top = int(table.scroll_offset.y)
        on_screen = [int(key) for key in table.ordered_keys[top:]]
        assert on_screen[-1] == 1199 and len(on_screen) < 30
        shown = runtimes(app)
        for jobid in on_screen:
            t_start = T0 - 1000 + (jobid - 1000)
            assert shown[jobid] == format_fsd(paused_at - t_start), jobid


async def test_11_the_detail_pane_lets_go_of_a_unit_that_ended() -> None:
    now = [T0]
    app = clocked(now)
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await until(pilot, lambda: bool(rows(app)))
        jobid = rows(app)[0]
        # The pane follows the highlight a moment later (on a loaded machine, later still).
        await until(pilot, lambda: str(app.detail.body.render()).startswith(encode_jobid(jobid)))
        await pilot.press("p")  # the row stays (paused); the unit ends meanwhile
        ended(app, jobid)
        text = f"{encode_jobid(jobid)}: housekeeping ended"
        await until(pilot, lambda: str(app.detail.body.render()) == text)
        assert jobid in rows(app)
        now[0] += 60
        app.tick()
        assert str(app.detail.body.render()) == text


async def test_13_a_kill_typed_fast_aims_at_the_row_under_the_cursor() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        first, second, *_ = rows(app)
        # One burst, as a fast typist's terminal delivers it (Pilot.press waits between
        # keys, which hid this).
        app.post_message(events.Key("down", None))
        app.post_message(events.Key("k", "k"))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await until(pilot, lambda: bool(app.screen.query("#dialog-body")))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert encode_jobid(second) in body and encode_jobid(first) not in body


async def test_14_a_sort_keeps_the_cursor_on_its_unit_and_says_so() -> None:
    app = fixed_app()
    seen: list[int | None] = []

    def hook(message: Message) -> None:
        if isinstance(message, TableView.Highlighted) and message.view is app.units:
            seen.append(message.key)

    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        load_sample(app)
        await pilot.pause()
        await pilot.press("down", "down")
        jobid = app.units.key_at_cursor()
        seen.clear()
        for key in ("greater_than_sign", "I", "greater_than_sign", "greater_than_sign"):
            await pilot.press(key)
            assert app.units.key_at_cursor() == jobid
            assert app.units.table.cursor_row == rows(app).index(jobid)
        assert seen == []  # the highlight never moved
        assert str(app.detail.body.render()).startswith(encode_jobid(jobid))


async def test_15_a_second_dialog_does_not_stop_a_kill_being_sent(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    call = app.client.call

    async def slow_kills(method: str, params: Any = None) -> Any:
        # The real call, a little later: room to open a dialog while kills are sent.
        if method == "housekeeping.kill":
            await asyncio.sleep(0.3)
        return await call(method, params)

    app.client.call = slow_kills  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("space", "space", "space")
        assert app.units.marked == {101, 102, 103}
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: len(app.screen_stack) == 1)
        await pilot.press("s")  # the signal dialog, while the first kill is on its way
        await until(pilot, lambda: len(app.screen_stack) == 2)
        await until(pilot, lambda: not running(busy), timeout=5)


async def test_16_restoring_the_cursor_posts_no_highlight() -> None:
    app = fixed_app()
    posted: list[Any] = []

    def hook(message: Message) -> None:
        if isinstance(message, LiveTable.RowHighlighted):
            posted.append(message.row_key)

    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        load_sample(app)
        await pilot.pause()
        await pilot.press("down", "down", "down")
        await pilot.pause()
        posted.clear()
        jobid = app.units.key_at_cursor()
        # Updates that move its row: the cursor follows it, silently.
        app.units.set_sort("runtime")
        first = rows(app)[0]
        ended(app, first)
        await pilot.pause()
        assert app.units.key_at_cursor() == jobid
        assert posted == []


HOSTILE = "ok \x1b[2J\x1b]0;pwned\x07 done"
SHOWN = "ok \\x1b[2J\\x1b]0;pwned\\x07 done"


def no_escapes(widget: Any) -> str:
    """The widget's rendered lines, checked to hold no escape character."""
    lines = [
        "".join(segment.text for segment in widget.render_line(y))
        for y in range(widget.size.height)
    ]
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text
    return text


async def test_security_outside_text_shows_its_escapes_in_every_view() -> None:
    app = fixed_app()
    _, units, status = app.sample
    status["drained"].append({"ranks": "62", "reason": HOSTILE, "t": T0 - 5})
    jobid = units["units"][0]["jobid"]
    sample = app.detail_sample

    def hostile_detail(j: int) -> Any:
        detail = sample(j)
        assert detail is not None
        unit, lines, _ = detail
        unit["rank_detail"][0]["outcome"] = {"kind": "exit", "code": 1, "text": HOSTILE}
        unit["rank_detail"][0]["state"] = "done"
        return unit, [[0, "err", HOSTILE], *lines], None

    async def hostile_output(j: int) -> tuple[list[list[Any]], str | None]:
        return [[0, "out", HOSTILE]], None

    app.detail.sample = hostile_detail
    app.fetch_output = hostile_output  # type: ignore[method-assign]
    async with app.run_test(size=(160, 40)) as pilot:
        load_sample(app)
        await pilot.pause()
        assert rows(app)[0] == jobid
        detail = str(app.detail.body.render())
        assert "\x1b" not in detail and detail.count(SHOWN) == 2  # the outcome and stderr
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OutputScreen))
        log = app.screen.query_one("#output-log", RichLog)
        assert SHOWN in "\n".join(str(line.text) for line in log.lines)
        await pilot.press("escape", "2")
        await pilot.pause()
        table = app.nodes.table
        assert str(table.get_cell("62", "reason")) == SHOWN
        table.move_cursor(row=62)
        await until(pilot, lambda: SHOWN in no_escapes(table))


def screen_text(app: HkConsole) -> list[str]:
    """What the terminal shows, line by line."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def test_4_at_80x24_columns_give_way_and_every_cut_is_marked() -> None:
    app = fixed_app()
    _, units, status = app.sample
    scattered = "0,2,4,6,9,11,13,18,21,23,27,34,36,38,40,42,44,46,48,50,52,54,58,61"
    units["units"].append(unit_wire(99, T0 - 50, scattered))
    drain = {"ranks": "1", "reason": "bad fan " * 12 + "END", "t": T0 - 200, "by": "bob (as root)"}
    status["drained"].append(drain)
    async with app.run_test(size=(80, 24)) as pilot:
        load_sample(app)
        await pilot.pause()
        app.signal_name = "KILL"
        app.render_header()
        await pilot.press("G")  # the last row: the unit with the long nodelist
        await pilot.pause()
        lines = screen_text(app)
        assert "signal SIGKILL" in lines[2]
        row = next(line for line in lines if encode_jobid(99) in line)
        assert row.rstrip().endswith("…") and len(row) <= 80
        assert "sim[0,2,4" in row  # the column gave way, it did not vanish
        await pilot.press("2", "down")
        await pilot.pause()
        lines = screen_text(app)
        assert "SINCE" in lines[3] and " BY " in lines[3]
        row = next(line for line in lines if line.split()[:1] == ["1"] and "drained" in line)
        assert "bad fan" in row and "…" in row and "END" not in row
        # Both cut columns say so: the reason's `…` and who drained's.
        assert "bob" in row and "root" not in row and row.count("…") == 2
        assert row.rstrip().endswith("3m ago") and len(row) <= 80
        # The bar under the table has what the row had to cut, who drained, and when.
        assert "drained by bob (as root)  since" in "".join(lines[-4:-1])
        assert "END" in "".join(lines[-4:-1])


async def test_4_at_70x15_the_nodelist_and_the_highlighted_unit_stay_in_sight() -> None:
    app = fixed_app()
    async with app.run_test(size=(120, 36)) as pilot:
        load_sample(app)
        await pilot.pause()
        await pilot.press("G")
        await pilot.resize_terminal(70, 15)
        await pilot.pause()
        await pilot.pause()
        lines = screen_text(app)
        last = rows(app)[-1]
        assert "NODELIST" in lines[3]
        assert any(encode_jobid(last) in line and "sim[40-55]" in line for line in lines[4:9])


async def test_enter_opens_the_output_which_says_how_to_close_and_names_hosts() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        await pilot.press("down", "down", "enter")
        await until(pilot, lambda: isinstance(app.screen, OutputScreen))
        log = app.screen.query_one("#output-log", RichLog)
        assert str(log.lines[0].text).startswith("[16 sim16] out ")
        hint = str(app.screen.query_one(".dialog-hint", Static).render())
        assert hint.startswith("esc, q or o closes")
        await pilot.press("q")
        await until(pilot, lambda: not isinstance(app.screen, OutputScreen))
        await pilot.press("2", "d")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        hint = str(app.screen.query_one(".dialog-hint", Static).render())
        assert hint == "enter: drain · esc: cancel"


def failed_count_color(app: HkConsole) -> Any:
    """The colour the terminal shows the FAILED count of the third unit in."""
    line = app.screen._compositor.render_strips()[6]
    (segment,) = [s for s in line if s.text.strip() == "1" and s.style and s.style.bold]
    return segment.style.color


async def test_12_disconnected_dims_the_failed_counts_too() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        live = failed_count_color(app)
        app.connected = False
        app.status_line = "DISCONNECTED: retry 3 in 4s (no hk service at x)"
        app.render_header()
        await pilot.pause()
        stale = failed_count_color(app)
        assert stale != live
        assert sum(stale.get_truecolor()) < sum(live.get_truecolor())


async def test_filtered_views_say_n_of_m_and_an_empty_table_says_why() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        await pilot.press("slash", *"sim2", "enter")
        await pilot.pause()
        lines = screen_text(app)
        assert "filter sim2  2 of 9" in lines[2]  # sim[25-26], sim[28-29]
        await pilot.press("escape", "slash", *"nothing", "enter")
        await pilot.pause()
        assert str(app.units.empty.render()) == "no units match 'nothing'"
        assert any("no units match 'nothing'" in line for line in screen_text(app))
        await pilot.press("escape", "2")
        await pilot.pause()
        assert screen_text(app)[1].startswith(
            " 64 nodes:  33 idle  27 housekeeping  0 draining  4 drained  0 offline"
        )
        await pilot.press("f", "f", "f")  # idle, housekeeping, draining
        await pilot.pause()
        assert str(app.nodes.empty.render()) == "no draining nodes"
        assert "state draining  0 of 64" in screen_text(app)[2]


async def test_rows_back_from_a_filter_sort_by_runtime_in_their_true_place() -> None:
    """Rows keep their cells while hidden or off screen, RUNTIME as it was when last
    drawn; sorted by RUNTIME they still go where their start puts them."""
    now = [T0]
    app = HkConsole("ipc:///nowhere", clock=lambda: now[0], live=False)
    app.units.clock = lambda: now[0]
    config = {"hostlist": "n[0-99]", "events-endpoint": ""}
    # 1000 started first, long before the others, which start 10 s apart.
    units = [unit_wire(1000, T0 - 2000, "0")]
    units += [unit_wire(1000 + i, T0 - 1000 + 10 * i, str(i)) for i in range(1, 30)]
    async with app.run_test(size=(100, 15)) as pilot:
        load(app, config, {"units": units}, {"drained": []})
        await pilot.pause()
        app.units.set_sort("runtime")  # the shortest running first
        await pilot.press("slash", *"n2", "enter")
        await until(pilot, lambda: 1000 not in rows(app))
        now[0] += 5000  # the rows on screen tick; 1000, hidden, does not
        app.tick()
        await pilot.press("escape")
        await until(pilot, lambda: len(rows(app)) == 30)
        assert rows(app) == [1000 + i for i in range(29, -1, -1)]


async def test_an_update_right_after_a_move_keeps_the_cursor_where_it_was_moved() -> None:
    """The view hears of a cursor move by a message; an update applied before that
    message is handled must not put the cursor back where it was."""
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.press("2")
        await until(pilot, lambda: app.nodes.key_at_cursor() == 0)
        app.nodes.table.move_cursor(row=3)
        app.apply_changes(set(), full=True)  # before the move's message is handled
        await pilot.pause()
        assert app.nodes.key_at_cursor() == 3 and app.nodes.cursor_key == 3
        assert "sim3 (rank 3)" in str(app.query_one("#node-detail", Static).render())
