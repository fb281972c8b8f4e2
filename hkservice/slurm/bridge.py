"""The service's bridge to Slurm: it keeps Slurm's drain state in step with housekeeping.

Slurm's node Epilog holds each node (drains it with hk's hold reason) and EpilogSlurmctld
hands the job to hk; from there this bridge:
- resumes a node in Slurm when hk releases it clean,
- rewrites a failed node's reason to hk's drain reason, leaving it drained,
- carries hk's own drain and undrain over to Slurm,
- reconciles at start and every `reconcile-every`: a node held for a job hk has no unit
  for (hk was down when it ended) gets its cleanup started; a node drained by hk that hk
  has no record of is taken as drained in hk, so it shows in `hkconsole nodes` and only an
  operator's undrain resumes it.
It never resumes or rewrites a node whose reason does not start with `hk:`.

What hk wants of each node is kept as one wish per node (the latest wins). A worker task
reads the nodes' state with one `sinfo`, decides, and groups the `scontrol` updates; a
failed or slow command is logged and retried later, and never blocks the service's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import hostlist

from hkservice import core
from hkservice.config import SchedulerConfig
from hkservice.errors import HkError
from hkservice.jobid import JobidError, parse_jobid
from hkservice.scheduler import BridgeHost
from hkservice.slurm.nodes import (
    Commands,
    SlurmError,
    SlurmNode,
    drain_reason,
    failure,
    failure_reason,
    hold_reason,
    owned,
    parse_sinfo,
    unprefixed,
)

log = logging.getLogger("hkservice.slurm")

# While a released node's Epilog has not finished (COMPLETING), it is looked at again
# this often: the Epilog's hold must be in place before it can be lifted.
WAIT_SECONDS = 0.25
# A node still COMPLETING after this long (a slurmd gone quiet) is looked at every
# LONG_WAIT_SECONDS instead: not one sinfo every 0.25 s for as long as it lasts.
LONG_WAIT_AFTER, LONG_WAIT_SECONDS = 10.0, 5.0
# A released node that shows neither a drain nor COMPLETING this long after its release
# was never held (no node Epilog, or it could not drain): nothing to resume.
NEVER_HELD_SECONDS = 2.0
RETRY_MIN, RETRY_MAX = 1.0, 60.0
CLOSE_SECONDS = 5.0

_CORE_FAILURE = re.compile(r"^housekeeping@(\S+) (.+)$", re.DOTALL)


@dataclass
class Wish:
    """What hk wants of one node in Slurm.

    kind: "resume-hold" (lift hk's hold once the node's Epilog has finished; only
    wished when no unit holds the node any more), "drain" (drained with `reason`, unless
    drained by someone else), "hold" (drained with `reason` if not drained at all once
    its Epilog has ended), "resume" (resume if drained by hk).
    """

    kind: str
    reason: str = ""
    since: float = field(default_factory=time.monotonic)


async def run_async(argv: Sequence[str], timeout: float) -> str:
    """run() for the service: the loop keeps serving while Slurm answers (or does not)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise SlurmError(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise SlurmError(f"{argv[0]} {argv[1]} did not answer within {timeout:g} s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode != 0:
        raise failure(argv, proc.returncode or 0, err.decode(errors="replace"))
    return out.decode(errors="replace")


def slurm_reason(reason: str) -> str:
    """hk's drain reason as Slurm shows it: a failure names the Slurm job it followed."""
    match = _CORE_FAILURE.match(reason)
    if match:
        with contextlib.suppress(JobidError):
            return failure_reason(match.group(2), parse_jobid(match.group(1)))
    return drain_reason(reason)


def decide(wish: Wish, node: SlurmNode | None, now: float) -> tuple[str, str | None]:
    """What to do in Slurm for one wish, given the node as `sinfo` just showed it.

    The verdict: "resume", "drain" (with the wish's reason), "wait" (look again soon) or
    "done" (nothing to do); the note says what is worth telling: "unknown" (no such
    Slurm node), "kept" (someone else's drain is left alone), "never-held".
    """
    if node is None:
        return "done", "unknown"
    kept = None if owned(node.reason) else "kept"
    if wish.kind == "resume-hold":
        if node.completing:
            return "wait", None  # its Epilog may be about to hold it
        # The hold of any job: on a node shared by jobs that ended together, the first
        # Epilog's hold stands for all of them, and no unit holds the node now.
        if node.hold is not None:
            return "resume", None
        if node.drained:
            return "done", kept
        if now - wish.since < NEVER_HELD_SECONDS:
            return "wait", None
        return "done", "never-held"
    if wish.kind == "resume":
        return ("resume" if node.hk_owned else "done"), None
    if wish.kind == "hold" and node.completing and not node.drained:
        # Its Epilog is running and holds it itself: a drain here could overwrite an
        # admin's drain made between this read and that write.
        return "wait", None
    # "drain" and "hold"
    if node.drained and (wish.kind == "hold" or kept):
        return "done", kept
    return ("done" if node.drained and node.reason == wish.reason else "drain"), None


class SlurmBridge:
    def __init__(self, settings: SchedulerConfig, host: BridgeHost) -> None:
        self.settings = settings
        self.commands = Commands(settings.scontrol, settings.sinfo, settings.command_timeout)
        self.host = host
        self.wishes: dict[str, Wish] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry = RETRY_MIN
        # Nodes held for a job hk has no unit for: when this service first saw each.
        self._orphans_seen: dict[str, float] = {}
        # What was already reported, so a reconcile every 30 s does not repeat it.
        self._reported: set[tuple[str, str]] = set()
        self.reconciled = 0

    # -- the service's side ---------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.wishes:
            # One last pass, bounded: what is still undone is redone by the reconcile
            # of the next start (holds and hk's drains are both on record).
            try:
                await asyncio.wait_for(self._settle(), CLOSE_SECONDS)
            except (TimeoutError, SlurmError) as exc:
                log.error("slurm: stopping with changes not made in Slurm: %s", exc or "timeout")
            except Exception:  # a bug must not fail the service's stop
                log.exception("slurm: internal error while stopping")

    def on_actions(self, actions: list[core.Action]) -> None:
        hk = self.host.hk
        cluster = self.host.cluster
        busy: set[int] | None = None
        for action in actions:
            match action:
                case core.UnitStarted(jobid):
                    # The node Epilog normally holds them already; this holds them if
                    # it did not (or not yet), and leaves any drain in place.
                    unit = hk.units[jobid]
                    reason = hold_reason(jobid, unit.userid)
                    for rank in unit.ranks:
                        if rank not in hk.drains:
                            self._wish(cluster.hostname(rank), Wish("hold", reason))
                case core.Drained(ranks, reason, _):
                    for rank in ranks:
                        self._wish(cluster.hostname(rank), Wish("drain", slurm_reason(reason)))
                case core.Undrained(ranks):
                    holders = self._holding_units(set(ranks))
                    for rank in ranks:
                        unit = holders.get(rank)
                        if unit is None:
                            self._wish(cluster.hostname(rank), Wish("resume"))
                        else:
                            # Still in cleanup: back to being held for it.
                            hold = hold_reason(unit.jobid, unit.userid)
                            self._wish(cluster.hostname(rank), Wish("drain", hold))
                case core.Released(_, ranks, _):
                    if busy is None:
                        busy = hk.housekeeping_ranks()
                    for rank in ranks:
                        # A failed node stays drained (its drain came first); a node
                        # another unit holds stays held until that one releases it.
                        if rank not in hk.drains and rank not in busy:
                            self._wish(cluster.hostname(rank), Wish("resume-hold"))
                case _:
                    pass

    def _holding_units(self, ranks: set[int]) -> dict[int, core.Unit]:
        found: dict[int, core.Unit] = {}
        for unit in self.host.hk.units.values():
            for rank in ranks & unit.allocated:
                found.setdefault(rank, unit)
        return found

    def _wish(self, name: str, wish: Wish) -> None:
        self.wishes[name] = wish
        self._wake.set()

    # -- the worker -----------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time()
        while True:
            delay: float | None = None
            try:
                if loop.time() >= next_reconcile:
                    next_reconcile = loop.time() + self.settings.reconcile_every
                    await self._reconcile()
                if self.wishes:
                    delay = await self._settle()
                self._retry = RETRY_MIN
            except SlurmError as exc:
                log.error("slurm: %s; trying again in %g s", exc, self._retry)
                delay = self._retry
                self._retry = min(self._retry * 2, RETRY_MAX)
            except Exception:  # a bug must cost one round, never the bridge
                log.exception("slurm: internal error; trying again in %g s", self._retry)
                delay = self._retry
                self._retry = min(self._retry * 2, RETRY_MAX)
            wait = next_reconcile - loop.time()
            if delay is not None:
                wait = min(wait, delay)
            self._wake.clear()
            if wait > 0 and not (self.wishes and delay is None):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _read(self, names: list[str] | None) -> dict[str, SlurmNode]:
        where = hostlist.collect_hostlist(names) if names else None
        out = await run_async(self.commands.sinfo_argv(where), self.commands.timeout)
        return parse_sinfo(out)

    async def _settle(self) -> float | None:
        """One pass over the wishes; returns when to look again at those still waiting
        (None if none is)."""
        pending = dict(self.wishes)
        nodes = await self._read(sorted(pending))
        resume: list[str] = []
        drains: dict[str, list[str]] = {}
        wait: float | None = None
        for name, wish in pending.items():
            verdict = self._decide(name, wish, nodes.get(name))
            if verdict == "wait":
                young = time.monotonic() - wish.since < LONG_WAIT_AFTER
                soon = WAIT_SECONDS if young else LONG_WAIT_SECONDS
                wait = soon if wait is None else min(wait, soon)
                continue
            if verdict == "resume":
                resume.append(name)
            elif verdict == "drain":
                drains.setdefault(wish.reason, []).append(name)
            else:
                self._done(name, wish)
        if resume:
            await self._update(self.commands.resume_argv, resume, pending)
            log.info("slurm: resumed %s", hostlist.collect_hostlist(resume))
        for reason, names in drains.items():
            await self._update(
                lambda where, reason=reason: self.commands.drain_argv(where, reason), names, pending
            )
            log.info("slurm: drained %s: %s", hostlist.collect_hostlist(names), reason)
        return wait

    async def _update(
        self, argv: Callable[[str], list[str]], names: list[str], pending: dict[str, Wish]
    ) -> None:
        await run_async(argv(hostlist.collect_hostlist(names)), self.commands.timeout)
        for name in names:
            self._done(name, pending[name])

    def _done(self, name: str, wish: Wish) -> None:
        # Only if no newer wish came meanwhile.
        if self.wishes.get(name) is wish:
            del self.wishes[name]

    def _decide(self, name: str, wish: Wish, node: SlurmNode | None) -> str:
        verdict, note = decide(wish, node, time.monotonic())
        if note == "unknown":
            self._report(name, note, "slurm: %s is not a Slurm node: left alone", name)
        elif note == "never-held":
            self._report(
                name,
                note,
                "slurm: %s was not held when its cleanup ended: is hk's node Epilog set "
                "(docs/slurm.md)?",
                name,
            )
        elif note == "kept" and node is not None:
            log.info("slurm: %s keeps its drain: %s", name, node.reason)
        return verdict

    def _report(self, name: str, what: str, message: str, *args: object) -> None:
        if (name, what) not in self._reported:
            self._reported.add((name, what))
            log.warning(message, *args)

    # -- reconcile ------------------------------------------------------------

    async def _reconcile(self) -> None:
        nodes = await self._read(None)
        hk = self.host.hk
        cluster = self.host.cluster
        busy = hk.housekeeping_ranks()
        now = time.monotonic()
        orphans: dict[tuple[int, int], list[int]] = {}
        adopt: dict[str, list[int]] = {}
        seen: set[str] = set()
        for name, node in nodes.items():
            rank = cluster.rank_of(name)
            if rank is None or name in self.wishes:
                continue
            hold = node.hold
            if hold is not None:
                jobid, uid = hold
                unit = hk.units.get(jobid)
                if rank in busy:
                    continue
                if rank in hk.drains:
                    # Its failure (or an operator's drain) did not reach Slurm yet.
                    self._wish(name, Wish("drain", slurm_reason(hk.drains[rank][0])))
                elif unit is not None and rank in unit.records and unit.records[rank].released:
                    self._wish(name, Wish("resume-hold"))
                elif unit is None:
                    seen.add(name)
                    first = self._orphans_seen.setdefault(name, now)
                    age = now - first
                    if node.reason_time is not None:
                        age = max(age, time.time() - node.reason_time)
                    if age >= self.settings.orphan_grace:
                        orphans.setdefault(hold, []).append(rank)
            elif node.hk_owned and rank not in hk.drains and rank not in busy:
                adopt.setdefault(unprefixed(node.reason), []).append(rank)
            elif rank in hk.drains and not node.drained:
                self._report(
                    name,
                    "undrained",
                    "slurm: %s is drained in hk (%s) but not in Slurm (resumed there, or "
                    "hk stopped before draining it there): hkconsole undrain %s if it is "
                    "fine, else drain it in Slurm",
                    name,
                    hk.drains[rank][0],
                    name,
                )
        for name in set(self._orphans_seen) - seen:
            del self._orphans_seen[name]
        for (jobid, uid), ranks in orphans.items():
            where = cluster.nodelist(ranks)
            log.warning(
                "slurm: %s held for job %d with no housekeeping in hk (was hk down when it "
                "ended?): starting its cleanup",
                where,
                jobid,
            )
            try:
                self.host.start_unit(jobid, uid, ranks)
            except HkError as exc:
                log.error("slurm: cannot start the cleanup of job %d on %s: %s", jobid, where, exc)
        for reason, ranks in adopt.items():
            log.warning(
                "slurm: %s drained by hk in Slurm (%s) with no record in hk: kept drained; "
                "hkconsole undrain resumes it",
                cluster.nodelist(ranks),
                reason,
            )
            try:
                self.host.drain_ranks(set(ranks), reason)
            except HkError as exc:
                log.error("slurm: cannot record the drain of %s: %s", cluster.nodelist(ranks), exc)
        self.reconciled += 1
