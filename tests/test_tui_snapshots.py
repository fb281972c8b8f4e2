"""Pixel snapshots of each view and dialog, on fixed data with a fixed clock."""

from __future__ import annotations

import os
import time
from typing import Any

from textual.pilot import Pilot

from hkconsole.tui.fixed import FixedConsole, disconnect, fixed_app, load_sample

SIZE = (120, 36)
# Drain times are shown in local time: pin the zone so snapshots match anywhere.
os.environ["TZ"] = "UTC"
time.tzset()


async def loaded(pilot: Pilot[Any]) -> None:
    assert isinstance(pilot.app, FixedConsole)
    load_sample(pilot.app)
    await pilot.pause()


def test_units_view(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), run_before=loaded, terminal_size=SIZE)


def test_nodes_view(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), press=["2"], run_before=loaded, terminal_size=SIZE)


def test_kill_dialog(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), press=["down", "k"], run_before=loaded, terminal_size=SIZE)


def test_kill_targets_dialog(snap_compare: Any) -> None:
    press = ["t", *"sim[0-3"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_kill_targets_confirm_lists_the_units(snap_compare: Any) -> None:
    press = ["t", *"sim[25-30]", "enter"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_signal_dialog(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), press=["s"], run_before=loaded, terminal_size=SIZE)


def test_disconnected(snap_compare: Any) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        disconnect(pilot.app)  # type: ignore[arg-type]
        await pilot.pause()

    assert snap_compare(fixed_app(), run_before=before, terminal_size=SIZE)


def test_read_only(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(read_only=True), run_before=loaded, terminal_size=SIZE)


def test_kill_all_dialog(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), press=["A", "a", "l"], run_before=loaded, terminal_size=SIZE)


def test_sigkill_confirm(snap_compare: Any) -> None:
    press = ["s", "down", "down", "down", "enter"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_sigkill_armed(snap_compare: Any) -> None:
    press = ["s", "down", "down", "down", "enter", "y"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_output_dialog(snap_compare: Any) -> None:
    # The unit with a failed node: stdout and the failure on stderr.
    press = [*["down"] * 5, "o"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_help(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), press=["question_mark"], run_before=loaded, terminal_size=SIZE)


def test_filter_active(snap_compare: Any) -> None:
    press = ["slash", *"1001", "enter"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_paused_with_marked_rows(snap_compare: Any) -> None:
    press = ["space", "down", "space", "p"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_nodes_state_filter_drained_sorted_by_since(snap_compare: Any) -> None:
    press = ["2", "f", "f", "f", "f", *["greater_than_sign"] * 6]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_units_view_80_columns(snap_compare: Any) -> None:
    assert snap_compare(fixed_app(), run_before=loaded, terminal_size=(80, 24))


def test_disconnected_80_columns(snap_compare: Any) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        disconnect(pilot.app)  # type: ignore[arg-type]
        await pilot.pause()

    assert snap_compare(fixed_app(), run_before=before, terminal_size=(80, 24))


def test_drain_dialog(snap_compare: Any) -> None:
    press = ["2", "down", "d", *"bad fan"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)


def test_finished_view(snap_compare: Any) -> None:
    # The failed unit highlighted: the bar under the table has its reasons in full.
    press = ["3", "down", "down", "down"]
    assert snap_compare(fixed_app(), press=press, run_before=loaded, terminal_size=SIZE)
