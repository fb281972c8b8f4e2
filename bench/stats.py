"""Statistics and metrics benchmark (not a test): history at scale, `stats`, `/metrics`.

Fills a state directory with 1,000,000 finished ranks on 16,384 nodes (units of 1 to 256
nodes over the last 80 days, 2% failing, written straight into the store's tables with
the store's own schema: running a million real commands would take hours), then:

- reports the database size,
- starts a real hkservice on node[0-16383] with [metrics] and reports when it serves,
  when its runs index is loaded, and how long requests wait meanwhile,
- times `stats.nodes` and `stats.users` requests in the service (wall, service CPU, and
  the CPU of its event loop's thread alone: what every other request waits behind),
- sends `housekeeping.list` requests back to back while a `stats.nodes --since 7d`,
  `stats.nodes` or `stats.users --since 60d` request is being answered, and reports how
  long they waited (5 rounds),
- times `hkconsole stats nodes` (a fresh process, median of 5; goal <= 1 s), the same with
  `--since 7d`, and `stats users`,
- puts 8,192 nodes in housekeeping (64 units of 128 `sleep 600`) and 100 drained, and
  times a `/metrics` scrape over HTTP (median and worst of 20; goal <= 50 ms), and how
  long requests wait while scrapes go on back to back (goal: never more than 50 ms),
- times the scrape thread's text for 16,384 agents' last-seen series, in this process
  (this benchmark's service has no agents),
- stops the service and prunes half the history in the service's batches, reporting the
  longest batch (the longest a request waits behind pruning).

Every figure is printed with the load average of the moment: this machine is shared, and
wall times swing with it; CPU times (user + system) much less.

usage: .venv/bin/python bench/stats.py
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import zmq

from hkconsole.client import Client, ServiceError, wait_for_service
from hkservice.metrics import Gauges, gauges_text
from hkservice.protocol import pack, request
from hkservice.stats import PRUNE_BATCH
from hkservice.store import Store

NODES = 16_384
RUNS = 1_000_000
DAYS = 80
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def fill(state_dir: Path, now: float) -> None:
    state_dir.mkdir(mode=0o700)
    store = Store(state_dir)
    rnd = random.Random(12)
    db = store.db
    runs: list[tuple[float, int, float, int, int, str, str | None]] = []
    units: list[tuple[int, int, float, float, str, str, int]] = []
    jobid = 0
    t = now - DAYS * 86400
    sizes = (1, 4, 16, 64, 256)
    step = DAYS * 86400 / (RUNS / (sum(sizes) / len(sizes)))
    while len(runs) < RUNS:
        jobid += 1
        size = rnd.choice(sizes)
        first = rnd.randrange(NODES - size)
        userid = 1000 + rnd.randrange(200)
        t += step
        longest = 0.0
        failed = []
        for rank in range(first, first + size):
            duration = rnd.lognormvariate(3, 1)
            ok = rnd.random() > 0.02
            if not ok:
                failed.append(rank)
            longest = max(longest, duration)
            runs.append(
                (
                    t + duration,
                    rank,
                    duration,
                    userid,
                    jobid - (1 << 63),
                    "ok" if ok else "exit",
                    None if ok else "exited 1",
                )
            )
        ranks = f"{first}-{first + size - 1}" if size > 1 else str(first)
        units.append(
            (jobid - (1 << 63), userid, t, t + longest, ranks, ",".join(map(str, failed)), 1)
        )
    runs.sort()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO runs (t_end, rank, duration, userid, jobid, result, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        runs[:RUNS],
    )
    db.executemany(
        "INSERT INTO history (jobid, userid, t_start, t_end, ranks, failed, releases)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        units,
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def size_mb(state_dir: Path) -> float:
    return sum(p.stat().st_size for p in state_dir.glob("hk.db*")) / 1e6


def timed(argv: list[str], runs: int = 5) -> str:
    """Median wall time of a fresh process, and its CPU time (user + system): on this
    shared machine the wall time swings with the load, the CPU time much less."""
    times = []
    cpu = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return f"{statistics.median(times):.2f} s wall, {statistics.median(cpu):.2f} s CPU, {load()}"


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def service_cpu(pid: int) -> float:
    """CPU seconds (user + system) the service has used so far, all its threads."""
    return _cpu(Path(f"/proc/{pid}/stat"))


def loop_cpu(pid: int) -> float:
    """CPU seconds of the service's main thread alone: its event loop, which answers
    every request (worker threads' time is not in it). From schedstat, in nanoseconds:
    /proc's stat counts in 10 ms ticks, too coarse for this."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lists_while_asked(endpoint: str, method: str, params: dict[str, Any], rounds: int) -> str:
    """`housekeeping.list` round trips sent back to back while a `method` request with
    `params` is being answered, `rounds` times. The stats request goes out on a
    socket of its own and its reply is only read (not decoded) once it is there, so this
    process spends no time on it while the lists are timed."""
    waits: list[float] = []
    answers: list[float] = []
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        with Client(endpoint, timeout=30) as client:
            client.call("housekeeping.list")  # connected before the clock starts
            for round_id in range(1, rounds + 1):
                start = time.perf_counter()
                sock.send(pack(request(method, params, round_id)))
                while not sock.poll(0):
                    asked = time.perf_counter()
                    client.call("housekeeping.list")
                    waits.append(time.perf_counter() - asked)
                sock.recv()
                answers.append(time.perf_counter() - start)
    finally:
        sock.close()
    return (
        f"{len(waits)} lists answered while {rounds} {method} requests were (each "
        f"answered in {statistics.median(answers) * 1000:.0f} ms, median): median "
        f"{statistics.median(waits) * 1000:.1f} ms, worst {max(waits) * 1000:.1f} ms; {load()}"
    )


def request_waits(endpoint: str, meanwhile: str | None) -> tuple[float, float]:
    """Median and worst round trip (ms) of service.config, asked for 3 s while another
    process runs the Python code `meanwhile` (a loop of scrapes; its own process, not a
    thread here, whose share of this one's GIL would count as the service's)."""
    other = None
    if meanwhile is not None:
        other = subprocess.Popen([sys.executable, "-c", meanwhile], env=ENV)
        time.sleep(0.5)  # started and scraping
    waits = []
    try:
        with Client(endpoint, timeout=30) as client:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                start = time.perf_counter()
                client.call("service.config")
                waits.append((time.perf_counter() - start) * 1000)
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return statistics.median(waits), max(waits)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="hk-bench-", dir="/tmp"))
    os.chmod(base, 0o700)
    state_dir = base / "state"
    endpoint = f"ipc://{base}/hk.sock"
    port = free_port()
    proc: subprocess.Popen[bytes] | None = None
    try:
        now = time.time()
        start = time.perf_counter()
        fill(state_dir, now)
        print(
            f"history: {RUNS:,} runs on {NODES:,} nodes written in "
            f"{time.perf_counter() - start:.0f} s; database {size_mb(state_dir):.0f} MB "
            f"({size_mb(state_dir) * 1e6 / RUNS:.0f} bytes a run)"
        )
        config = base / "hk.toml"
        config.write_text(
            f'[cluster]\nhostlist = "node[0-{NODES - 1}]"\n'
            '[housekeeping]\ncommand = ["sleep", "600"]\n'
            f'[service]\nendpoint = "{endpoint}"\nstate-dir = "{state_dir}"\n'
            f'[metrics]\nendpoint = "127.0.0.1:{port}"\n'
        )
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hkservice", "-c", str(config), "--stop-commands-on-exit"],
            stdout=subprocess.DEVNULL,
            stderr=open(base / "service.log", "wb"),  # noqa: SIM115 - the child owns it
            env=ENV,
        )
        if not wait_for_service(endpoint, 120, alive=lambda: proc.poll() is None):
            print((base / "service.log").read_text())
            return 1
        serving = time.perf_counter() - start
        # The history loads in chunks between requests: how long a request waits meanwhile.
        waits = []
        with Client(endpoint, timeout=30) as client:
            while True:
                asked = time.perf_counter()
                client.call("service.config")
                waits.append(time.perf_counter() - asked)
                try:
                    client.call("stats.users", {"window": 1})
                    break
                except ServiceError as exc:
                    if exc.code != "EAGAIN":
                        raise
        print(
            f"service start: serving after {serving:.2f} s, history loaded after "
            f"{time.perf_counter() - start:.2f} s; meanwhile {len(waits)} requests answered "
            f"in {statistics.median(waits) * 1000:.1f} ms (median), "
            f"{max(waits) * 1000:.1f} ms (worst); {load()}"
        )

        hkconsole = [sys.executable, "-m", "hkconsole", "--endpoint", endpoint]
        week = {"window": 7 * 86400}
        sixty_days = {"window": 60 * 86400}
        asked = [
            ("stats.nodes", "first", {}),
            ("stats.nodes", "next", {}),
            ("stats.nodes", "--since 7d", week),
            ("stats.users", "all", {}),
            ("stats.users", "--since 7d", week),
            ("stats.users", "--since 60d", sixty_days),
        ]
        with Client(endpoint, timeout=30) as client:
            for method, which, params in asked:
                cpu = service_cpu(proc.pid)
                on_loop = loop_cpu(proc.pid)
                start = time.perf_counter()
                rows = client.call(method, params)[method.split(".")[1]]
                answered = time.perf_counter() - start
                print(
                    f"{method} request ({which}): {answered * 1000:.0f} ms wall, "
                    f"{(service_cpu(proc.pid) - cpu) * 1000:.0f} ms of service CPU, "
                    f"{(loop_cpu(proc.pid) - on_loop) * 1000:.1f} ms on the event loop "
                    f"({len(rows):,} rows); {load()}"
                )
        print(
            f"housekeeping.list while stats.nodes --since 7d: "
            f"{lists_while_asked(endpoint, 'stats.nodes', week, 5)}"
        )
        print(
            "housekeeping.list while stats.nodes: "
            f"{lists_while_asked(endpoint, 'stats.nodes', {}, 5)}"
        )
        print(
            "housekeeping.list while stats.users --since 60d: "
            f"{lists_while_asked(endpoint, 'stats.users', sixty_days, 5)}"
        )
        print(f"python3 -c pass, for scale: {timed([sys.executable, '-c', 'pass'])}")
        print(f"hkconsole stats nodes: {timed([*hkconsole, 'stats', 'nodes'])} (goal 1 s)")
        failing = timed([*hkconsole, "stats", "nodes", "-o", "failing"])
        print(f"hkconsole stats nodes -o failing (sorted): {failing}")
        as_json = timed([*hkconsole, "stats", "nodes", "-o", "json"])
        print(f"hkconsole stats nodes -o json: {as_json}")
        since = timed([*hkconsole, "stats", "nodes", "--since", "7d"])
        print(f"hkconsole stats nodes --since 7d: {since}")
        print(f"hkconsole stats users: {timed([*hkconsole, 'stats', 'users'])}")

        with Client(endpoint, timeout=30) as client:
            for unit in range(64):
                first = unit * 128
                client.call(
                    "housekeeping.start",
                    {"jobid": 10**9 + unit, "ranks": f"{first}-{first + 127}"},
                )
            client.call("resource.drain", {"ranks": f"{NODES - 100}-{NODES - 1}", "reason": "b"})
        time.sleep(5)
        url = f"http://127.0.0.1:{port}/metrics"
        scrapes = []
        body = b""
        cpu = service_cpu(proc.pid)
        for _ in range(20):
            start = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = reply.read()
            scrapes.append(time.perf_counter() - start)
        scrape_cpu = (service_cpu(proc.pid) - cpu) / 20
        housekeeping = [line for line in body.decode().splitlines() if line.startswith("hk_nodes{")]
        print(
            f"/metrics scrape, {NODES:,} nodes: median {statistics.median(scrapes) * 1000:.1f} ms,"
            f" worst {max(scrapes) * 1000:.1f} ms (goal 50 ms), {scrape_cpu * 1000:.1f} ms of"
            f" service CPU each, {len(body):,} bytes; {load()}; "
            + ", ".join(line.split("state=")[1] for line in housekeeping)
        )
        quiet = request_waits(endpoint, None)
        scraping = f"import urllib.request\nwhile True: urllib.request.urlopen({url!r}).read()"
        busy = request_waits(endpoint, scraping)
        print(
            f"requests while nothing else runs: median {quiet[0]:.1f} ms, worst {quiet[1]:.1f} ms;"
            f" while /metrics is scraped back to back: median {busy[0]:.1f} ms, worst"
            f" {busy[1]:.1f} ms (goal: never over 50 ms); {load()}"
        )
        agents = {f"node{i}": now + i / 1000 for i in range(NODES)}
        state = Gauges(NODES, set(range(NODES // 2)), set(), set(), 64, NODES // 2, 0, agents)
        start_cpu = time.process_time()
        text = gauges_text(state)
        print(
            f"gauges' text with {NODES:,} agents' last-seen series (scrape thread, in this "
            f"process): {(time.process_time() - start_cpu) * 1000:.0f} ms CPU, "
            f"{len(text):,} bytes; {load()}"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    try:
        store = Store(state_dir)
        cutoff = now - DAYS * 86400 / 2
        longest = 0.0
        pruned = 0
        start = time.perf_counter()
        while True:
            batch_start = time.perf_counter()
            gone = store.prune(cutoff, PRUNE_BATCH)
            longest = max(longest, time.perf_counter() - batch_start)
            pruned += gone
            if not gone:
                break
        print(
            f"pruning {pruned:,} rows (half the history) in batches of {PRUNE_BATCH}: "
            f"{time.perf_counter() - start:.1f} s in all, longest batch {longest * 1000:.1f} ms;"
            f" {load()}"
        )
        store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
