"""The pure state machine, driven directly: no processes, sockets or clock."""

from __future__ import annotations

import pytest

from hkservice import core
from hkservice.core import Housekeeping, Outcome, Policy
from hkservice.errors import HkError
from hkservice.jobid import encode_jobid

OK = Outcome("exit", code=0)
JOB = 1234
LABEL = encode_jobid(JOB, "f58plain")


def releases(actions: list[core.Action]) -> list[tuple[tuple[int, ...], bool]]:
    return [(a.ranks, a.final) for a in actions if isinstance(a, core.Released)]


def started(policy: Policy, ranks: range = range(4), size: int = 8) -> Housekeeping:
    hk = Housekeeping(size, policy)
    actions = hk.start(JOB, 1000, ranks, now=100.0)
    assert actions == [
        core.UnitStarted(JOB),
        core.Launch(JOB, 1000, tuple(ranks), f"{ranks[0]}-{ranks[-1]}"),
    ]
    return hk


def test_unset_release_after_releases_once_when_last_rank_finishes() -> None:
    hk = started(Policy(release_after=None))
    assert releases(hk.finished(JOB, [(0, OK), (1, OK)], 101)) == []
    unit = hk.units[JOB]
    assert unit.pending == {2, 3} and unit.allocated == {0, 1, 2, 3}
    assert releases(hk.finished(JOB, [(2, OK)], 102)) == []
    actions = hk.finished(JOB, [(3, OK)], 103)
    assert releases(actions) == [((0, 1, 2, 3), True)]
    assert actions[-1] == core.UnitEnded(JOB, 103)
    assert JOB not in hk.units
    assert hk.housekeeping_ranks() == set()


def test_zero_release_after_releases_each_batch_and_only_last_is_final() -> None:
    hk = started(Policy(release_after=0))
    assert releases(hk.finished(JOB, [(0, OK)], 101)) == [((0,), False)]
    assert releases(hk.finished(JOB, [(1, OK), (2, OK)], 102)) == [((1, 2), False)]
    assert hk.units[JOB].allocated == {3}
    assert hk.housekeeping_ranks() == {3}
    assert releases(hk.finished(JOB, [(3, OK)], 103)) == [((3,), True)]


def test_timed_release_after_holds_until_timer_then_releases_per_rank() -> None:
    hk = started(Policy(release_after=5))
    actions = hk.finished(JOB, [(0, OK)], 101)
    assert core.TimerArmed(JOB, 106) in actions and releases(actions) == []
    assert hk.next_deadline() == 106
    assert releases(hk.finished(JOB, [(1, OK)], 102)) == []
    # The timer is one-shot from the first finished rank: a later finish does not reset it.
    assert hk.next_deadline() == 106
    assert hk.tick(105.9) == []
    assert releases(hk.tick(106)) == [((0, 1), False)]
    assert hk.next_deadline() is None
    assert releases(hk.finished(JOB, [(2, OK)], 107)) == [((2,), False)]
    assert releases(hk.finished(JOB, [(3, OK)], 108)) == [((3,), True)]


def test_last_rank_before_timer_releases_everything_final() -> None:
    hk = started(Policy(release_after=30))
    hk.finished(JOB, [(0, OK), (1, OK), (2, OK)], 101)
    assert releases(hk.finished(JOB, [(3, OK)], 102)) == [((0, 1, 2, 3), True)]
    assert hk.next_deadline() is None


def test_every_rank_released_exactly_once() -> None:
    hk = started(Policy(release_after=0), ranks=range(8))
    seen: list[int] = []
    for rank in [3, 1, 7, 0, 2, 6, 5, 4]:
        for ranks, _ in releases(hk.finished(JOB, [(rank, OK)], 101)):
            seen.extend(ranks)
    assert sorted(seen) == list(range(8))


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (Outcome("exit", code=1), f"housekeeping@{LABEL} exit-code: exited 1"),
        (Outcome("signal", signal=15), f"housekeeping@{LABEL} signal: killed TERM"),
        (Outcome("core", signal=11), f"housekeeping@{LABEL} core-dump: dumped SEGV"),
        (
            Outcome("launch", code=127, text="No such file or directory"),
            f"housekeeping@{LABEL} launch: No such file or directory",
        ),
    ],
)
def test_failure_drains_before_release(outcome: Outcome, reason: str) -> None:
    hk = started(Policy(release_after=0))
    actions = hk.finished(JOB, [(2, outcome)], 101)
    kinds = [type(a) for a in actions]
    assert kinds == [core.RankFinished, core.Drained, core.Released]
    assert actions[1] == core.Drained((2,), reason, 101)
    assert hk.drains[2] == (reason, 101)
    assert hk.units[JOB].failed == {2}


def test_already_drained_node_keeps_first_reason() -> None:
    hk = started(Policy())
    hk.drain({1}, "bad dimm", 50)
    actions = hk.finished(JOB, [(1, Outcome("exit", code=2))], 101)
    assert not any(isinstance(a, core.Drained) for a in actions)
    assert hk.drains[1] == ("bad dimm", 50)


def test_kill_selection_rules() -> None:
    hk = Housekeeping(8, Policy())
    hk.start(1, 0, [0, 1], 100)
    hk.start(2, 0, [2, 3], 100)
    by_job = hk.kill(15, 101, jobid=1)
    assert (by_job.units, by_job.ranks) == (1, 2)
    assert by_job.actions == [core.Signal(1, (0, 1), 15)]
    by_targets = hk.kill(15, 101, ranks={1, 2})
    assert by_targets.actions == [core.Signal(1, (1,), 15), core.Signal(2, (2,), 15)]
    both = hk.kill(9, 101, jobid=2, ranks={3, 1})
    assert both.actions == [core.Signal(2, (3,), 9)]
    everything = hk.kill(2, 101, all_units=True)
    assert (everything.units, everything.ranks) == (2, 4)
    all_and_targets = hk.kill(1, 101, all_units=True, ranks={0, 3})
    assert all_and_targets.actions == [core.Signal(1, (0,), 1), core.Signal(2, (3,), 1)]


def test_kill_errors() -> None:
    hk = started(Policy())
    with pytest.raises(HkError, match="specify at least one of"):
        hk.kill(15, 101)
    with pytest.raises(HkError, match="do not specify --jobid with --all"):
        hk.kill(15, 101, jobid=JOB, all_units=True)
    with pytest.raises(HkError, match=r"no housekeeping running for job f") as err:
        hk.kill(15, 101, jobid=99)
    assert err.value.code == "ENOENT"
    with pytest.raises(HkError, match=r"^no housekeeping running on ranks 5-6$"):
        hk.kill(15, 101, ranks={5, 6})
    with pytest.raises(HkError, match="not in the cluster"):
        hk.kill(15, 101, ranks={8})
    with pytest.raises(HkError, match="invalid signal"):
        hk.kill(0, 101, all_units=True)


def test_finished_ranks_are_not_signalled() -> None:
    hk = started(Policy())
    hk.finished(JOB, [(0, OK), (1, OK)], 101)
    assert hk.kill(15, 102, jobid=JOB).actions == [core.Signal(JOB, (2, 3), 15)]


def test_sigterm_escalates_to_sigkill_after_grace() -> None:
    hk = started(Policy(kill_grace=90))
    hk.kill(15, 200, ranks={0, 1})
    assert hk.next_deadline() == 290
    hk.finished(JOB, [(0, Outcome("signal", signal=15))], 201)
    assert hk.tick(289) == []
    assert hk.tick(290) == [core.Signal(JOB, (1,), core.SIGKILL)]
    assert hk.next_deadline() is None


def test_operator_kill_counts_as_failure_even_if_command_exits_zero() -> None:
    hk = started(Policy())
    hk.kill(15, 101, ranks={0})
    actions = hk.finished(JOB, [(0, OK)], 102)
    drained = [a for a in actions if isinstance(a, core.Drained)]
    assert drained == [core.Drained((0,), f"housekeeping@{LABEL} signal: killed TERM", 102)]


def test_timeout_terms_then_drains_with_timeout_reason() -> None:
    hk = started(Policy(timeout=600, kill_grace=10))
    assert hk.next_deadline() == 700
    hk.finished(JOB, [(0, OK)], 150)
    assert hk.tick(700) == [core.Signal(JOB, (1, 2, 3), core.SIGTERM)]
    actions = hk.finished(JOB, [(1, Outcome("signal", signal=15))], 701)
    drained = [a for a in actions if isinstance(a, core.Drained)]
    assert drained == [
        core.Drained((1,), f"housekeeping@{LABEL} timeout: killed TERM after 10m", 701)
    ]
    assert hk.tick(710) == [core.Signal(JOB, (2, 3), core.SIGKILL)]


def test_start_errors() -> None:
    hk = started(Policy())
    with pytest.raises(HkError, match="already in housekeeping") as err:
        hk.start(JOB, 0, [5], 101)
    assert err.value.code == "EEXIST"
    with pytest.raises(HkError, match=r"ranks 8-9 are not in the cluster \(0-7\)"):
        hk.start(77, 0, [1, 8, 9], 101)
    with pytest.raises(HkError, match="at least one rank"):
        hk.start(78, 0, [], 101)
    assert list(hk.units) == [JOB]


def test_shared_node_stays_in_housekeeping_until_both_units_release() -> None:
    hk = Housekeeping(4, Policy(release_after=0))
    hk.start(1, 0, [0], 100)
    hk.start(2, 0, [0, 1], 100)
    hk.finished(1, [(0, OK)], 101)
    assert hk.housekeeping_ranks() == {0, 1}
    hk.finished(2, [(0, OK)], 102)
    assert hk.housekeeping_ranks() == {1}


def test_drain_and_undrain() -> None:
    hk = Housekeeping(4, Policy())
    actions, already = hk.drain({0, 1}, "maintenance", 10)
    assert actions == [core.Drained((0, 1), "maintenance", 10)] and already == set()
    actions, already = hk.drain({1, 2}, "other", 11)
    assert actions == [core.Drained((2,), "other", 11)] and already == {1}
    with pytest.raises(HkError, match="rank 3 is not drained"):
        hk.undrain({2, 3})
    assert hk.undrain({0, 2}) == [core.Undrained((0, 2))]
    assert set(hk.drains) == {1}


def test_units_listed_in_start_order_with_cached_wire_form() -> None:
    hk = Housekeeping(16, Policy(release_after=0))
    for jobid in (30, 10, 20):
        hk.start(jobid, 0, [jobid // 10], 100)
    assert [u.to_wire()["jobid"] for u in hk.units.values()] == [30, 10, 20]
    wire = hk.units[30].to_wire()
    assert wire == {
        "jobid": 30,
        "userid": 0,
        "t_start": 100,
        "ranks": "3",
        "allocated": "3",
        "pending": "3",
        "failed": "",
        "stuck": "",
    }
    hk.start(40, 0, [4, 5], 100)
    hk.finished(40, [(4, Outcome("exit", code=3))], 101)
    assert hk.units[40].to_wire()["failed"] == "4"
    assert hk.units[40].to_wire()["allocated"] == "5"


def test_restored_unit_keeps_its_pending_sigkill_and_kill_cause() -> None:
    hk = started(Policy(kill_grace=90))
    hk.kill(15, 200, ranks={0, 1})
    unit = hk.units[JOB]
    fresh = Housekeeping(8, Policy(kill_grace=90))
    fresh.restore(unit)
    assert fresh.next_deadline() == 290
    assert fresh.recover(289) == []
    assert fresh.tick(290) == [core.Signal(JOB, (0, 1), core.SIGKILL)]
    actions = fresh.finished(JOB, [(0, OK)], 291)
    assert core.Drained((0,), f"housekeeping@{LABEL} signal: killed TERM", 291) in actions


def test_infinite_kill_grace_never_escalates() -> None:
    hk = started(Policy(kill_grace=float("inf")))
    hk.kill(15, 200, jobid=JOB)
    assert hk.next_deadline() is None
    assert hk.units[JOB].records[0].escalate_at is None


def test_stop_all_kills_every_running_rank_and_says_so() -> None:
    hk = started(Policy(kill_grace=90))
    hk.finished(JOB, [(0, OK)], 101)
    hk.kill(15, 102, ranks={1})
    assert hk.stop_all(103) == [core.Signal(JOB, (1, 2, 3), core.SIGKILL)]
    # SIGKILL leaves nothing to escalate.
    assert hk.next_deadline() is None
    killed = Outcome("signal", signal=core.SIGKILL)
    actions = hk.finished(JOB, [(1, killed), (2, killed), (3, OK)], 104)
    reason = f"housekeeping@{LABEL} signal: killed KILL as the service stopped"
    assert core.Drained((1, 2), reason, 104) in actions
    # A command that ended on its own before the SIGKILL keeps its real status.
    assert 3 not in hk.drains
    assert hk.units == {} and releases(actions) == [((0, 1, 2, 3), True)]


def test_ranks_past_warn_after_are_stuck_once_and_only_while_running() -> None:
    hk = started(Policy(warn_after=10))
    assert hk.next_deadline() == 110
    hk.finished(JOB, [(0, OK)], 105)
    assert hk.tick(109.9) == []
    assert hk.tick(110) == [core.Stuck(JOB, (1, 2, 3))]
    assert hk.units[JOB].to_wire()["stuck"] == "1-3"
    # Said once: no deadline left for it, and a later tick says nothing.
    assert hk.next_deadline() is None
    assert hk.tick(500) == []
    hk.finished(JOB, [(2, OK)], 501)
    assert hk.units[JOB].to_wire()["stuck"] == "1,3"


def test_a_unit_done_in_time_is_never_stuck_and_no_warn_after_means_never() -> None:
    hk = started(Policy(warn_after=10))
    hk.finished(JOB, [(r, OK) for r in range(4)], 109)
    assert hk.tick(1000) == [] and hk.next_deadline() is None
    hk = started(Policy(warn_after=None))
    assert hk.next_deadline() is None and hk.tick(10**9) == []


def test_finished_ranks_carry_their_start_and_user_and_drains_their_cause() -> None:
    hk = started(Policy())
    actions = hk.finished(JOB, [(1, Outcome("exit", code=3)), (2, Outcome("core", signal=11))], 130)
    finished = [a for a in actions if isinstance(a, core.RankFinished)]
    assert [(a.rank, a.t_start, a.userid) for a in finished] == [(1, 100, 1000), (2, 100, 1000)]
    causes = {a.ranks: a.cause for a in actions if isinstance(a, core.Drained)}
    assert causes == {(1,): "exit", (2,): "core"}
    operator, _ = hk.drain({5}, "maintenance", 131)
    assert [a.cause for a in operator if isinstance(a, core.Drained)] == ["operator"]


def test_the_next_deadline_follows_units_as_they_come_and_go() -> None:
    """Deadlines are kept in a heap whose entries go stale as units end or their timers
    fire: the next one is always a live unit's, however many stale ones there are."""
    hk = Housekeeping(4000, Policy(release_after=50, timeout=1000, warn_after=300))
    ok = Outcome("exit", code=0)
    for jobid in range(1000):
        hk.start(jobid, 0, [jobid * 2, jobid * 2 + 1], float(jobid))
    assert hk.next_deadline() == 300  # job 0's warn-after
    for jobid in range(999):
        hk.finished(jobid, [(jobid * 2, ok), (jobid * 2 + 1, ok)], 1000.0)
    assert list(hk.units) == [999]
    assert hk.next_deadline() == 999 + 300
    hk.finished(999, [(1998, ok)], 1100.0)  # rank 1999 still runs: the release timer
    assert hk.next_deadline() == 1150
    hk.tick(1150)
    assert hk.next_deadline() == 1299  # the timer fired; warn-after is next
    hk.tick(1299)
    assert hk.next_deadline() == 1999  # the timeout
    # Starts and ends of many more units keep the heap bounded by the units in progress.
    for jobid in range(1000, 3000):
        hk.start(jobid, 0, [jobid], 2000.0)
        hk.finished(jobid, [(jobid, ok)], 2000.0)
    assert len(hk._deadlines) <= 4 * len(hk.units) + 64 + 3
    assert hk.next_deadline() == 1999
