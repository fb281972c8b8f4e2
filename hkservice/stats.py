"""Housekeeping over time: per-node and per-user statistics, flapping nodes, retention.

Every rank's run is saved by the store (`runs`); this module keeps an index of them in
memory, per node and per user, in time order, so that `stats.nodes` over a million runs
is a bisect and a small sort per node instead of a scan of the database (SQLite needs
seconds for percentiles over a million rows). It is loaded once at start, follows the
core's actions, and forgets what [history] keep prunes from the database, in small
batches between requests.

`stats.nodes` and `stats.users` are answered the way /metrics is (hkservice/metrics.py):
what they read is copied on the event loop, and the rows are made and packed in a worker
thread, so the requests that come meanwhile wait a GIL switch interval at most, not for
the whole answer (bench/stats.py, 16,384 nodes: `stats.nodes --since 7d` held the loop
170 ms, now 3.7 ms of its CPU; without a window 12 ms, now 3.3 ms; `stats.users --since
60d` 125 ms with its SQLite query, now 2.5 ms).
The copy is cheap because it is shallow: a node's or user's runs seen by the thread are
never changed while it reads them, a run that ends meanwhile goes into a copy of that
Series (History._writable), and a node row the thread made is kept only if the node's
Series is still the one it read (History._keep_rows); the units counted per user are
read in the thread from a snapshot of the database taken on the loop (Store.snapshot),
so they are those saved when the runs were copied.
"""

from __future__ import annotations

import asyncio
import logging
import math
from array import array
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

from hkservice import core
from hkservice.errors import HkError
from hkservice.protocol import Prepacked, pack
from hkservice.store import Snapshot, Store

log = logging.getLogger("hkservice")

# Rows deleted per prune transaction, and runs read per chunk at start: a few
# milliseconds each, so a request waits at most that long behind one (bench/stats.py).
PRUNE_BATCH = 500
LOAD_CHUNK = 2000
# Runs sorted between requests as the history is made ready after loading, a row being
# worth about as much work as sorting this many runs.
WARM_CHUNK = 50_000
ROW_WORK = 30
PRUNE_EVERY_SECONDS = 60.0
# `stats.nodes|users` requests being answered or waiting their turn: they make their
# rows one after the other, and beyond this many the next is told to try again (a client
# sending thousands must not queue hours of work, nor the memory to hold it).
MAX_STATS_REQUESTS = 8


class Series:
    """Runs in time order: when each ended, how long it took, whether it failed."""

    __slots__ = ("by_duration", "duration", "failed", "failures", "ordered", "t_end")

    def __init__(self) -> None:
        self.t_end = array("d")
        self.duration = array("d")
        self.failed = array("b")
        self.failures = 0
        # The same durations sorted, made when first asked for and kept until a run comes
        # or goes: quantiles over everything kept, the common question, then need no sort
        # (which took most of `stats.nodes` for 16,384 nodes). Never kept up to date run by
        # run: an insertion into a user's million runs moves megabytes.
        self.by_duration: array[float] | None = None
        # False after a run came in older than the last one (loaded from the database
        # while new ones arrive, or the clock stepped back): sorted before the next read.
        self.ordered = True

    def add(self, t_end: float, duration: float, failed: bool) -> None:
        if self.t_end and t_end < self.t_end[-1]:
            self.ordered = False
        self.t_end.append(t_end)
        self.duration.append(duration)
        self.failed.append(failed)
        self.failures += failed
        self.by_duration = None

    def copy(self) -> Series:
        twin = Series()
        twin.t_end, twin.duration, twin.failed = self.t_end[:], self.duration[:], self.failed[:]
        twin.failures, twin.ordered = self.failures, self.ordered
        twin.by_duration = self.by_duration  # replaced, never changed in place
        return twin

    def settle(self) -> None:
        """Put the runs in time order, if one came out of it."""
        if self.ordered:
            return
        order = sorted(range(len(self.t_end)), key=self.t_end.__getitem__)
        for name in ("t_end", "duration", "failed"):
            column = getattr(self, name)
            setattr(self, name, array(column.typecode, (column[i] for i in order)))
        self.ordered = True

    def drop_before(self, t: float) -> int:
        """Drop the runs that ended before `t`; how many there were."""
        self.settle()
        cut = bisect_left(self.t_end, t)
        if cut:
            self.failures -= self.failed[:cut].count(1)
            self.by_duration = None
            del self.t_end[:cut], self.duration[:cut], self.failed[:cut]
        return cut

    def window(self, since: float | None) -> tuple[int, int, Sequence[float]]:
        """(runs, failures, sorted durations) of the runs that ended at or after `since`."""
        if since is None:
            if self.by_duration is None:
                self.by_duration = array("d", sorted(self.duration))
            return len(self.t_end), self.failures, self.by_duration
        self.settle()
        return self.read_window(since)

    def read_window(self, since: float | None) -> tuple[int, int, Sequence[float]]:
        """window(since) changing nothing, as a worker thread must: a bisect if the runs
        are in time order, else a scan of them all (rare: a run that came in behind a
        newer one since the last time something put them in order); the durations are
        sorted anew if they were not already."""
        if since is None:
            durations = self.by_duration
            if durations is None:
                durations = sorted(self.duration)
            return len(self.t_end), self.failures, durations
        if not self.ordered:
            kept = [i for i, t in enumerate(self.t_end) if t >= since]
            failed, duration = self.failed, self.duration
            return len(kept), sum(failed[i] for i in kept), sorted(duration[i] for i in kept)
        start = bisect_left(self.t_end, since)
        return (
            len(self.t_end) - start,
            self.failed[start:].count(1),
            sorted(self.duration[start:]),
        )

    def streak(self) -> int:
        """Failures in a row up to the latest run."""
        self.settle()
        count = 0
        for failed in reversed(self.failed):
            if not failed:
                break
            count += 1
        return count

    def __len__(self) -> int:
        return len(self.t_end)


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values: an actual duration, never a blend."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Failure(NamedTuple):
    t: float
    jobid: int
    reason: str


class History:
    """The runs index, flapping streaks and retention; answers `stats.nodes|users`."""

    def __init__(
        self,
        store: Store,
        hk: core.Housekeeping,
        clock: Callable[[], float],
        *,
        keep: float | None,
        flapping_after: int,
    ) -> None:
        self.store = store
        self.hk = hk
        self.clock = clock
        self.keep = keep
        self.flapping_after = flapping_after
        self.nodes: dict[int, Series] = {}
        self.users: dict[int, Series] = {}
        self.last_failure: dict[int, Failure] = {}
        # Failures in a row, per node, up to its latest run.
        self.streaks: dict[int, int] = {}
        # How much of the saved history is loaded (0 to 1), None once it all is.
        self._loaded: float | None = 0.0
        # Each node's `stats.nodes` row over everything kept (as if not stuck: that moves
        # with time), until a run of it comes or goes: most of 16,384 nodes' rows stay
        # the same from one request to the next, and making them took 60 ms of the loop.
        self._node_rows: dict[int, dict[str, Any]] = {}
        # `stats.nodes|users` requests taken and not yet answered (MAX_STATS_REQUESTS),
        # and the turn they take one after the other, as pruning does.
        self._asked = 0
        self._turn = asyncio.Lock()
        # The nodes' or users' Series a worker thread is reading, None when none is: the
        # loop changes a copy of any of them instead (_writable).
        self._reading_nodes: dict[int, Series] | None = None
        self._reading_users: dict[int, Series] | None = None

    # -- following the service ----------------------------------------------

    async def load(self) -> None:
        """Read the saved runs into the index, a chunk at a time, requests going first
        between chunks. Runs that end meanwhile are added as they come (observe)."""
        last = self.store.last_run()
        after = 0
        while after < last:
            chunk = self.store.runs(after, last, LOAD_CHUNK)
            if not chunk:
                break
            for _, t_end, rank, duration, userid, jobid, reason in chunk:
                self._add(t_end, rank, duration, userid, jobid, reason)
            after = chunk[-1][0]
            self._loaded = after / last
            if after < last:
                await asyncio.sleep(0)
        # Loaded runs came in behind newer ones: the streaks are counted again, in order.
        self.streaks = {r: n for r, node in self.nodes.items() if (n := node.streak())}
        self._node_rows.clear()
        # The rows of `stats.nodes` made now, and users' durations sorted, requests going
        # first every WARM_CHUNK runs or so, rather than all by the first request (which
        # held the loop 0.2 s for 16,384 nodes; as long for 200 users' million runs). A
        # small history is done at once, with no request seeing it half made.
        work = 0
        for rank in list(self.nodes):
            self._node_rows[rank] = self._node_row(rank)
            work += len(self.nodes[rank]) + ROW_WORK
            if work >= WARM_CHUNK:
                work = 0
                await asyncio.sleep(0)
        for user in list(self.users.values()):
            user.window(None)
            work += len(user)
            if work >= WARM_CHUNK:
                work = 0
                await asyncio.sleep(0)
        self._loaded = None

    def _add(
        self,
        t_end: float,
        rank: int,
        duration: float,
        userid: int,
        jobid: int,
        reason: str | None,
    ) -> None:
        """One run; `reason` is None for a success, how it failed otherwise."""
        failed = reason is not None
        self._node_rows.pop(rank, None)
        node = _writable(self.nodes, rank, self._reading_nodes)
        node.add(t_end, duration, failed)
        user = _writable(self.users, userid, self._reading_users)
        user.add(t_end, duration, failed)
        if failed:
            self.streaks[rank] = self.streaks.get(rank, 0) + 1
            last = self.last_failure.get(rank)
            if last is None or t_end >= last.t:
                self.last_failure[rank] = Failure(t_end, jobid, reason)
        else:
            self.streaks.pop(rank, None)

    def observe(self, actions: Iterable[core.Action]) -> None:
        for action in actions:
            if isinstance(action, core.RankFinished):
                outcome = action.outcome
                self._add(
                    action.t_end,
                    action.rank,
                    max(0.0, action.t_end - action.t_start),
                    action.userid,
                    action.jobid,
                    None if outcome.ok else outcome.describe(),
                )

    def flapping(self) -> set[int]:
        """Nodes whose last `flapping-after` runs all failed."""
        return _flapping(self.streaks, self.flapping_after)

    def stuck_ranks(self) -> dict[int, int]:
        """Rank -> userid of each rank running past warn-after now."""
        return {
            r: unit.userid for unit in self.hk.units.values() if unit.stuck for r in unit.pending
        }

    # -- retention ----------------------------------------------------------

    def forget_before(self, cutoff: float) -> None:
        """Forget the runs that ended before `cutoff`; in the turn of `stats.nodes|users`
        requests, so that no thread reads what this changes."""
        assert self._reading_nodes is None and self._reading_users is None
        rows = self._node_rows
        for rank, series in list(self.nodes.items()):
            if series.drop_before(cutoff):
                rows.pop(rank, None)
                if not series:
                    del self.nodes[rank]
        for userid, series in list(self.users.items()):
            series.drop_before(cutoff)
            if not series:
                del self.users[userid]
        for rank in [r for r, f in self.last_failure.items() if f.t < cutoff]:
            del self.last_failure[rank]  # its run was dropped: so was its row
        # A streak outlives its runs: a node that failed its last three runs is still
        # flapping, however long ago they were, until it succeeds once.

    async def run(self) -> None:
        """Load the saved history, then keep it pruned."""
        await self.load()
        await self.keep_pruned()

    async def keep_pruned(self) -> None:
        """Prune what is older than [history] keep, a batch at a time, for ever."""
        if self.keep is None:
            return
        every = max(0.1, min(PRUNE_EVERY_SECONDS, self.keep / 4))
        while True:
            cutoff = self.clock() - self.keep
            async with self._turn:
                self.forget_before(cutoff)
            try:
                while self.store.prune(cutoff, PRUNE_BATCH):
                    await asyncio.sleep(0)  # requests waiting go first
            except Exception as exc:  # sqlite3.Error: a full disk, say; try again later
                log.error("could not prune the history in %s: %s", self.store.path, exc)
            await asyncio.sleep(every)

    # -- requests -----------------------------------------------------------

    def _check_loaded(self) -> None:
        if self._loaded is not None:
            raise HkError(
                "EAGAIN",
                f"the history is still loading ({self._loaded:.0%} read): try again shortly",
            )

    def _window(self, params: dict[str, Any]) -> float | None:
        """The request's window in seconds; None for everything kept."""
        self._check_loaded()
        window = params.get("window")
        if window is None:
            return None
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise HkError("EPROTO", "parameter 'window' has the wrong type")
        if not 0 < window < math.inf:
            raise HkError("EINVAL", f"window {window!r} must be a number of seconds above 0")
        return window

    def _take_request(self) -> None:
        """Count a `stats.nodes|users` request in (MAX_STATS_REQUESTS), or refuse it;
        the coroutine that answers it counts it out."""
        if self._asked >= MAX_STATS_REQUESTS:
            raise HkError(
                "EAGAIN",
                f"{self._asked} stats.nodes|users requests are being answered: try again shortly",
            )
        self._asked += 1

    def node_stats(self, params: dict[str, Any]) -> Awaitable[Prepacked]:
        """Checked now, answered later (the module's docstring)."""
        window = self._window(params)
        only_stuck = _flag(params, "stuck")
        only_flapping = _flag(params, "flapping")
        self._take_request()
        return self._answer_nodes(window, only_stuck, only_flapping)

    async def _answer_nodes(
        self, window: float | None, only_stuck: bool, only_flapping: bool
    ) -> Prepacked:
        try:
            async with self._turn:
                now = self.clock()
                since = None if window is None else now - window
                self._reading_nodes = dict(self.nodes)
                asked = NodesAsked(
                    since,
                    only_stuck,
                    only_flapping,
                    self._reading_nodes,
                    dict(self.last_failure),
                    dict(self.streaks),
                    set(self.stuck_ranks()),
                    self.flapping_after,
                )
                try:
                    if since is None:
                        packed, made = await asyncio.to_thread(
                            _packed_kept_rows, asked, dict(self._node_rows)
                        )
                        self._keep_rows(made, asked.nodes)
                    else:
                        packed = await asyncio.to_thread(_packed_window_rows, asked)
                finally:
                    self._reading_nodes = None
        finally:
            self._asked -= 1
        return Prepacked(
            {"t_now": now, "since": since, "flapping_after": self.flapping_after},
            "nodes",
            packed,
        )

    def _keep_rows(self, made: dict[int, dict[str, Any]], read: dict[int, Series]) -> None:
        """Keep the rows a thread made from the nodes' Series it `read`, but those of
        nodes a run of which came or went meanwhile (their Series is another now)."""
        for rank, row in made.items():
            if self.nodes.get(rank) is read.get(rank):
                self._node_rows[rank] = row

    def _node_row(self, rank: int) -> dict[str, Any]:
        """A node's row over everything kept, as if it were not stuck."""
        series = self.nodes.get(rank)
        runs, failures, durations = (0, 0, ()) if series is None else series.window(None)
        return node_row(
            rank,
            runs,
            failures,
            durations,
            self.last_failure.get(rank),
            self.streaks.get(rank, 0),
            self.flapping_after,
        )

    def user_stats(self, params: dict[str, Any]) -> Awaitable[Prepacked]:
        """Checked now, answered later, in the same turn as `stats.nodes` (the module's
        docstring)."""
        window = self._window(params)
        only_stuck = _flag(params, "stuck")
        self._take_request()
        return self._answer_users(window, only_stuck)

    async def _answer_users(self, window: float | None, only_stuck: bool) -> Prepacked:
        try:
            async with self._turn:
                now = self.clock()
                since = None if window is None else now - window
                stuck: dict[int, int] = {}
                for userid in self.stuck_ranks().values():
                    stuck[userid] = stuck.get(userid, 0) + 1
                userids = set(self.users) | set(stuck)
                if only_stuck:
                    userids &= set(stuck)
                self._reading_users = dict(self.users)
                asked = UsersAsked(since, userids, self._reading_users, stuck)
                try:
                    packed = await asyncio.to_thread(
                        _packed_user_rows, asked, self.store.snapshot()
                    )
                finally:
                    self._reading_users = None
        finally:
            self._asked -= 1
        return Prepacked({"t_now": now, "since": since}, "users", packed)


class NodesAsked(NamedTuple):
    """What a `stats.nodes` request reads, copied on the loop for the thread."""

    since: float | None
    only_stuck: bool
    only_flapping: bool
    nodes: dict[int, Series]  # left alone while the thread reads
    last_failure: dict[int, Failure]
    streaks: dict[int, int]
    stuck: set[int]
    flapping_after: int


def node_row(
    rank: int,
    runs: int,
    failures: int,
    durations: Sequence[float],
    last: Failure | None,
    streak: int,
    flapping_after: int,
) -> dict[str, Any]:
    """A node's row of `stats.nodes`, as if it were not stuck; `durations` sorted."""
    return {
        "rank": rank,
        "runs": runs,
        "failures": failures,
        "p50": quantile(durations, 0.5),
        "p95": quantile(durations, 0.95),
        "max": durations[-1] if durations else None,
        "last_failure": last.t if last else None,
        "last_jobid": last.jobid if last else None,
        "last_reason": last.reason if last else "",
        "streak": streak,
        "flapping": streak >= flapping_after,
        "stuck": False,
    }


def _flapping(streaks: dict[int, int], after: int) -> set[int]:
    return {r for r, n in streaks.items() if n >= after}


def _asked_ranks(asked: NodesAsked) -> list[int]:
    """The ranks a `stats.nodes` request may list, in order."""
    flapping = _flapping(asked.streaks, asked.flapping_after)
    ranks = set(asked.nodes) | asked.stuck | flapping
    if asked.only_stuck:
        ranks &= asked.stuck
    if asked.only_flapping:
        ranks &= flapping
    return sorted(ranks)


def _packed_kept_rows(
    asked: NodesAsked, kept: dict[int, dict[str, Any]]
) -> tuple[bytes, dict[int, dict[str, Any]]]:
    """The rows over everything kept, packed, from the `kept` ones (most are), and the
    rows made here, to keep; in a worker thread, reading only `asked` and `kept`."""
    made: dict[int, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for rank in _asked_ranks(asked):
        row = kept.get(rank)
        if row is None:
            series = asked.nodes.get(rank)
            runs, failures, durations = (0, 0, ()) if series is None else series.read_window(None)
            last = asked.last_failure.get(rank)
            streak = asked.streaks.get(rank, 0)
            row = made[rank] = node_row(
                rank, runs, failures, durations, last, streak, asked.flapping_after
            )
        if rank in asked.stuck:
            rows.append({**row, "stuck": True})
        elif row["runs"] or row["flapping"]:
            rows.append(row)  # never changed once made: shared by the replies
    return pack(rows), made


def _packed_window_rows(asked: NodesAsked) -> bytes:
    """The rows of a `--since` request, packed; in a worker thread, reading only `asked`."""
    since = asked.since
    assert since is not None
    rows: list[dict[str, Any]] = []
    for rank in _asked_ranks(asked):
        series = asked.nodes.get(rank)
        runs, failures, durations = (0, 0, ()) if series is None else series.read_window(since)
        streak = asked.streaks.get(rank, 0)
        stuck = rank in asked.stuck
        if not (runs or stuck or streak >= asked.flapping_after):
            continue
        last = asked.last_failure.get(rank)
        if last is not None and last.t < since:
            last = None
        row = node_row(rank, runs, failures, durations, last, streak, asked.flapping_after)
        if stuck:
            row["stuck"] = True
        rows.append(row)
    return pack(rows)


class UsersAsked(NamedTuple):
    """What a `stats.users` request reads, copied on the loop for the thread."""

    since: float | None
    userids: set[int]
    users: dict[int, Series]  # left alone while the thread reads
    stuck: dict[int, int]  # userid -> its ranks stuck now


def _packed_user_rows(asked: UsersAsked, saved: Snapshot) -> bytes:
    """The rows of a `stats.users` request, packed; in a worker thread, reading only
    `asked` and `saved`. The one thing it writes is a Series' sorted durations
    (window(None)), which are those of the runs it reads: they never change."""
    try:
        units = saved.units_by_user(asked.since)
    finally:
        saved.done()
    since = asked.since
    rows: list[dict[str, Any]] = []
    for userid in sorted(asked.userids):
        series = asked.users.get(userid)
        if series is None:
            runs, failures, durations = 0, 0, ()
        elif since is None:
            runs, failures, durations = series.window(None)
        else:
            runs, failures, durations = series.read_window(since)
        stuck = asked.stuck.get(userid, 0)
        if not runs and not stuck:
            continue
        rows.append(
            {
                "userid": userid,
                "units": units.get(userid, 0),
                "ranks": runs,
                "failures": failures,
                "total": math.fsum(durations),
                "p95": quantile(durations, 0.95),
                "stuck": stuck,
            }
        )
    return pack(rows)


def _writable(series_of: dict[int, Series], key: int, reading: dict[int, Series] | None) -> Series:
    """The Series of `key`, to add a run to: a copy of it if a worker thread is
    `reading` it."""
    series = series_of.get(key)
    if series is None:
        series = series_of[key] = Series()
    elif reading is not None and reading.get(key) is series:
        series = series_of[key] = series.copy()
    return series


def _flag(params: dict[str, Any], key: str) -> bool:
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HkError("EPROTO", f"parameter '{key}' has the wrong type")
    return value
