"""The local node agent: parent of every housekeeping command on this machine.

The service could spawn commands itself, but then a crash of the service would lose how
they ended. So they are children of this small, long-lived process instead: it spawns
each rank's command in its own session (a kill of the process group reaches the
command's children too), reaps it, and keeps every exit status until the service has
acknowledged it. A service that crashed and came back says hello and learns what is
still running and what ended while it was away. A remote agent on each node would speak
the same messages.

Messages are msgpack maps on a ZeroMQ ROUTER (agent) / DEALER (service) pair:
  service -> agent  {"op": "hello", "session"}          -> {"op": "hello", "pid", "running",
                                                             "exits"}
                    {"op": "launch", "session", "jobid", "userid", "ranks", "all_ranks",
                     "argv", "env", "hostnames"}
                    {"op": "signal", "session", "jobid", "ranks", "signum"}
                    {"op": "ack", "seqs"}
                    {"op": "ping", "session"}              -> {"op": "pong", "exits"}
                    {"op": "shutdown", "session", "kill"}  -> {"op": "bye"}
  agent -> service  {"op": "exits", "exits": [[seq, jobid, rank, status], ...]}
where status is "exit N", "signal N", "core N", "launch <error text>" or "lost <why>".

Sessions: each connection of the service says hello with a new session number, the
system-wide CLOCK_MONOTONIC in ns (so a later connection has a larger one, whichever
process made it); only that hello moves the agent's replies to the new connection, and
a hello older than the current session is ignored. A ROUTER
interleaves what it still holds from an old connection with the new one's messages, so
launches, pings and shutdowns of any other session are ignored: the new service was told
in its hello what is running, and relaunches what the agent never saw. Signals and acks
are honoured from any session (they only act on what is running or already saved).

Exits are sent as they happen and again with every pong until acknowledged; the service
acks an exit only once it has saved it. A shutdown with kill SIGKILLs every command,
skips the launches queued before it (reported as `launch not started as the service
stopped`), sends every exit and then the bye; the agent exits once they are all
acknowledged, and otherwise keeps them for the next service.

The journal (run/agent.journal) records every launch, exit and ack before it matters, so
a new agent that finds its predecessor died (kill -9, OOM) kills the commands it left
running (their exit status is unknowable: reported `lost the local agent died`) and
takes over its unacknowledged exits. After a reboot nothing is killed: `lost the
machine restarted`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import resource
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from hkservice.protocol import AGENT_MAX_MESSAGE_BYTES, pack, unpack
from hkservice.statedir import (
    DIR_MODE,
    FILE_MODE,
    StateError,
    create_private,
    ownership_problem,
    private_dir,
)

log = logging.getLogger("hkservice.agent")

LAUNCH_CHUNK = 128
RESET_SIGNALS = tuple(
    s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
)
IDLE_EXIT_SECONDS = 30.0
KILL_REAP_SECONDS = 5.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
NOT_STARTED = "launch not started as the service stopped"
REBOOTED = "lost the machine restarted"
_IDSET = re.compile(r"[0-9][0-9,-]*")


def status_text(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        kind = "core" if os.WCOREDUMP(wait_status) else "signal"
        return f"{kind} {os.WTERMSIG(wait_status)}"
    return f"exit {os.waitstatus_to_exitcode(wait_status)}"


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> int | None:
    """When a process started (clock ticks since boot): with its pid, names it uniquely."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def agent_socket_options(sock: zmq.Socket[Any]) -> None:
    """What every socket between the service and an agent sets, at either end."""
    # Never block or drop for a high-water mark: a launch lost is a unit stuck.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # Dropped by libzmq before it is read: whoever sends a huge message (a local user
    # with access to the socket, a stolen node key) costs neither end its memory.
    sock.setsockopt(zmq.MAXMSGSIZE, AGENT_MAX_MESSAGE_BYTES)


def install_signal_wakeup() -> None:
    """asyncio wakes on signals through a socketpair; a burst of thousands of SIGCHLDs
    while the loop is busy fills it, and each further signal would print "Exception
    ignored when trying to write to the signal wakeup fd". The bytes only say "look at
    the signals": one is enough, so a full buffer is no error. Call after the last
    add_signal_handler, which sets the fd again."""
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd, warn_on_full_buffer=False)


class UntrustedJournal(StateError):
    """The journal could have been written by someone else: it is not acted on."""


@dataclass(frozen=True)
class UnitLine:
    """What the journal keeps of a unit for `hkservice --recover`: who and which ranks."""

    userid: int
    t_start: float
    ranks: str

    def line(self, jobid: int) -> str:
        return f"J {jobid} {self.userid} {self.t_start:.6f} {self.ranks}"


@dataclass
class JournalState:
    """What a journal says: the boot it was written in, the commands that may still be
    running ((jobid, rank) -> (pid, start time), None if its agent died spawning them),
    the exits not acknowledged and the units launched."""

    boot: str | None = None
    running: dict[tuple[int, int], tuple[int, int] | None] = field(default_factory=dict)
    exits: list[tuple[int, int, str]] = field(default_factory=list)
    units: dict[int, UnitLine] = field(default_factory=dict)


class Journal:
    """Append-only record of launches, exits and acks, written before they matter.

    Lines: `B boot-id`, `J jobid userid t_start all-ranks` (a unit's first launch),
    `S jobid rank...` (about to spawn), `L jobid rank pid start`, `E seq jobid rank
    status`, `A seq...`. Only a write reaching the kernel is needed (a crash of the
    agent, not of the machine, is what it covers): no fsync. It decides which process
    groups a new agent kills: one that someone else owns or may write is not trusted.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._fd: int | None = None
        self._failed = False

    def _read(self) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UntrustedJournal(f"the journal {self.path}: {exc.strerror}") from None
        try:
            problem = ownership_problem(os.fstat(fd), "file")
            if problem is not None:
                raise UntrustedJournal(
                    f"the journal {self.path} {problem}: a forged line in it could make the "
                    "agent kill any process group; not trusted (check it, then move it away)"
                )
            with os.fdopen(os.dup(fd), "rb") as fh:
                return fh.read().decode(errors="replace")
        finally:
            os.close(fd)

    def replay(self) -> JournalState:
        """What a dead predecessor left (or a live agent has written so far)."""
        state = JournalState()
        text = self._read()
        if text is None:
            return state
        exits: dict[int, tuple[int, int, str]] = {}
        # The last line counts only once its newline is written: a line cut short by a
        # crash could otherwise still parse, as other numbers.
        for line in text.split("\n")[:-1]:
            parts = line.split(" ")
            try:
                match parts[0]:
                    case "B":
                        state.boot = parts[1]
                    case "J":
                        state.units[int(parts[1])] = UnitLine(
                            int(parts[2]), float(parts[3]), parts[4]
                        )
                    case "S":
                        jobid = int(parts[1])
                        for rank in parts[2:]:
                            state.running.setdefault((jobid, int(rank)), None)
                    case "L":
                        state.running[(int(parts[1]), int(parts[2]))] = (
                            int(parts[3]),
                            int(parts[4]),
                        )
                    case "E":
                        key = (int(parts[2]), int(parts[3]))
                        state.running.pop(key, None)
                        exits[int(parts[1])] = (*key, " ".join(parts[4:]))
                    case "A":
                        for seq in parts[1:]:
                            exits.pop(int(seq), None)
            except (ValueError, IndexError):
                continue
        state.exits = list(exits.values())
        return state

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            if self._fd is None:
                self._fd = create_private(self.path, os.O_WRONLY | os.O_APPEND)
            os.write(self._fd, ("\n".join(lines) + "\n").encode())
            self.lines += len(lines)
            self._failed = False
        except OSError as exc:
            if not self._failed:  # once per spell of failures (a full disk)
                log.error("cannot write the journal %s: %s", self.path, exc)
            self._failed = True

    def rewrite(self, lines: list[str]) -> None:
        """Replace the journal with what is still true (it only grows otherwise)."""
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = create_private(tmp, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(fd, "wb") as fh:
                fh.write("".join(f"{line}\n" for line in lines).encode())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot rewrite the journal %s: %s", self.path, exc)
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.lines = len(lines)

    def remove(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink()


class Agent:
    # Who it is in what it reports: a command it left running when it died ends
    # "lost <what> died" (the node agent says so for its nodes).
    what = "the local agent"

    def __init__(self, run_dir: Path, endpoint: str, idle_exit: float = IDLE_EXIT_SECONDS) -> None:
        self.run_dir = run_dir
        self.endpoint = endpoint
        self.idle_exit = idle_exit
        self.by_pid: dict[int, tuple[int, int]] = {}
        self.by_rank: dict[tuple[int, int], int] = {}
        self.start_times: dict[int, int] = {}
        self.unacked: dict[int, tuple[int, int, str]] = {}
        # The `J` line of each unit with commands running or exits unacknowledged.
        self.units: dict[int, UnitLine] = {}
        self.seq = 0
        self.peer: bytes | None = None
        self.session: int | None = None
        self.boot = _boot_id()
        self.journal = Journal(run_dir / "agent.journal")
        self._resend_upto = 0
        self._fresh: list[int] = []
        self._pending_sends: set[asyncio.Future[None]] = set()
        self._inbox: collections.deque[tuple[bytes, dict[str, Any]]] = collections.deque()
        self._inbox_ready = asyncio.Event()
        # The session whose kill-shutdown has been received but not yet handled: its
        # launches queued ahead of it are not started.
        self._stopping_session: int | None = None
        self._bye_sent = False
        self._newest_hello = 0
        self._dealt_with = 0
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._done = asyncio.Event()
        self._last_activity = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._take_over()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        # The agent outlives service restarts on purpose: a stray terminal signal must
        # not take the commands' exit statuses with it.
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGTERM, self._done.set)
        install_signal_wakeup()
        self._sock = self._open_socket()
        self._last_activity = loop.time()
        tasks = [
            asyncio.create_task(self._transport()),
            asyncio.create_task(self._work()),
            asyncio.create_task(self._idle_watch()),
        ]
        await self._done.wait()
        await self._leaving()
        for task in tasks:
            task.cancel()
        self._close_socket()
        self._ctx.term()
        if not self.by_pid and not self.unacked:
            self.journal.remove()  # nothing left to take over: a clean exit

    # -- the transport: the local agent binds a ROUTER the service connects to; a node
    # agent (hkservice.nodeagent) overrides these to connect out to the service.

    def _open_socket(self) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        agent_socket_options(sock)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.bind(self.endpoint)
        if self.endpoint.startswith("ipc://"):
            # Whoever can connect can run commands as this user: the run directory is
            # 0700 already, and the socket is made private too, whatever the umask.
            os.chmod(self.endpoint[len("ipc://") :], FILE_MODE)
        return sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    async def _transport(self) -> None:
        """Receive for as long as the agent runs."""
        await self._receive()

    async def _leaving(self) -> None:
        """Last words before the socket closes (none: the service notices by pings)."""

    def _split(self, frames: list[bytes]) -> tuple[bytes, bytes]:
        """(who sent it, the message) from a received multipart message."""
        identity, body = frames[-2:]
        return identity, body

    def _session_from_the_future(self, session: int) -> bool:
        """Sessions are this machine's monotonic clock at the time of the hello: one from
        the future was made up, and taking it would shut the real service out (every
        hello of its own would then look older)."""
        return session > time.monotonic_ns()

    def _take_over(self) -> None:
        """Kill what a predecessor that died left running, and keep its exits."""
        state = self.journal.replay()
        boot, running, exits = state.boot, state.running, state.exits
        self.units = state.units
        if boot is None and not running and not exits:
            self.journal.rewrite([f"B {self.boot}"])
            return
        same_boot = boot == self.boot
        killed = 0
        for (jobid, rank), spawned in sorted(running.items()):
            if not same_boot:
                status = REBOOTED
            elif spawned is None:
                status = f"lost {self.what} died as it started the command"
            else:
                status = f"lost {self.what} died"
                pid, started = spawned
                # The pid is ours if it still has the start time we saw, or if it is no
                # process at all (the group may outlive its leader, and a pid is not
                # reused while its group exists).
                now = _start_time(pid)
                if now is None or now == started:
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)
                        killed += 1
            self.seq += 1
            self.unacked[self.seq] = (jobid, rank, status)
        for exit_ in exits:
            self.seq += 1
            self.unacked[self.seq] = exit_
        log.warning(
            "took over from an agent that died: %d commands it left %s, %d exits it had "
            "not delivered",
            len(running),
            f"(killed {killed} process groups)" if same_boot else "(the machine restarted)",
            len(exits),
        )
        self.journal.rewrite(self._journal_state())

    def _journal_state(self) -> list[str]:
        lines = [f"B {self.boot}"]
        live = {jobid for jobid, _ in self.by_rank} | {j for j, _, _ in self.unacked.values()}
        self.units = {jobid: u for jobid, u in self.units.items() if jobid in live}
        lines.extend(u.line(jobid) for jobid, u in self.units.items())
        for pid, (jobid, rank) in self.by_pid.items():
            lines.append(f"L {jobid} {rank} {pid} {self.start_times.get(pid, 0)}")
        for seq, (jobid, rank, status) in self.unacked.items():
            lines.append(f"E {seq} {jobid} {rank} {status}")
        return lines

    async def _idle_watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.idle_exit))
            if self.journal.lines > 4 * (len(self.by_pid) + len(self.unacked)) + 10_000:
                self.journal.rewrite(self._journal_state())
            if self.by_pid or self.unacked:
                self._last_activity = loop.time()
            elif loop.time() - self._last_activity >= self.idle_exit:
                self._done.set()

    async def _receive(self) -> None:
        """Read everything as it comes, so that a shutdown can overtake the launches
        queued ahead of it."""
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        # Everything already queued is read at once, not one message per turn of the
        # loop: hundreds of launches may be ahead of the shutdown.
        now = zmq.Socket.shadow(self._sock.underlying)
        while True:
            frames = [await self._sock.recv_multipart()]
            with contextlib.suppress(zmq.Again):
                while True:
                    frames.append(now.recv_multipart(zmq.NOBLOCK))
            self._last_activity = loop.time()
            for frame in frames:
                self._take(*self._split(frame))
            self._inbox_ready.set()

    def _take(self, identity: bytes, body: bytes) -> None:
        try:
            message = unpack(body)
            if not isinstance(message, dict):
                raise ValueError("not a map")
        except Exception as exc:
            log.error("bad message from the service: %s", exc)
            return
        if message.get("op") == "shutdown" and message.get("kill"):
            self._stopping_session = message.get("session")
        session = message.get("session")
        if message.get("op") == "hello" and isinstance(session, int):
            if self._session_from_the_future(session):
                log.warning("ignored a hello whose session is ahead of the monotonic clock")
                return
            # Launches queued ahead of a new connection's hello are from a connection
            # that is gone: not started (the new service learns so from its hello and
            # relaunches them), rather than started for nobody.
            self._newest_hello = max(self._newest_hello, session)
        self._inbox.append((identity, message))

    async def _work(self) -> None:
        while True:
            await self._inbox_ready.wait()
            while self._inbox:
                identity, message = self._inbox.popleft()
                try:
                    await self._handle(identity, message)
                except Exception as exc:  # a bad message must never cost the commands
                    log.error("bad message from the service: %s", exc)
                # A turn of the loop between messages: exits are reaped and what came
                # in since (a shutdown, a new hello) is read, however long the queue.
                await asyncio.sleep(0)
            self._inbox_ready.clear()

    def _current(self, message: dict[str, Any]) -> bool:
        session = message.get("session")
        if (
            self.session is not None
            and session == self.session
            and (message.get("op") != "launch" or session >= self._newest_hello)
        ):
            return True
        log.info("ignored %s of an earlier connection", message.get("op"))
        return False

    async def _handle(self, identity: bytes, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "hello":
            session = message.get("session")
            if not isinstance(session, int) or (
                self.session is not None and session < self.session
            ):
                # Queued from a connection that has since been replaced: answering it
                # would move the replies away from the live one.
                log.info("ignored hello of an earlier connection")
                return
            self.peer = identity
            self.session = session
            self._bye_sent = False
            self._resend_upto = self.seq
            await self._send(
                {
                    "op": "hello",
                    "pid": os.getpid(),
                    "running": [list(key) for key in self.by_rank],
                    "exits": [[seq, *exit_] for seq, exit_ in self.unacked.items()],
                }
            )
        elif op == "launch" and self._current(message):
            await self._launch(message)
        elif op == "ping" and self._current(message):
            # Exits the service has not acknowledged since the last ping went astray (or
            # are still being saved: a repeat is harmless, it is acked again).
            again = [
                [seq, *exit_] for seq, exit_ in self.unacked.items() if seq <= self._resend_upto
            ]
            self._resend_upto = self.seq
            await self._send({"op": "pong", "exits": again})
        elif op == "signal":
            self._signal(int(message["jobid"]), message["ranks"], int(message["signum"]))
        elif op == "ack":
            seqs = [int(seq) for seq in message.get("seqs", [])]
            for seq in seqs:
                self.unacked.pop(seq, None)
            self.journal.write([f"A {' '.join(map(str, seqs))}"] if seqs else [])
            self._maybe_exit_after_bye()
        elif op == "shutdown" and self._current(message):
            if message.get("kill"):
                await self._kill_all()
                self._stopping_session = None
            await self._send({"op": "bye"})
            self._bye_sent = True
            self._maybe_exit_after_bye()

    def _maybe_exit_after_bye(self) -> None:
        """After the bye the agent goes once the service has acked every exit; if it
        never does, they wait for the next service like any other."""
        if self._bye_sent and not self.unacked and not self.by_pid:
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
        ranks = [int(r) for r in message["ranks"]]
        session = message.get("session")
        self._dealt_with = 0
        try:
            await self._spawn_all(jobid, ranks, message, session)
        except Exception as exc:
            # Whatever stopped it (the output directory cannot be made on a full disk, a
            # malformed message), every rank not started ends now with the reason, or
            # its unit would wait for it forever.
            error = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                error = f"{error}: {exc.filename}"
            started = self._dealt_with
            log.error("job %d: cannot start %d ranks: %s", jobid, len(ranks) - started, error)
            for rank in ranks[started:]:
                self._record(jobid, rank, f"launch {error}")
        self._reap()

    async def _spawn_all(
        self, jobid: int, ranks: list[int], message: dict[str, Any], session: object
    ) -> None:
        """Spawn each rank's command, counting in _dealt_with the ranks spawned or
        recorded as failed (the rest, after an exception, fail with its reason)."""
        unit: UnitLine | None = None
        if jobid not in self.units and _IDSET.fullmatch(message["all_ranks"]):
            # What `hkservice --recover` needs of the unit, should the database be lost.
            unit = UnitLine(int(message["userid"]), time.time(), message["all_ranks"])
        unit_dir = self.run_dir / str(jobid)
        unit_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        # Opened without following a symlink and checked: output must never be written
        # through something planted in the output tree.
        dir_fd = os.open(unit_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(dir_fd)
            problem = ownership_problem(st, "directory")
            if problem is not None:
                raise OSError(errno.EPERM, f"the output directory {problem}", str(unit_dir))
            if stat.S_IMODE(st.st_mode) != DIR_MODE:
                os.fchmod(dir_fd, DIR_MODE)
            await self._spawn_chunks(jobid, ranks, message, session, dir_fd, unit)
        finally:
            os.close(dir_fd)

    async def _spawn_chunks(
        self,
        jobid: int,
        ranks: list[int],
        message: dict[str, Any],
        session: object,
        dir_fd: int,
        unit: UnitLine | None,
    ) -> None:
        argv: list[str] = message["argv"]
        base_env: dict[str, str] = message["env"]
        hostnames: list[str] = message["hostnames"]
        unit_dir = self.run_dir / str(jobid)
        shared = {
            "HK_JOB_ID": str(jobid),
            "HK_JOB_USERID": str(message["userid"]),
            "HK_JOB_RANKS": message["all_ranks"],
            "FLUX_JOB_ID": str(jobid),
            "FLUX_JOB_USERID": str(message["userid"]),
            "FLUX_JOB_RANKS": message["all_ranks"],
        }
        for first in range(0, len(ranks), LAUNCH_CHUNK):
            if first:
                await asyncio.sleep(0)  # let exits be reaped while a large unit starts
            if isinstance(session, int) and session < self._newest_hello:
                log.info(
                    "job %d: %d ranks not started: a new connection said hello",
                    jobid,
                    len(ranks) - first,
                )
                return
            if session is not None and self._stopping_session == session:
                for rank in ranks[first:]:
                    self._record(jobid, rank, NOT_STARTED)
                return
            chunk = ranks[first : first + LAUNCH_CHUNK]
            # Journaled before the spawn: an agent dying in between leaves a trace.
            spawning = f"S {jobid} {' '.join(map(str, chunk))}"
            if unit is not None:
                self.journal.write([unit.line(jobid), spawning])
                self.units[jobid] = unit
                unit = None
            else:
                self.journal.write([spawning])
            spawned: list[str] = []
            for i, rank in enumerate(chunk, first):
                if (jobid, rank) in self.by_rank:
                    self._dealt_with = i + 1
                    continue  # already running: never twice at once
                env = {**base_env, **shared, "HK_RANK": str(rank), "HK_HOSTNAME": hostnames[i]}
                outputs: list[int] = []
                try:
                    for stream in ("out", "err"):
                        outputs.append(_open_output(dir_fd, f"{rank}.{stream}", unit_dir))
                except OSError as exc:
                    for fd in outputs:
                        os.close(fd)
                    self._record(jobid, rank, f"launch {exc.strerror}: {exc.filename}")
                    self._dealt_with = i + 1
                    continue
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
                            (os.POSIX_SPAWN_DUP2, outputs[0], 1),
                            (os.POSIX_SPAWN_DUP2, outputs[1], 2),
                        ],
                    )
                except OSError as exc:
                    self._record(jobid, rank, f"launch {exc.strerror}")
                    self._dealt_with = i + 1
                    continue
                finally:
                    for fd in outputs:
                        os.close(fd)
                started_at = _start_time(pid) or 0
                self.by_pid[pid] = (jobid, rank)
                self.by_rank[(jobid, rank)] = pid
                self.start_times[pid] = started_at
                spawned.append(f"L {jobid} {rank} {pid} {started_at}")
                self._dealt_with = i + 1
            self.journal.write(spawned)

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
        # Journaled before they are sent: once the service has them it may ack them.
        self.journal.write(
            [f"E {seq} {jobid} {rank} {status}" for seq, jobid, rank, status in exits]
        )
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
            self.start_times.pop(pid, None)
            self.by_rank.pop(key, None)
            self._record(*key, status_text(wait_status))


def _open_output(dir_fd: int, name: str, unit_dir: Path) -> int:
    """A rank's output file, 0600, appended to; never a symlink, FIFO or device."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        FILE_MODE,
        dir_fd=dir_fd,
    )
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(unit_dir / name))
    # Not left non-blocking for the command (it changes nothing for a regular file, but
    # the command inherits the flag).
    os.set_blocking(fd, True)
    return fd


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
    args.run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        private_dir(args.run_dir, "the run directory")
    except StateError as exc:
        log.error("%s", exc)
        return 1
    # One agent per run directory: a second one would steal the socket from the first.
    lock = os.fdopen(create_private(args.run_dir / "agent.lock"), "wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(Agent(args.run_dir, args.endpoint, args.idle_exit).run())
    except UntrustedJournal as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
