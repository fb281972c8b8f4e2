"""Load benchmark (not a test): a scheduler's starts beside clients that list in a loop.

A scheduler sends `housekeeping.start` at a steady rate on one connection, without
waiting for replies (pipelined, as a job-end hook queue would), while `--listers` clients
each keep one `housekeeping.list` in flight at all times. Printed: the start latency
(send to reply) p50, p99 and max, and how many lists were served meanwhile.

Target (issue 11, defect 7): start p99 under 50 ms at 100 starts/s beside 20 listing
clients. Before the fix, the ROUTER served one message per connection in turn and the
pipelined starts waited behind every lister: p50 0.3-8.9 s.

usage: .venv/bin/python bench/load.py [--rate 100] [--seconds 10] [--listers 20]
       [--units 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from hkconsole.client import Client, wait_for_service
from hkservice.protocol import pack, unpack

PROFILED = """
import cProfile, sys, time
from hkservice.main import main
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main, sys.argv[2:])
finally:
    profile.dump_stats(sys.argv[1])
"""


def start_service(base: Path, nodes: int) -> tuple[subprocess.Popen[bytes], str]:
    endpoint = f"ipc://{base}/hk.sock"
    config = base / "hk.toml"
    config.write_text(
        f'[cluster]\nhostlist = "node[0-{nodes - 1}]"\n'
        # Ranks under 1024 hold the units that make lists big; the starts measured use
        # ranks 1024 and up, whose command ends at once.
        '[housekeeping]\ncommand = ["sh", "-c", '
        '"if [ $HK_RANK -lt 1024 ]; then exec sleep 3600; fi"]\n'
        f'[service]\nendpoint = "{endpoint}"\nstate-dir = "{base}/state"\n'
    )
    # HK_PROFILE=FILE: the service runs under cProfile, its stats written to FILE; timed
    # in CPU time, so that waiting for the CPU on a busy machine does not show as cost.
    argv = ["--config", str(config), "--stop-commands-on-exit"]
    if "HK_PROFILE" in os.environ:
        command = [sys.executable, "-c", PROFILED, os.environ["HK_PROFILE"], *argv]
    else:
        command = [sys.executable, "-m", "hkservice", *argv]
    log = open(base / "service.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=log,
    )
    if not wait_for_service(endpoint, 20, alive=lambda: proc.poll() is None):
        raise SystemExit(f"hkservice did not start:\n{(base / 'service.log').read_text()}")
    return proc, endpoint


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used: unlike latencies, not inflated by
    other work on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(endpoint: str, rate: float, seconds: float, listers: int, first_job: int, pid: int) -> None:
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    scheduler = ctx.socket(zmq.DEALER)
    scheduler.connect(endpoint)
    poller.register(scheduler, zmq.POLLIN)
    list_body = pack({"v": 1, "id": 1, "method": "housekeeping.list"})
    clients = []
    for _ in range(listers):
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
        sock.send(list_body)
        poller.register(sock, zmq.POLLIN)
        clients.append(sock)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    errors: list[str] = []
    lists = 0
    total = int(rate * seconds)
    cpu_before = cpu_seconds(pid)
    start = time.perf_counter()
    next_id = 0
    while len(latencies) + len(errors) < total:
        now = time.perf_counter()
        due = start + next_id / rate
        while next_id < total and due <= now:
            jobid = first_job + next_id
            body = {"v": 1, "id": jobid, "method": "housekeeping.start"}
            body["params"] = {"jobid": jobid, "ranks": str(next_id % 1024 + 1024)}
            scheduler.send(pack(body))
            sent[jobid] = time.perf_counter()
            next_id += 1
            due = start + next_id / rate
        wait = max(0.0, due - time.perf_counter()) if next_id < total else 1.0
        for sock, _ in poller.poll(wait * 1000):
            reply = sock.recv()
            if sock is scheduler:
                message = unpack(reply)
                jobid = message["id"]
                if "error" in message:
                    errors.append(str(message["error"]))
                else:
                    latencies.append(time.perf_counter() - sent.pop(jobid))
            else:
                lists += 1
                sock.send(list_body)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu_before
    for sock in (scheduler, *clients):
        sock.close(linger=0)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    print(
        f"starts: {len(latencies)} at {rate:g}/s beside {listers} listing clients; "
        f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (target < 50 ms), max {latencies[-1] * 1000:.1f} ms; "
        f"{lists} lists served ({lists / elapsed:.0f}/s); service CPU {cpu:.2f} s "
        f"({cpu / elapsed * 100:.0f}% of a core); load average {os.getloadavg()[0]:.1f}"
        + (f"; {len(errors)} errors, first: {errors[0]}" if errors else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="starts per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--listers", type=int, default=20)
    parser.add_argument(
        "--units", type=int, default=200, help="units in progress before (lists carry them)"
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hk-load-", dir="/tmp"))
    proc, endpoint = start_service(base, 2048)
    try:
        with Client(endpoint, timeout=10) as client:
            for i in range(args.units):
                client.call("housekeeping.start", {"jobid": 1_000_000 + i, "ranks": str(i)})
        run(endpoint, args.rate, args.seconds, 0, 1, proc.pid)
        run(endpoint, args.rate, args.seconds, args.listers, 100_001, proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
