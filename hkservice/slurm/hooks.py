"""Slurm's two hooks, installed as commands by the package (see docs/slurm.md).

`hk-slurm-epilog` is the node `Epilog`: it holds its own node (drains it with hk's hold
reason, unless a drain is already set) and exits, so the job completes at once while the
node stays out of the scheduler until hk has cleaned it. It does not talk to hk at all.

`hk-slurm-epilog-slurmctld` is `EpilogSlurmctld`: it hands the job's nodes to hk
(`housekeeping.start`). It always exits 0: if hk is down or slow, the nodes stay held and
hk's reconcile starts their cleanup when it is back.

Both are bounded in time (each Slurm command and each request has a timeout), so a slow
slurmctld or a hung hk can never hang Slurm's job completion.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from hkservice.slurm.nodes import (
    DEFAULT_COMMAND_TIMEOUT,
    Commands,
    SlurmError,
    hold_reason,
    parse_sinfo,
    run,
)

DEFAULT_CONFIG = Path("/etc/hk/hk.toml")
# Slurm runs its hooks with no search path set: where Slurm's commands usually are.
SLURM_BIN_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/slurm/bin", "/bin")
REQUEST_TIMEOUT = 5.0


def _say(prog: str, message: str) -> None:
    """To stderr, and to syslog: Slurm does not keep what its hooks print."""
    print(f"{prog}: {message}", file=sys.stderr)
    try:
        import syslog

        syslog.openlog(prog)
        syslog.syslog(syslog.LOG_WARNING, message)
    except OSError:
        pass


def _find(command: str) -> str:
    """A bare command name looked up in PATH, then where Slurm is usually installed."""
    if "/" in command:
        return command
    path = os.pathsep.join([os.environ.get("PATH", ""), *SLURM_BIN_DIRS])
    return shutil.which(command, path=path) or command


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "")
    return int(text) if text.isascii() and text.isdigit() else None


def epilog(argv: Sequence[str] | None = None) -> int:
    prog = "hk-slurm-epilog"
    parser = argparse.ArgumentParser(prog=prog, description="Slurm node Epilog: hold the node")
    parser.add_argument("--scontrol", default="scontrol")
    parser.add_argument("--sinfo", default="sinfo")
    parser.add_argument("--timeout", type=float, default=DEFAULT_COMMAND_TIMEOUT)
    args = parser.parse_args(argv)
    node = os.environ.get("SLURMD_NODENAME", "")
    jobid = _env_int("SLURM_JOB_ID")
    uid = _env_int("SLURM_JOB_UID")
    if not node or jobid is None or uid is None:
        _say(prog, "SLURMD_NODENAME, SLURM_JOB_ID or SLURM_JOB_UID unset: not run by slurmd?")
        return 0
    commands = Commands(_find(args.scontrol), _find(args.sinfo), args.timeout)
    try:
        state = parse_sinfo(run(commands.sinfo_argv(node), commands.timeout)).get(node)
        if state is not None and state.drained:
            # Already out of the scheduler: an admin's reason (or hk's) is kept, and hk
            # will not resume a node whose reason is not its hold.
            return 0
        run(commands.drain_argv(node, hold_reason(jobid, uid)), commands.timeout)
    except SlurmError as exc:
        # Exiting non-zero makes Slurm drain the node itself ("Epilog error"): held
        # either way, never handed out uncleaned.
        _say(prog, f"could not hold {node} for job {jobid}: {exc}")
        return 1
    return 0


def _endpoint(args: argparse.Namespace) -> str | None:
    if args.endpoint:
        return str(args.endpoint)
    if os.environ.get("HK_ENDPOINT"):
        return os.environ["HK_ENDPOINT"]
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is None:
        return None
    # Only the endpoint is needed: no validation of the rest, and no sinfo call for a
    # hostlist taken from Slurm.
    import tomllib

    with open(path, "rb") as fh:
        endpoint = tomllib.load(fh).get("service", {}).get("endpoint")
    return endpoint if isinstance(endpoint, str) else None


def epilog_slurmctld(argv: Sequence[str] | None = None) -> int:
    prog = "hk-slurm-epilog-slurmctld"
    parser = argparse.ArgumentParser(
        prog=prog, description="Slurm EpilogSlurmctld: hand the job's nodes to hk"
    )
    parser.add_argument(
        "--config", type=Path, help=f"hk's service config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--endpoint", help="hk's endpoint (default: $HK_ENDPOINT, or the config's)")
    parser.add_argument("--key", help="CURVE secret key file, for a tcp endpoint ($HK_KEY)")
    parser.add_argument("--server-key", help="the service's public key file ($HK_SERVER_KEY)")
    parser.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT)
    args = parser.parse_args(argv)
    jobid = _env_int("SLURM_JOB_ID")
    uid = _env_int("SLURM_JOB_UID")
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    if jobid is None or uid is None or not nodelist:
        _say(prog, "SLURM_JOB_ID, SLURM_JOB_UID or SLURM_JOB_NODELIST unset: not run by slurmctld?")
        return 0
    try:
        handed = _hand_over(args, jobid, uid, nodelist)
    except Exception as exc:  # never fail Slurm's job completion: the nodes stay held
        _say(
            prog,
            f"job {jobid} on {nodelist} not handed to hk ({exc}); its nodes stay held and hk "
            "starts their cleanup when it is back",
        )
        return 0
    if handed:
        _say(prog, handed)
    return 0


def _hand_over(args: argparse.Namespace, jobid: int, uid: int, nodelist: str) -> str:
    from hkconsole.client import Client, ServiceError, curve_keys
    from hkservice.cluster import Cluster, TargetError
    from hkservice.idset import format_idset

    keys = curve_keys(args.key, args.server_key)
    with Client(_endpoint(args), timeout=args.timeout, keys=keys) as client:
        cluster = Cluster(client.call("service.config")["hostlist"])
        try:
            ranks = cluster.parse_targets(nodelist, strict=True)
            note = ""
        except TargetError as exc:
            ranks = cluster.parse_targets(nodelist, strict=False)
            note = f"job {jobid}: {exc}: only its other nodes are handed to hk"
        if not ranks:
            return note
        params = {"jobid": jobid, "ranks": format_idset(ranks), "userid": uid}
        try:
            client.call("housekeeping.start", params)
        except ServiceError as exc:
            if exc.code != "EEXIST":
                raise
            # hk's reconcile got there first (it was starting as the job ended).
    return note
