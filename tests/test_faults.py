"""kill -9 of the service at random moments of a burst of starts, kills and launches.

Now and then the agent is held still (launches queue for it) or killed too (its
commands are then lost, never rerun). After 20 rounds the invariants must hold: no
command run twice for a (job, rank), no unit lost, no release twice, every node idle or
drained with a reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

from hkconsole.client import Client, ServiceError
from hkservice.idset import parse_idset
from hkservice.protocol import unpack
from tests.conftest import ServiceFactory

ROUNDS = 20
NODES = 8


class Releases:
    """Every housekeeping.released event, across restarts (the SUB socket reconnects)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.count: Counter[tuple[int, int]] = Counter()
        self.ended: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"housekeeping.")
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                topic, body = sock.recv_multipart()
                event = unpack(body)
                if topic == b"housekeeping.released":
                    for rank in parse_idset(event["ranks"]):
                        self.count[(event["jobid"], rank)] += 1
                elif topic == b"housekeeping.ended":
                    self.ended.add(event["jobid"])
        finally:
            sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def burst(
    endpoint: str, rng: random.Random, jobids: list[int], acked: set[int], errors: list[str]
) -> None:
    """Starts and kills, as fast as one connection goes, until the service dies."""
    try:
        _burst(endpoint, rng, jobids, acked)
    except Exception as exc:
        errors.append(repr(exc))


def _burst(endpoint: str, rng: random.Random, jobids: list[int], acked: set[int]) -> None:
    with Client(endpoint, timeout=1.0) as client:
        try:
            for jobid in jobids:
                first = rng.randrange(NODES)
                last = rng.randrange(first, NODES)
                ranks = str(first) if first == last else f"{first}-{last}"
                client.call("housekeeping.start", {"jobid": jobid, "ranks": ranks})
                acked.add(jobid)
                if rng.random() < 0.3:
                    target = rng.choice(sorted(acked))
                    signum = rng.choice([15, 9])
                    try:
                        client.call("housekeeping.kill", {"jobid": target, "signum": signum})
                    except ServiceError as exc:
                        if exc.code != "ENOENT":  # it may have ended already
                            raise
        except ServiceError as exc:
            if exc.code not in ("EHOSTDOWN", "EINTERNAL"):
                raise


def test_kill_9_at_random_points_of_a_burst_keeps_every_invariant(
    hk_service: ServiceFactory, script: Any, tmp_path: Path
) -> None:
    seed = int(os.environ.get("HK_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    runs = tmp_path / "runs"
    # Short commands of different lengths, some failing: launches, exits and releases
    # are all in flight when the service dies.
    cmd = script(
        f"""
        echo "$HK_JOB_ID $HK_RANK" >> "{runs}"
        sleep 0.$(( (HK_JOB_ID + HK_RANK) % 4 ))
        [ $(( (HK_JOB_ID * 3 + HK_RANK) % 11 )) -eq 0 ] && exit 1
        exit 0
        """
    )
    svc = hk_service(
        hostlist=f"node[0-{NODES - 1}]",
        command=[cmd],
        release_after="0",
        stop_commands_on_exit=False,
    )
    releases = Releases(svc.events_endpoint)
    acked: set[int] = set()
    errors: list[str] = []
    stopped: list[int] = []
    sent: set[int] = set()
    next_jobid = 1
    try:
        for round_ in range(ROUNDS):
            if round_:
                svc.start()
            jobids = list(range(next_jobid, next_jobid + rng.randrange(5, 25)))
            next_jobid = jobids[-1] + 1
            sent.update(jobids)
            worker = threading.Thread(target=burst, args=(svc.endpoint, rng, jobids, acked, errors))
            # Now and then the agent is held still, as on a loaded machine, so that
            # launches queue up for it and the next service's hello lands among them.
            agent = svc.agent_pid() if rng.random() < 0.3 else None
            if agent is not None:
                os.kill(agent, signal.SIGSTOP)
            worker.start()
            time.sleep(rng.uniform(0.0, 0.4))
            svc.kill9()
            if agent is None and rng.random() < 0.15:
                # The agent too: its commands are killed and reported lost, never rerun.
                dead = svc.agent_pid()
                if dead is not None:
                    os.kill(dead, signal.SIGKILL)
            worker.join(10)
            assert not worker.is_alive()
            assert not errors, errors
            if agent is not None:
                threading.Timer(rng.uniform(0.2, 1.0), os.kill, (agent, signal.SIGCONT)).start()
                stopped.append(agent)
        svc.start()
        svc.wait_idle(timeout=60)
        assert not svc.proc or svc.proc.poll() is None
        time.sleep(0.3)  # the last events reach the subscriber
    finally:
        releases.stop()
        for pid in stopped:  # never leave one stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    context = f"(seed {seed}: HK_FAULT_SEED={seed} reproduces the bursts)"

    # No command ran twice for a (job, rank), and each rank of each unit ran once.
    ran = Counter(tuple(map(int, line.split())) for line in runs.read_text().splitlines())
    twice = {key: n for key, n in ran.items() if n > 1}
    assert not twice, f"ran more than once: {twice} {context}"
    history = svc.call("housekeeping.history", {"limit": 10_000})["units"]
    ended = {u["jobid"]: u for u in history}
    expected = {(j, r) for j, u in ended.items() for r in parse_idset(u["ranks"])}
    assert set(ran) <= expected, context
    # A rank that never got to run was killed before its command wrote a line: failed.
    failed_keys = {(j, r) for j, u in ended.items() for r in parse_idset(u["failed"])}
    assert expected - set(ran) <= failed_keys, f"{sorted(expected - set(ran))} {context}"

    # No unit lost: every acknowledged start ended (and nothing is left running); a
    # start the service died answering either ended too or was never saved.
    assert acked <= set(ended), f"units lost: {sorted(acked - set(ended))} {context}"
    assert set(ended) <= sent
    assert svc.call("housekeeping.list")["units"] == []

    # No release twice.
    released_twice = {key: n for key, n in releases.count.items() if n > 1}
    assert not released_twice, f"released twice: {released_twice} {context}"

    # Every node idle or drained with a reason, every failed rank drained.
    status = svc.call("resource.status")
    assert status["housekeeping"] == ""
    drained = {r for d in status["drained"] for r in parse_idset(d["ranks"])}
    assert all(d["reason"] for d in status["drained"])
    failed = {r for u in history for r in parse_idset(u["failed"])}
    assert failed <= drained, context
