"""The console's pure model: snapshots, events, gaps and derived node states."""

from __future__ import annotations

from hkconsole.tui.model import ConsoleModel

CONFIG = {"hostlist": "node[0-7]", "events-endpoint": ""}


def wire(jobid: int, allocated: str, pending: str, failed: str = "") -> dict[str, object]:
    return {
        "jobid": jobid,
        "userid": 1,
        "t_start": 10.0,
        "ranks": allocated,
        "allocated": allocated,
        "pending": pending,
        "failed": failed,
    }


def test_list_snapshots_report_only_what_changed() -> None:
    model = ConsoleModel()
    model.set_config(CONFIG)
    assert model.apply_list({"units": [wire(1, "0-1", "0-1"), wire(2, "2", "2")]}) == {1, 2}
    kept = model.units[2]
    assert model.apply_list({"units": [wire(1, "0-1", "1"), wire(2, "2", "2")]}) == {1}
    assert model.units[2] is kept  # unchanged units are not parsed again
    assert model.apply_list({"units": [wire(1, "0-1", "1")]}) == {2}
    assert list(model.units) == [1]


def test_events_update_units_and_detect_gaps() -> None:
    model = ConsoleModel()
    model.set_config(CONFIG)
    changed, gap = model.apply_event("housekeeping.started", {"seq": 1, **wire(5, "0-3", "0-3")})
    assert (changed, gap) == ({5}, False)
    finished = {"seq": 2, "jobid": 5, "rank": 1, "outcome": {"kind": "exit", "code": 3}}
    model.apply_event("housekeeping.finished", finished)
    assert model.units[5].pending == {0, 2, 3} and model.units[5].failed == {1}
    model.apply_event("housekeeping.released", {"seq": 3, "jobid": 5, "ranks": "1"})
    assert model.units[5].allocated == {0, 2, 3}
    _, gap = model.apply_event("resource.drained", {"seq": 5, "ranks": "1", "reason": "x", "t": 1})
    assert gap  # seq 4 was missed: the view must resync
    assert [model.node_state(r) for r in range(5)] == [
        "housekeeping",
        "drained",
        "housekeeping",
        "housekeeping",
        "idle",
    ]
    model.apply_event("housekeeping.ended", {"seq": 6, "jobid": 5})
    model.apply_event("resource.undrained", {"seq": 7, "ranks": "1"})
    assert model.units == {} and model.drains == {}
    assert model.counts() == {"units": 0, "housekeeping": 0, "drained": 0, "failed": 0, "stuck": 0}


def test_dirty_ranks_name_exactly_the_node_rows_that_changed() -> None:
    model = ConsoleModel()
    model.set_config(CONFIG)
    model.apply_list({"units": [wire(1, "0-1", "0-1"), wire(2, "2-3", "2-3")]})
    model.apply_status({"drained": [{"ranks": "7", "reason": "fan", "t": 1.0}]})
    assert model.take_dirty_ranks() == {0, 1, 2, 3, 7}
    assert model.take_dirty_ranks() == set()
    # The same snapshot again changes nothing: a resync costs no node rows.
    model.apply_list({"units": [wire(1, "0-1", "0-1"), wire(2, "2-3", "2-3")]})
    model.apply_status({"drained": [{"ranks": "7", "reason": "fan", "t": 1.0}]})
    assert model.take_dirty_ranks() == set()
    model.apply_event("housekeeping.finished", {"jobid": 2, "rank": 3, "outcome": {}})
    assert model.take_dirty_ranks() == set()  # a node's state is not its command's
    model.apply_event("housekeeping.released", {"jobid": 1, "ranks": "1"})
    assert model.take_dirty_ranks() == {1}
    assert model.node_state(1) == "idle" and model.node_state(0) == "housekeeping"
    model.apply_event("resource.drained", {"ranks": "3", "reason": "x", "t": 2.0})
    assert model.take_dirty_ranks() == {3} and model.node_state(3) == "draining"
    model.apply_event("housekeeping.ended", {"jobid": 2})
    assert model.take_dirty_ranks() == {2, 3}
    assert model.node_state(3) == "drained" and model.node_state(2) == "idle"
    # A resync after missed events reports the difference with what the model had.
    model.apply_list({"units": [wire(3, "5", "5")]})
    model.apply_status({"drained": [{"ranks": "7", "reason": "fan, new", "t": 1.0}]})
    assert model.take_dirty_ranks() == {0, 3, 5, 7}
    assert dict(model.holders()) == {5: {3}}
    assert model.counts()["housekeeping"] == 1


def test_node_states_rank_drains_over_offline_as_the_command_line_does() -> None:
    model = ConsoleModel()
    model.set_config(CONFIG)
    model.apply_list({"units": [wire(1, "0-1", "0-1")]})
    model.apply_status({"offline": "1-3", "drained": [{"ranks": "0,2", "reason": "fan", "t": 1.0}]})
    states = [model.node_state(rank) for rank in range(5)]
    assert states == ["draining", "offline", "drained", "offline", "idle"]
