"""The local node agent: parent of every housekeeping command on this machine.

The service could spawn commands itself, but then a crash of the service would lose how
they ended. So they are children of this small, long-lived process instead: it spawns
each rank's command in its own session (a kill of the process group reaches the
command's children too), reaps it, and keeps every exit status until the service has
acknowledged it. A service that crashed and came back says hello and learns what is
still running and what ended while it was away. A remote agent on each node would speak
the same messages.

Messages are msgpack maps on a ZeroMQ ROUTER (agent) / DEALER (service) pair:
  service -> agent  {"op": "hello"}                      -> {"op": "hello", "running", "exits"}
                    {"op": "launch", "jobid", "userid", "ranks", "all_ranks", "argv",
                     "env", "hostnames"}
                    {"op": "signal", "jobid", "ranks", "signum"}
                    {"op": "ack", "seqs"}
                    {"op": "ping"}                         -> {"op": "pong"}
                    {"op": "shutdown", "kill": bool}       -> {"op": "bye"}
  agent -> service  {"op": "exits", "exits": [[seq, jobid, rank, status], ...]}
where status is "exit N", "signal N", "core N" or "launch <error text>". The service
acks an exit only once it has saved it. A shutdown with kill SIGKILLs every command and
sends their exits before the bye.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from hkservice.protocol import pack, unpack

log = logging.getLogger("hkservice.agent")

LAUNCH_CHUNK = 128
RESET_SIGNALS = tuple(
    s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
)
IDLE_EXIT_SECONDS = 30.0
KILL_REAP_SECONDS = 5.0


def status_text(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        kind = "core" if os.WCOREDUMP(wait_status) else "signal"
        return f"{kind} {os.WTERMSIG(wait_status)}"
    return f"exit {os.waitstatus_to_exitcode(wait_status)}"


class Agent:
    def __init__(self, run_dir: Path, endpoint: str, idle_exit: float = IDLE_EXIT_SECONDS) -> None:
        self.run_dir = run_dir
        self.endpoint = endpoint
        self.idle_exit = idle_exit
        self.by_pid: dict[int, tuple[int, int]] = {}
        self.by_rank: dict[tuple[int, int], int] = {}
        self.unacked: dict[int, tuple[int, int, str]] = {}
        self.seq = 0
        self.peer: bytes | None = None
        self._fresh: list[int] = []
        self._pending_sends: set[asyncio.Future[None]] = set()
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._done = asyncio.Event()
        self._last_activity = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        # The agent outlives service restarts on purpose: a stray terminal signal must
        # not take the commands' exit statuses with it.
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGTERM, self._done.set)
        sock = self._ctx.socket(zmq.ROUTER)
        # Never drop a message for a high-water mark: a launch lost is a unit stuck.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.bind(self.endpoint)
        self._sock = sock
        self._last_activity = loop.time()
        receiver = asyncio.create_task(self._receive())
        idle = asyncio.create_task(self._idle_watch())
        await self._done.wait()
        receiver.cancel()
        idle.cancel()
        sock.close(linger=0)
        self._ctx.term()

    async def _idle_watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.idle_exit))
            if self.by_pid or self.unacked:
                self._last_activity = loop.time()
            elif loop.time() - self._last_activity >= self.idle_exit:
                self._done.set()

    async def _receive(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            identity, body = (await self._sock.recv_multipart())[-2:]
            self._last_activity = loop.time()
            try:
                message = unpack(body)
                if not isinstance(message, dict):
                    raise ValueError("not a map")
                await self._handle(identity, message)
            except Exception as exc:  # a bad message must never cost the commands
                log.error("bad message from the service: %s", exc)

    async def _handle(self, identity: bytes, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "hello":
            self.peer = identity
            await self._send(
                {
                    "op": "hello",
                    "pid": os.getpid(),
                    "running": [list(key) for key in self.by_rank],
                    "exits": [[seq, *exit_] for seq, exit_ in self.unacked.items()],
                }
            )
        elif op == "launch":
            self.peer = identity
            await self._launch(message)
        elif op == "ping":
            self.peer = identity
            await self._send({"op": "pong"})
        elif op == "signal":
            self._signal(int(message["jobid"]), message["ranks"], int(message["signum"]))
        elif op == "ack":
            for seq in message.get("seqs", []):
                self.unacked.pop(seq, None)
        elif op == "shutdown":
            self.peer = identity
            if message.get("kill"):
                await self._kill_all()
            await self._send({"op": "bye"})
            self._done.set()

    async def _kill_all(self) -> None:
        """SIGKILL every command and report how they ended before saying bye: the
        service records them as killed rather than finding them gone at its next start."""
        for pid in list(self.by_pid):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_REAP_SECONDS
        while self.by_pid and loop.time() < deadline:
            await asyncio.sleep(0.01)
            self._reap()
        self._flush()
        if self._pending_sends:
            await asyncio.wait(self._pending_sends, timeout=KILL_REAP_SECONDS)

    async def _send(self, message: dict[str, Any]) -> None:
        if self._sock is not None and self.peer is not None:
            with contextlib.suppress(zmq.ZMQError):
                await self._sock.send_multipart([self.peer, pack(message)])

    async def _launch(self, message: dict[str, Any]) -> None:
        jobid = int(message["jobid"])
        argv: list[str] = message["argv"]
        base_env: dict[str, str] = message["env"]
        hostnames: list[str] = message["hostnames"]
        unit_dir = self.run_dir / str(jobid)
        unit_dir.mkdir(parents=True, exist_ok=True)
        shared = {
            "HK_JOB_ID": str(jobid),
            "HK_JOB_USERID": str(message["userid"]),
            "HK_JOB_RANKS": message["all_ranks"],
            "FLUX_JOB_ID": str(jobid),
            "FLUX_JOB_USERID": str(message["userid"]),
            "FLUX_JOB_RANKS": message["all_ranks"],
        }
        out_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        for i, rank in enumerate(message["ranks"]):
            if i and i % LAUNCH_CHUNK == 0:
                await asyncio.sleep(0)  # let exits be reaped while a large unit starts
            env = {**base_env, **shared, "HK_RANK": str(rank), "HK_HOSTNAME": hostnames[i]}
            try:
                pid = os.posix_spawnp(
                    argv[0],
                    argv,
                    env,
                    setsid=True,
                    # The agent ignores some signals and exec keeps ignored signals
                    # ignored: the commands must get every signal's default back.
                    setsigdef=RESET_SIGNALS,
                    setsigmask=(),
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, str(unit_dir / f"{rank}.out"), out_flags, 0o644),
                        (os.POSIX_SPAWN_OPEN, 2, str(unit_dir / f"{rank}.err"), out_flags, 0o644),
                    ],
                )
            except OSError as exc:
                self._record(jobid, rank, f"launch {exc.strerror}")
                continue
            self.by_pid[pid] = (jobid, rank)
            self.by_rank[(jobid, rank)] = pid
        self._reap()

    def _signal(self, jobid: int, ranks: list[int], signum: int) -> None:
        for rank in ranks:
            pid = self.by_rank.get((jobid, rank))
            if pid is None:
                continue
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass
            except OSError as exc:
                log.error("kill job %d rank %d: %s", jobid, rank, exc.strerror)

    def _record(self, jobid: int, rank: int, status: str) -> None:
        self.seq += 1
        self.unacked[self.seq] = (jobid, rank, status)
        self._fresh.append(self.seq)
        if len(self._fresh) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        fresh, self._fresh = self._fresh, []
        exits = [[seq, *self.unacked[seq]] for seq in fresh if seq in self.unacked]
        if exits:
            task = asyncio.ensure_future(self._send({"op": "exits", "exits": exits}))
            self._pending_sends.add(task)
            task.add_done_callback(self._pending_sends.discard)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            key = self.by_pid.pop(pid, None)
            if key is None:
                continue
            self.by_rank.pop(key, None)
            self._record(*key, status_text(wait_status))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hkservice-agent")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_SECONDS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s hkservice-agent %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    args.run_dir.mkdir(parents=True, exist_ok=True)
    # One agent per run directory: a second one would steal the socket from the first.
    lock = open(args.run_dir / "agent.lock", "w")  # noqa: SIM115 - held for the lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(Agent(args.run_dir, args.endpoint, args.idle_exit).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
