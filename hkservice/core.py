"""The housekeeping state machine: units, pending and allocated rank sets, release
batching, drain decisions, kill selection and escalation.

Pure: no sockets, processes, files or clock. Every entry point takes `now` and returns
the list of actions the adapters must carry out, in order. Drains always come before
the release of the same ranks, so a scheduler can never pick up a failed node in between.
The service calls `next_deadline()` after each entry point and `tick(now)` when it passes.
"""

from __future__ import annotations

import heapq
import math
import signal as signal_module
from collections.abc import Iterable
from dataclasses import dataclass, field

from hkservice.cluster import not_in_cluster
from hkservice.errors import HkError
from hkservice.fsd import format_duration_config
from hkservice.idset import format_idset
from hkservice.jobid import encode_jobid

SIGTERM = int(signal_module.SIGTERM)
SIGKILL = int(signal_module.SIGKILL)
# How a rank the service killed as it stopped (--stop-commands-on-exit) is told.
SHUTDOWN_TEXT = "as the service stopped"


def signal_name(signum: int) -> str:
    """`TERM` for 15: the form Flux's drain reasons use."""
    try:
        return signal_module.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)


def job_label(jobid: int) -> str:
    # Reasons and errors use the ASCII f58 form: they end up in logs and drain lists
    # read in any locale.
    return encode_jobid(jobid, "f58plain")


# ---------------------------------------------------------------------------
# Outcomes


@dataclass(frozen=True)
class Outcome:
    """How one rank's command ended.

    kind: "exit" (code), "signal" (signal), "core" (signal, dumped core), "launch"
    (could not start; text is the error), "lost" (the service lost track of it; text says
    why), "timeout" (outlived the timeout; code/signal tell how it finally ended).
    """

    kind: str
    code: int | None = None
    signal: int | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "exit" and self.code == 0

    def describe(self) -> str:
        if self.kind == "exit":
            return f"exited {self.code}"
        if self.kind == "signal":
            killed = f"killed {signal_name(self.signal or 0)}"
            return f"{killed} {self.text}" if self.text else killed
        if self.kind == "core":
            return f"dumped {signal_name(self.signal or 0)}"
        if self.kind == "timeout":
            ended = Outcome("signal", signal=self.signal) if self.signal else None
            how = ended.describe() if ended else f"exited {self.code}"
            return f"{how} after {self.text}" if self.text else how
        return self.text

    def drain_reason(self, jobid: int) -> str:
        label = {
            "exit": "exit-code",
            "signal": "signal",
            "core": "core-dump",
            "launch": "launch",
            "timeout": "timeout",
            "lost": "lost",
        }.get(self.kind, "failure")
        return f"housekeeping@{job_label(jobid)} {label}: {self.describe()}"

    def to_wire(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "code": self.code,
            "signal": self.signal,
            "text": self.describe(),
        }


# ---------------------------------------------------------------------------
# Actions: what the adapters must do, in order


@dataclass(frozen=True)
class UnitStarted:
    jobid: int


@dataclass(frozen=True)
class Launch:
    jobid: int
    userid: int
    ranks: tuple[int, ...]
    all_ranks: str


@dataclass(frozen=True)
class Signal:
    jobid: int
    ranks: tuple[int, ...]
    signum: int


@dataclass(frozen=True)
class RankFinished:
    jobid: int
    rank: int
    outcome: Outcome
    t_end: float
    # The unit may be gone by the time adapters see this (its last rank ended): history
    # and metrics need when the rank started and whose job it cleaned up after.
    t_start: float = field(default=0.0, compare=False)
    userid: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Drained:
    ranks: tuple[int, ...]
    reason: str
    t: float
    # What drained them: an outcome kind ("exit", "signal", ...) or "operator". Metrics
    # count drains by it; a reason is free text anyone can write.
    cause: str = field(default="operator", compare=False)
    # For the drain of ranks whose command an operator killed: when that kill was asked
    # (the adapters name who asked it from that).
    killed_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Stuck:
    """These ranks have run past warn-after: said once per unit (all its ranks started
    together, so they cross the line together)."""

    jobid: int
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Undrained:
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Released:
    jobid: int
    ranks: tuple[int, ...]
    final: bool


@dataclass(frozen=True)
class UnitEnded:
    jobid: int
    t_end: float


@dataclass(frozen=True)
class TimerArmed:
    """The release-after timer of a unit was armed: persisted so a restart keeps it."""

    jobid: int
    deadline: float


Action = (
    UnitStarted
    | Launch
    | Signal
    | RankFinished
    | Drained
    | Undrained
    | Released
    | UnitEnded
    | TimerArmed
    | Stuck
)


# ---------------------------------------------------------------------------
# Units


@dataclass
class RankRecord:
    rank: int
    t_start: float
    t_end: float | None = None
    outcome: Outcome | None = None
    released: bool = False
    # Why the rank was signalled ("operator", "timeout" or "shutdown"), so its outcome
    # can be told as what it was rather than as a plain crash. Persisted with the
    # escalation deadline: a restart must neither forget a pending SIGKILL nor take a
    # trapped operator kill for a clean exit.
    kill_cause: str | None = None
    kill_signal: int | None = None
    escalate_at: float | None = None
    # When an operator last signalled it: its drain, if it fails, is that operator's.
    killed_at: float | None = None

    @property
    def state(self) -> str:
        if self.released:
            return "released"
        return "running" if self.outcome is None else "done"


@dataclass
class Unit:
    jobid: int
    userid: int
    t_start: float
    ranks: tuple[int, ...]
    records: dict[int, RankRecord]
    allocated: set[int]
    pending: set[int]
    failed: set[int] = field(default_factory=set)
    timer_deadline: float | None = None
    timer_expired: bool = False
    timeout_at: float | None = None
    releases: int = 0
    # Its pending ranks have run past warn-after (and that was said).
    stuck: bool = False
    _wire: dict[str, object] | None = None

    def touch(self) -> None:
        self._wire = None

    def to_wire(self) -> dict[str, object]:
        # Cached: `list` with a thousand units must not re-encode unchanged idsets.
        if self._wire is None:
            self._wire = {
                "jobid": self.jobid,
                "userid": self.userid,
                "t_start": self.t_start,
                "ranks": format_idset(self.ranks),
                "allocated": format_idset(self.allocated),
                "pending": format_idset(self.pending),
                "failed": format_idset(self.failed),
                "stuck": format_idset(self.pending) if self.stuck else "",
            }
        return self._wire


@dataclass(frozen=True)
class Policy:
    """Release, timeout, kill and stuck settings; seconds, None meaning unset."""

    release_after: float | None = None
    timeout: float | None = None
    kill_grace: float = 90.0
    warn_after: float | None = None

    @property
    def partial(self) -> bool:
        return self.release_after is not None and not math.isinf(self.release_after)


@dataclass(frozen=True)
class KillResult:
    units: int
    ranks: int
    signum: int
    actions: list[Action]


class Housekeeping:
    """All units in progress and every node's drain state."""

    def __init__(self, size: int, policy: Policy) -> None:
        self.size = size
        self.policy = policy
        self.units: dict[int, Unit] = {}
        self.drains: dict[int, tuple[str, float]] = {}
        # How many units hold each rank: nodes may be shared by several units at once.
        self._holders: dict[int, int] = {}
        # (jobid, rank) -> when SIGKILL follows the SIGTERM it was sent; kept apart so
        # finding the next deadline never walks every pending rank.
        self._escalations: dict[tuple[int, int], float] = {}
        # (when, jobid): a unit may have a deadline then (its release timer, timeout or
        # warn-after). Entries go stale as units change or end, and are dropped when
        # they come to the top: finding the next deadline must not walk every unit on
        # every change (at 100 starts/s beside 200 units it cost a millisecond each).
        self._deadlines: list[tuple[float, int]] = []

    # -- queries ------------------------------------------------------------

    def housekeeping_ranks(self) -> set[int]:
        return set(self._holders)

    def unit(self, jobid: int) -> Unit:
        unit = self.units.get(jobid)
        if unit is None:
            raise HkError("ENOENT", f"no housekeeping running for job {job_label(jobid)}")
        return unit

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap:
            when, jobid = heap[0]
            unit = self.units.get(jobid)
            if unit is not None and when in self._unit_deadlines(unit):
                break
            heapq.heappop(heap)
        deadlines = [heap[0][0]] if heap else []
        if self._escalations:
            deadlines.append(min(self._escalations.values()))
        return min(deadlines, default=None)

    def _unit_deadlines(self, unit: Unit) -> tuple[float, ...]:
        """When something is due for a unit: its release timer, timeout, warn-after."""
        found: list[float] = []
        if unit.timer_deadline is not None and not unit.timer_expired:
            found.append(unit.timer_deadline)
        if unit.timeout_at is not None:
            found.append(unit.timeout_at)
        stuck_at = self._stuck_at(unit)
        if stuck_at is not None:
            found.append(stuck_at)
        return tuple(found)

    def _expect(self, unit: Unit) -> None:
        """A unit's deadlines were set: remember them for next_deadline."""
        heap = self._deadlines
        if len(heap) > 4 * len(self.units) + 64:
            # Mostly stale (units that ended with deadlines far ahead): start afresh.
            heap[:] = [(w, j) for j, u in self.units.items() for w in self._unit_deadlines(u)]
            heapq.heapify(heap)
        for when in self._unit_deadlines(unit):
            heapq.heappush(heap, (when, unit.jobid))

    def _stuck_at(self, unit: Unit) -> float | None:
        """When the unit's running ranks become stuck, if that is still to come."""
        warn_after = self.policy.warn_after
        if warn_after is None or math.isinf(warn_after) or unit.stuck or not unit.pending:
            return None
        return unit.t_start + warn_after

    # -- start --------------------------------------------------------------

    def _check_ranks(self, ranks: Iterable[int]) -> None:
        outside = [r for r in ranks if r < 0 or r >= self.size]
        if outside:
            raise HkError("EINVAL", not_in_cluster(format_idset(outside), self.size))

    def start(self, jobid: int, userid: int, ranks: Iterable[int], now: float) -> list[Action]:
        if jobid in self.units:
            raise HkError("EEXIST", f"job {job_label(jobid)} is already in housekeeping")
        ordered = tuple(sorted(set(ranks)))
        if not ordered:
            raise HkError("EINVAL", "a housekeeping unit needs at least one rank")
        self._check_ranks(ordered)
        unit = Unit(
            jobid=jobid,
            userid=userid,
            t_start=now,
            ranks=ordered,
            records={r: RankRecord(r, now) for r in ordered},
            allocated=set(ordered),
            pending=set(ordered),
        )
        if self.policy.timeout is not None and not math.isinf(self.policy.timeout):
            unit.timeout_at = now + self.policy.timeout
        self._add(unit)
        return [UnitStarted(jobid), Launch(jobid, userid, ordered, format_idset(ordered))]

    def _add(self, unit: Unit) -> None:
        self.units[unit.jobid] = unit
        for r in unit.allocated:
            self._holders[r] = self._holders.get(r, 0) + 1
        self._expect(unit)

    def restore(self, unit: Unit) -> None:
        """Put back a unit read from persistent state after a restart."""
        self._add(unit)
        for rank in unit.pending:
            at = unit.records[rank].escalate_at
            if at is not None:
                self._escalations[(unit.jobid, rank)] = at

    def restore_drain(self, rank: int, reason: str, t: float) -> None:
        self.drains[rank] = (reason, t)

    # -- completion ---------------------------------------------------------

    def finished(
        self, jobid: int, results: Iterable[tuple[int, Outcome]], now: float
    ) -> list[Action]:
        """One batch of ranks of one unit whose commands ended."""
        unit = self.units.get(jobid)
        if unit is None:
            return []
        actions: list[Action] = []
        failed_now: dict[tuple[str, str, float | None], list[int]] = {}
        for rank, raw in results:
            if rank not in unit.pending:
                continue
            record = unit.records[rank]
            outcome = self._classify(record, raw)
            unit.pending.discard(rank)
            record.outcome = outcome
            record.t_end = now
            record.escalate_at = None
            self._escalations.pop((jobid, rank), None)
            actions.append(RankFinished(jobid, rank, outcome, now, record.t_start, unit.userid))
            if not outcome.ok:
                unit.failed.add(rank)
                if rank not in self.drains:
                    killed_at = record.killed_at if record.kill_cause == "operator" else None
                    key = (outcome.drain_reason(jobid), outcome.kind, killed_at)
                    failed_now.setdefault(key, []).append(rank)
        for (reason, kind, killed_at), ranks in failed_now.items():
            for r in ranks:
                self.drains[r] = (reason, now)
            actions.append(Drained(tuple(ranks), reason, now, kind, killed_at))
        unit.touch()
        actions.extend(self._after_completion(unit, now))
        return actions

    def _classify(self, record: RankRecord, raw: Outcome) -> Outcome:
        if record.kill_cause == "timeout" and raw.kind in ("exit", "signal", "core"):
            return Outcome(
                "timeout",
                code=raw.code,
                signal=raw.signal,
                text=format_duration_config(self.policy.timeout),
            )
        if record.kill_cause == "operator" and raw.ok:
            # The command caught the operator's signal and exited 0: its cleanup was
            # still cut short, so it counts as a failure (spec §5).
            return Outcome("signal", signal=record.kill_signal)
        if record.kill_cause == "shutdown" and raw.kind == "signal" and raw.signal == SIGKILL:
            return Outcome("signal", signal=SIGKILL, text=SHUTDOWN_TEXT)
        return raw

    def _after_completion(self, unit: Unit, now: float) -> list[Action]:
        release_after = self.policy.release_after
        if not unit.pending:
            return self._release(unit, now)
        if release_after == 0 or unit.timer_expired:
            return self._release(unit, now)
        if self.policy.partial and unit.timer_deadline is None:
            assert release_after is not None
            unit.timer_deadline = now + release_after
            self._expect(unit)
            return [TimerArmed(unit.jobid, unit.timer_deadline)]
        return []

    def _release(self, unit: Unit, now: float) -> list[Action]:
        done = unit.allocated - unit.pending
        if not done:
            return []
        final = not unit.pending
        for r in done:
            unit.records[r].released = True
            count = self._holders.get(r, 0) - 1
            if count > 0:
                self._holders[r] = count
            else:
                self._holders.pop(r, None)
        unit.allocated -= done
        unit.releases += 1
        unit.touch()
        actions: list[Action] = [Released(unit.jobid, tuple(sorted(done)), final)]
        if final:
            del self.units[unit.jobid]
            actions.append(UnitEnded(unit.jobid, now))
        return actions

    # -- time ---------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for unit in list(self.units.values()):
            if (
                unit.timer_deadline is not None
                and not unit.timer_expired
                and now >= unit.timer_deadline
            ):
                unit.timer_expired = True
                actions.extend(self._release(unit, now))
            if unit.timeout_at is not None and now >= unit.timeout_at:
                unit.timeout_at = None
                running = sorted(unit.pending)
                if running:
                    for r in running:
                        self._mark_signalled(unit, r, SIGTERM, "timeout", now)
                    actions.append(Signal(unit.jobid, tuple(running), SIGTERM))
            stuck_at = self._stuck_at(unit)
            if stuck_at is not None and now >= stuck_at:
                unit.stuck = True
                unit.touch()
                actions.append(Stuck(unit.jobid, tuple(sorted(unit.pending))))
        due: dict[int, list[int]] = {}
        for (jobid, rank), at in list(self._escalations.items()):
            if now >= at:
                del self._escalations[(jobid, rank)]
                self.units[jobid].records[rank].escalate_at = None
                due.setdefault(jobid, []).append(rank)
        for jobid, ranks in due.items():
            actions.append(Signal(jobid, tuple(sorted(ranks)), SIGKILL))
        return actions

    # -- kill ---------------------------------------------------------------

    def _mark_signalled(self, unit: Unit, rank: int, signum: int, cause: str, now: float) -> None:
        record = unit.records[rank]
        # A timeout stays the cause even if an operator signals the rank afterwards.
        if record.kill_cause != "timeout":
            record.kill_cause = cause
        record.kill_signal = signum
        if cause == "operator":
            record.killed_at = now
        if signum == SIGKILL:
            # Nothing left to escalate to.
            record.escalate_at = None
            self._escalations.pop((unit.jobid, rank), None)
        elif (
            signum == SIGTERM
            and record.escalate_at is None
            and not math.isinf(self.policy.kill_grace)
        ):
            record.escalate_at = now + self.policy.kill_grace
            self._escalations[(unit.jobid, rank)] = record.escalate_at

    def kill(
        self,
        signum: int,
        now: float,
        *,
        jobid: int | None = None,
        ranks: set[int] | None = None,
        all_units: bool = False,
    ) -> KillResult:
        if all_units and jobid is not None:
            raise HkError("EINVAL", "do not specify --jobid with --all")
        if not all_units and jobid is None and ranks is None:
            raise HkError("EINVAL", "specify at least one of --targets, --jobid, or --all")
        if signum <= 0 or signum >= signal_module.NSIG:
            raise HkError("EINVAL", f"invalid signal number {signum}")
        if ranks is not None:
            self._check_ranks(ranks)
        units = [self.unit(jobid)] if jobid is not None else list(self.units.values())
        actions: list[Action] = []
        nranks = 0
        for unit in units:
            selected = sorted(unit.pending if ranks is None else unit.pending & ranks)
            if not selected:
                continue
            for r in selected:
                self._mark_signalled(unit, r, signum, "operator", now)
            actions.append(Signal(unit.jobid, tuple(selected), signum))
            nranks += len(selected)
        if not actions:
            where = f" on ranks {format_idset(ranks)}" if ranks is not None else ""
            if jobid is not None:
                raise HkError(
                    "ENOENT", f"no housekeeping running{where} for job {job_label(jobid)}"
                )
            raise HkError("ENOENT", f"no housekeeping running{where}")
        return KillResult(len(actions), nranks, signum, actions)

    # -- drain --------------------------------------------------------------

    def drain(self, ranks: set[int], reason: str, now: float) -> tuple[list[Action], set[int]]:
        """Drain ranks; those already drained keep their first reason (returned apart)."""
        if not ranks:
            raise HkError("EINVAL", "no ranks to drain")
        self._check_ranks(ranks)
        already = {r for r in ranks if r in self.drains}
        fresh = sorted(ranks - already)
        for r in fresh:
            self.drains[r] = (reason, now)
        actions: list[Action] = [Drained(tuple(fresh), reason, now)] if fresh else []
        return actions, already

    def undrain(self, ranks: set[int]) -> list[Action]:
        if not ranks:
            raise HkError("EINVAL", "no ranks to undrain")
        self._check_ranks(ranks)
        not_drained = sorted(r for r in ranks if r not in self.drains)
        if not_drained:
            noun = "rank" if len(not_drained) == 1 else "ranks"
            verb = "is" if len(not_drained) == 1 else "are"
            raise HkError("EINVAL", f"{noun} {format_idset(not_drained)} {verb} not drained")
        for r in ranks:
            del self.drains[r]
        return [Undrained(tuple(sorted(ranks)))]

    def stop_all(self, now: float) -> list[Action]:
        """The service is stopping and takes every command with it: SIGKILL all.

        The ranks then end as killed (and are drained: their cleanup did not complete)
        rather than being left for the next start to find gone and call lost.
        """
        actions: list[Action] = []
        for unit in self.units.values():
            running = sorted(unit.pending)
            if not running:
                continue
            for r in running:
                self._mark_signalled(unit, r, SIGKILL, "shutdown", now)
            actions.append(Signal(unit.jobid, tuple(running), SIGKILL))
        return actions

    def recover(self, now: float) -> list[Action]:
        """After restore: release what a crash left done-but-held, fire due timers."""
        actions: list[Action] = []
        for unit in list(self.units.values()):
            if not unit.pending or unit.timer_expired or self.policy.release_after == 0:
                actions.extend(self._release(unit, now))
        actions.extend(self.tick(now))
        return actions
