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
    holders = model.holders()
    assert [model.node_state(r, holders) for r in range(5)] == [
        "housekeeping",
        "drained",
        "housekeeping",
        "housekeeping",
        "idle",
    ]
    model.apply_event("housekeeping.ended", {"seq": 6, "jobid": 5})
    model.apply_event("resource.undrained", {"seq": 7, "ranks": "1"})
    assert model.units == {} and model.drains == {}
    assert model.counts() == {"units": 0, "housekeeping": 0, "drained": 0, "failed": 0}
