"""`hkconsole demo`: a living simulated cluster in one command.

A real hkservice runs on a private ipc endpoint in a fresh directory; a simulated
scheduler starts jobs of random sizes on free, undrained nodes and, when a job ends, hands
its nodes to housekeeping through the same `housekeeping.start` request a real scheduler
hook sends. It takes nodes back only from release events, so partial release shows: a
job's fast nodes return to the pool and run new jobs while a straggler is still cleaning.
Each rank's cleanup is a real shell script whose fate (quick, slow straggler, failure,
hang) the scheduler draws from a seeded generator, so a run can be reproduced.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from hkconsole.client import Client, ServiceError, wait_for_service
from hkservice.idset import format_idset, parse_idset
from hkservice.protocol import EVENT_RELEASED, unpack

CLEANUP_SCRIPT = """#!/bin/sh
# hk demo cleanup: does what the scheduler's fate file for this job and rank says.
fate_file="$(dirname "$0")/fates/$HK_JOB_ID.$HK_RANK"
read -r fate seconds < "$fate_file" 2>/dev/null || { fate=ok; seconds=1; }
echo "cleaning $HK_HOSTNAME for job $HK_JOB_ID: $fate"
case "$fate" in
  ok|slow) sleep "$seconds"; echo "scrubbed /tmp, reset GPUs, checked memory"; exit 0;;
  fail) sleep "$seconds"; echo "health check failed: ECC errors on DIMM B2" >&2; exit 1;;
  hang) echo "waiting on a stuck NFS mount..." >&2; exec sleep 100000;;
esac
"""

# How each rank's cleanup goes: weights chosen so every case shows in the first minute.
FATES = (("ok", 80), ("slow", 8), ("fail", 6), ("hang", 3))


@dataclass
class SimulatedScheduler:
    """Starts jobs on free nodes and hands ended jobs to housekeeping."""

    endpoint: str
    events_endpoint: str
    size: int
    fate_dir: Path
    rng: random.Random
    busy: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)
    running: dict[int, tuple[float, list[int]]] = field(default_factory=dict)
    jobs_started: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _next_jobid: int = 0

    def start(self) -> None:
        # Jobids that look like Flux's: milliseconds since an instance epoch in the top
        # 40 bits, a generator id and a sequence below.
        epoch_ms = int((time.time() - 1_767_225_600) * 1000) % (1 << 40)
        self._next_jobid = (epoch_ms << 24) | self.rng.randrange(1 << 14) << 10
        self._thread = threading.Thread(target=self._run, name="demo-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, EVENT_RELEASED.encode())
        sub.connect(self.events_endpoint)
        client = Client(self.endpoint, timeout=5)
        try:
            while not self._stop.is_set():
                while sub.poll(0):
                    _, body = sub.recv_multipart()
                    self.held -= parse_idset(unpack(body)["ranks"])
                try:
                    self._tick(client)
                except ServiceError:
                    pass  # the service is stopping or busy: try again next tick
                except Exception as exc:  # the simulation must not die silently
                    print(f"hk demo: scheduler error: {exc!r}", file=sys.stderr)
                self._stop.wait(0.5)
        finally:
            client.close()
            sub.close(linger=0)

    def _tick(self, client: Client) -> None:
        now = time.time()
        for jobid, (ends, ranks) in list(self.running.items()):
            if now >= ends:
                del self.running[jobid]
                self._hand_over(client, jobid, ranks)
        status = client.call("resource.status")
        drained: set[int] = set()
        for entry in status["drained"]:
            drained |= parse_idset(entry["ranks"])
        free = [r for r in range(self.size) if r not in self.busy | self.held | drained]
        while free and self.rng.random() < 0.7:
            nnodes = min(len(free), self.rng.choice((1, 1, 2, 2, 4, 4, 8, 16)))
            ranks = sorted(self.rng.sample(free, nnodes))
            free = [r for r in free if r not in ranks]
            self._next_jobid += 1
            self.busy.update(ranks)
            self.running[self._next_jobid] = (now + self.rng.uniform(1, 8), ranks)
            self.jobs_started += 1

    def _hand_over(self, client: Client, jobid: int, ranks: list[int]) -> None:
        straggler = self.rng.choice(ranks) if len(ranks) > 1 and self.rng.random() < 0.4 else None
        for rank in ranks:
            fate = self.rng.choices([f for f, _ in FATES], [w for _, w in FATES])[0]
            seconds = self.rng.uniform(1, 6)
            if rank == straggler:
                fate, seconds = "slow", self.rng.uniform(20, 45)
            elif fate == "slow":
                seconds = self.rng.uniform(12, 25)
            (self.fate_dir / f"{jobid}.{rank}").write_text(f"{fate} {seconds:.1f}\n")
        self.busy.difference_update(ranks)
        self.held.update(ranks)
        client.call(
            "housekeeping.start",
            {"jobid": jobid, "ranks": format_idset(ranks), "userid": 1000 + jobid % 7},
        )


class DemoCluster:
    """The embedded service and the simulated scheduler; `close()` leaves nothing behind."""

    def __init__(self, nodes: int = 64, seed: int | None = None, state_dir: str | None = None):
        if nodes < 1:
            raise ValueError("--nodes must be at least 1")
        self.nodes = nodes
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
        self.keep = state_dir is not None
        if state_dir is not None:
            self.base = Path(state_dir).resolve()
            self.base.mkdir(parents=True, exist_ok=True)
        else:
            # Short and private: ipc socket paths are limited to ~107 bytes.
            self.base = Path(tempfile.mkdtemp(prefix="hk-demo-", dir="/tmp"))
        self.endpoint = f"ipc://{self.base}/hk.sock"
        self.events_endpoint = f"{self.endpoint}-events"
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheduler: SimulatedScheduler | None = None

    def start(self) -> DemoCluster:
        script = self.base / "cleanup.sh"
        script.write_text(CLEANUP_SCRIPT)
        script.chmod(0o755)
        (self.base / "fates").mkdir(exist_ok=True)
        config = self.base / "hk.toml"
        config.write_text(
            "[cluster]\n"
            f'hostlist = "sim[0-{self.nodes - 1}]"\n'
            "[housekeeping]\n"
            f'command = ["{script}"]\n'
            'release-after = "5s"\n'
            'timeout = "2m"\n'
            'kill-grace = "5s"\n'
            "[service]\n"
            f'endpoint = "{self.endpoint}"\n'
            f'state-dir = "{self.base / "state"}"\n'
        )
        log = open(self.base / "service.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hkservice", "--config", str(config), "--stop-commands-on-exit"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own session: a terminal hang-up reaches the demo, which stops the
            # service in order, rather than killing the service before it can clean up.
            start_new_session=True,
        )
        log.close()
        proc = self.proc
        if not wait_for_service(self.endpoint, 15, alive=lambda: proc.poll() is None):
            self.close()
            raise RuntimeError(
                "the demo's service did not start; see " + str(self.base / "service.log")
            )
        self.scheduler = SimulatedScheduler(
            self.endpoint,
            self.events_endpoint,
            self.nodes,
            self.base / "fates",
            random.Random(self.seed),
        )
        self.scheduler.start()
        return self

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_strays()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_strays(self) -> None:
        """Belt and braces: anything still running from this demo's directory dies."""
        marker = str(self.base).encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                if marker in cmdline and (b"hkservice" in cmdline or b"cleanup.sh" in cmdline):
                    os.kill(int(entry.name), signal.SIGKILL)

    def __enter__(self) -> DemoCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_demo(
    nodes: int = 64,
    seed: int | None = None,
    state_dir: str | None = None,
    read_only: bool = False,
    run_for: float | None = None,
) -> int:
    cluster = DemoCluster(nodes, seed, state_dir)
    print(
        f"hk demo: {nodes} simulated nodes sim[0-{nodes - 1}], seed {cluster.seed} "
        f"(reproduce with --seed {cluster.seed}), state in {cluster.base}",
        file=sys.stderr,
    )

    def hang_up(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # Closing the terminal or a `kill` must still stop the service and every cleanup.
    signal.signal(signal.SIGHUP, hang_up)
    signal.signal(signal.SIGTERM, hang_up)
    with cluster:
        from hkconsole.tui import run_console

        return run_console(endpoint=cluster.endpoint, read_only=read_only, run_for=run_for)
