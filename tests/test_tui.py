"""The console, driven by Pilot against a real service running real commands."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from rich.color import Color
from rich.console import Console
from rich.style import Style
from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot
from textual.widgets import RichLog, Static
from textual.widgets._toast import Toast

from hkconsole.tui.app import HkConsole
from hkconsole.tui.cells import hosts_text
from hkconsole.tui.detail import detail_text
from hkconsole.tui.fixed import disconnect, fixed_app, load, load_sample
from hkconsole.tui.footer import OperatorFooter
from hkconsole.tui.help import HelpScreen
from hkconsole.tui.sample import T0
from hkconsole.tui.screens import ConfirmScreen, OutputScreen, PromptScreen
from hkconsole.tui.table import LiveTable
from hkconsole.tui.views.nodes import NODE_STATES
from hkservice.cluster import Cluster
from hkservice.fsd import parse_duration
from hkservice.idset import parse_idset
from hkservice.jobid import encode_jobid
from tests.conftest import ME, RunningService, ServiceFactory
from tests.test_agents import Cluster as AgentsCluster
from tests.test_agents import agents_cluster, sleeper  # noqa: F401 - agents_cluster: a fixture

SIZE = (120, 40)
BY = f" by {ME}"  # who the service says acted, after what a kill, drain or undrain did


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def notes_into(notes: list[str]) -> Callable[[Message], None]:
    """A message hook that keeps the text of every notification, except connecting."""

    def hook(message: Message) -> None:
        if isinstance(message, Notify) and not message.notification.message.startswith("connected"):
            notes.append(message.notification.message)

    return hook


def rows(app: HkConsole) -> list[int]:
    table = app.query_one("#units", LiveTable)
    return [int(key) for key in table.ordered_keys]


def running(svc: RunningService) -> dict[int, str]:
    return {u["jobid"]: u["pending"] for u in svc.call("housekeeping.list")["units"]}


def drained(svc: RunningService) -> dict[int, str]:
    """rank -> drain reason (ranks drained in one batch come grouped: split them)."""
    return {
        rank: d["reason"]
        for d in svc.call("resource.status")["drained"]
        for rank in parse_idset(d["ranks"])
    }


async def test_kill_the_highlighted_unit(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("down")
        await until(pilot, lambda: app.units.key_at_cursor() == 102)
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert encode_jobid(102) in body and "node[2-3]" in body and "SIGTERM" in body
        await pilot.press("y")
        await until(pilot, lambda: 102 not in rows(app))
        assert notes == [f"sent SIGTERM to {encode_jobid(102)} on node[2-3]{BY}"]
    assert running(busy) == {101: "0-1", 103: "4-5"}
    reasons = drained(busy)
    assert sorted(reasons) == [2, 3]
    assert all(r.endswith("signal: killed TERM") for r in reasons.values())


async def test_the_right_unit_dies_when_rows_move_under_the_dialog(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("down", "down")
        await until(pilot, lambda: app.units.key_at_cursor() == 103)
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        # While the operator reads the dialog: the row above goes away and the list
        # re-sorts, so another unit now sits where the cursor was.
        busy.call("housekeeping.kill", {"jobid": 101, "signum": 9})
        await until(pilot, lambda: 101 not in rows(app))
        app.units.set_sort("jobid", reverse=True)
        await pilot.pause(0.1)
        assert rows(app) == [103, 102]
        await pilot.press("y")
        await until(pilot, lambda: 103 not in running(busy))
        await pilot.pause(0.3)
    assert running(busy) == {102: "2-3"}


async def test_marked_units_are_killed_together_and_the_rest_untouched(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("space")  # marks 101, moves down to 102
        await until(pilot, lambda: app.units.key_at_cursor() == 102)
        await pilot.press("down", "space")  # marks 103
        assert app.units.marked == {101, 103}
        assert str(app.units.table.get_cell("102", "mark")) == ""
        assert str(app.units.table.get_cell("103", "mark")) == "●"
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert encode_jobid(101) in body and encode_jobid(103) in body
        assert encode_jobid(102) not in body
        assert "2 units" in str(app.screen.query_one("#dialog-title").render())
        await pilot.press("y")
        await until(pilot, lambda: rows(app) == [102])
        await until(pilot, lambda: bool(notes))
        assert notes == [
            f"sent SIGTERM to {encode_jobid(101)} and {encode_jobid(103)} on node[0-1,4-5]{BY}"
        ]
        assert app.units.marked == set()
    assert running(busy) == {102: "2-3"}
    assert sorted(drained(busy)) == [0, 1, 4, 5]


async def test_refresh_rate_key_sets_how_often_the_console_resyncs(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    resyncs: list[float] = []
    resync = app.feed.resync

    async def counted() -> None:
        resyncs.append(time.monotonic())
        await resync()

    app.feed.resync = counted  # type: ignore[method-assign]
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.connected)
        assert app.feed.interval == 2.0 and "refresh 2s" in header_lines(app)[2]
        resyncs.clear()
        await pilot.press("r")  # 2 s -> 5 s
        assert app.feed.interval == 5.0 and "refresh 5s" in header_lines(app)[2]
        # A change of rate resyncs at once (within the feed's 0.5 s poll), then waits.
        await until(pilot, lambda: bool(resyncs))
        await pilot.pause(0.7)
        resyncs.clear()
        await pilot.pause(3.0)
        assert resyncs == []  # none within 3 s at 5 s
        await pilot.press("r", "r")  # 10 s, then around to 1 s
        assert app.feed.interval == 1.0 and "refresh 1s" in header_lines(app)[2]
        # The toast of the first press (4 s ago) and of the second are gone: one toast,
        # in the header's word.
        await pilot.pause()
        toasts = [str(toast.render()) for toast in app.screen.query(Toast)]
        assert [t for t in toasts if "every" in t] == ["refresh every 1s"]
        await pilot.pause(0.8)
        resyncs.clear()
        await pilot.pause(3.0)
        assert 2 <= len(resyncs) <= 4


async def test_kill_on_targets_and_kill_all(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"node9")
        await pilot.pause(0.05)
        error = str(app.screen.query_one("#prompt-error", Static).render())
        assert error == "host 'node9' is not in the cluster"
        await pilot.press("backspace", *"[1-2]", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        # The confirm names the units the kill hits, from the data on screen.
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert f"{encode_jobid(101)}  running on node1" in body
        assert f"{encode_jobid(102)}  running on node2" in body
        assert encode_jobid(103) not in body
        await pilot.press("y")
        await until(pilot, lambda: running(busy) == {101: "0", 102: "3", 103: "4-5"})
        await until(pilot, lambda: bool(notes))
        assert notes[-1] == (
            f"sent SIGTERM to {encode_jobid(101)} and {encode_jobid(102)} on node[1-2]{BY}"
        )

        await pilot.press("A")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"al", "enter")
        await pilot.pause(0.1)
        assert isinstance(app.screen, PromptScreen)  # "al" is not "all"
        await pilot.press("l", "enter")
        await until(pilot, lambda: not running(busy))
        await until(pilot, lambda: rows(app) == [])
        names = f"{encode_jobid(101)}, {encode_jobid(102)} and {encode_jobid(103)}"
        assert notes[-1] == f"sent SIGTERM to {names} on node[0,3-5]{BY}"


async def test_a_killed_service_leaves_stale_data_then_reconnects(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3 and app.connected)
        assert app.check_action("kill_unit", ()) is True
        assert app.check_action("output", ()) is True
        # SIGKILL: no goodbye, no last events; only the missing heartbeat tells.
        busy.kill9()
        await until(pilot, lambda: not app.connected, timeout=15)
        assert rows(app) == [101, 102, 103]  # the last data stays, marked stale
        assert app.has_class("stale")
        for action in ("kill_unit", "output", "kill_all", "choose_signal"):
            assert app.check_action(action, ()) is None
        assert "DISCONNECTED" in header_lines(app)[0]
        await pilot.press("k", "o")
        await pilot.pause(0.1)
        assert app.screen is app.screen_stack[0]  # neither a dialog nor output opened
        busy.start()  # the same config, the same state directory
        await until(pilot, lambda: app.connected, timeout=20)
        assert not app.has_class("stale")
        await until(pilot, lambda: rows(app) == sorted(running(busy)))
        assert "CONNECTED" in header_lines(app)[0]


async def test_read_only_hides_kill_and_drain(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3)
        for action in ("kill_unit", "kill_targets", "kill_all", "drain", "undrain", "mark"):
            assert app.check_action(action, ()) is False
        await pilot.press("k", "A", "t", "space")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen | PromptScreen)
        assert app.units.marked == set()  # marks only feed kills
        assert "READ-ONLY" in str(app.query_one("#header", Static).render())
    assert len(running(busy)) == 3


async def test_nodes_view_drain_and_undrain(busy: RunningService) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3)
        await pilot.press("2")
        nodes = app.query_one("#nodes", LiveTable)
        await until(pilot, lambda: nodes.row_count == 8)
        assert str(nodes.get_cell("0", "state")) == "housekeeping"
        assert str(nodes.get_cell("6", "state")) == "idle"
        node_rows = lambda: [int(key) for key in nodes.ordered_keys]  # noqa: E731
        await pilot.press("slash", *"idle", "enter")
        await until(pilot, lambda: node_rows() == [6, 7])
        await pilot.press("escape")
        # Rows back from a filter return to rank order, not to the bottom.
        await until(pilot, lambda: node_rows() == list(range(8)))
        # The node highlighted under the filter (its first row) stays highlighted.
        assert app.nodes.key_at_cursor() == 6
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press(*"bad fan [x]", "enter")
        await until(pilot, lambda: str(nodes.get_cell("6", "state")) == "drained")
        assert str(nodes.get_cell("6", "reason")) == "bad fan [x]"
        await until(pilot, lambda: bool(notes))
        assert notes == [f"drained node6{BY}: bad fan [x]"]
        await pilot.press("u")
        await until(pilot, lambda: str(nodes.get_cell("6", "state")) == "idle")
        await until(pilot, lambda: len(notes) == 2)
        assert notes[1] == f"undrained node6{BY}"
    assert drained(busy) == {}


async def test_nodes_view_says_who_drained_in_the_by_column_and_the_bar(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    cmd = script('[ "$HK_RANK" = 1 ] && exit 3; sleep 600')
    svc = hk_service(hostlist="node[0-3]", command=[cmd], release_after="0")
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        nodes = app.query_one("#nodes", LiveTable)
        await until(pilot, lambda: nodes.row_count == 4)
        # While the console watches: the service's own drain (rank 1 fails), an
        # operator's kill (rank 0 drained for it), an operator's drain (rank 3).
        svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-1"})
        await until(pilot, lambda: 1 in app.model.drains)
        svc.call("housekeeping.kill", {"jobid": 7, "signum": 15})
        svc.call("resource.drain", {"ranks": "3", "reason": "bad fan"})

        def by_cells() -> dict[int, str]:
            return {rank: str(nodes.get_cell(str(rank), "by")) for rank in range(4)}

        await until(pilot, lambda: by_cells() == {0: ME, 1: "", 2: "", 3: ME})
        bar = app.query_one("#node-detail", Static)
        nodes.move_cursor(row=3)
        await until(pilot, lambda: "node3 (rank 3)" in str(bar.render()))
        assert f"drained by {ME}  since" in str(bar.render())
        assert "reason bad fan" in str(bar.render())
        nodes.move_cursor(row=1)
        await until(pilot, lambda: "node1 (rank 1)" in str(bar.render()))
        assert "drained  since" in str(bar.render()) and " by " not in str(bar.render())
    # A console started afterwards reads the same from resource.status.
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        nodes = app.query_one("#nodes", LiveTable)
        await until(pilot, lambda: nodes.row_count == 4 and len(app.model.drains) == 3)
        assert by_cells() == {0: ME, 1: "", 2: "", 3: ME}


async def test_detail_shows_ranks_and_output(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    cmd = script(
        'echo "scrubbing $HK_HOSTNAME"; [ "$HK_RANK" = 1 ] && exit 3;'
        ' [ "$HK_RANK" = 2 ] && exit 0; sleep 600'
    )
    svc = hk_service(hostlist="node[0-3]", command=[cmd])
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-2"})
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        detail = app.query_one("#detail", Static)

        def shows(text: str) -> bool:
            return text in str(detail.render())

        await until(pilot, lambda: shows("exited 3") and shows("scrubbing node1"))
        lines = str(detail.render()).splitlines()
        ranks = [line.split()[:3] for line in lines[1:4]]
        # Failed first, then running, then the node that finished cleanly (held: no
        # release-after), each with its duration.
        assert ranks == [["1", "node1", "failed"], ["0", "node0", "running"], ["2", "node2", "ok"]]
        assert re.search(r"node2 +ok +[0-9.]+m?s$", lines[3])


async def test_output_kept_on_the_nodes_by_node_agents_says_where(
    agents_cluster: Callable[..., AgentsCluster],  # noqa: F811 - the fixture imported above
) -> None:
    cluster = agents_cluster(sleeper, hostlist="node[0-1]")
    for i in range(2):
        cluster.start_agent(f"node{i}", cluster.key(f"node{i}", f"node{i}"))
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 19, "ranks": "0-1"})
    where = f"on node0: {cluster.base}/run-node0/19/0.out and .err"
    app = HkConsole(cluster.svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [19])
        # The detail pane says where the output is, not nothing.
        detail = app.query_one("#detail", Static)
        await until(pilot, lambda: where in str(detail.render()).replace("\n", " "))
        assert "output: the output of job fL stays on its nodes" in str(detail.render())
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OutputScreen))
        kept = str(app.screen.query_one("#output-kept", Static).render())
        assert kept.startswith("the output of job fL stays on its nodes")
        assert where in kept and kept.endswith("(hk does not fetch it)")
        # Not "(no output)": the lines are on the nodes, not missing.
        assert not app.screen.query_one("#output-log", RichLog).lines
    (cluster.base / "go").touch()


async def test_detail_of_a_big_unit_lists_64_ranks_then_summarises() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()

        def rank(r: int, state: str, code: int | None) -> dict[str, Any]:
            outcome = (
                None if code is None else {"kind": "exit", "code": code, "text": f"exited {code}"}
            )
            end = None if code is None else T0 - 10 - r
            return {
                "rank": r,
                "hostname": f"sim{r}",
                "state": state,
                "t_start": T0 - 100,
                "t_end": end,
                "outcome": outcome,
            }

        detail = (
            [rank(r, "done", 1) for r in range(2)]
            + [rank(r, "running", None) for r in range(2, 12)]
            + [rank(r, "done", 0) for r in range(12, 62)]
            + [rank(r, "released", 0) for r in range(62, 100)]
        )
        unit = {"jobid": 5, "userid": 1000, "ranks": "0-99", "rank_detail": detail}
        lines = str(detail_text(unit, [], None, app.model, T0)).splitlines()
        states = [line.split()[2] for line in lines[1:65]]
        assert states == ["failed"] * 2 + ["running"] * 10 + ["ok"] * 50 + ["released"] * 2
        assert lines[64].split() == ["63", "sim63", "released", "27s"]
        assert lines[65].strip() == "… 36 more released: sim[64-99]"


async def test_keys_remapped_from_config_and_long_running_threshold(
    busy: RunningService, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hkconsole.tui.config import load_settings

    (tmp_path / "hk").mkdir()
    (tmp_path / "hk" / "hkconsole.toml").write_text(
        '[console]\nlong-running = "1s"\n[keys]\n"kill.unit" = "K"\n'
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    settings = load_settings()
    assert settings.long_running == 1.0
    app = HkConsole(busy.endpoint, keymap=settings.keymap, long_running=settings.long_running)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3)
        await pilot.press("k")
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        table = app.query_one("#units", LiveTable)
        await until(pilot, lambda: "yellow" in str(table.get_cell("101", "runtime").style))


async def test_console_opens_without_a_service_and_says_why(tmp_path: Any) -> None:
    app = HkConsole(f"ipc://{tmp_path}/nobody.sock")
    async with app.run_test(size=SIZE) as pilot:
        header = app.query_one("#header", Static)
        await until(pilot, lambda: "DISCONNECTED" in str(header.render()))
        assert "no hk service at" in str(header.render())
        assert app.check_action("kill_all", ()) is None
        await pilot.press("A")
        assert not isinstance(app.screen, PromptScreen)


async def test_output_help_pause_filter_and_sort(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    from hkconsole.tui.screens import OutputScreen

    cmd = script('echo "scrub $HK_HOSTNAME"; echo "warn [x] $HK_RANK" >&2; sleep 600')
    svc = hk_service(hostlist="node[0-7]", command=[cmd], release_after="0")
    for jobid, ranks in ((301, "0-3"), (302, "4"), (303, "5-6")):
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": ranks})
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [301, 302, 303])
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, OutputScreen))
        output = app.screen.query_one("#output-log", RichLog)
        log = "\n".join(str(line.text) for line in output.lines)
        assert "scrub node0" in log and "warn [x] 3" in log
        await pilot.press("escape")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("question_mark")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))

        await pilot.press("slash", *"node4", "enter")
        await until(pilot, lambda: rows(app) == [302])
        await pilot.press("escape")
        await until(pilot, lambda: rows(app) == [301, 302, 303])

        await pilot.press("greater_than_sign", "greater_than_sign", "greater_than_sign")
        assert app.units.sort.column == "nnodes"
        await pilot.press("I")
        assert rows(app) == [301, 303, 302]
        # The highlight followed 302 through the filter and the sorts: by key, not row.
        assert app.units.key_at_cursor() == 302
        assert app.query_one("#units", LiveTable).cursor_row == 2

        await pilot.press("p")
        assert "PAUSED" in str(app.query_one("#header", Static).render())
        frozen_at = time.strftime("%H:%M:%S", time.localtime(app.paused_at))
        assert f" PAUSED: rows as of {frozen_at} " in header_lines(app)[0]
        assert header_lines(app)[1].startswith("3 units")
        assert header_lines(app)[1].endswith("  (counts live)")
        svc.call("housekeeping.kill", {"jobid": 302, "signum": 9})
        await until(pilot, lambda: header_lines(app)[1].startswith("2 units"))
        assert 302 in rows(app)  # paused: the table holds still, the counts do not
        await pilot.press("p")
        await until(pilot, lambda: 302 not in rows(app))
        assert "PAUSED" not in header_lines(app)[0] and "live" not in header_lines(app)[1]


# -- at scale, on fixed data (no service: the cost is the console's own) ------------


def many_units(count: int, nodes: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    config = {
        "hostlist": f"node[0-{nodes - 1}]",
        "release-after": 5.0,
        "timeout": 120.0,
        "kill-grace": 5.0,
        "events-endpoint": "",
    }
    units = [
        {
            "jobid": 1_000_000 + i,
            "userid": 1000 + i % 50,
            "t_start": 1000.0 + i,
            "ranks": str(i % nodes),
            "allocated": str(i % nodes),
            "pending": str(i % nodes),
            "failed": "",
        }
        for i in range(count)
    ]
    status = {"drained": [{"ranks": "0-9", "reason": "housekeeping@fX exit-code: 1", "t": 0}]}
    return config, {"units": units}, status


async def test_a_filter_over_5000_units_keeps_the_highlight_and_brings_all_back() -> None:
    app = HkConsole("ipc:///nowhere", clock=lambda: 9000.0, live=False)
    async with app.run_test(size=SIZE) as pilot:
        load(app, *many_units(5000, 8192))
        await pilot.pause()
        table = app.units.table
        target = 1_004_321  # matches the filter below: its row must stay highlighted
        table.move_cursor(row=table.get_row_index(str(target)))
        await until(pilot, lambda: app.units.key_at_cursor() == target)
        await pilot.press("slash", *"432", "enter")
        await pilot.pause()
        shown = rows(app)
        expected = [
            j
            for j in range(1_000_000, 1_005_000)
            if any(
                "432" in text for text in (str(j), encode_jobid(j), f"node{(j - 1_000_000) % 8192}")
            )
        ]
        assert shown == expected and len(shown) >= 10
        assert app.units.key_at_cursor() == target and table.cursor_row == shown.index(target)
        await pilot.press("escape")
        await pilot.pause()
        assert rows(app) == list(range(1_000_000, 1_005_000))  # start order, all back
        assert table.cursor_row == target - 1_000_000
        assert str(table.get_cell(str(target), "nodelist")) == f"node{(target - 1_000_000) % 8192}"


class CountingConsole(HkConsole):
    """Counts the node rows built, to show which ones an update touches."""

    def __init__(self) -> None:
        super().__init__("ipc:///nowhere", clock=lambda: 9000.0, live=False)
        self.built: list[int] = []
        node_cells = self.nodes.node_cells

        def counted(rank: int) -> list[Any]:
            self.built.append(rank)
            return node_cells(rank)

        self.nodes.node_cells = counted  # type: ignore[method-assign]


async def test_nodes_view_updates_touch_only_the_ranks_that_changed() -> None:
    # Every event used to rebuild all 16,384 node rows: ~300 ms each.
    app = CountingConsole()
    config, units, status = many_units(3000, 16384)
    async with app.run_test(size=SIZE) as pilot:
        load(app, config, units, status)
        await pilot.press("2")
        nodes = app.nodes.table
        await until(pilot, lambda: nodes.row_count == 16384)
        assert str(nodes.get_cell("5", "state")) == "draining"
        app.built.clear()
        events: list[tuple[str, dict[str, Any]]] = [
            ("housekeeping.released", {"jobid": 1_000_005, "ranks": "5"}),
            (
                "housekeeping.started",
                {
                    "jobid": 7,
                    "userid": 1,
                    "t_start": 1.0,
                    "ranks": "9000-9003",
                    "allocated": "9000-9003",
                    "pending": "9000-9003",
                    "failed": "",
                },
            ),
            ("resource.drained", {"ranks": "12000", "reason": "bad fan", "t": 5.0}),
            ("resource.undrained", {"ranks": "5"}),
        ]
        for topic, body in events:
            changed, _ = app.model.apply_event(topic, body)
            app.apply_changes(changed)
        await pilot.pause()
        assert sorted(app.built) == [5, 5, 9000, 9001, 9002, 9003, 12000]
        assert str(nodes.get_cell("5", "state")) == "idle"
        assert str(nodes.get_cell("9002", "units")) == encode_jobid(7)
        assert str(nodes.get_cell("12000", "reason")) == "bad fan"
        # A resync that finds what the events said rebuilds nothing.
        app.built.clear()
        released = next(u for u in units["units"] if u["jobid"] == 1_000_005)
        released.update(allocated="", pending="")
        units["units"].append(events[1][1])
        app.apply_changes(app.model.apply_list(units))
        status["drained"] = [
            {"ranks": "12000", "reason": "bad fan", "t": 5.0},
            {"ranks": "0-4,6-9", "reason": "housekeeping@fX exit-code: 1", "t": 0},
        ]
        app.model.apply_status(status)
        app.apply_changes(set())
        await pilot.pause()
        assert app.built == []


def node_rows(app: HkConsole) -> list[int]:
    return [int(key) for key in app.nodes.table.ordered_keys]


def header_lines(app: HkConsole) -> list[str]:
    return [app.header_pane.render_line(y).text.rstrip() for y in range(3)]


async def test_nodes_state_filter_is_a_state_not_a_substring(busy: RunningService) -> None:
    # A drained node's reason reads "housekeeping@ƒ…": `/housekeeping` matches it; the
    # state filter must not. The key is remapped, as every binding can be.
    busy.call("housekeeping.kill", {"jobid": 103, "signum": 15})
    busy.call("resource.drain", {"ranks": "7", "reason": "bad fan"})
    app = HkConsole(busy.endpoint, keymap={"nodes.state": "z"})
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102])
        await pilot.press("2")
        await until(pilot, lambda: node_rows(app) == list(range(8)))
        await until(pilot, lambda: "housekeeping@" in str(app.nodes.table.get_cell("4", "reason")))
        footer = {key.description: key.key for key in app.query_one(OperatorFooter).keys}
        assert footer["State"] == "z"
        await pilot.press("f")  # the default key is gone once remapped
        await pilot.pause(0.1)
        assert app.nodes.state_filter is None
        seen: dict[str | None, list[int]] = {}
        for _ in range(len(NODE_STATES) + 1):
            await pilot.press("z")
            await pilot.pause(0.05)
            seen[app.nodes.state_filter] = node_rows(app)
            if app.nodes.state_filter:
                assert f"state {app.nodes.state_filter}" in header_lines(app)[2]
            else:
                assert "state" not in header_lines(app)[2]
        assert seen == {
            "idle": [6],
            "housekeeping": [0, 1, 2, 3],
            "draining": [],
            "drained": [4, 5, 7],
            "offline": [],
            None: list(range(8)),
        }
        # Combined with text: housekeeping nodes of one unit.
        await pilot.press("z", "z")
        await pilot.press("slash", *encode_jobid(102), "enter")
        await until(pilot, lambda: node_rows(app) == [2, 3])
        # The state filter is the nodes view's: the units view has no such key.
        await pilot.press("1")
        actions = {found.binding.action for found in app.screen.active_bindings.values()}
        assert "state_filter" not in actions and "stuck_only" in actions
        assert "state" not in header_lines(app)[2]


async def test_footer_fits_80_columns_and_header_lines_are_clipped() -> None:
    app = fixed_app()
    async with app.run_test(size=(80, 24)) as pilot:
        load_sample(app)
        disconnect(app)
        await pilot.pause()
        for view, wanted in (
            ("1", {"Nodes", "Kill", "Filter", "Pause", "Help", "Quit"}),
            ("2", {"Units", "Drain", "State", "Filter", "Pause", "Help", "Quit"}),
        ):
            await pilot.press(view)
            await pilot.pause()
            footer = app.query_one(OperatorFooter)
            assert wanted <= {key.description for key in footer.keys}
            assert footer.line().cell_len <= 80
        # A long DISCONNECTED reason is cut at the edge, not wrapped over the counts.
        top, counts, settings = header_lines(app)
        assert top.startswith("hk  DISCONNECTED: retry 3 in 4s") and top.endswith("…")
        assert counts.startswith("64 nodes:  33 idle  27 housekeeping")  # the nodes view's
        # The signal first: what a kill sends must show at 80 columns.
        assert settings.startswith("signal SIGTERM  refresh 2s  release-after 5s")
        # Everything the footer leaves out is still listed by `?`.
        await pilot.press("1", "question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        console = Console(width=100, record=True, file=io.StringIO())
        assert isinstance(app.screen, HelpScreen)
        console.print(app.screen.table())
        help_text = console.export_text()
        for description in ("Kill on nodes", "Kill all", "Signal", "Invert", "Refresh rate"):
            assert description in help_text
        # Our keys, grouped, the nodes view's listed too (dim here).
        lines = [line.strip() for line in help_text.splitlines()]
        assert lines.index("Act") < lines.index(
            "k  Kill: the marked units, else the highlighted one (confirmed first)"
        )
        assert "space  Mark: mark or unmark the highlighted unit and move down" in lines
        assert "d  Drain: take the highlighted node out of service, with a reason" in lines


async def test_wide_footer_shows_every_key_and_follows_resizes() -> None:
    app = fixed_app()
    async with app.run_test(size=(120, 30)) as pilot:
        load_sample(app)
        await pilot.pause()

        async def footer() -> set[str]:
            await pilot.pause()
            await pilot.pause()
            footer = app.query_one(OperatorFooter)
            assert footer.line().cell_len <= app.size.width
            return {key.description for key in footer.keys}

        secondary = {"Kill on nodes", "Kill all", "Signal"}
        assert secondary | {"Kill", "Mark", "Filter", "Help", "Quit"} <= await footer()
        await pilot.resize_terminal(80, 30)
        assert not secondary & await footer()
        await pilot.resize_terminal(120, 30)
        assert secondary <= await footer()


async def test_each_view_keeps_its_own_sort_marked_in_the_column_header() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        units = app.units.table
        await pilot.press(*["greater_than_sign"] * 3, "I")  # NNODES, descending
        nnodes = [int(str(units.get_cell(str(j), "nnodes"))) for j in rows(app)]
        assert nnodes == sorted(nnodes, reverse=True)
        labels = {c.key: c.label for c in units.columns.values()}
        assert labels["nnodes"] == "NNODES ▼" and labels["jobid"] == "JOBID"
        assert "sort nnodes ▼" in header_lines(app)[2]
        await pilot.press("2")
        await pilot.pause()
        # The nodes view shows its own (no) sort, not the units' one.
        assert "sort" not in header_lines(app)[2]
        assert node_rows(app) == list(range(64))
        await pilot.press("I")
        assert node_rows(app) == list(range(63, -1, -1))
        assert "sort rank ▼" in header_lines(app)[2]
        assert app.nodes.table.columns["rank"].label == "RANK ▼"
        await pilot.press("I")
        assert node_rows(app) == list(range(64))
        await pilot.press("1")
        assert app.units.sort.reverse and app.units.sort.column == "nnodes"
        assert "sort nnodes ▼" in header_lines(app)[2]


async def test_detail_follows_the_cursor_when_a_filter_hides_the_highlighted_unit() -> None:
    app = fixed_app()
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        first, *_ = rows(app)
        assert str(app.detail.body.render()).startswith(encode_jobid(first))
        await pilot.press("slash", *"sim57", "enter")
        await until(pilot, lambda: len(rows(app)) == 1)
        (shown,) = rows(app)
        assert app.units.key_at_cursor() == shown != first
        assert str(app.detail.body.render()).startswith(encode_jobid(shown))
        await pilot.press("escape", "slash", *"nothing-matches")
        await until(pilot, lambda: rows(app) == [])
        assert app.units.key_at_cursor() is None
        assert str(app.detail.body.render()) == "no unit selected"


async def test_runtime_freezes_while_disconnected() -> None:
    now = [T0]
    app = fixed_app()
    app.clock = lambda: now[0]
    async with app.run_test(size=SIZE) as pilot:
        load_sample(app)
        await pilot.pause()
        first = rows(app)[0]
        runtime = lambda: str(app.units.table.get_cell(str(first), "runtime"))  # noqa: E731
        before = runtime()
        disconnect(app)
        now[0] += 600
        app.tick()
        assert runtime() == before  # stale data does not look live
        app.connected = True
        app.tick()
        assert runtime() != before


@pytest.fixture
def sim(hk_service: ServiceFactory) -> RunningService:
    """Units on the demo's sim[0-63], with nodelists a plain substring cannot see into."""
    svc = hk_service(hostlist="sim[0-63]", command=["sleep", "600"], release_after="0")
    for jobid, ranks in ((401, "0,3,28-29,34,39,52,63"), (402, "10-19"), (403, "1"), (404, "5")):
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": ranks})
    return svc


async def pasted_filter(pilot: Pilot[Any], text: str) -> None:
    """Set the filter to `text` in one change, as a paste does (quicker than typing)."""
    app = pilot.app
    assert isinstance(app, HkConsole)
    await pilot.press("slash")
    app.filter_box.value = text
    await pilot.press("enter")
    await pilot.pause()


async def typed_filter(pilot: Pilot[Any], text: str) -> None:
    """Clear any filter, then type `text` as a filter, as an operator would."""
    app = pilot.app
    assert isinstance(app, HkConsole)
    if app.filter_text:
        await pilot.press("escape")
    await pilot.press("slash", *text, "enter")
    await pilot.pause()


async def test_filter_by_host_finds_units_whose_nodelist_holds_it(sim: RunningService) -> None:
    app = HkConsole(sim.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [401, 402, 403, 404])
        assert str(app.units.table.get_cell("401", "nodelist")) == "sim[0,3,28-29,34,39,52,63]"
        for text, expected in (
            ("sim28", [401]),  # inside the brackets
            ("SIM28", [401]),
            ("sim1", [402, 403]),  # sim1 and sim[10-19]: what /sim1 shows on the nodes view
            ("sim[28-29]", [401]),  # a hostlist
            ("sim15,sim5", [402, 404]),
            ("sim[1", [402]),  # half typed: not a hostlist yet, but in the NODELIST text
            ("sim64", []),  # not a host of the cluster
            ("5", [401, 402, 404]),  # sim52, sim15, sim5
            ("1-3", []),  # not read as an idset (ranks 1-3 would be 401 and 403)
            (encode_jobid(404), [404]),  # the cells still match as before
        ):
            await pasted_filter(pilot, text)
            assert (text, rows(app)) == (text, expected)
        # The nodes view matches its HOST column, a hostlist too.
        await pilot.press("2")
        await pasted_filter(pilot, "sim[28-29]")
        await until(pilot, lambda: node_rows(app) == [28, 29])
        await pasted_filter(pilot, "sim6")
        await until(pilot, lambda: node_rows(app) == [6, *range(60, 64)])


async def test_filter_finds_a_jobid_spelled_with_f_or_with_the_script_f(
    sim: RunningService,
) -> None:
    # Tables spell jobids ƒ…, drain reasons housekeeping@f…: either spelling finds both.
    sim.call("housekeeping.kill", {"jobid": 403, "signum": 15})
    app = HkConsole(sim.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [401, 402, 404])
        plain, script = encode_jobid(404, "f58plain"), encode_jobid(404)
        assert plain.startswith("f") and script.startswith("ƒ")
        for text in (plain, script, plain.upper()):
            await pasted_filter(pilot, text)
            # Until: the kill of 403 still sends events that redraw the table.
            await until(pilot, lambda: rows(app) == [404])
            assert app.filter_text == text
        await pilot.press("escape", "2")
        await until(pilot, lambda: "@f" in str(app.nodes.table.get_cell("1", "reason")))
        for text in (encode_jobid(403), encode_jobid(403, "f58plain")):
            await pasted_filter(pilot, text)  # the drain reason of the killed unit's node
            await until(pilot, lambda: node_rows(app) == [1])
        await pasted_filter(pilot, encode_jobid(402, "f58plain"))  # the UNITS column
        await until(pilot, lambda: node_rows(app) == list(range(10, 20)))


async def test_kill_confirm_says_which_marked_units_the_filter_hides_and_esc_clears_marks(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("space", "down", "space")  # marks 101 and 103
        assert app.units.marked == {101, 103}
        await typed_filter(pilot, "node2")
        assert rows(app) == [102]
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert f"{encode_jobid(101)}  running on node[0-1]  (hidden by the filter)" in body
        assert f"{encode_jobid(103)}  running on node[4-5]  (hidden by the filter)" in body
        assert "2 of these 2 units are hidden by the filter 'node2'." in body
        await pilot.press("n")
        # esc clears the filter first, then the marks.
        await pilot.press("escape")
        assert rows(app) == [101, 102, 103] and app.units.marked == {101, 103}
        await pilot.press("escape")
        assert app.units.marked == set()
        assert [str(app.units.table.get_cell(str(j), "mark")) for j in rows(app)] == [""] * 3
        await until(pilot, lambda: bool(notes))
        assert notes == ["cleared 2 marks"]
        # With one marked unit hidden and one shown:
        assert app.units.key_at_cursor() == 102
        await pilot.press("space", "space")  # 102, then 103
        assert app.units.marked == {102, 103}
        await typed_filter(pilot, "node2")
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert "1 of these 2 units is hidden by the filter 'node2'." in body
        await pilot.press("n")
    assert len(running(busy)) == 3


async def test_kill_while_paused_reads_the_latest_data_not_the_frozen_rows(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    notes: list[str] = []
    async with app.run_test(size=SIZE, message_hook=notes_into(notes)) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("space", "space", "up")  # marks 101 and 102; on 102
        assert app.units.marked == {101, 102} and app.units.key_at_cursor() == 102
        await pilot.press("p")
        busy.call("housekeeping.kill", {"jobid": 102, "signum": 9})
        await until(pilot, lambda: 102 not in app.model.units)
        assert rows(app) == [101, 102, 103]  # frozen
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert f"{encode_jobid(101)}  running on node[0-1]" in body
        assert f"{encode_jobid(102)}  already finished: nothing to send" in body
        assert "running on ?" not in body
        assert str(app.screen.query_one("#dialog-title").render()).startswith(
            "Kill housekeeping of 1 unit?"
        )
        await pilot.press("n")
        await pilot.press("escape")  # clears the marks: the rows stay frozen
        assert app.units.marked == set() and rows(app) == [101, 102, 103]
        assert str(app.units.table.get_cell("101", "mark")) == ""
        notes.clear()
        await pilot.press("k")  # the highlighted unit, finished
        await until(pilot, lambda: bool(notes))
        assert notes == [f"{encode_jobid(102)} has already finished: nothing to kill"]
        assert not isinstance(app.screen, ConfirmScreen)
    assert running(busy) == {101: "0-1", 103: "4-5"}


def header_style(app: HkConsole, text: str) -> Style:
    """The style of the header segment reading `text`."""
    for y in range(3):
        for segment in app.header_pane.render_line(y):
            if segment.text.strip() == text and segment.style is not None:
                return segment.style
    raise AssertionError(f"{text!r} is not in the header")


def is_red(style: Style) -> bool:
    return style.color is not None and style.color.number == Color.parse("red").number


async def test_sigkill_armed_stands_out_and_the_confirm_says_any_kill_drains(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected)
        assert not is_red(header_style(app, "SIGTERM"))
        await pilot.press("s", "down", "down", "down", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = " ".join(str(app.screen.query_one("#dialog-body", Static).render()).split())
        assert "no chance to clean up after themselves" in body
        assert "As with any signal, every node a kill hits is drained." in body
        await pilot.press("y")
        await until(pilot, lambda: app.signal_name == "KILL")
        assert header_style(app, "SIGKILL").bold and is_red(header_style(app, "SIGKILL"))


def test_kill_notices_name_few_hosts_and_count_many() -> None:
    cluster = Cluster("sim[0-16383]")
    assert hosts_text(cluster, {40}) == "sim40"
    assert hosts_text(cluster, {0, 1, 4, 5}) == "sim[0-1,4-5]"
    scattered = set(range(0, 2000, 7))
    text = hosts_text(cluster, scattered)
    assert text.startswith("286 nodes: sim[0,7,14,") and text.endswith("…")
    assert len(text) <= len("286 nodes: ") + 60


async def test_nodes_cursor_goes_to_the_first_row_when_a_filter_hides_its_node(
    sim: RunningService,
) -> None:
    app = HkConsole(sim.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected)
        await pilot.press("2")
        await until(pilot, lambda: node_rows(app) == list(range(64)))
        await typed_filter(pilot, "sim40")
        assert node_rows(app) == [40] and app.nodes.key_at_cursor() == 40
        await typed_filter(pilot, "nothing-matches")
        assert node_rows(app) == [] and app.nodes.key_at_cursor() is None
        await typed_filter(pilot, "sim4")
        assert node_rows(app) == [4, *range(40, 50)]
        assert app.nodes.key_at_cursor() == 4  # not sim40, highlighted two filters ago
        await pilot.press(*["down"] * 6)
        assert app.nodes.key_at_cursor() == 45
        await typed_filter(pilot, "sim45")  # the highlighted node stays through it all
        assert node_rows(app) == [45] and app.nodes.key_at_cursor() == 45
        await typed_filter(pilot, "sim3")
        assert app.nodes.key_at_cursor() == 3
        await pilot.press("escape")
        assert app.nodes.key_at_cursor() == 3


def detail_lines(app: HkConsole) -> list[str]:
    return str(app.detail.body.render()).splitlines()


async def test_detail_running_times_tick_with_runtime_and_output_keeps_rank_order(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    cmd = script(
        'echo "start $HK_HOSTNAME"; [ "$HK_RANK" = 1 ] && echo "bad disk" >&2;'
        ' echo "end $HK_HOSTNAME"; sleep 600'
    )
    svc = hk_service(hostlist="node[0-3]", command=[cmd])
    svc.call("housekeeping.start", {"jobid": 9, "ranks": "0-1"})
    skew = [0.0]
    app = HkConsole(svc.endpoint, clock=lambda: time.time() + skew[0])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("bad disk" in line for line in detail_lines(app)))
        await until(pilot, lambda: sum("end node" in line for line in detail_lines(app)) == 2)
        output = detail_lines(app)[
            detail_lines(app).index("output (last lines per rank, o for all):") + 1 :
        ]
        # The rank that complained first, its lines together, stderr marked.
        assert [line.strip() for line in output] == [
            "[1] start node1",
            "[1] end node1",
            "[1] err: bad disk",
            "[0] start node0",
            "[0] end node0",
        ]

        def times() -> tuple[float, list[float]]:
            runtime = parse_duration(str(app.units.table.get_cell("9", "runtime")).strip())
            ranks = [
                parse_duration(line.split()[3]) for line in detail_lines(app) if "running" in line
            ]
            return runtime, ranks

        # Ten minutes on, by the console's clock: both tick at once, from one moment.
        skew[0] = 600.0
        app.tick()
        runtime, ranks = times()
        assert runtime >= 600 and len(ranks) == 2
        assert all(600 <= t <= runtime for t in ranks)


async def test_counts_are_pluralised_and_since_is_an_age_with_the_moment_below(
    hk_service: ServiceFactory, script: Callable[[str], str]
) -> None:
    cmd = script('[ "$HK_RANK" = 1 ] && exit 1; sleep 600')
    svc = hk_service(hostlist="node[0-3]", command=[cmd], release_after="0")
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-1"})
    app = HkConsole(svc.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "1 failed" in header_lines(app)[1])
        await until(pilot, lambda: app.model.counts()["housekeeping"] == 1)
        app.render_header()
        assert header_lines(app)[1] == ("1 unit  1 node in housekeeping  1 drained  1 failed rank")
        await pilot.press("t", *"node2", "enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body", Static).render())
        assert body.startswith("  on node2 (rank 2):")
        await pilot.press("n", "2")
        await until(pilot, lambda: str(app.nodes.table.get_cell("1", "state")) == "drained")
        # SINCE is an age; the bar under the table has the moment, seconds included.
        since = str(app.nodes.table.get_cell("1", "since"))
        assert re.fullmatch(r"\d+s ago", since)
        app.nodes.table.move_cursor(row=1)
        await pilot.pause()
        t = drained_at(svc)[1]
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(t))
        assert f"since {stamp} (" in str(app.nodes.bar.render())


def drained_at(svc: RunningService) -> dict[int, float]:
    return {
        rank: d["t"]
        for d in svc.call("resource.status")["drained"]
        for rank in parse_idset(d["ranks"])
    }


async def test_units_cursor_goes_to_the_first_row_when_a_filter_hides_its_unit(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("down", "down")
        assert app.units.key_at_cursor() == 103
        await pilot.press("slash")
        app.filter_box.value = "node[0-3]"  # pasted: one change hides 103
        await pilot.press("enter")
        assert rows(app) == [101, 102]
        assert app.units.key_at_cursor() == 101 and app.units.table.cursor_row == 0
        await pilot.press("down")
        await typed_filter(pilot, "node[2-5]")  # 102 stays highlighted
        assert rows(app) == [102, 103] and app.units.key_at_cursor() == 102


async def test_a_filter_typed_on_the_nodes_view_reaches_the_units_when_shown(
    busy: RunningService,
) -> None:
    app = HkConsole(busy.endpoint)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: rows(app) == [101, 102, 103])
        await pilot.press("2")
        await pasted_filter(pilot, "node[2-5]")
        assert node_rows(app) == [2, 3, 4, 5]
        # The hidden units table is not filtered at each key stroke...
        assert rows(app) == [101, 102, 103]
        busy.call("housekeeping.kill", {"jobid": 102, "signum": 9})
        await until(pilot, lambda: 102 not in app.model.units)
        # ...but shows the filter, and what happened meanwhile, once it is on screen.
        await pilot.press("1")
        assert rows(app) == [103] and app.units.key_at_cursor() == 103
        await pilot.press("escape")
        assert rows(app) == [101, 103]
