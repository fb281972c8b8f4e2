"""Node agents benchmark (not a test): prints measurements beside their targets.

1. start -> all released of one unit of `--agents` x `--hosts` ranks running `true`, each
   rank on its node's `hkservice agent` over loopback TCP with CURVE, beside the bare
   spawn and reap of as many `true` in the same run (bench/service.py's bare_spawn).
   Target <= 1.3x.
2. Agent RSS idle, and the service's RSS with every agent connected.

Not measured yet (issue 9): 1,024 simulated agents' idle CPU, kill fan-out latency, agent
RSS with 256 commands running.

usage: .venv/bin/python bench/agents.py [--agents 64] [--hosts 256]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service import bare_spawn  # bench/service.py, beside this script

from hkconsole.client import Client, wait_for_service
from hkservice import keys


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--hosts", type=int, default=256, help="hostnames per agent")
    args = parser.parse_args()
    n = args.agents * args.hosts
    base = Path(tempfile.mkdtemp(prefix="hk-bench-agents-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        keys.keygen(base / "keys", "server")
        (base / "agents").mkdir()
        secrets = []
        for a in range(args.agents):
            first = a * args.hosts
            public, secret = keys.keygen(
                base / "nodekeys", f"agent{a}", f"n[{first}-{first + args.hosts - 1}]"
            )
            public.rename(base / "agents" / public.name)
            secrets.append(secret)
        port = free_port()
        endpoint = f"ipc://{base}/hk.sock"
        (base / "hk.toml").write_text(
            f'[cluster]\nhostlist = "n[0-{n - 1}]"\n'
            '[housekeeping]\ncommand = ["true"]\n'
            f'[service]\nendpoint = "{endpoint}"\nstate-dir = "{base}/state"\n'
            f'keys-dir = "{base}/keys"\n'
            f'[agents]\nendpoint = "tcp://127.0.0.1:{port}"\nkeys = "{base}/agents"\n'
        )
        log = open(base / "service.log", "ab")  # noqa: SIM115
        service = subprocess.Popen(
            [sys.executable, "-m", "hkservice", "--config", str(base / "hk.toml")],
            stdout=log,
            stderr=log,
        )
        procs.append(service)
        if not wait_for_service(endpoint, 30):
            print((base / "service.log").read_text())
            return 1
        for a, secret in enumerate(secrets):
            argv = [sys.executable, "-m", "hkservice", "agent"]
            argv += ["--connect", f"tcp://127.0.0.1:{port}", "--key", str(secret)]
            argv += ["--server-key", str(base / "keys" / "server.key")]
            argv += ["--run-dir", str(base / f"run{a}")]
            procs.append(subprocess.Popen(argv, stdout=log, stderr=log))
        with Client(endpoint, timeout=30) as client:
            started = time.perf_counter()
            while client.call("resource.status")["offline"]:
                time.sleep(0.1)
            print(f"{args.agents} agents connected in {time.perf_counter() - started:.2f} s")
            idle = [rss_mb(p.pid) for p in procs[1:]]
            print(
                f"agent RSS idle: {max(idle):.1f} MB (max of {len(idle)}); service RSS "
                f"with them connected: {rss_mb(service.pid):.1f} MB"
            )
            start = time.perf_counter()
            client.call("housekeeping.start", {"jobid": 1, "ranks": f"0-{n - 1}"})
            while client.call("housekeeping.list")["units"]:
                time.sleep(0.05)
            hk = time.perf_counter() - start
        (base / "bare").mkdir()
        bare = bare_spawn(n, base / "bare")
        print(f"{n} ranks of true over {args.agents} agents, start -> all released: {hk:.2f} s")
        print(f"bare spawn+reap of {n} true: {bare:.2f} s; ratio {hk / bare:.2f}x (target <= 1.3x)")
        return 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
