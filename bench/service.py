"""Service benchmark (not a test): prints measurements beside their targets.

1. start -> all released wall time of one 16,384-rank unit running `true`, beside the bare
   time to spawn and reap 16,384 `true` processes the same way (posix_spawn in a new
   session with the same file actions, reaped on SIGCHLD), in the same run. Target <= 1.3x.
   This machine's spawn rate swings between runs (the bare spawn alone takes 8 s or 21 s
   from one run to the next), so the two are run alternately `--repeat` times and the
   ratio is taken of their best times: the cost hk adds, not the machine's mood.
2. housekeeping.list round-trip p50 with 1,000 units in progress. Target <= 5 ms.
3. Service RSS with 16,384 ranks in housekeeping. Target <= 300 MB. The local agent's
   RSS (the parent of the 16,384 commands) is reported beside it.

usage: .venv/bin/python bench/service.py [--nodes 16384] [--units 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from hkconsole.client import Client, wait_for_service
from hkservice.protocol import unpack


def bare_spawn(n: int, workdir: Path) -> float:
    """Spawn and reap n `true` the way the agent does, with nothing else around it."""

    async def run() -> float:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        left = n
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND

        def reap() -> None:
            nonlocal left
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                left -= 1
                if left == 0:
                    done.set()

        loop.add_signal_handler(signal.SIGCHLD, reap)
        env = dict(os.environ)
        start = time.perf_counter()
        for rank in range(n):
            if rank and rank % 128 == 0:
                await asyncio.sleep(0)
            os.posix_spawnp(
                "true",
                ["true"],
                {**env, "HK_RANK": str(rank)},
                setsid=True,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(workdir / f"{rank}.out"), flags, 0o644),
                    (os.POSIX_SPAWN_OPEN, 2, str(workdir / f"{rank}.err"), flags, 0o644),
                ],
            )
        reap()
        await done.wait()
        loop.remove_signal_handler(signal.SIGCHLD)
        return time.perf_counter() - start

    return asyncio.run(run())


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Service:
    def __init__(self, base: Path, hostlist: str, command: list[str]) -> None:
        self.base = base
        self.endpoint = f"ipc://{base}/hk.sock"
        config = base / "hk.toml"
        quoted = ", ".join(f'"{c}"' for c in command)
        config.write_text(
            f'[cluster]\nhostlist = "{hostlist}"\n'
            f'[housekeeping]\ncommand = [{quoted}]\nrelease-after = "0"\n'
            f'[service]\nendpoint = "{self.endpoint}"\nstate-dir = "{base}/state"\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hkservice", "--config", str(config), "--stop-commands-on-exit"],
            stderr=open(base / "service.log", "wb"),  # noqa: SIM115
        )
        self.client = Client(self.endpoint, timeout=60)
        proc = self.proc
        if not wait_for_service(self.endpoint, 30, alive=lambda: proc.poll() is None):
            raise RuntimeError(f"hkservice did not start; see {base / 'service.log'}")

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def agent_rss_mb(self) -> float:
        """RSS of this service's local agent, found by its run directory."""
        marker = f"{self.base}/state/run".encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hkservice.agent" in argv and marker in argv:
                return rss_mb(int(entry.name))
        return 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def events_socket(endpoint: str) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"housekeeping.released")
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint + "-events")
    time.sleep(0.3)
    return sock


def one_unit_of_true(base: Path, hostlist: str, n: int) -> float:
    """Seconds from starting one n-rank unit of `true` to its final release."""
    base.mkdir(mode=0o700)  # the socket directory must be private
    svc = Service(base, hostlist, ["true"])
    sub = events_socket(svc.endpoint)
    start = time.perf_counter()
    svc.client.call("housekeeping.start", {"jobid": 1, "ranks": f"0-{n - 1}"})
    while True:
        _, body = sub.recv_multipart()
        if unpack(body)["final"]:
            break
    whole = time.perf_counter() - start
    svc.stop()
    sub.close()
    shutil.rmtree(base, ignore_errors=True)
    return whole


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=16384)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="bare/hk pairs (default 3)")
    args = parser.parse_args()
    n = args.nodes
    hostlist = f"node[0-{n - 1}]"
    base = Path(tempfile.mkdtemp(prefix="hkb-", dir="/tmp"))
    try:
        bares: list[float] = []
        wholes: list[float] = []
        for attempt in range(args.repeat):
            bare_dir = base / f"bare{attempt}"
            bare_dir.mkdir()
            bares.append(bare_spawn(n, bare_dir))
            shutil.rmtree(bare_dir)
            wholes.append(one_unit_of_true(base / f"a{attempt}", hostlist, n))
        bare, whole = min(bares), min(wholes)

        (base / "b").mkdir(mode=0o700)  # the socket directory must be private
        svc = Service(base / "b", hostlist, ["sleep", "600"])
        per_unit = max(1, min(4, n // args.units))
        for u in range(args.units):
            first = u * per_unit
            svc.client.call(
                "housekeeping.start",
                {"jobid": 1000 + u, "ranks": f"{first}-{first + per_unit - 1}"},
            )
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            result = svc.client.call("housekeeping.list")
            times.append(time.perf_counter() - t0)
        assert len(result["units"]) == args.units
        p50 = statistics.median(times) * 1000
        svc.client.call("housekeeping.kill", {"all": True, "signum": 9})
        svc.stop()

        (base / "c").mkdir(mode=0o700)  # the socket directory must be private
        svc = Service(base / "c", hostlist, ["sleep", "600"])
        svc.client.call("housekeeping.start", {"jobid": 2, "ranks": f"0-{n - 1}"})
        time.sleep(2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            units = svc.client.call("housekeeping.list")["units"]
            if units and units[0]["pending"] == f"0-{n - 1}":
                break
            time.sleep(0.5)
        time.sleep(5)  # let the launch finish before measuring
        rss = svc.rss_mb()
        agent_rss = svc.agent_rss_mb()
        svc.client.call("housekeeping.kill", {"all": True, "signum": 9})
        svc.stop()

        print(f"hk service benchmark, cluster {hostlist}")
        print(
            f"  {n} ranks of `true`, start -> all released: {whole:.2f} s; "
            f"bare spawn+reap: {bare:.2f} s; ratio {whole / bare:.2f} (target <= 1.3)"
        )
        print(
            f"    best of {args.repeat} alternate runs; all: hk "
            f"{', '.join(f'{t:.2f}' for t in wholes)} s, bare "
            f"{', '.join(f'{t:.2f}' for t in bares)} s"
        )
        print(
            f"  housekeeping.list with {args.units} units in progress: "
            f"p50 {p50:.2f} ms (target <= 5 ms)"
        )
        print(f"  service RSS with {n} ranks in housekeeping: {rss:.0f} MB (target <= 300 MB)")
        print(f"  local agent RSS with {n} commands running: {agent_rss:.0f} MB")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
