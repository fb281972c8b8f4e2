"""Runners: where each rank's housekeeping command runs.

The core decides; a runner only launches, signals and reports how commands ended. The
local runner runs every rank's command on this machine under `hk-wrap.pl`, which records
the exit status in the state directory, so a service that crashed and came back can
adopt commands still running and learn how the finished ones ended. A node-agent or a
systemd runner implements the same `Runner` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal as signal_module
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hkservice.core import Outcome

log = logging.getLogger("hkservice.runner")

WRAPPER = Path(__file__).with_name("hk-wrap.pl")
LAUNCH_CHUNK = 256

ExitCallback = Callable[[int, int, Outcome], None]


@dataclass(frozen=True)
class LaunchSpec:
    jobid: int
    userid: int
    ranks: tuple[int, ...]
    all_ranks: str


class Runner(Protocol):
    def set_exit_callback(self, callback: ExitCallback) -> None: ...

    async def launch(self, spec: LaunchSpec) -> dict[int, int]:
        """Start the command on every rank; return rank -> handle (pid) for persistence."""
        ...

    def signal(self, jobid: int, ranks: Iterable[int], signum: int) -> None: ...

    def adopt(self, jobid: int, rank: int) -> None:
        """Follow a rank started before a restart; report its end like any other."""
        ...

    def output(self, jobid: int, ranks: Iterable[int], tail: int) -> list[list[object]]: ...

    def forget(self, jobid: int) -> None: ...

    def close(self) -> None: ...


def parse_status(text: str) -> Outcome:
    kind, _, rest = text.strip().partition(" ")
    if kind == "exit":
        return Outcome("exit", code=int(rest))
    if kind == "signal":
        return Outcome("signal", signal=int(rest))
    if kind == "core":
        return Outcome("core", signal=int(rest))
    if kind == "launch":
        return Outcome("launch", code=127, text=rest)
    return Outcome("lost", text=f"unreadable exit status '{text.strip()}'")


def raise_fd_limit() -> None:
    # One pidfd per running rank: a 16k-node unit needs more than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class LocalRunner:
    """Every rank's command is a real process on this machine."""

    def __init__(
        self,
        command: list[str],
        run_dir: Path,
        hostname: Callable[[int], str],
        base_env: Mapping[str, str] | None = None,
        keep_finished: int = 100,
    ) -> None:
        perl = shutil.which("perl")
        if perl is None:
            raise RuntimeError("perl is needed by the local runner's rank wrapper; install perl")
        self._perl = perl
        self.command = command
        self.run_dir = run_dir
        self.hostname = hostname
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.keep_finished = keep_finished
        self._callback: ExitCallback = lambda jobid, rank, outcome: None
        # (jobid, rank) -> (pid, pidfd)
        self._procs: dict[tuple[int, int], tuple[int, int]] = {}
        self._finished_units: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._orphans: dict[tuple[int, int], int] | None = None
        raise_fd_limit()
        run_dir.mkdir(parents=True, exist_ok=True)

    def set_exit_callback(self, callback: ExitCallback) -> None:
        self._callback = callback

    def unit_dir(self, jobid: int) -> Path:
        return self.run_dir / str(jobid)

    # -- launch -------------------------------------------------------------

    def _env(self, spec: LaunchSpec, rank: int) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            HK_JOB_ID=str(spec.jobid),
            HK_JOB_USERID=str(spec.userid),
            HK_JOB_RANKS=spec.all_ranks,
            HK_RANK=str(rank),
            HK_HOSTNAME=self.hostname(rank),
            FLUX_JOB_ID=str(spec.jobid),
            FLUX_JOB_USERID=str(spec.userid),
            FLUX_JOB_RANKS=spec.all_ranks,
        )
        return env

    async def launch(self, spec: LaunchSpec) -> dict[int, int]:
        self._loop = asyncio.get_running_loop()
        unit_dir = self.unit_dir(spec.jobid)
        unit_dir.mkdir(parents=True, exist_ok=True)
        pids: dict[int, int] = {}
        for i, rank in enumerate(spec.ranks):
            if i and i % LAUNCH_CHUNK == 0:
                # Let requests and exits be served while a large unit is starting.
                await asyncio.sleep(0)
            argv = [self._perl, str(WRAPPER), str(unit_dir), str(rank), *self.command]
            try:
                pid = os.posix_spawn(
                    self._perl,
                    argv,
                    self._env(spec, rank),
                    setsid=True,
                    file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
                )
            except OSError as exc:
                self._callback(spec.jobid, rank, Outcome("launch", code=127, text=exc.strerror))
                continue
            pids[rank] = pid
            self._watch(spec.jobid, rank, pid)
        return pids

    def _watch(self, jobid: int, rank: int, pid: int) -> bool:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self._procs[(jobid, rank)] = (pid, pidfd)
        loop.add_reader(pidfd, self._on_exit, jobid, rank)
        return True

    def _on_exit(self, jobid: int, rank: int) -> None:
        entry = self._procs.pop((jobid, rank), None)
        if entry is None:
            return
        pid, pidfd = entry
        assert self._loop is not None
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        wrapper_status: int | None = None
        with contextlib.suppress(ChildProcessError):
            _, wrapper_status = os.waitpid(pid, 0)
        self._callback(jobid, rank, self._read_outcome(jobid, rank, wrapper_status))

    def _read_outcome(self, jobid: int, rank: int, wrapper_status: int | None) -> Outcome:
        path = self.unit_dir(jobid) / f"{rank}.status"
        try:
            return parse_status(path.read_text())
        except (OSError, ValueError):
            pass
        # No status file: the wrapper died with its command, which happens when the whole
        # process group got SIGKILL.
        if wrapper_status is not None and os.WIFSIGNALED(wrapper_status):
            return Outcome("signal", signal=os.WTERMSIG(wrapper_status))
        return Outcome("lost", text="the rank's wrapper ended without recording a status")

    # -- adoption after a restart -------------------------------------------

    def adopt(self, jobid: int, rank: int) -> None:
        self._loop = asyncio.get_running_loop()
        if self._orphans is None:
            self._orphans = self._find_wrappers()
        pid = self._orphans.pop((jobid, rank), None)
        if pid is not None and self._watch(jobid, rank, pid):
            log.info("adopted job %d rank %d (pid %d)", jobid, rank, pid)
            return
        path = self.unit_dir(jobid) / f"{rank}.status"
        outcome = (
            self._read_outcome(jobid, rank, None)
            if path.exists()
            else Outcome(
                "lost",
                text="command was not running after a service restart "
                "and left no exit status",
            )
        )
        self._loop.call_soon(self._callback, jobid, rank, outcome)

    def _find_wrappers(self) -> dict[tuple[int, int], int]:
        """Wrappers left running by an earlier service, found by their command line.

        Looking at the command line rather than trusting a saved pid means a pid reused
        since the crash can never be taken for one of ours.
        """
        found: dict[tuple[int, int], int] = {}
        wrapper = str(WRAPPER).encode()
        prefix = str(self.run_dir).encode() + b"/"
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
            except OSError:
                continue
            if len(argv) < 4 or argv[1] != wrapper or not argv[2].startswith(prefix):
                continue
            try:
                key = (int(argv[2][len(prefix) :]), int(argv[3]))
            except ValueError:
                continue
            found[key] = int(entry.name)
        return found

    # -- signals, output, cleanup -------------------------------------------

    def signal(self, jobid: int, ranks: Iterable[int], signum: int) -> None:
        for rank in ranks:
            entry = self._procs.get((jobid, rank))
            if entry is None:
                continue
            try:
                os.killpg(entry[0], signum)
            except ProcessLookupError:
                pass
            except OSError as exc:
                log.error("kill job %d rank %d: %s", jobid, rank, os.strerror(exc.errno or 0))

    def output(self, jobid: int, ranks: Iterable[int], tail: int) -> list[list[object]]:
        lines: list[list[object]] = []
        unit_dir = self.unit_dir(jobid)
        for rank in ranks:
            for stream in ("out", "err"):
                try:
                    with open(unit_dir / f"{rank}.{stream}", "rb") as fh:
                        data = _tail_bytes(fh, tail)
                except FileNotFoundError:
                    continue
                text = data.decode("utf-8", errors="replace").splitlines()
                lines.extend([rank, stream, line] for line in text[-tail:])
        return lines

    def forget(self, jobid: int) -> None:
        """A unit ended: keep its output for a while, for operators reading failures."""
        self._finished_units.append(jobid)
        while len(self._finished_units) > self.keep_finished:
            old = self._finished_units.pop(0)
            shutil.rmtree(self.unit_dir(old), ignore_errors=True)

    def running(self) -> int:
        return len(self._procs)

    def close(self) -> None:
        """Stop following commands (they keep running; a restart adopts them)."""
        for pid, pidfd in self._procs.values():
            del pid
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(pidfd)
            with contextlib.suppress(OSError):
                os.close(pidfd)
        self._procs.clear()

    def kill_all(self, signum: int = signal_module.SIGKILL) -> None:
        for pid, _ in self._procs.values():
            with contextlib.suppress(OSError):
                os.killpg(pid, signum)


def _tail_bytes(fh: object, lines: int, block: int = 8192) -> bytes:
    """The last `lines` lines of a file without reading all of it."""
    import io

    assert isinstance(fh, io.BufferedReader)
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    data = b""
    pos = size
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(block, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
    return data


