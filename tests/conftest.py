"""Shared fixtures: a real hkservice process on a private ipc endpoint."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hkconsole.client import Client, CurveKeys, reported_user, wait_for_service
from hkservice.text import acting

START_TIMEOUT = 15.0
# Who the service records as acting for this process's requests (`by` in the replies of
# kill, drain and undrain): its user, and the user it reports (SUDO_USER, USER).
ME = acting(pwd.getpwuid(os.getuid()).pw_name, reported_user())


def missing_part(reason: str) -> None:
    """Skip a test whose real part (Slurm, Prometheus, Chromium, root) is absent here.

    In CI (.ci/run sets HK_CI=1 and installs every part) an absent part is a failure, so a
    test can never pass there by skipping.
    """
    if os.environ.get("HK_CI"):
        pytest.fail(f"{reason}; .ci/run should have installed it")
    pytest.skip(reason)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


@dataclass
class RunningService:
    """One hkservice process; restartable on the same state directory."""

    base: Path
    hostlist: str
    command: list[str]
    options: dict[str, str] = field(default_factory=dict)
    stop_commands_on_exit: bool = True
    # Other tables of the config file: {"history": {"keep": "1s"}}.
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # [service] keys beyond endpoint and state-dir ("endpoint" replaces the ipc one), and
    # the CURVE keys the test's own clients use.
    service_options: dict[str, Any] = field(default_factory=dict)
    keys: CurveKeys | None = None
    preexec_fn: Callable[[], None] | None = None
    # More hkservice options for the next start (e.g. --recover), and its umask.
    args: list[str] = field(default_factory=list)
    umask: int = -1
    # A command the service runs under (`ip netns exec NS`): it must exec the rest.
    prefix: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return str(self.service_options.get("endpoint", f"ipc://{self.base}/hk.sock"))

    @property
    def events_endpoint(self) -> str:
        return f"{self.endpoint}-events"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def config_path(self) -> Path:
        return self.base / "hk.toml"

    @property
    def log_path(self) -> Path:
        return self.base / "service.log"

    def write_config(self) -> None:
        lines = [
            "[cluster]",
            f"hostlist = {toml_value(self.hostlist)}",
            "[housekeeping]",
            f"command = {toml_value(self.command)}",
            *(f"{k} = {toml_value(v)}" for k, v in self.options.items()),
            "[service]",
            f"endpoint = {toml_value(self.endpoint)}",
            f"state-dir = {toml_value(str(self.state_dir))}",
            *(f"{k} = {toml_value(v)}" for k, v in self.service_options.items() if k != "endpoint"),
        ]
        for name, table in self.tables.items():
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> RunningService:
        self.write_config()
        argv = [*self.prefix, sys.executable, "-m", "hkservice", "--config", str(self.config_path)]
        if self.stop_commands_on_exit:
            argv.append("--stop-commands-on-exit")
        argv.extend(self.args)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        env = {**os.environ, "HK_STATE_MARK": str(self.state_dir)}
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=self.preexec_fn,
            umask=self.umask,
        )
        log.close()
        proc = self.proc
        alive = lambda: proc.poll() is None  # noqa: E731
        if wait_for_service(self.endpoint, START_TIMEOUT, alive=alive, keys=self.keys):
            return self
        raise RuntimeError(f"hkservice did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self, timeout: float = 5.0) -> Client:
        return Client(self.endpoint, timeout=timeout, keys=self.keys)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.client() as client:
            return client.call(method, params)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll housekeeping.list until predicate(result) holds."""
        deadline = time.monotonic() + timeout
        result: dict[str, Any] = {}
        while time.monotonic() < deadline:
            result = self.call("housekeeping.list")
            if predicate(result):
                return result
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s; last list: {result}")

    def wait_idle(self, timeout: float = 10.0) -> None:
        self.wait_for(lambda r: not r["units"], timeout)

    def agent_pid(self) -> int | None:
        marker = str(self.state_dir).encode()
        for pid, argv in _processes():
            if b"hkservice.agent" in argv and marker in argv:
                return pid
        return None

    def command_pids(self) -> dict[tuple[int, int], int]:
        """(jobid, rank) -> pid of each housekeeping command of this service still alive."""
        agent = self.agent_pid()
        found: dict[tuple[int, int], int] = {}
        for pid, _ in _processes():
            with contextlib.suppress(OSError, ValueError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
                mine = ppid == agent or env.get(b"HK_STATE_MARK") == str(self.state_dir).encode()
                if mine and b"HK_JOB_ID" in env:
                    found[(int(env[b"HK_JOB_ID"]), int(env[b"HK_RANK"]))] = pid
        return found

    def kill_leftovers(self) -> None:
        """Kill the agent and the commands an abrupt stop left behind."""
        for pid in self.command_pids().values():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        agent = self.agent_pid()
        if agent is not None:
            with contextlib.suppress(OSError):
                os.kill(agent, signal.SIGKILL)


def _processes() -> Iterator[tuple[int, bytes]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), Path(f"/proc/{entry.name}/cmdline").read_bytes()


ServiceFactory = Callable[..., RunningService]


@pytest.fixture
def hk_service() -> Iterator[ServiceFactory]:
    services: list[RunningService] = []
    bases: list[Path] = []

    def factory(
        hostlist: str = "node[0-3]",
        command: list[str] | None = None,
        release_after: str | None = None,
        timeout: str | None = None,
        kill_grace: str | None = None,
        stop_commands_on_exit: bool = True,
        start: bool = True,
        warn_after: str | None = None,
        tables: dict[str, dict[str, Any]] | None = None,
    ) -> RunningService:
        # ipc paths must stay under the ~107-byte socket path limit: pytest's tmp_path
        # can be longer than that.
        base = Path(tempfile.mkdtemp(prefix="hk-", dir="/tmp"))
        bases.append(base)
        options = {
            key: value
            for key, value in (
                ("release-after", release_after),
                ("timeout", timeout),
                ("kill-grace", kill_grace),
                ("warn-after", warn_after),
            )
            if value is not None
        }
        svc = RunningService(
            base,
            hostlist,
            command or ["true"],
            options,
            stop_commands_on_exit=stop_commands_on_exit,
            tables=tables or {},
        )
        services.append(svc)
        return svc.start() if start else svc

    yield factory
    for svc in services:
        svc.stop()
        svc.kill_leftovers()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str], str]:
    """Write an executable shell script and return its path."""
    counter = iter(range(1000))

    def make(body: str) -> str:
        path = tmp_path / f"hk-script-{next(counter)}.sh"
        path.write_text("#!/bin/sh\n" + body.strip() + "\n")
        path.chmod(0o755)
        return str(path)

    return make


@pytest.fixture
def busy(hk_service: ServiceFactory) -> RunningService:
    """Three units of `sleep 600` on node[0-5] (jobs 101-103), two nodes free: the
    console tests' service with something to kill."""
    svc = hk_service(hostlist="node[0-7]", command=["sleep", "600"], release_after="0")
    for jobid, ranks in ((101, "0-1"), (102, "2-3"), (103, "4-5")):
        svc.call("housekeeping.start", {"jobid": jobid, "ranks": ranks})
    return svc
