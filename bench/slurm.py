"""Slurm benchmark (not a test): time from a job script's end to the job COMPLETED.

Starts a real Slurm on this machine (munged, slurmctld, 4 slurmd; root and Debian's
slurmctld slurmd slurm-client munge needed), and runs `--jobs` 4-node jobs whose script
ends at once, twice:
1. Slurm alone: the cleanup (`sleep --cleanup`) is Slurm's own node Epilog, so the job
   stays COMPLETING for the whole cleanup.
2. With hk: the node Epilog is `hk-slurm-epilog`, EpilogSlurmctld hands the job to hk,
   and hk runs the same cleanup. Target: COMPLETED under 1 s after the script's end.
For each, the median and worst time to COMPLETED, and to every node back in service.

usage: sudo .venv/bin/python bench/slurm.py [--jobs 5] [--cleanup 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.slurm_cluster import SlurmCluster, slurm_missing

BIN = Path(sys.executable).parent


def run_jobs(cluster: SlurmCluster, jobs: int, out: Path) -> tuple[list[float], list[float]]:
    """(script end -> COMPLETED, script end -> all 4 nodes idle) of each job, in seconds."""
    completed: list[float] = []
    back: list[float] = []
    for k in range(jobs):
        end = out / f"end-{k}"
        jobid = cluster.sbatch("-N4", script=f"#!/bin/sh\ndate +%s.%N > {end}\n")
        done_at = idle_at = 0.0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (done_at and idle_at):
            now = time.time()
            if not done_at:
                state = cluster.run("squeue", "-h", "-t", "all", "-j", str(jobid), "-o", "%T")
                if state.stdout.strip() == "COMPLETED":
                    done_at = now
            elif not idle_at:
                states = cluster.run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
                if states == ["idle"] * cluster.nodes:
                    idle_at = now
            time.sleep(0.01)
        if not (done_at and idle_at):
            raise RuntimeError(f"job {jobid} did not complete and come back within 120 s")
        script_end = float(end.read_text())
        completed.append(done_at - script_end)
        back.append(idle_at - script_end)
    return completed, back


def show(label: str, completed: list[float], back: list[float]) -> None:
    print(
        f"{label:<22} COMPLETED after script end: median {statistics.median(completed):.2f} s, "
        f"worst {max(completed):.2f} s; all nodes back: median {statistics.median(back):.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--cleanup", type=float, default=2.0, help="cleanup seconds per node")
    args = parser.parse_args()
    why = slurm_missing()
    if why is not None:
        print(f"bench/slurm.py: {why}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="hk-bench-slurm-", dir="/tmp"))
    try:
        cleanup = base / "cleanup.sh"
        cleanup.write_text(f"#!/bin/sh\nsleep {args.cleanup}\n")
        cleanup.chmod(0o755)

        plain = SlurmCluster(base / "plain", epilog=str(cleanup)).start()
        try:
            show("Slurm's own Epilog", *run_jobs(plain, args.jobs, base))
        finally:
            plain.stop()

        hk_dir = base / "hk"
        hk_dir.mkdir(mode=0o700)
        endpoint = f"ipc://{hk_dir}/hk.sock"
        ctld = base / "epilog-slurmctld.sh"
        ctld.write_text(
            f"#!/bin/sh\nexec {BIN / 'hk-slurm-epilog-slurmctld'} --endpoint {endpoint}\n"
        )
        ctld.chmod(0o755)
        cluster = SlurmCluster(
            base / "slurm", epilog=str(BIN / "hk-slurm-epilog"), epilog_slurmctld=str(ctld)
        ).start()
        config = hk_dir / "hk.toml"
        config.write_text(
            f'[housekeeping]\ncommand = ["{cleanup}"]\nrelease-after = "0s"\n'
            f'[service]\nendpoint = "{endpoint}"\nstate-dir = "{hk_dir}/state"\n'
            '[scheduler]\nkind = "slurm"\n'
        )
        with open(hk_dir / "service.log", "wb") as log:
            service = subprocess.Popen(
                [str(BIN / "hkservice"), "--config", str(config), "--stop-commands-on-exit"],
                stdout=log,
                stderr=log,
                env=cluster.env,
            )
        try:
            time.sleep(1.5)
            show("hk (Epilog hooks)", *run_jobs(cluster, args.jobs, base))
        finally:
            service.terminate()
            service.wait(30)
            cluster.stop()
        print("target: COMPLETED under 1 s after the script's end with hk")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
