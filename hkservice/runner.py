"""Runners: where each rank's housekeeping command runs.

The core decides; a runner only launches, signals and reports how commands ended. The
local runner hands the commands to the local agent (hkservice.agent), which is their
parent and keeps their exit statuses across a crash or restart of the service. A remote
node agent or a systemd runner implements the same `Runner` interface.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq
import zmq.asyncio

from hkservice.agent import agent_socket_options
from hkservice.config import DEFAULT_AGENT_SILENCE, Config
from hkservice.core import Outcome
from hkservice.protocol import pack, unpack
from hkservice.statedir import DIR_MODE, create_private
from hkservice.tail import REPLY_BYTES, open_output, tail_lines

log = logging.getLogger("hkservice.runner")

AGENT_START_TIMEOUT = 10.0
# Also how soon the death of the agent is noticed (its pid is checked with each ping).
PING_SECONDS = 1.0
SHUTDOWN_TIMEOUT = 30.0

# (jobid, rank, outcome, receipt): the receipt, when not None, goes back through
# Runner.ack once the outcome is saved; until then the runner keeps the exit status.
ExitCallback = Callable[[int, int, Outcome, int | None], None]
# Ranks the service believes running that the agent never started: launch them again.
RelaunchCallback = Callable[[list[tuple[int, int]]], None]


@dataclass(frozen=True)
class LaunchSpec:
    jobid: int
    userid: int
    ranks: tuple[int, ...]
    all_ranks: str


# Ranks per launch message: with a hostname each, a launch stays far below the agents'
# message limit (AGENT_MAX_MESSAGE_BYTES) however large the unit.
LAUNCH_RANKS = 4096


def launch_messages(
    spec: LaunchSpec,
    ranks: Sequence[int],
    argv: list[str],
    env: Mapping[str, str],
    hostname: Callable[[int], str],
) -> Iterator[dict[str, Any]]:
    """The launch messages of `ranks` of a unit, for one agent."""
    for first in range(0, len(ranks), LAUNCH_RANKS):
        chunk = list(ranks[first : first + LAUNCH_RANKS])
        yield {
            "op": "launch",
            "jobid": spec.jobid,
            "userid": spec.userid,
            "ranks": chunk,
            "all_ranks": spec.all_ranks,
            "argv": argv,
            "env": env,
            "hostnames": [hostname(r) for r in chunk],
        }


class Runner(Protocol):
    def set_exit_callback(self, callback: ExitCallback) -> None: ...

    async def start(
        self, expected: Callable[[], Iterable[tuple[int, int]]], relaunch: RelaunchCallback
    ) -> None:
        """Connect; `expected()` gives the (jobid, rank) the service believes are running.

        Those that ended while the service was away are reported through the exit
        callback, those the agent never started go to `relaunch`, the rest are adopted.
        The same reconciliation runs again whenever the runner has to reconnect.
        """
        ...

    @property
    def down_since(self) -> float | None:
        """When the runner lost its agent (wall clock), None while it is connected."""
        ...

    def agents_seen(self) -> dict[str, float]:
        """Each connected agent (by the node or key it serves) -> when it last said
        anything, wall clock: for metrics."""
        ...

    def launch(self, spec: LaunchSpec) -> None: ...

    def signal(self, jobid: int, ranks: Iterable[int], signum: int) -> None: ...

    def ack(self, receipts: list[int]) -> None:
        """The outcomes with these receipts are saved: the runner may forget them."""
        ...

    def output(self, jobid: int, ranks: Iterable[int], tail: int) -> dict[str, object]:
        """`{"lines": [[rank, stream, text], ...], "truncated": bool}`: the last `tail`
        lines of each rank's stdout and stderr; truncated if the reply's size limit left
        ranks out."""
        ...

    def has_output(self, jobid: int) -> list[int] | None: ...

    def forget(self, jobid: int) -> None: ...

    async def stop_commands(self) -> None:
        """SIGKILL every command; their exits come through the exit callback."""
        ...

    def offline_nodes(self) -> dict[int, float] | None:
        """Ranks whose agent is not connected, with since when; None: one agent for all
        (down_since says)."""
        ...

    def zap_domains(self) -> dict[bytes, Callable[[bytes, str], bytes | None]]:
        """ZAP domains the runner's own CURVE sockets use: domain -> the User-Id of an
        accepted public key (z85), or None to refuse it."""
        ...

    async def close(self) -> None: ...


def make_runner(config: Config, ctx: zmq.asyncio.Context) -> Runner:
    """The node agents' runner with an [agents] section, else the local agent's."""
    if config.agents is None:
        return LocalRunner(
            config.command,
            config.state_dir / "run",
            config.cluster.hostname,
            silence=config.agent_silence,
        )
    from hkservice.agents import AgentsRunner
    from hkservice.endpoints import server_key

    secret = server_key(config)
    if secret is None:
        raise RuntimeError(
            f"[agents] needs the service's key {config.key_dir}/server.key_secret "
            "(hkservice keygen server --dir KEYS-DIR)"
        )
    return AgentsRunner(
        config.agents, config.cluster, config.command, ctx, secret, config.state_dir
    )


DOOMED_PREFIX = ".deleting-"


@functools.cache
def _deleter() -> concurrent.futures.ThreadPoolExecutor:
    """One thread deletes old output, in order, so deletes never pile up in parallel."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hk-delete")


def parse_status(text: str) -> Outcome:
    kind, _, rest = text.strip().partition(" ")
    try:
        if kind == "exit":
            return Outcome("exit", code=int(rest))
        if kind == "signal":
            return Outcome("signal", signal=int(rest))
        if kind == "core":
            return Outcome("core", signal=int(rest))
    except ValueError:
        pass
    if kind == "launch":
        return Outcome("launch", code=127, text=rest)
    if kind == "lost":
        return Outcome("lost", text=rest)
    return Outcome("lost", text=f"unreadable exit status '{text.strip()}'")


class LocalRunner:
    """Every rank's command is a real process on this machine, child of the local agent."""

    def __init__(
        self,
        command: list[str],
        run_dir: Path,
        hostname: Callable[[int], str],
        base_env: Mapping[str, str] | None = None,
        keep_finished: int = 100,
        silence: float = DEFAULT_AGENT_SILENCE,
    ) -> None:
        self.command = command
        self.silence = silence
        self.run_dir = run_dir
        self.hostname = hostname
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.keep_finished = keep_finished
        self.endpoint = f"ipc://{run_dir}/agent.sock"
        self._callback: ExitCallback = lambda jobid, rank, outcome, receipt: None
        self._ctx = zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._hello: asyncio.Future[dict[str, Any]] | None = None
        self._finished_units: list[int] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._expected: Callable[[], Iterable[tuple[int, int]]] = lambda: ()
        self._relaunch: RelaunchCallback = lambda keys: None
        self._keepalive: asyncio.Task[None] | None = None
        self._last_heard = 0.0
        # When the agent last said anything (wall clock); None: never.
        self._last_seen: float | None = None
        self._bye: asyncio.Future[None] | None = None
        self._session = 0
        self._agent_pid: int | None = None
        self._spawned: list[subprocess.Popen[bytes]] = []
        self._down_since: float | None = time.time()
        # Signals decided while the agent was unreachable (timeouts, SIGKILL escalations):
        # sent once a new connection has said hello.
        self._held_signals: list[dict[str, Any]] = []
        run_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def set_exit_callback(self, callback: ExitCallback) -> None:
        self._callback = callback

    def offline_nodes(self) -> dict[int, float] | None:
        return None

    def zap_domains(self) -> dict[bytes, Callable[[bytes, str], bytes | None]]:
        return {}

    def unit_dir(self, jobid: int) -> Path:
        return self.run_dir / str(jobid)

    # -- the agent connection -----------------------------------------------

    @property
    def down_since(self) -> float | None:
        return self._down_since

    def agents_seen(self) -> dict[str, float]:
        if self._down_since is not None or self._last_seen is None:
            return {}
        return {socket.gethostname(): self._last_seen}

    async def start(
        self, expected: Callable[[], Iterable[tuple[int, int]]], relaunch: RelaunchCallback
    ) -> None:
        self._expected = expected
        self._relaunch = relaunch
        self._prune_output({jobid for jobid, _ in expected()})
        await self._reconcile()
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        """Ping the agent; if it died or stops answering, start a new one and reconcile.

        The pings also keep an idle agent from exiting while this service runs.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_SECONDS)
            if self._sock is not None:
                self._send({"op": "ping"})
                if not self._agent_alive():
                    log.error(
                        "the local agent (pid %s) died: starting a new one; the commands it "
                        "left running are killed and reported lost",
                        self._agent_pid,
                    )
                elif loop.time() - self._last_heard > self.silence:
                    log.error(
                        "the local agent (pid %s) stopped answering: its nodes are offline "
                        "until it answers again",
                        self._agent_pid,
                    )
                else:
                    continue
            # No connection (any more): reconnect, starting a new agent if need be.
            self._down_since = self._down_since or time.time()
            await self._close_socket()
            try:
                await self._reconcile()
            except RuntimeError as exc:
                log.error("%s", exc)

    def _agent_alive(self) -> bool:
        pid = self._agent_pid
        if pid is None:
            return True
        for proc in self._spawned:
            if proc.pid == pid:
                # Our own child: a dead one stays a zombie until polled.
                return proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    async def _reconcile(self) -> None:
        hello, expected_set = await self._connect()
        self._agent_pid = int(hello.get("pid", 0)) or None
        running = {(int(j), int(r)) for j, r in hello["running"]}
        ended: dict[tuple[int, int], tuple[int, str]] = {}
        saved: list[int] = []
        for seq, jobid, rank, status in hello["exits"]:
            key = (int(jobid), int(rank))
            if key in expected_set:
                ended[key] = (int(seq), status)
            else:
                # Not running as far as the saved state knows: its outcome was saved
                # before the acknowledgement got through.
                saved.append(seq)
        never: list[tuple[int, int]] = []
        for key in sorted(expected_set):
            if key in ended:
                seq, status = ended[key]
                self._callback(*key, parse_status(status), seq)
            elif key in running:
                log.info("adopted job %d rank %d (still running)", *key)
            else:
                # Neither this agent nor, through its journal, any agent before it has
                # seen the launch: it went down with an old connection or was ignored as
                # from one. Nothing ran: start it now.
                never.append(key)
        self.ack(saved)
        if self._down_since is not None:
            log.info("the local agent (pid %s) answers", self._agent_pid)
        self._down_since = None
        if never:
            self._relaunch(never)
        held, self._held_signals = self._held_signals, []
        for message in held:
            self._send(message)

    async def _connect(self) -> tuple[dict[str, Any], set[tuple[int, int]]]:
        """Say hello on a new connection; returns the hello and what the service
        believed running when it said it (what it starts after, it launches after the
        hello, on this connection: the agent sees those in order)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGENT_START_TIMEOUT
        spawned = False
        while True:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            agent_socket_options(sock)
            sock.connect(self.endpoint)
            self._sock = sock
            # CLOCK_MONOTONIC is one clock for every process on the machine: the agent can
            # tell a later hello from an earlier one still queued from a dead connection.
            self._session = time.monotonic_ns()
            self._hello = loop.create_future()
            self._reader = loop.create_task(self._read())
            expected = set(self._expected())
            self._send({"op": "hello"})
            try:
                return await asyncio.wait_for(asyncio.shield(self._hello), 0.5), expected
            except TimeoutError:
                pass
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            sock.close(linger=0)
            self._sock = None
            if loop.time() > deadline:
                raise RuntimeError(f"the local agent did not answer at {self.endpoint}")
            if not spawned:
                self._spawn_agent()
                spawned = True

    def _spawn_agent(self) -> None:
        log_path = self.run_dir / "agent.log"
        self._spawned = [proc for proc in self._spawned if proc.poll() is None]
        with os.fdopen(create_private(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hkservice.agent",
                    "--run-dir",
                    str(self.run_dir),
                    "--endpoint",
                    self.endpoint,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                close_fds=True,
            )
        self._spawned.append(proc)

    async def _read(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while True:
            message = unpack(await sock.recv())
            self._last_heard = asyncio.get_running_loop().time()
            self._last_seen = time.time()
            if not isinstance(message, dict):
                continue
            op = message.get("op")
            if op == "hello" and self._hello is not None and not self._hello.done():
                self._hello.set_result(message)
            elif op == "bye":
                if self._bye is not None and not self._bye.done():
                    self._bye.set_result(None)
            elif op in ("pong", "exits"):
                # Acknowledged only once saved (Runner.ack): a service killed in between
                # learns these exits again from the agent instead of calling them lost.
                for seq, jobid, rank, status in message.get("exits", []):
                    self._callback(int(jobid), int(rank), parse_status(status), int(seq))

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            # Launches need not be kept: the reconciliation relaunches what the agent
            # never saw. Acks neither: the agent reports those exits again.
            if message["op"] == "signal":
                self._held_signals.append(message)
            return
        message["session"] = self._session
        task = asyncio.ensure_future(self._sock.send(pack(message)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- commands -----------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> None:
        for message in launch_messages(
            spec, spec.ranks, self.command, self.base_env, self.hostname
        ):
            self._send(message)

    def signal(self, jobid: int, ranks: Iterable[int], signum: int) -> None:
        self._send({"op": "signal", "jobid": jobid, "ranks": list(ranks), "signum": signum})

    def ack(self, receipts: list[int]) -> None:
        if receipts:
            self._send({"op": "ack", "seqs": receipts})

    async def _stop_pinging(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None

    async def stop_commands(self) -> None:
        await self._stop_pinging()
        if self._sock is None:
            log.error("the local agent is not reachable: the commands keep running")
            return
        # The agent skips the launches still queued ahead of this and kills the rest,
        # then sends every exit and says bye: wait for that rather than guess a linger
        # time. It goes once the exits are acknowledged (Runner.ack, after saving).
        self._bye = asyncio.get_running_loop().create_future()
        self._send({"op": "shutdown", "kill": True})
        log.info("asked the local agent to stop every command")
        try:
            await asyncio.wait_for(self._bye, SHUTDOWN_TIMEOUT)
            log.info("the local agent stopped every command")
        except TimeoutError:
            log.error(
                "the local agent did not confirm it stopped the commands: the next start "
                "learns how they ended"
            )

    async def close(self) -> None:
        await self._stop_pinging()
        if self._background:
            # The last acks, so that the agent can forget those exits and go.
            await asyncio.wait(self._background, timeout=5)
        await self._close_socket()

    async def _close_socket(self, linger: int = 0) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=linger)
            self._sock = None

    # -- output -------------------------------------------------------------

    def output(self, jobid: int, ranks: Iterable[int], tail: int) -> dict[str, object]:
        lines: list[list[object]] = []
        left = REPLY_BYTES
        try:
            unit_fd = os.open(self.unit_dir(jobid), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            # No output yet, or not a directory of ours to read.
            return {"lines": lines, "truncated": False}
        try:
            for rank in ranks:
                for stream in ("out", "err"):
                    if left <= 0:
                        return {"lines": lines, "truncated": True}
                    fd = open_output(f"{rank}.{stream}", unit_fd)
                    if fd is None:
                        continue
                    try:
                        for line in tail_lines(fd, tail, budget=left):
                            lines.append([rank, stream, line])
                            left -= len(line) + 1
                    finally:
                        os.close(fd)
        finally:
            os.close(unit_fd)
        return {"lines": lines, "truncated": False}

    def has_output(self, jobid: int) -> list[int] | None:
        """Ranks with kept output of a unit that has ended, or None if nothing is kept."""
        unit_dir = self.unit_dir(jobid)
        if not unit_dir.is_dir():
            return None
        return sorted({int(p.stem) for p in unit_dir.iterdir() if p.stem.isdigit()})

    def forget(self, jobid: int) -> None:
        """A unit ended: keep its output for a while, for operators reading failures."""
        if jobid in self._finished_units:
            self._finished_units.remove(jobid)
        self._finished_units.append(jobid)
        while len(self._finished_units) > self.keep_finished:
            self._discard(self.unit_dir(self._finished_units.pop(0)))

    def _discard(self, directory: Path) -> None:
        """Delete a unit's output off the event loop: a unit of thousands of ranks has as
        many files, and unlinking them inline held up every request (seconds in
        bench/load.py). The rename frees the name at once, so a jobid started again gets
        a fresh directory whatever the deleting thread is doing."""
        doomed = self.run_dir / f"{DOOMED_PREFIX}{directory.name}-{time.monotonic_ns()}"
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot set aside %s for deletion: %s", directory, exc)
            return
        _deleter().submit(shutil.rmtree, doomed, ignore_errors=True)

    def _prune_output(self, in_progress: set[int]) -> None:
        """Take up the output of units that ended before this start, oldest first, so
        the bound on kept output holds across restarts too."""
        ended: list[tuple[float, int]] = []
        with os.scandir(self.run_dir) as entries:
            for entry in entries:
                if entry.name.startswith(DOOMED_PREFIX) and entry.is_dir(follow_symlinks=False):
                    # Set aside by a service that stopped before deleting it.
                    _deleter().submit(shutil.rmtree, entry.path, ignore_errors=True)
                elif entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                    jobid = int(entry.name)
                    if jobid not in in_progress:
                        ended.append((entry.stat(follow_symlinks=False).st_mtime, jobid))
        self._finished_units = []
        for _, jobid in sorted(ended):
            self.forget(jobid)
