"""Node agents (issue 9): `hkservice agent` processes, each with its own CURVE key,
connected over loopback TCP to a service with an [agents] section: real handshakes, real
commands, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hkservice import keys
from tests.conftest import RunningService, ServiceFactory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A service with [agents], and the node agents' keys and processes."""

    svc: RunningService
    port: int
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.svc.base

    @property
    def authorised(self) -> Path:
        return self.base / "agents"

    def key(self, name: str, hosts: str | None, authorise: bool = True) -> Path:
        """A key pair for an agent; its public half in the service's agents keys."""
        public, secret = keys.keygen(self.base / "nodekeys", name, hosts)
        if authorise:
            self.authorised.mkdir(exist_ok=True)
            public.rename(self.authorised / public.name)
        return secret

    def start_agent(self, name: str, secret: Path, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.base / f"agent-{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hkservice",
                "agent",
                "--connect",
                f"tcp://127.0.0.1:{self.port}",
                "--key",
                str(secret),
                "--server-key",
                str(self.base / "keys" / "server.key"),
                "--run-dir",
                str(self.base / f"run-{name}"),
                "--retry",
                "0.3",
                *extra,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.agents[name] = proc
        return proc

    def agent_log(self, name: str) -> str:
        return (self.base / f"agent-{name}.log").read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        return self.svc.call("resource.status")

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s; last status: {status}")

    def stop_all(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def agents_cluster(hk_service: ServiceFactory) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(
        command: Callable[[Path], list[str]], hostlist: str = "node[0-3]", **agents: Any
    ) -> Cluster:
        svc = hk_service(start=False, hostlist=hostlist)
        svc.command = command(svc.base)
        port = free_port()
        keys.keygen(svc.base / "keys", "server")
        svc.service_options["keys-dir"] = str(svc.base / "keys")
        svc.tables["agents"] = {
            "endpoint": f"tcp://127.0.0.1:{port}",
            "keys": str(svc.base / "agents"),
            **agents,
        }
        (svc.base / "agents").mkdir()
        cluster = Cluster(svc, port)
        made.append(cluster)
        svc.start()
        return cluster

    yield make
    for cluster in made:
        if os.environ.get("HK_TEST_SHOW_LOGS"):
            print(cluster.svc.log())
        cluster.svc.stop()
        cluster.stop_all()
        # The commands the agents left (their own sessions): by the marker in their env.
        for pid in _commands_of(cluster.base):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _commands_of(base: Path) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                env = Path(f"/proc/{entry.name}/environ").read_bytes()
                if f"HK_STATE_MARK={base / 'state'}".encode() in env.split(b"\0"):
                    found.append(int(entry.name))
    return found


def cleanup_script(base: Path) -> list[str]:
    """Each rank writes its hostname and its parent's pid (the agent that started it);
    node2's fails, so it is drained."""
    out = base / "ran"
    out.mkdir()
    path = base / "cleanup.sh"
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$HK_HOSTNAME $PPID" >> {out}/$HK_RANK\n'
        '[ "$HK_HOSTNAME" = node2 ] && exit 3\n'
        "exit 0\n"
    )
    path.chmod(0o755)
    return [str(path)]


def test_four_agents_each_run_their_own_nodes_cleanup(
    agents_cluster: Callable[..., Cluster],
) -> None:
    """The issue's "done when": four agent processes, each with its own key, each
    command started by its own agent; release and drain as with the local agent; a
    stopped agent's node shows offline in `hkconsole nodes`."""
    cluster = agents_cluster(cleanup_script)
    # Before any agent connects, every node is offline.
    assert cluster.status()["offline"] == "0-3"
    for i in range(4):
        cluster.start_agent(f"node{i}", cluster.key(f"node{i}", f"node{i}"))
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 42, "ranks": "0-3", "userid": 1000})
    cluster.svc.wait_idle()
    probe = cluster.base / "ran"
    for i in range(4):
        host, ppid = (probe / str(i)).read_text().split()
        assert host == f"node{i}"
        assert int(ppid) == cluster.agents[f"node{i}"].pid
    status = cluster.status()
    assert [(d["ranks"], d["reason"]) for d in status["drained"]] == [
        ("2", "housekeeping@fj exit-code: exited 3")
    ]
    assert status["housekeeping"] == ""
    # Stopped, an agent's node shows offline (and since when).
    cluster.agents["node3"].send_signal(signal.SIGTERM)
    cluster.agents["node3"].wait(10)
    status = cluster.wait_status(lambda s: s["offline"] == "3", timeout=5)
    assert [g["ranks"] for g in status["offline_since"]] == ["3"]
    nodes = subprocess.run(
        [sys.executable, "-m", "hkconsole", "--endpoint", cluster.svc.endpoint, "nodes"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert nodes.returncode == 0, nodes.stderr
    offline = [line for line in nodes.stdout.splitlines() if "offline" in line]
    assert len(offline) == 1 and "node3" in offline[0], nodes.stdout
