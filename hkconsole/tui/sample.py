"""Fixed, deterministic data for snapshots, screenshots and the console benchmark."""

from __future__ import annotations

import random
from typing import Any

from hkservice.idset import format_idset, parse_idset
from hkservice.jobid import encode_jobid

T0 = 1_795_000_000.0  # the fixed "now" of every sample


def sample_data(
    nodes: int = 64, units: int = 9, seed: int = 7
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(service.config, housekeeping.list, resource.status) of a busy cluster."""
    rng = random.Random(seed)
    hostlist = f"node[0-{nodes - 1}]"
    config = {
        "hostlist": hostlist,
        "size": nodes,
        "release-after": 30.0,
        "timeout": 900.0,
        "kill-grace": 90.0,
        "events-endpoint": "",
        "command": ["/etc/hk/housekeeping.sh"],
    }
    free = list(range(nodes))
    wire_units: list[dict[str, Any]] = []
    for i in range(units):
        size = min(len(free), rng.choice((1, 2, 4, 4, 8, 16)))
        if size == 0:
            break
        start = rng.randrange(0, max(1, len(free) - size + 1))
        ranks = free[start : start + size]
        del free[start : start + size]
        pending = set(ranks[: max(1, size // 2)]) if i % 3 else set(ranks)
        allocated = set(ranks) if i % 2 else pending | set(ranks[-1:])
        failed = {ranks[-1]} if i % 4 == 1 and size > 1 else set()
        allocated |= failed
        wire_units.append(
            {
                "jobid": (8_123_456_789 + i * 7919) << 24 | (i * 131),
                "userid": 1000 + i % 5,
                "t_start": T0 - (30 + i * 97 + (700 if i == 2 else 0)),
                "ranks": format_idset(ranks),
                "allocated": format_idset(allocated),
                "pending": format_idset(pending),
                "failed": format_idset(failed),
            }
        )
    drained = [
        {"ranks": format_idset(u["failed"].split(",")[:1]), "reason": "", "t": T0 - 50}
        for u in wire_units
        if u["failed"]
    ]
    for entry, unit in zip(drained, [u for u in wire_units if u["failed"]], strict=True):
        label = encode_jobid(unit["jobid"], "f58plain")
        entry["reason"] = f"housekeeping@{label} exit-code: exited 1"
    drained.append({"ranks": str(nodes - 1), "reason": "bad DIMM B2 [ticket 4711]", "t": T0 - 3600})
    status = {
        "hostlist": hostlist,
        "size": nodes,
        "housekeeping": "",
        "drained": drained,
        "offline": "",
    }
    return config, {"t_now": T0, "units": wire_units}, status


def sample_detail(unit: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]]:
    """A `housekeeping.unit` reply and output lines for a sample unit."""
    ranks = sorted(parse_idset(unit["ranks"]))
    pending = parse_idset(unit["pending"])
    failed = parse_idset(unit["failed"])
    allocated = parse_idset(unit["allocated"])
    detail = []
    lines: list[list[Any]] = []
    for r in ranks:
        if r in pending:
            state, outcome, t_end = "running", None, None
        else:
            ok = r not in failed
            state = "done" if r in allocated else "released"
            outcome = {
                "kind": "exit",
                "code": 0 if ok else 1,
                "signal": None,
                "text": "exited 0" if ok else "exited 1",
            }
            t_end = unit["t_start"] + 12.5
        detail.append(
            {
                "rank": r,
                "hostname": f"node{r}",
                "state": state,
                "t_start": unit["t_start"],
                "t_end": t_end,
                "outcome": outcome,
            }
        )
        lines.append([r, "out", f"node{r}: scrubbing /tmp and /dev/shm"])
        if r in failed:
            lines.append([r, "err", f"node{r}: ECC errors on DIMM B2 [x]"])
    return {**unit, "rank_detail": detail}, lines
