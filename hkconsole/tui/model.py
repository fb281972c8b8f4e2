"""What the console knows of the service: pure state, no Textual, no sockets.

It takes full snapshots (`housekeeping.list`, `resource.status`) and events, and says
which units changed, so the view can apply a keyed diff instead of rebuilding tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hkconsole.tables import Unit
from hkservice.cluster import Cluster
from hkservice.idset import parse_idset


@dataclass
class Drain:
    reason: str
    t: float


@dataclass
class ConsoleModel:
    cluster: Cluster | None = None
    config: dict[str, Any] = field(default_factory=dict)
    units: dict[int, Unit] = field(default_factory=dict)
    drains: dict[int, Drain] = field(default_factory=dict)
    offline: set[int] = field(default_factory=set)
    last_seq: int | None = None
    _wire_forms: dict[int, tuple[Any, ...]] = field(default_factory=dict)

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
        fresh: dict[int, Unit] = {}
        wire_forms: dict[int, tuple[Any, ...]] = {}
        changed: set[int] = set()
        for wire in result["units"]:
            jobid = int(wire["jobid"])
            form = (wire["allocated"], wire["pending"], wire.get("failed", ""))
            wire_forms[jobid] = form
            known = self.units.get(jobid)
            if known is not None and self._wire_forms.get(jobid) == form:
                fresh[jobid] = known
            else:
                fresh[jobid] = Unit.from_wire(wire)
                changed.add(jobid)
        changed |= set(self.units) - set(fresh)
        self.units = fresh
        self._wire_forms = wire_forms
        return changed

    def apply_status(self, status: Mapping[str, Any]) -> None:
        drains: dict[int, Drain] = {}
        for entry in status["drained"]:
            for rank in parse_idset(entry["ranks"]):
                drains[rank] = Drain(entry["reason"], float(entry["t"]))
        self.drains = drains
        self.offline = parse_idset(status.get("offline", ""))

    # -- events -------------------------------------------------------------

    def apply_event(self, topic: str, body: Mapping[str, Any]) -> tuple[set[int], bool]:
        """Apply one event; returns (changed jobids, whether a resync is needed)."""
        seq = body.get("seq")
        gap = isinstance(seq, int) and self.last_seq is not None and seq != self.last_seq + 1
        if isinstance(seq, int):
            self.last_seq = seq
        changed: set[int] = set()
        if isinstance(body.get("jobid"), int):
            self._wire_forms.pop(body["jobid"], None)
        if topic == "housekeeping.started":
            unit = Unit.from_wire(body)
            self.units[unit.jobid] = unit
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
                changed.add(unit.jobid)
        elif topic == "housekeeping.released":
            releasing = self.units.get(int(body["jobid"]))
            if releasing is not None:
                releasing.allocated.difference_update(parse_idset(body["ranks"]))
                changed.add(releasing.jobid)
        elif topic == "housekeeping.ended":
            if self.units.pop(int(body["jobid"]), None) is not None:
                changed.add(int(body["jobid"]))
        elif topic == "resource.drained":
            for rank in parse_idset(body["ranks"]):
                self.drains.setdefault(rank, Drain(body["reason"], float(body["t"])))
        elif topic == "resource.undrained":
            for rank in parse_idset(body["ranks"]):
                self.drains.pop(rank, None)
        return changed, gap

    # -- derived views ------------------------------------------------------

    def holders(self) -> dict[int, list[int]]:
        """rank -> jobids of the units holding it."""
        out: dict[int, list[int]] = {}
        for unit in self.units.values():
            for rank in unit.allocated:
                out.setdefault(rank, []).append(unit.jobid)
        return out

    def node_state(self, rank: int, holders: Mapping[int, list[int]]) -> str:
        if rank in self.offline:
            return "offline"
        if rank in self.drains:
            return "draining" if rank in holders else "drained"
        return "housekeeping" if rank in holders else "idle"

    def counts(self) -> dict[str, int]:
        in_housekeeping: set[int] = set()
        for unit in self.units.values():
            in_housekeeping |= unit.allocated
        return {
            "units": len(self.units),
            "housekeeping": len(in_housekeeping),
            "drained": len(self.drains),
            "failed": sum(len(u.failed) for u in self.units.values()),
        }
