"""Fixed, deterministic data for snapshots and screenshots: a moment of `hkconsole demo`.

What the demo shows (hkconsole/demo.py): 64 simulated nodes sim[0-63], release-after
5 s, timeout 2 m, kill-grace 5 s; cleanups take 1-6 s, slow ones and stragglers up to
45 s, a few fail (exit 1, drained) and a few hang until the timeout kills them. Each
unit below is one such job in housekeeping, at the fixed moment T0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hkservice.idset import format_idset, parse_idset
from hkservice.jobid import encode_jobid

T0 = 1_795_000_000.0  # the fixed "now" of every sample
NODES = 64
HOSTLIST = f"sim[0-{NODES - 1}]"
# Where `hkconsole demo` puts its service: a private directory under /tmp.
DEMO_DIR = "/tmp/hk-demo-3kq8wz1r"
ENDPOINT = f"ipc://{DEMO_DIR}/hk.sock"
LABEL = "demo seed 4242"
# Flux-like jobids, as the demo makes them: milliseconds since an instance epoch in the
# top 40 bits, a generator id below; job n of the run is BASE + n.
JOBID_BASE = 9_183_742_615 << 24 | 2_731 << 10


class Job(NamedTuple):
    n: int  # the job's number in the demo run (jobid BASE + n)
    userid: int
    age: float  # seconds since its housekeeping started
    ranks: str
    running: str  # ranks still cleaning
    held: str  # ranks done and not yet released (release-after 5 s)
    failed: str  # ranks whose cleanup failed (drained)
    fate: str  # what the running ranks do: "slow" (a straggler) or "hang"


JOBS = (
    # A 16-node job whose one hung node waits for the 2 m timeout; the rest went back.
    Job(40, 1003, 112.4, "0-15", "7", "", "", "hang"),
    Job(52, 1000, 65.2, "60", "60", "", "", "hang"),
    # A straggler keeps cleaning while its job's other nodes run new jobs.
    Job(61, 1001, 41.7, "16-23", "19", "", "22", "slow"),
    Job(67, 1000, 24.3, "24-27", "25-26", "", "", "slow"),
    Job(70, 1001, 13.6, "56-57", "57", "", "", "slow"),
    Job(73, 1004, 9.2, "32-35", "33", "35", "34", "slow"),
    Job(75, 1005, 4.4, "28-29", "28", "29", "", "ok"),
    Job(76, 1002, 3.1, "30", "30", "", "", "ok"),
    Job(77, 1006, 2.3, "40-55", "40-55", "", "", "ok"),
)

# Drained nodes: failures of the jobs above, an older timeout, an operator's drain.
OLD_TIMEOUT = (31, 31, 96.0)  # rank, job n, seconds ago


def jobid(job: Job) -> int:
    return JOBID_BASE + job.n


def cleanup_seconds(rank: int) -> float:
    """How long a rank's finished cleanup took: 1-6 s, fixed per rank."""
    return 1.0 + (rank * 379 % 5000) / 1000


def reason(n: int, what: str) -> str:
    return f"housekeeping@{encode_jobid(JOBID_BASE + n, 'f58plain')} {what}"


def sample_data() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(service.config, housekeeping.list, resource.status) of the demo at T0."""
    config = {
        "hostlist": HOSTLIST,
        "size": NODES,
        "release-after": 5.0,
        "timeout": 120.0,
        "kill-grace": 5.0,
        "events-endpoint": f"{ENDPOINT}-events",
        "command": [f"{DEMO_DIR}/cleanup.sh"],
    }
    units = []
    drained = []
    for job in JOBS:
        running = parse_idset(job.running)
        held = parse_idset(job.held)
        units.append(
            {
                "jobid": jobid(job),
                "userid": job.userid,
                "t_start": T0 - job.age,
                "ranks": job.ranks,
                "allocated": format_idset(running | held),
                "pending": job.running,
                "failed": job.failed,
            }
        )
        for rank in sorted(parse_idset(job.failed)):
            drained.append(
                {
                    "ranks": str(rank),
                    "reason": reason(job.n, "exit-code: exited 1"),
                    "t": T0 - job.age + cleanup_seconds(rank),
                }
            )
    rank, n, ago = OLD_TIMEOUT
    drained.append(
        {"ranks": str(rank), "reason": reason(n, "timeout: killed TERM after 2m"), "t": T0 - ago}
    )
    drained.append(
        {"ranks": "63", "reason": "bad DIMM B2 [ticket 4711]", "t": T0 - 3600, "by": "alice"}
    )
    status = {
        "hostlist": HOSTLIST,
        "size": NODES,
        "housekeeping": "",
        "drained": drained,
        "offline": "",
        # sim22's cleanup failed in its last runs too (job 61's failure is the latest).
        "flapping": "22",
    }
    return config, {"t_now": T0, "units": units}, status


class Ended(NamedTuple):
    n: int  # the job's number in the demo run
    userid: int
    started: float  # seconds before T0
    ended: float
    ranks: str
    releases: int
    failures: tuple[tuple[str, str], ...] = ()  # (ranks, reason)


# Units that finished before T0: the drain of sim31 is job 31's timeout; job 12's
# failed nodes were undrained since (the demo's admin does that after 2.5 minutes).
ENDED = (
    Ended(74, 1004, 7.9, 1.2, "36-39", 2),
    Ended(72, 1000, 12.5, 4.0, "58-59", 1),
    Ended(69, 1002, 30.3, 19.1, "8-11", 2),
    Ended(31, 1003, 221.0, 90.5, "24-31", 2, (("31", "killed TERM after 2m"),)),
    Ended(20, 1001, 410.2, 401.7, "60-61", 1),
    Ended(12, 1005, 655.0, 640.3, "48-53", 3, (("48-49", "exited 1"), ("52", "killed TERM"))),
)


def sample_history() -> dict[str, Any]:
    """The `housekeeping.history` reply of the demo at T0: newest first."""
    units = []
    for end in ENDED:
        failed = set().union(*(parse_idset(ranks) for ranks, _ in end.failures))
        unit: dict[str, Any] = {
            "jobid": JOBID_BASE + end.n,
            "userid": end.userid,
            "t_start": T0 - end.started,
            "t_end": T0 - end.ended,
            "ranks": end.ranks,
            "failed": format_idset(failed),
            "releases": end.releases,
        }
        if end.failures:
            unit["reasons"] = [{"ranks": r, "reason": why} for r, why in end.failures]
        units.append(unit)
    return {"units": units}


def sample_detail(unit: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]]:
    """A `housekeeping.unit` reply and output lines for a sample unit."""
    job = next(j for j in JOBS if jobid(j) == unit["jobid"])
    running = parse_idset(job.running)
    held = parse_idset(job.held)
    failed = parse_idset(job.failed)
    label = encode_jobid(unit["jobid"])
    detail = []
    lines: list[list[Any]] = []
    for r in sorted(parse_idset(job.ranks)):
        host = f"sim{r}"
        fate = job.fate if r in running else "fail" if r in failed else "ok"
        lines.append([r, "out", f"cleaning {host} for job {label}: {fate}"])
        if r in running:
            state, outcome, t_end = "running", None, None
            if fate == "hang":
                lines.append([r, "err", "waiting on a stuck NFS mount..."])
        else:
            ok = r not in failed
            state = "done" if r in held else "released"
            outcome = {
                "kind": "exit",
                "code": 0 if ok else 1,
                "signal": None,
                "text": "exited 0" if ok else "exited 1",
            }
            t_end = unit["t_start"] + cleanup_seconds(r)
            if ok:
                lines.append([r, "out", "scrubbed /tmp, reset GPUs, checked memory"])
            else:
                lines.append([r, "err", "health check failed: ECC errors on DIMM B2"])
        detail.append(
            {
                "rank": r,
                "hostname": host,
                "state": state,
                "t_start": unit["t_start"],
                "t_end": t_end,
                "outcome": outcome,
            }
        )
    return {**unit, "rank_detail": detail}, lines
