"""`hkconsole demo`: a living simulated cluster in one command.

A real hkservice runs on a private ipc endpoint in a fresh directory; a simulated
scheduler starts jobs on free, undrained nodes and, when a job ends, hands its nodes to
housekeeping through the same `housekeeping.start` request a real scheduler hook sends.
It takes nodes back only from release events, so partial release shows: a job's fast
nodes return to the pool and run new jobs while a straggler is still cleaning. Each
rank's cleanup is a real shell script that does what the job's fate file says.

Jobs (what a seed fixes). Job n is drawn when the scheduler creates it, from its own
generator `random.Random(f"{seed}:{n}")`: its size (1-16 nodes, at most a quarter of the
cluster), its run time (1-8 s), its user and the fate of the cleanup on each of its nodes
(by position in the job's sorted ranks). Jobids start from a base drawn from the seed.
Jobs start strictly in order, so one seed always gives the same jobs with the same
fates; which nodes a job lands on, and when, still depends on timing.

Cleanup fates, per node:
  ok     1-6 s, exit 0
  slow   12-25 s, exit 0; and in 40% of multi-node jobs one straggler takes 20-45 s
         (partial release: the job's other nodes come back 5 s after their cleanup)
  fail   1-6 s, exit 1: the node is drained
  hang   never ends: stuck after 30 s (warn-after), killed at the 2 min timeout, drained
Weights (ok/slow/fail/hang): 80/8/6/3 % for the first minute's worth of cleanups
(5 per node, in job order), so every case shows at once; 95/4/0.8/0.2 % after that.

The site admin (part of the simulated scheduler) undrains, through `resource.undrain`,
a node whose cleanup failed once it has been drained 150 s, and sooner (after 30 s,
oldest first) while more than 20% of the nodes are drained, so the cluster never drains
itself dry and an operator sees nodes come back. Drains an operator makes in the console
(any reason not starting with `housekeeping@`) are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from typing import Any

import zmq

from hkconsole.client import Client, ServiceError, wait_for_service
from hkconsole.terminal import NO_TERMINAL, on_a_terminal
from hkservice.idset import format_idset, parse_idset
from hkservice.protocol import EVENT_RELEASED, IPC_PATH_MAX, unpack

MAX_NODES = 4096
# Every process the demo's service starts (agent, cleanups and their children) inherits
# this variable, set to the demo's directory: what the stray-killing backstop looks for.
MARK_VARIABLE = "HK_DEMO_MARK"
# A file that says a directory is a demo's, so a restart may clear its old state.
DIR_MARK = ".hk-demo"

CLEANUP_SCRIPT = """#!/bin/sh
# hk demo cleanup: does what the scheduler's fate file for this job and rank says.
fate_file="$(dirname "$0")/fates/$HK_JOB_ID.$HK_RANK"
read -r fate seconds < "$fate_file" 2>/dev/null || { fate=ok; seconds=1; }
rm -f "$fate_file"
echo "cleaning $HK_HOSTNAME for job $HK_JOB_ID: $fate"
case "$fate" in
  ok|slow) sleep "$seconds"; echo "scrubbed /tmp, reset GPUs, checked memory"; exit 0;;
  fail) sleep "$seconds"; echo "health check failed: ECC errors on DIMM B2" >&2; exit 1;;
  hang) echo "waiting on a stuck NFS mount..." >&2; exec sleep 100000;;
esac
"""

FATES_EARLY = (("ok", 80.0), ("slow", 8.0), ("fail", 6.0), ("hang", 3.0))
FATES_LATER = (("ok", 95.0), ("slow", 4.0), ("fail", 0.8), ("hang", 0.2))
# Each node cleans about five times a minute: that many cleanups per node is the
# first minute, counted in jobs so that it does not depend on timing.
EARLY_CLEANUPS_PER_NODE = 5
JOB_SIZES = (1, 1, 2, 2, 4, 4, 8, 16)
STRAGGLER_CHANCE = 0.4

ADMIN_UNDRAIN_AFTER = 150.0
ADMIN_BUSY_UNDRAIN_AFTER = 30.0
ADMIN_DRAINED_SHARE = 0.2
FAILED_CLEANUP_REASON = "housekeeping@"


@dataclass(frozen=True)
class Job:
    n: int
    jobid: int
    nnodes: int
    duration: float
    userid: int
    # (fate, seconds) for each node, by position in the job's sorted ranks.
    cleanups: tuple[tuple[str, float], ...]


def jobid_base(seed: int) -> int:
    """A Flux-like jobid (milliseconds since an instance epoch in the top 40 bits, a
    generator id below) fixed by the seed, so the same seed shows the same jobids."""
    rng = random.Random(f"{seed}:jobids")
    ms = rng.randrange(86_400_000, 400 * 86_400_000)
    return ms << 24 | rng.randrange(1 << 14) << 10


def draw_job(seed: int, n: int, cluster_size: int, early: bool) -> Job:
    rng = random.Random(f"{seed}:{n}")
    biggest = max(1, cluster_size // 4)
    nnodes = min(rng.choice(JOB_SIZES), biggest)
    duration = rng.uniform(1, 8)
    userid = 1000 + rng.randrange(7)
    weights = FATES_EARLY if early else FATES_LATER
    straggler = rng.randrange(nnodes) if nnodes > 1 and rng.random() < STRAGGLER_CHANCE else None
    cleanups = []
    for i in range(nnodes):
        fate = rng.choices([f for f, _ in weights], [w for _, w in weights])[0]
        seconds = rng.uniform(1, 6)
        if i == straggler:
            fate, seconds = "slow", rng.uniform(20, 45)
        elif fate == "slow":
            seconds = rng.uniform(12, 25)
        cleanups.append((fate, round(seconds, 1)))
    return Job(n, jobid_base(seed) + n, nnodes, duration, userid, tuple(cleanups))


@dataclass
class SimulatedScheduler:
    """Starts jobs on free nodes, hands ended jobs to housekeeping, and plays site admin."""

    endpoint: str
    events_endpoint: str
    size: int
    fate_dir: Path
    seed: int
    log_path: Path
    busy: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)
    running: dict[int, tuple[float, Job, list[int]]] = field(default_factory=dict)
    started: list[Job] = field(default_factory=list)
    placed: dict[int, list[int]] = field(default_factory=dict)
    undrained: int = 0
    errors: int = 0
    undrain_after: float = ADMIN_UNDRAIN_AFTER
    _next: Job | None = None
    _cleanups_drawn: int = 0
    _arrivals: random.Random = field(default_factory=random.Random)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def jobs_started(self) -> int:
        return len(self.started)

    def __post_init__(self) -> None:
        # Only when jobs start and where comes from here: timing, never which jobs.
        self._arrivals = random.Random(f"{self.seed}:arrivals")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def log(self, message: str) -> None:
        # Not stderr: the console owns the terminal.
        with open(self.log_path, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def next_job(self) -> Job:
        if self._next is None:
            n = len(self.started)
            early = self._cleanups_drawn < EARLY_CLEANUPS_PER_NODE * self.size
            self._next = draw_job(self.seed, n, self.size, early)
            self._cleanups_drawn += self._next.nnodes
        return self._next

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
                    self.errors += 1
                    self.log(f"scheduler error: {exc!r}")
                self._stop.wait(0.5)
        finally:
            client.close()
            sub.close(linger=0)

    def _tick(self, client: Client) -> None:
        now = time.time()
        for jobid, (ends, job, ranks) in list(self.running.items()):
            if now >= ends:
                del self.running[jobid]
                self._hand_over(client, job, ranks)
        status = client.call("resource.status")
        self._site_admin(client, status["drained"], now)
        unavailable = self.busy | self.held | parse_idset(status["housekeeping"])
        for entry in status["drained"]:
            unavailable |= parse_idset(entry["ranks"])
        free = [r for r in range(self.size) if r not in unavailable]
        # Strictly in order, so the sequence of jobs is the seed's whatever the timing.
        while self._arrivals.random() < 0.7 and self.next_job().nnodes <= len(free):
            job = self.next_job()
            self._next = None
            ranks = sorted(self._arrivals.sample(free, job.nnodes))
            free = [r for r in free if r not in ranks]
            self.busy.update(ranks)
            self.running[job.jobid] = (now + job.duration, job, ranks)
            self.started.append(job)
            self.placed[job.jobid] = ranks

    def _hand_over(self, client: Client, job: Job, ranks: list[int]) -> None:
        files = [self.fate_dir / f"{job.jobid}.{rank}" for rank in ranks]
        for path, (fate, seconds) in zip(files, job.cleanups, strict=True):
            path.write_text(f"{fate} {seconds:.1f}\n")
        self.busy.difference_update(ranks)
        self.held.update(ranks)
        try:
            client.call(
                "housekeeping.start",
                {"jobid": job.jobid, "ranks": format_idset(ranks), "userid": job.userid},
            )
        except ServiceError:
            # No cleanup will read them (each cleanup removes its own).
            for path in files:
                path.unlink(missing_ok=True)
            raise

    def _site_admin(self, client: Client, drained: list[dict[str, Any]], now: float) -> None:
        """Nodes whose cleanup failed come back after a while, as a site admin would
        bring them back after a look; sooner while too much of the cluster is out."""
        total = sum(len(parse_idset(e["ranks"])) for e in drained)
        over = total - int(self.size * ADMIN_DRAINED_SHARE)
        ours = sorted(
            (float(e["t"]), parse_idset(e["ranks"]))
            for e in drained
            if e["reason"].startswith(FAILED_CLEANUP_REASON)
        )
        back: set[int] = set()
        for t, ranks in ours:
            age = now - t
            if age >= self.undrain_after or (over > 0 and age >= ADMIN_BUSY_UNDRAIN_AFTER):
                back |= ranks
                over -= len(ranks)
        if not back:
            return
        try:
            client.call("resource.undrain", {"ranks": format_idset(back)})
        except ServiceError as exc:
            self.log(f"site admin: undrain {format_idset(back)} failed: {exc}")
            return
        self.undrained += len(back)
        self.log(f"site admin: undrained ranks {format_idset(back)}")


def _ancestors() -> set[int]:
    """This process and its parents: never killed, whatever their environment says."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def marked_processes(base: Path) -> list[int]:
    """Processes whose environment carries this demo's mark (the service's descendants,
    however they were detached or orphaned), this process and its parents excepted."""
    needle = b"\0" + f"{MARK_VARIABLE}={base}".encode() + b"\0"
    skip = _ancestors()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        with contextlib.suppress(OSError):
            if needle in b"\0" + Path(f"/proc/{entry.name}/environ").read_bytes():
                found.append(int(entry.name))
    return found


class DemoCluster:
    """The embedded service and the simulated scheduler; `close()` leaves nothing behind."""

    def __init__(self, nodes: int = 64, seed: int | None = None, state_dir: str | None = None):
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"--nodes {nodes}: a demo cluster has 1 to {MAX_NODES} nodes")
        if seed is not None and not 0 <= seed < 1 << 64:
            raise ValueError(f"--seed {seed}: a seed is a number from 0 to 2^64-1")
        self.nodes = nodes
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 32)
        self.keep = state_dir is not None
        self.restarted = False
        if state_dir is not None:
            self.base = Path(state_dir).expanduser().absolute()
            self._check_paths(state_dir)
            self._prepare_kept_dir(state_dir)
        else:
            # Short and private: ipc socket paths are limited to 107 bytes.
            self.base = Path(tempfile.mkdtemp(prefix="hk-demo-", dir="/tmp"))
            self._check_paths(str(self.base))
            (self.base / DIR_MARK).touch()
        self.endpoint = f"ipc://{self.base}/hk.sock"
        self.events_endpoint = f"{self.endpoint}-events"
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheduler: SimulatedScheduler | None = None

    @property
    def label(self) -> str:
        """For the console's header, so every screen and screenshot says how to replay it."""
        return f"demo seed {self.seed}"

    def _socket_paths(self) -> list[str]:
        return [
            f"{self.base}/hk.sock-events",
            f"{self.base}/state/run/agent.sock",
        ]

    def _check_paths(self, given: str) -> None:
        longest = max(self._socket_paths(), key=lambda p: len(os.fsencode(p)))
        size = len(os.fsencode(longest))
        if size > IPC_PATH_MAX:
            room = IPC_PATH_MAX - (size - len(os.fsencode(str(self.base))))
            raise ValueError(
                f"--state-dir '{given}' is too long: the demo's socket {longest} would be "
                f"{size} bytes, over the {IPC_PATH_MAX}-byte limit of an ipc socket path; "
                f"give a directory whose full path is at most {room} bytes"
            )

    def _prepare_kept_dir(self, given: str) -> None:
        """A kept directory is the demo's own: new, empty, or an earlier demo's, whose
        state is cleared, because that demo's simulated jobs and scheduler are gone and
        resuming its units would only drain their nodes as lost."""
        base = self.base
        if base.exists() and not base.is_dir():
            raise ValueError(f"--state-dir '{given}' is not a directory")
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            entries = list(base.iterdir())
            if entries and not (base / DIR_MARK).exists():
                raise ValueError(
                    f"--state-dir '{given}' is not empty and holds no earlier demo: "
                    "give a new or empty directory (the demo writes its config, state, "
                    "sockets and cleanup script there)"
                )
            # The service's sockets are here: it insists that only its user may enter.
            base.chmod(0o700)
            (base / DIR_MARK).touch()
        except OSError as exc:
            raise ValueError(f"--state-dir '{given}': {exc.strerror}") from None
        if not entries:
            return
        lock_path = base / "state" / "hkservice.lock"
        if lock_path.exists():
            with open(lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ValueError(
                        f"--state-dir '{given}': another demo is running there"
                    ) from None
        self.restarted = True
        shutil.rmtree(base / "state", ignore_errors=True)
        shutil.rmtree(base / "fates", ignore_errors=True)
        for sock in base.glob("hk.sock*"):
            sock.unlink(missing_ok=True)

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
            'warn-after = "30s"\n'
            "[service]\n"
            f'endpoint = "{self.endpoint}"\n'
            f'state-dir = "{self.base / "state"}"\n'
        )
        log_path = self.base / "service.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hkservice", "--config", str(config), "--stop-commands-on-exit"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, MARK_VARIABLE: str(self.base)},
            # Its own session: a terminal hang-up reaches the demo, which stops the
            # service in order, rather than killing the service before it can clean up.
            start_new_session=True,
        )
        log.close()
        proc = self.proc
        if not wait_for_service(self.endpoint, 15, alive=lambda: proc.poll() is None):
            self.close(keep=True)
            lines = log_path.read_text(errors="replace").strip().splitlines()
            last = f": {lines[-1]}" if lines else ""
            raise RuntimeError(f"the demo's service did not start{last} (see {log_path})")
        self.scheduler = SimulatedScheduler(
            self.endpoint,
            self.events_endpoint,
            self.nodes,
            self.base / "fates",
            self.seed,
            self.base / "demo.log",
        )
        self.scheduler.start()
        return self

    def close(self, keep: bool = False) -> None:
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
        if not (self.keep or keep):
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_strays(self) -> None:
        """Belt and braces: anything the service left (its agent, a cleanup, a `sleep`
        a cleanup started) dies. The mark is in the environment, which every one of
        them inherits, not in command lines, which a plain `sleep 27` does not show."""
        for _ in range(10):  # a cleanup may fork while we look: look again
            pids = marked_processes(self.base)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

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
    if run_for is None and not on_a_terminal():
        # After the option checks, so their errors come first.
        cluster.close()
        print(f"hkconsole: error: {NO_TERMINAL}", file=sys.stderr)
        return 2
    where = (
        f"state kept in {cluster.base}"
        if cluster.keep
        else f"state and logs in {cluster.base} (removed at exit; --state-dir DIR keeps them)"
    )
    again = " (the previous demo's state there was cleared)" if cluster.restarted else ""
    print(
        f"hk demo: {nodes} simulated nodes sim[0-{nodes - 1}], seed {cluster.seed} "
        f"(reproduce with --seed {cluster.seed}), {where}{again}",
        file=sys.stderr,
    )

    def hang_up(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # Closing the terminal or a `kill` must still stop the service and every cleanup.
    signal.signal(signal.SIGHUP, hang_up)
    signal.signal(signal.SIGTERM, hang_up)
    try:
        with cluster:
            from hkconsole.tui import run_console

            return run_console(
                endpoint=cluster.endpoint,
                read_only=read_only,
                run_for=run_for,
                label=cluster.label,
            )
    except RuntimeError as exc:
        print(f"hkconsole: ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        scheduler = cluster.scheduler
        summary = ""
        if scheduler is not None:
            summary = (
                f": {scheduler.jobs_started} jobs, "
                f"{scheduler.undrained} nodes undrained by the site admin"
            )
            if scheduler.errors:
                summary += f", {scheduler.errors} scheduler errors (see {cluster.base}/demo.log)"
        kept = f", state kept in {cluster.base}" if cluster.keep else ""
        print(
            f"hk demo: ended{summary}; seed {cluster.seed} (reproduce with --seed "
            f"{cluster.seed}){kept}",
            file=sys.stderr,
        )
