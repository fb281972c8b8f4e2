"""Node agents benchmark (not a test): prints measurements beside their targets.

1. start -> all released of one unit of `--agents` x `--hosts` ranks (64 x 256 = 16,384)
   running `true`, each rank on its node's `hkservice agent` over loopback TCP with
   CURVE, beside the bare spawn and reap of as many `true` in the same run
   (bench/service.py's bare_spawn). Target <= 1.3x.
2. Agent RSS idle, and with 256 commands running (`sleep`); the service's RSS with every
   agent connected.
3. `--simulated` (1,024) agent connections, lightweight agents in this process (one
   DEALER each, CURVE, one shared key naming every host, each agent claiming its own):
   the service's idle CPU with all of them connected (target <= 2% of a core), and how
   long a kill of every rank takes to reach all of them (target <= 1 s).

Every figure is printed with the load average: this machine is shared.

usage: .venv/bin/python bench/agents.py [--agents 64] [--hosts 256] [--simulated 1024]
       [--skip-spawn]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq
from load import PROFILED  # bench/load.py, beside this script
from service import bare_spawn  # bench/service.py, beside this script

from hkconsole.client import Client, wait_for_service
from hkservice import keys
from hkservice.protocol import pack, unpack


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Head:
    """A service with [agents] on loopback, its keys, and the agents started for it."""

    def __init__(self, base: Path, hostlist: str, command: str) -> None:
        self.base = base
        base.mkdir(mode=0o700)
        keys.keygen(base / "keys", "server")
        (base / "agents").mkdir()
        self.port = free_port()
        self.endpoint = f"ipc://{base}/hk.sock"
        (base / "hk.toml").write_text(
            f'[cluster]\nhostlist = "{hostlist}"\n'
            f'[housekeeping]\ncommand = {command}\nrelease-after = "0"\n'
            f'[service]\nendpoint = "{self.endpoint}"\nstate-dir = "{base}/state"\n'
            f'keys-dir = "{base}/keys"\n'
            f'[agents]\nendpoint = "tcp://127.0.0.1:{self.port}"\nkeys = "{base}/agents"\n'
        )
        self.log = open(base / "service.log", "ab")  # noqa: SIM115
        # HK_PROFILE=FILE: the service under cProfile in CPU time (bench/load.py's way).
        argv = ["--config", str(base / "hk.toml")]
        if "HK_PROFILE" in os.environ:
            command = [sys.executable, "-c", PROFILED, os.environ["HK_PROFILE"], *argv]
        else:
            command = [sys.executable, "-m", "hkservice", *argv]
        self.proc = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=self.log,
        )
        self.agents: list[subprocess.Popen[bytes]] = []
        if not wait_for_service(self.endpoint, 30, alive=lambda: self.proc.poll() is None):
            raise SystemExit((base / "service.log").read_text())
        self.client = Client(self.endpoint, timeout=60)

    def key(self, name: str, hosts: str) -> Path:
        public, secret = keys.keygen(self.base / "nodekeys", name, hosts)
        public.rename(self.base / "agents" / public.name)
        return secret

    def start_agent(self, name: str, hosts: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "hkservice", "agent"]
        argv += ["--connect", f"tcp://127.0.0.1:{self.port}"]
        argv += ["--key", str(self.key(name, hosts))]
        argv += ["--server-key", str(self.base / "keys" / "server.key")]
        argv += ["--run-dir", str(self.base / f"run-{name}")]
        proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        self.agents.append(proc)
        return proc

    def wait_connected(self) -> float:
        started = time.perf_counter()
        while self.client.call("resource.status")["offline"]:
            time.sleep(0.1)
        return time.perf_counter() - started

    def wait_idle(self) -> None:
        while self.client.call("housekeeping.list")["units"]:
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in [*reversed(self.agents), self.proc]:
            proc.terminate()
        for proc in [*self.agents, self.proc]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.client.close()
        self.log.close()


def spawn_ratio(base: Path, agents: int, hosts: int) -> None:
    n = agents * hosts
    head = Head(base / "spawn", f"n[0-{n - 1}]", '["true"]')
    try:
        for a in range(agents):
            first = a * hosts
            head.start_agent(f"agent{a}", f"n[{first}-{first + hosts - 1}]")
        print(f"{agents} agents connected in {head.wait_connected():.2f} s ({load()})")
        idle = [rss_mb(p.pid) for p in head.agents]
        print(
            f"agent RSS idle: {max(idle):.1f} MB (largest of {len(idle)}); service RSS with "
            f"them connected: {rss_mb(head.proc.pid):.1f} MB"
        )
        start = time.perf_counter()
        head.client.call("housekeeping.start", {"jobid": 1, "ranks": f"0-{n - 1}"})
        head.wait_idle()
        hk = time.perf_counter() - start
        print(f"{n} ranks of true over {agents} agents, start -> all released: {hk:.2f} s")
    finally:
        head.stop()
    (base / "bare").mkdir()
    bare = bare_spawn(n, base / "bare")
    print(
        f"bare spawn+reap of {n} true: {bare:.2f} s ({load()}); "
        f"ratio {hk / bare:.2f}x (target <= 1.3x)"
    )


def agent_rss_busy(base: Path, hosts: int) -> None:
    """One agent serving `hosts` nodes, each running a sleep: its RSS."""
    head = Head(base / "busy", f"b[0-{hosts - 1}]", '["sleep", "600"]')
    try:
        agent = head.start_agent("busy", f"b[0-{hosts - 1}]")
        head.wait_connected()
        idle = rss_mb(agent.pid)
        head.client.call("housekeeping.start", {"jobid": 2, "ranks": f"0-{hosts - 1}"})
        run_dir = head.base / "run-busy" / "2"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if run_dir.is_dir() and len(os.listdir(run_dir)) >= 2 * hosts:
                break
            time.sleep(0.1)
        time.sleep(1)  # the last spawns are journaled and reaped-for
        busy = rss_mb(agent.pid)
        print(f"agent RSS: idle {idle:.1f} MB, with {hosts} commands running {busy:.1f} MB")
        head.client.call("housekeeping.kill", {"all": True, "signum": 9})
        head.wait_idle()
    finally:
        head.stop()


class Simulated:
    """`count` agents in one thread: each a DEALER with CURVE that says ready for its one
    host, answers hello and pings, takes launches as running, and on a signal notes when
    it came and reports the command killed."""

    def __init__(self, head: Head, secret: Path, count: int) -> None:
        mine = keys.load(secret, need_secret=True)
        server = keys.load(head.base / "keys" / "server.key")
        assert mine.secret is not None
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, count + 64)  # the default is 1,023
        self.socks: list[zmq.Socket[bytes]] = []
        for i in range(count):
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_SECRETKEY, mine.secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, mine.public)
            sock.setsockopt(zmq.CURVE_SERVERKEY, server.public)
            sock.connect(f"tcp://127.0.0.1:{head.port}")
            ready = {"op": "ready", "hosts": [f"s{i}"], "pid": os.getpid(), "name": "sim"}
            sock.send(pack(ready))
            self.socks.append(sock)
        self.running: set[tuple[int, int]] = set()
        self.signalled: dict[int, float] = {}  # rank -> when its signal came
        self.seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        while not self.stop.is_set():
            for sock, _ in poller.poll(100):
                while True:
                    try:
                        message = unpack(sock.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    self.answer(sock, message)

    def answer(self, sock: zmq.Socket[bytes], message: dict[str, object]) -> None:
        op = message.get("op")
        if op == "hello":
            sock.send(pack({"op": "hello", "pid": os.getpid(), "running": [], "exits": []}))
        elif op == "ping":
            sock.send(pack({"op": "pong", "exits": []}))
        elif op == "launch":
            for rank in message["ranks"]:  # type: ignore[attr-defined]
                self.running.add((int(message["jobid"]), rank))  # type: ignore[arg-type]
        elif op == "signal":
            now = time.perf_counter()
            exits = []
            for rank in message["ranks"]:  # type: ignore[attr-defined]
                self.signalled.setdefault(rank, now)
                self.seq += 1
                exits.append([self.seq, message["jobid"], rank, f"signal {message['signum']}"])
            sock.send(pack({"op": "exits", "exits": exits}))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()
        self.ctx.term()


def simulated(base: Path, count: int) -> None:
    head = Head(base / "sim", f"s[0-{count - 1}]", '["true"]')
    sims: Simulated | None = None
    try:
        sims = Simulated(head, head.key("sim", f"s[0-{count - 1}]"), count)
        print(f"{count} simulated agents connected in {head.wait_connected():.2f} s")
        time.sleep(3)  # the connections' first exchanges are over
        before, t0 = cpu_seconds(head.proc.pid), time.perf_counter()
        time.sleep(10)
        cpu = (cpu_seconds(head.proc.pid) - before) / (time.perf_counter() - t0)
        print(
            f"service idle CPU with {count} agents connected: {cpu * 100:.1f}% of a core "
            f"(target <= 2%; {load()})"
        )
        head.client.call("housekeeping.start", {"jobid": 3, "ranks": f"0-{count - 1}"})
        while len(sims.running) < count:
            time.sleep(0.01)
        asked = time.perf_counter()
        head.client.call("housekeeping.kill", {"all": True})
        while len(sims.signalled) < count:
            time.sleep(0.001)
        last = max(sims.signalled.values()) - asked
        print(
            f"kill of {count} ranks on {count} agents: the last signal arrived after "
            f"{last * 1000:.0f} ms (target <= 1 s; {load()})"
        )
        head.wait_idle()
    finally:
        if sims is not None:
            sims.close()
        head.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--hosts", type=int, default=256, help="hostnames per agent")
    parser.add_argument("--simulated", type=int, default=1024)
    parser.add_argument("--skip-spawn", action="store_true", help="only parts 2 and 3")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = Path(tempfile.mkdtemp(prefix="hk-bench-agents-", dir="/tmp"))
    try:
        if not args.skip_spawn:
            spawn_ratio(base, args.agents, args.hosts)
        agent_rss_busy(base, args.hosts)
        simulated(base, args.simulated)
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
