"""`hkservice --recover`: rebuild the units in progress once the database is lost.

What is still known without it:
- the local agent's journal: each unit it launched (`J` lines: userid, start time, all
  ranks), the commands still running and the exits not yet acknowledged, that is not
  yet saved in the database;
- the output directories: the ranks whose command was started (the agent makes their
  files as it spawns them).

So a unit with a command running or an exit unacknowledged comes back with all its
ranks: those running are adopted and those whose exit is waiting get their real
outcome (the normal reconciliation with the agent, after the rebuild); a rank with
output but nothing in the journal ended and was acknowledged before the loss, with an
outcome nobody knows any more: it is drained `lost: outcome unknown ...`, so that an
operator checks the node, and counted released unless the configuration holds every
release to the end of the unit (releasing it again would hand a node out twice). A rank
with neither was never started: the reconciliation launches it.

What cannot be rebuilt: drains, history, and units whose commands had all ended and been
acknowledged. The log says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hkservice import core, statedir
from hkservice.agent import Journal
from hkservice.core import Outcome, RankRecord, Unit
from hkservice.idset import IdsetError, format_idset, parse_idset
from hkservice.statedir import JOURNAL_NAME, StateError
from hkservice.store import Store

log = logging.getLogger("hkservice.recovery")

UNKNOWN = "outcome unknown: the state database was lost (rebuilt by --recover)"


@dataclass
class Rebuilt:
    units: list[Unit] = field(default_factory=list)
    drains: dict[int, tuple[str, float]] = field(default_factory=dict)


def output_ranks(unit_dir: Path) -> set[int]:
    """Ranks with an output file: their command was spawned."""
    ranks: set[int] = set()
    with contextlib.suppress(OSError), os.scandir(unit_dir) as entries:
        for entry in entries:
            stem, dot, stream = entry.name.partition(".")
            if dot and stream in ("out", "err") and stem.isdigit():
                ranks.add(int(stem))
    return ranks


def rebuild(
    state_dir: Path, size: int, policy: core.Policy, now: float, default_userid: int
) -> Rebuilt:
    run_dir = state_dir / "run"
    journal = Journal(run_dir / JOURNAL_NAME).replay()
    known: dict[int, set[int]] = {}
    for jobid, rank in [*journal.running, *((j, r) for j, r, _ in journal.exits)]:
        known.setdefault(jobid, set()).add(rank)
    rebuilt = Rebuilt()
    # Without the database there is no knowing whether a finished rank was released:
    # assume it was, unless releases wait for the end of the unit, since a second
    # release could hand the node out twice while a missing one only holds it.
    assume_released = policy.release_after is not None
    for jobid, in_journal in sorted(known.items()):
        info = journal.units.get(jobid)
        spawned = output_ranks(run_dir / str(jobid))
        if info is not None:
            userid, t_start = info.userid, info.t_start
            try:
                ranks = set(parse_idset(info.ranks))
            except IdsetError:
                ranks = in_journal | spawned
        else:  # journaled by an agent older than `J` lines
            userid, t_start, ranks = default_userid, now, in_journal | spawned
        outside = {r for r in ranks if not 0 <= r < size}
        if outside:
            log.warning(
                "recover: %s: ranks %s are not in the cluster: left out",
                core.job_label(jobid),
                format_idset(outside),
            )
            ranks -= outside
        if not ranks:
            continue
        unknown = (spawned - in_journal) & ranks
        lost = Outcome("lost", text=UNKNOWN)
        records = {r: RankRecord(r, t_start) for r in ranks}
        for r in unknown:
            records[r] = RankRecord(r, t_start, now, lost, released=assume_released)
            rebuilt.drains.setdefault(r, (lost.drain_reason(jobid), now))
        unit = Unit(
            jobid=jobid,
            userid=userid,
            t_start=t_start,
            ranks=tuple(sorted(ranks)),
            records=records,
            allocated={r for r in ranks if not records[r].released},
            pending=ranks - unknown,
            failed=set(unknown),
            timer_expired=assume_released and bool(unknown) and bool(policy.release_after),
            releases=1 if assume_released and unknown else 0,
        )
        if policy.timeout is not None:
            unit.timeout_at = t_start + policy.timeout
        rebuilt.units.append(unit)
        log.warning(
            "recover: %s rebuilt on ranks %s: %s running or ended unreported%s",
            core.job_label(jobid),
            format_idset(ranks),
            format_idset(ranks - unknown),
            f", {format_idset(unknown)} ended with an outcome only the lost database knew (drained)"
            if unknown
            else "",
        )
    log.warning(
        "recover: %d units in progress rebuilt from the agent's journal and the output "
        "directories; drains and history were in the lost database and are gone: check "
        "the nodes' drain state",
        len(rebuilt.units),
    )
    return rebuilt


def open_state(
    state_dir: Path, *, recover: bool, size: int, policy: core.Policy, now: float
) -> tuple[IO[bytes], Store]:
    """Check the state directory, lock it and open its database (rebuilt if `recover`).

    Raises StateError, one line for the operator, for anything that is not a first start
    or a sound database: a missing, empty or unreadable database next to an earlier
    run's state is never taken for a fresh start.
    """
    statedir.prepare(state_dir)
    held = statedir.lock(state_dir)
    try:
        db_path = state_dir / statedir.DB_NAME
        problem = statedir.database_problem(db_path)
        found = statedir.earlier_state(state_dir)
        if recover:
            if problem is None:
                raise StateError(
                    f"--recover: {db_path} is sound (PRAGMA quick_check: ok): nothing to "
                    "recover; start without --recover"
                )
            log.warning("recover: %s is %s", db_path, problem)
            for moved in statedir.set_aside(state_dir):
                log.warning("recover: set aside as %s", moved)
        elif problem is not None and not statedir.fresh_start_is_safe(problem, found):
            raise StateError(statedir.refusal(state_dir, problem, found))
        store = Store(state_dir)
        if recover:
            try:
                rebuilt = rebuild(state_dir, size, policy, now, os.getuid())
                store.restore(rebuilt.units, rebuilt.drains)
            except BaseException:
                store.close()
                raise
    except BaseException:
        held.close()
        raise
    return held, store
