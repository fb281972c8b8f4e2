"""The audit log: every start, kill, drain and undrain, with who asked and what it did.

Kept in the state database (store.py's audit table). Who asked is what the service
knows (the peer's uid on ipc, the CURVE key's name on tcp, the role that gave) and, apart
and marked as reported, the user the client says it acts for (SUDO_USER, login name):
the service cannot check that one. Refused requests are recorded too: an attempt to
kill from the read-only endpoint is worth knowing about.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from hkservice import core
from hkservice.auth import Access, Caller, Role, access_of
from hkservice.cluster import Cluster
from hkservice.idset import parse_idset
from hkservice.store import Store
from hkservice.text import acting

log = logging.getLogger("hkservice")

# A record's parameters are cut to this (a request may carry up to 1 MiB of them).
PARAMS_MAX = 2048
DRAIN = "resource.drain"
KILL = "housekeeping.kill"


def audited(method: str) -> bool:
    """Everything but reads: the method table (auth.METHOD_ACCESS) decides."""
    return access_of(method) is not Access.READ


def _params_text(params: Any) -> str:
    text = json.dumps(params, ensure_ascii=False, sort_keys=True, default=repr)
    return text if len(text) <= PARAMS_MAX else text[: PARAMS_MAX - 1] + "…"


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        # t of an operator's drain -> who drained (drains are grouped by (reason, t)).
        self._drained_by: dict[float, str | None] = {}

    def record(
        self, t: float, caller: Caller, method: str, params: Any, ok: bool, effect: str
    ) -> None:
        self.store.add_audit(
            {
                "t": t,
                "method": method,
                "params": _params_text(params),
                "ok": int(ok),
                "effect": effect,
                "role": caller.role.value,
                "who": caller.name,
                "how": caller.how,
                "reported": caller.reported,
            }
        )
        if ok and method == DRAIN:
            self._drained_by[t] = caller.by

    def killer(self, t: float) -> Caller | None:
        """Who asked for the kill recorded at `t`, if it is still in the log."""
        entry = self.store.audit_at(KILL, t)
        if entry is None:
            return None
        reported = entry["reported"]
        return Caller(
            Role(str(entry["role"])),
            str(entry["who"]),
            str(entry["how"]),
            str(reported) if reported else None,
        )

    def record_kill_drain(
        self, t: float, killer: Caller, killed_at: float, params: dict[str, str], nodes: str
    ) -> None:
        """A drain that follows from a kill is the killer's act (their kill cut the
        cleanup short): recorded as theirs, saying so."""
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(killed_at))
        self.record(
            t, killer, DRAIN, params, True, f"drained {nodes}: its cleanup killed ({KILL} {when})"
        )

    def drained_by(self, t: float) -> str | None:
        """Who drained the nodes drained at `t`: None for a drain the service made itself."""
        if t not in self._drained_by:
            entry = self.store.audit_at(DRAIN, t)
            by = None
            if entry is not None:
                reported = entry["reported"]
                by = acting(str(entry["who"]), str(reported) if reported else None)
            self._drained_by[t] = by
        return self._drained_by[t]

    def entries(self, limit: int) -> list[dict[str, Any]]:
        return [
            {**entry, "ok": bool(entry["ok"]), "params": _decoded(str(entry["params"]))}
            for entry in self.store.audit(limit)
        ]


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # cut to PARAMS_MAX
        return text


def effect(method: str, params: dict[str, Any], result: dict[str, Any], cluster: Cluster) -> str:
    """What a successful act changed, in the log's words."""

    def nodes(idset: str) -> str:
        return cluster.nodelist(parse_idset(idset)) if idset else "no node"

    if method == "housekeeping.start":
        return f"started {core.job_label(result['jobid'])} on {nodes(params['ranks'])}"
    if method == "housekeeping.kill":
        return (
            f"sent SIG{core.signal_name(result['signum'])} to {result['ranks']} ranks "
            f"of {result['units']} units"
        )
    if method == DRAIN:
        text = f"drained {nodes(result['drained'])}"
        return text + (f"; {nodes(result['already'])} already drained" if result["already"] else "")
    if method == "resource.undrain":
        return f"undrained {nodes(result['undrained'])}"
    return json.dumps(result, sort_keys=True, default=repr)[:PARAMS_MAX]
