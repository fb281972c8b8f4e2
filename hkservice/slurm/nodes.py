"""Slurm's nodes as hk reads and changes them: one `sinfo` format, hk's drain reasons, and
the `scontrol` updates, for both the service's bridge and the hooks. No asyncio here: the
node Epilog runs at every job's end, and asyncio alone costs it 150 ms of start-up.

Slurm keeps one drain reason per node and a second drain overwrites it, so ownership is
told by the reason alone: hk's reasons start with `hk:`, and hk never resumes or
rewrites a node whose reason does not.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "hk:"
# `sinfo -O` fields: '|' ends each field and the reason comes last, so a reason holding
# '|' is still read whole (a node name or a state cannot hold one).
SINFO_FIELDS = "NodeList:|,StateComplete:|,Timestamp:|,Reason:0"
# How long one scontrol or sinfo may take before it is killed and counted a failure.
DEFAULT_COMMAND_TIMEOUT = 10.0

MAX_JOBID = (1 << 64) - 1
MAX_UID = (1 << 32) - 1
_HOLD = re.compile(r"hk: held for cleanup of job ([0-9]+) \(uid ([0-9]+)\)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


class SlurmError(Exception):
    """A Slurm command failed, timed out or could not be run; the message says which."""


@dataclass(frozen=True)
class SlurmNode:
    name: str
    flags: frozenset[str]
    reason: str
    # When the reason was set (Slurm's clock, whole seconds); None if Slurm has none.
    reason_time: float | None

    @property
    def drained(self) -> bool:
        """DRAIN set: DRAINING (still busy) or DRAINED; either way no new job lands."""
        return "drain" in self.flags

    @property
    def completing(self) -> bool:
        """Its part of a job is still ending: the node's Epilog has not finished."""
        return "completing" in self.flags

    @property
    def hk_owned(self) -> bool:
        return self.drained and owned(self.reason)

    @property
    def hold(self) -> tuple[int, int] | None:
        """(jobid, uid) when drained with the reason hk's node Epilog holds it with."""
        return parse_hold(self.reason) if self.drained else None


def owned(reason: str) -> bool:
    return reason.startswith(PREFIX)


def clean(reason: str) -> str:
    """A reason Slurm can keep and `sinfo` print on one line: controls become spaces."""
    return _CONTROLS.sub(" ", reason).strip()


def hold_reason(jobid: int, uid: int) -> str:
    """The node Epilog's reason: it names the job and its user, so that a start after hk
    was down can begin the cleanup Slurm's controller could not hand over."""
    return f"{PREFIX} held for cleanup of job {jobid} (uid {uid})"


def parse_hold(reason: str) -> tuple[int, int] | None:
    """(jobid, uid) of a hold reason; None for any other reason, or numbers out of range
    (anyone with Slurm's admin rights can write a reason)."""
    match = _HOLD.fullmatch(reason)
    if match is None or len(match.group(1)) > 20 or len(match.group(2)) > 10:
        return None
    jobid, uid = int(match.group(1)), int(match.group(2))
    return (jobid, uid) if jobid <= MAX_JOBID and uid <= MAX_UID else None


def failure_reason(what: str, jobid: int) -> str:
    """`hk: exit-code: exited 1 (job 42)`: how the cleanup failed, after which job."""
    return clean(f"{PREFIX} {what} (job {jobid})")


def drain_reason(reason: str) -> str:
    """An operator's drain made through hk, as Slurm shows it."""
    return clean(f"{PREFIX} {reason}" if reason else f"{PREFIX} drained")


def unprefixed(reason: str) -> str:
    return reason[len(PREFIX) :].strip()


def _timestamp(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_sinfo(text: str) -> dict[str, SlurmNode]:
    """`sinfo -h -N -O SINFO_FIELDS` output by node name; unreadable lines are skipped
    (a node listed once per partition is read once)."""
    nodes: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) != 4:
            continue
        name, state, stamp, reason = (p.strip() for p in parts)
        if not name or " " in name:
            continue
        reason = "" if reason == "none" else reason
        flags = frozenset(f.rstrip("*~#!%$@^-") for f in state.lower().split("+"))
        nodes[name] = SlurmNode(name, flags, reason, _timestamp(stamp))
    return nodes


@dataclass(frozen=True)
class Commands:
    """Where scontrol and sinfo are, and how long each call may take."""

    scontrol: str = "scontrol"
    sinfo: str = "sinfo"
    timeout: float = DEFAULT_COMMAND_TIMEOUT

    def sinfo_argv(self, names: str | None) -> list[str]:
        where = ["-n", names] if names else []
        return [self.sinfo, "-h", "-N", *where, "-O", SINFO_FIELDS]

    def hostnames_argv(self) -> list[str]:
        return [self.sinfo, "-h", "-N", "-o", "%N"]

    def drain_argv(self, names: str, reason: str) -> list[str]:
        return [self.scontrol, "update", f"nodename={names}", "state=drain", f"reason={reason}"]

    def resume_argv(self, names: str) -> list[str]:
        return [self.scontrol, "update", f"nodename={names}", "state=resume"]


def failure(argv: Sequence[str], returncode: int, stderr: str) -> SlurmError:
    said = " ".join(clean(stderr).split())[:300] or f"exit status {returncode}"
    return SlurmError(f"{argv[0]} {argv[1]} failed: {said}")


def run(argv: Sequence[str], timeout: float) -> str:
    """Run one Slurm command to its end within `timeout` seconds; its stdout."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} {argv[1]} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise SlurmError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        raise failure(argv, done.returncode, done.stderr)
    return done.stdout


def hostnames(commands: Commands) -> list[str]:
    """Every node Slurm knows, once each, in Slurm's order."""
    names = run(commands.hostnames_argv(), commands.timeout).split()
    return list(dict.fromkeys(names))
