"""What the console knows of the service: pure state, no Textual, no sockets.

It takes full snapshots (`housekeeping.list`, `resource.status`) and events, and says
which units changed and which nodes' rows changed (`take_dirty_ranks`), so the view can
apply a keyed diff instead of rebuilding tables: with 16,384 nodes, an event touches the
few rows of the ranks it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hkconsole.tables import Finished, Unit
from hkservice.cluster import Cluster
from hkservice.idset import parse_idset

NODE_STATES = ("idle", "housekeeping", "draining", "drained", "offline")


def offline_since(entries: Any) -> dict[int, float]:
    """rank -> since when its node agent is away, from `resource.status` (entries that
    do not read as {ranks, t} are left out)."""
    since: dict[int, float] = {}
    for entry in entries if isinstance(entries, list) else ():
        try:
            ranks, t = parse_idset(entry["ranks"]), float(entry["t"])
        except (KeyError, TypeError, ValueError):
            continue
        since.update(dict.fromkeys(ranks, t))
    return since


@dataclass
class Drain:
    reason: str
    t: float
    # The operator who drained (or whose kill did); None for the service's own drains.
    by: str | None = None

    @classmethod
    def from_wire(cls, entry: Mapping[str, Any]) -> Drain:
        by = entry.get("by")
        return cls(entry["reason"], float(entry["t"]), by if isinstance(by, str) and by else None)


@dataclass
class ConsoleModel:
    cluster: Cluster | None = None
    config: dict[str, Any] = field(default_factory=dict)
    units: dict[int, Unit] = field(default_factory=dict)
    drains: dict[int, Drain] = field(default_factory=dict)
    offline: set[int] = field(default_factory=set)
    # Nodes failing run after run (`resource.status` flapping).
    flapping: set[int] = field(default_factory=set)
    # Node agents: whether each node has its own, and since when the away ones are.
    agents: bool = False
    offline_since: dict[int, float] = field(default_factory=dict)
    last_seq: int | None = None
    _wire_forms: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    # rank -> jobids of the units holding it, kept up to date by every change.
    _holders: dict[int, set[int]] = field(default_factory=dict)
    # Ranks whose node row may have changed since the view last asked.
    _dirty_ranks: set[int] = field(default_factory=set)
    # Units changed since the console last took them (`take_changes`).
    _changed: set[int] = field(default_factory=set)
    # Recently finished units (`housekeeping.history`), newest first.
    finished: dict[int, Finished] = field(default_factory=dict)
    # Why there is no history, when the service would not give it.
    history_error: str = ""
    _finished_changed: set[int] = field(default_factory=set)
    # counts(), kept until the units or drains change: the header asks every second,
    # and summing over 10,000 units each time was a tenth of the idle console's cost.
    _counts: dict[str, int] | None = None

    # -- snapshots ----------------------------------------------------------

    def set_config(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        if self.cluster is None or self.cluster.text != config["hostlist"]:
            self.cluster = Cluster(config["hostlist"])

    def apply_list(self, result: Mapping[str, Any]) -> set[int]:
        """Replace the units; return the jobids added, removed or changed.

        A resync of 10,000 units where few changed must stay cheap: a unit whose wire
        form is the same as last time keeps its parsed view.
        """
        self._counts = None
        fresh: dict[int, Unit] = {}
        wire_forms: dict[int, tuple[Any, ...]] = {}
        changed: set[int] = set()
        for wire in result["units"]:
            jobid = int(wire["jobid"])
            form = (wire["allocated"], wire["pending"], wire.get("failed", ""), wire.get("stuck"))
            wire_forms[jobid] = form
            known = self.units.get(jobid)
            if known is not None and self._wire_forms.get(jobid) == form:
                fresh[jobid] = known
            else:
                fresh[jobid] = Unit.from_wire(wire)
                changed.add(jobid)
        changed |= set(self.units) - set(fresh)
        for jobid in changed:
            old = self.units.get(jobid)
            new = fresh.get(jobid)
            before = old.allocated if old is not None else set()
            after = new.allocated if new is not None else set()
            # Only ranks whose holding changed are dirty: a unit parsed again after an
            # event (its wire form is unknown then) often holds just what it held.
            self._unhold(jobid, before - after)
            self._hold(jobid, after - before)
        self.units = fresh
        self._wire_forms = wire_forms
        self._changed |= changed
        return changed

    def apply_status(self, status: Mapping[str, Any]) -> None:
        self._counts = None
        drains: dict[int, Drain] = {}
        for entry in status["drained"]:
            for rank in parse_idset(entry["ranks"]):
                drains[rank] = Drain.from_wire(entry)
        offline = parse_idset(status.get("offline", ""))
        flapping = parse_idset(status.get("flapping") or "")
        since = offline_since(status.get("offline_since"))
        old = self.drains
        self._dirty_ranks |= {r for r in old.keys() | drains.keys() if old.get(r) != drains.get(r)}
        self._dirty_ranks |= (offline ^ self.offline) | (flapping ^ self.flapping)
        was = self.offline_since
        self._dirty_ranks |= {r for r in was.keys() | since.keys() if was.get(r) != since.get(r)}
        self.drains = drains
        self.offline = offline
        self.flapping = flapping
        self.agents = status.get("agents") is True
        self.offline_since = since

    def apply_history(self, result: Mapping[str, Any]) -> bool:
        """Replace the finished units; whether any came or went."""
        fresh: dict[int, Finished] = {}
        units = result.get("units")
        for wire in units if isinstance(units, list) else ():
            try:
                entry = Finished.from_wire(wire)
            except (KeyError, TypeError, ValueError):
                continue  # hostile or garbled: that entry is not shown, the rest is
            fresh.setdefault(entry.jobid, entry)
        old = self.finished
        changed = {j for j in fresh.keys() | old.keys() if fresh.get(j) != old.get(j)}
        self.finished = fresh
        self.history_error = ""
        self._finished_changed |= changed
        return bool(changed)

    def take_finished_changes(self) -> set[int]:
        """The finished units added or gone since the last call."""
        changed, self._finished_changed = self._finished_changed, set()
        return changed

    # -- events -------------------------------------------------------------

    def apply_event(self, topic: str, body: Mapping[str, Any]) -> tuple[set[int], bool]:
        """Apply one event; returns (changed jobids, whether a resync is needed)."""
        self._counts = None
        seq = body.get("seq")
        gap = isinstance(seq, int) and self.last_seq is not None and seq != self.last_seq + 1
        if isinstance(seq, int):
            self.last_seq = seq
        changed: set[int] = set()
        if isinstance(body.get("jobid"), int):
            self._wire_forms.pop(body["jobid"], None)
        if topic == "housekeeping.started":
            unit = Unit.from_wire(body)
            old = self.units.get(unit.jobid)
            if old is not None:
                self._unhold(old.jobid, old.allocated)
            self.units[unit.jobid] = unit
            self._hold(unit.jobid, unit.allocated)
            changed.add(unit.jobid)
        elif topic == "housekeeping.finished":
            held = self.units.get(int(body["jobid"]))
            if held is not None:
                unit = held
                rank = int(body["rank"])
                unit.pending.discard(rank)
                outcome = body.get("outcome") or {}
                if not (outcome.get("kind") == "exit" and outcome.get("code") == 0):
                    unit.failed.add(rank)
                if rank in unit.stuck:
                    # A rank that ended is no longer stuck.
                    self.units[unit.jobid] = unit._replace(stuck=unit.stuck - {rank})
                changed.add(unit.jobid)
        elif topic == "housekeeping.stuck":
            stuck = self.units.get(int(body["jobid"]))
            if stuck is not None:
                ranks = frozenset(parse_idset(body["ranks"]) & stuck.pending)
                self.units[stuck.jobid] = stuck._replace(stuck=stuck.stuck | ranks)
                changed.add(stuck.jobid)
        elif topic == "housekeeping.released":
            releasing = self.units.get(int(body["jobid"]))
            if releasing is not None:
                released = releasing.allocated & parse_idset(body["ranks"])
                self._unhold(releasing.jobid, released)
                releasing.allocated.difference_update(released)
                changed.add(releasing.jobid)
        elif topic == "housekeeping.ended":
            ended = self.units.pop(int(body["jobid"]), None)
            if ended is not None:
                self._unhold(ended.jobid, ended.allocated)
                changed.add(ended.jobid)
        elif topic == "resource.drained":
            for rank in parse_idset(body["ranks"]):
                self.drains.setdefault(rank, Drain.from_wire(body))
                self._dirty_ranks.add(rank)
        elif topic == "resource.undrained":
            for rank in parse_idset(body["ranks"]):
                self.drains.pop(rank, None)
                self._dirty_ranks.add(rank)
        self._changed |= changed
        return changed, gap

    def _hold(self, jobid: int, ranks: set[int]) -> None:
        for rank in ranks:
            self._holders.setdefault(rank, set()).add(jobid)
        self._dirty_ranks |= ranks

    def _unhold(self, jobid: int, ranks: set[int]) -> None:
        for rank in ranks:
            holding = self._holders.get(rank)
            if holding is not None:
                holding.discard(jobid)
                if not holding:
                    del self._holders[rank]
        self._dirty_ranks |= ranks

    def take_changes(self) -> set[int]:
        """The jobids added, changed or removed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def still_running(self, jobid: int) -> bool:
        """Whether the unit has commands running (what a kill hits)."""
        unit = self.units.get(jobid)
        return unit is not None and bool(unit.pending)

    def running_on(self, ranks: set[int]) -> dict[int, set[int]]:
        """jobid -> its ranks among `ranks` still running (what a kill there hits)."""
        hits: dict[int, set[int]] = {}
        for jobid in sorted({j for r in ranks for j in self._holders.get(r, ())}):
            unit = self.units.get(jobid)
            if unit is not None and unit.pending & ranks:
                hits[jobid] = unit.pending & ranks
        return hits

    def take_dirty_ranks(self) -> set[int]:
        """The ranks whose node row may have changed since the last call."""
        dirty, self._dirty_ranks = self._dirty_ranks, set()
        return dirty

    # -- derived views ------------------------------------------------------

    def holders(self) -> Mapping[int, set[int]]:
        """rank -> jobids of the units holding it (read-only: the model keeps it)."""
        return self._holders

    def node_state(self, rank: int) -> str:
        # As `hkconsole nodes`: a drain (and its reason) outranks being unreachable.
        if rank in self.drains:
            return "draining" if rank in self._holders else "drained"
        if rank in self.offline:
            return "offline"
        return "housekeeping" if rank in self._holders else "idle"

    def node_counts(self, size: int) -> dict[str, int]:
        """How many of the `size` nodes are in each state (as `node_state` says)."""
        holding = self._holders.keys()
        drains = self.drains.keys()
        counts = {
            "draining": len(drains & holding),
            "drained": len(drains - holding),
            "offline": len(self.offline - drains),
            "housekeeping": len(holding - drains - self.offline),
        }
        counts["idle"] = size - sum(counts.values())
        return {state: counts[state] for state in NODE_STATES}

    def counts(self) -> dict[str, int]:
        if self._counts is None:
            self._counts = self._count()
        return self._counts

    def _count(self) -> dict[str, int]:
        return {
            "units": len(self.units),
            "housekeeping": len(self._holders),
            "drained": len(self.drains),
            "failed": sum(len(u.failed) for u in self.units.values()),
            "stuck": sum(len(u.stuck) for u in self.units.values()),
        }
