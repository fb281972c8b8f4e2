"""A real Slurm on this machine for tests and benchmarks: munged, slurmctld and N slurmd.

Everything lives under one directory (config, keys, sockets, state, logs) with ports
picked free for this run, so two runs never share a Slurm. The daemons are stopped by
the pids they wrote. Needs root and Debian's slurmctld, slurmd, slurm-client and munge.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("scontrol", "sinfo", "sbatch", "squeue")


def slurm_missing() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    if os.geteuid() != 0:
        return "a real Slurm needs root (slurmd runs jobs as their user)"
    paths = ["/usr/sbin", "/usr/bin", *os.environ.get("PATH", "").split(os.pathsep)]
    search = os.pathsep.join(paths)
    absent = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=search) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} not found; apt-get install " + (
            "slurmctld slurmd slurm-client munge)"
        )
    return None


def _which(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join(["/usr/sbin", "/usr/bin"]))
    if found is None:
        raise RuntimeError(f"{name} not found")
    # Not resolved through the alternatives link: the daemons check their own program
    # name (started as slurmctld-wlm, EpilogSlurmctld silently never runs).
    return found


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class SlurmCluster:
    base: Path
    nodes: int = 4
    epilog: str | None = None
    epilog_slurmctld: str | None = None
    extra_conf: Sequence[str] = ()
    ports: list[int] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment a Slurm client command needs to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def hostlist(self) -> str:
        return f"node[0-{self.nodes - 1}]"

    def node(self, k: int) -> str:
        return f"node{k}"

    def write_conf(self) -> None:
        b = self.base
        ctld, first = self.ports[0], self.ports[1]
        last = first + self.nodes - 1
        lines = [
            "ClusterName=hktest",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={b}/munge/munge.socket",
            f"StateSaveLocation={b}/ctld-state",
            f"SlurmdSpoolDir={b}/spool/%n",
            f"SlurmctldPidFile={b}/slurmctld.pid",
            f"SlurmdPidFile={b}/slurmd-%n.pid",
            f"SlurmctldLogFile={b}/slurmctld.log",
            f"SlurmdLogFile={b}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "LaunchParameters=use_interactive_step",
            # Small jobs of many tests in a row: no waiting between them.
            "MinJobAge=300",
            "SchedulerParameters=sched_interval=1",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MessageTimeout=5",
            *([f"Epilog={self.epilog}"] if self.epilog else []),
            *([f"EpilogSlurmctld={self.epilog_slurmctld}"] if self.epilog_slurmctld else []),
            *self.extra_conf,
            f"NodeName=node[0-{self.nodes - 1}] NodeHostname=localhost NodeAddr=127.0.0.1 "
            f"Port=[{first}-{last}] CPUs=1 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        b = self.base
        for sub in ("munge", "ctld-state", "spool"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "munge").chmod(0o711)
        # One block of consecutive free ports for the slurmd (Port=[P1-P4]).
        self.ports = self._ports()
        self.write_conf()
        key = b / "munge" / "munge.key"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
        subprocess.run(
            [
                _which("munged"),
                f"--key-file={key}",
                f"--socket={b}/munge/munge.socket",
                f"--pid-file={b}/munge/munged.pid",
                f"--log-file={b}/munge/munged.log",
                f"--seed-file={b}/munge/munged.seed",
                "--force",
            ],
            check=True,
        )
        env = self.env
        subprocess.run([_which("slurmctld"), "-i", "-f", str(self.conf)], check=True, env=env)
        for k in range(self.nodes):
            subprocess.run(
                [_which("slurmd"), "-N", self.node(k), "-f", str(self.conf)], check=True, env=env
            )
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout
            if states.split() == ["idle"] * self.nodes:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Slurm nodes did not become idle: {states!r}")

    def _ports(self) -> list[int]:
        for _ in range(50):
            ctld = free_ports(1)[0]
            start = free_ports(1)[0]
            block = list(range(start, start + self.nodes))
            if ctld in block or block[-1] > 65535:
                continue
            try:
                socks = []
                for port in block:
                    sock = socket.socket()
                    socks.append(sock)
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                for sock in socks:
                    sock.close()
            return [ctld, *block]
        raise RuntimeError("no block of free ports")

    def run(
        self, *argv: str, check: bool = True, timeout: float = 20.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def sbatch(self, *args: str, script: str = "#!/bin/sh\ntrue\n") -> int:
        out = self.run("sbatch", "--parsable", "-o", "/dev/null", *args, stdin=script)
        return int(out.stdout.strip().split(";")[0])

    def stop(self) -> None:
        """Stop every daemon by the pid it wrote: SIGTERM to all, SIGKILL to what is left
        after a few seconds (nothing of this Slurm needs to survive)."""
        b = self.base
        paths = [b / f"slurmd-{self.node(k)}.pid" for k in range(self.nodes)]
        paths += [b / "slurmctld.pid", b / "munge" / "munged.pid"]
        pids: list[int] = []
        for path in paths:
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.02)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A daemon is our child only when started directly; otherwise it is reaped by init.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False
