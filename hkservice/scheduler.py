"""Scheduler bridges: what the service asks of one, and what one may ask of the service.

A bridge keeps a scheduler's view of the nodes in step with housekeeping: it sees every
change the core makes (after it is saved), and it may start a unit or drain nodes the way
a request would. The core knows nothing of any scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from hkservice import core
from hkservice.cluster import Cluster

if TYPE_CHECKING:
    from hkservice.config import Config


class BridgeHost(Protocol):
    """The service, as a bridge sees it."""

    hk: core.Housekeeping
    cluster: Cluster

    def start_unit(self, jobid: int, userid: int, ranks: Iterable[int]) -> None:
        """Start housekeeping of a job's nodes, as housekeeping.start does (HkError)."""
        ...

    def drain_ranks(self, ranks: set[int], reason: str) -> object:
        """Drain ranks, as resource.drain does (HkError)."""
        ...


class Bridge(Protocol):
    async def start(self) -> None:
        """Begin following the scheduler (the service has recovered its state)."""
        ...

    def on_actions(self, actions: list[core.Action]) -> None:
        """Changes the core made and the store saved; must not block."""
        ...

    async def close(self) -> None: ...


def make_bridge(config: Config, host: BridgeHost) -> Bridge | None:
    if config.scheduler is None:
        return None
    from hkservice.slurm.bridge import SlurmBridge

    return SlurmBridge(config.scheduler, host)
