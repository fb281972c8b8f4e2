"""Node agents (issue 9): `hkservice agent` processes, each with its own CURVE key,
connected over loopback TCP to a service with an [agents] section: real handshakes, real
commands, real signals."""

from __future__ import annotations

import contextlib
import os
import shutil
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
import zmq

from hkconsole.client import CurveKeys
from hkservice import keys
from hkservice.protocol import pack, unpack
from tests.conftest import RunningService, ServiceFactory, missing_part
from tests.test_cli_commands import BY
from tests.test_trust import raw_dealer, status, wait_disconnected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(
    port: int,
    secret: Path,
    server_key: Path,
    base: Path,
    name: str,
    *extra: str,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> subprocess.Popen[bytes]:
    """`hkservice agent` NAME connecting to HOST:PORT (from network namespace `netns`);
    its run directory and log (agent-NAME.log) in `base`."""
    log = open(base / f"agent-{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            *(["ip", "netns", "exec", netns] if netns else []),
            sys.executable,
            "-m",
            "hkservice",
            "agent",
            "--connect",
            f"tcp://{host}:{port}",
            "--key",
            str(secret),
            "--server-key",
            str(server_key),
            "--run-dir",
            str(base / f"run-{name}"),
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
    return proc


@dataclass
class Namespaces:
    """Network namespaces made by the test: `head` for the service, and one per node,
    each joined to the head by a veth pair (10.200.I.1 on the head's side, 10.200.I.2 on
    node I's); only these addresses are used."""

    head: str
    nodes: list[str]

    @property
    def head_address(self) -> str:
        return "10.200.0.1"

    def address_for(self, i: int) -> str:
        """The head's address on node i's link."""
        return f"10.200.{i}.1"

    def head_side(self, i: int) -> str:
        return f"{self.head}-{i}"

    def link(self, i: int, state: str) -> None:
        """Node i's link up or down (on the head's side): a partition, or its end."""
        ip("-n", self.head, "link", "set", self.head_side(i), state)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing_part("network namespaces need root and ip (iproute2)")
    tag = f"hk{os.getpid() % 100000}"
    made = Namespaces(f"{tag}h", [f"{tag}n0", f"{tag}n1"])
    try:
        ip("netns", "add", made.head)
    except subprocess.CalledProcessError as exc:
        missing_part(f"ip netns add failed: {exc.stderr.decode(errors='replace').strip()}")
    try:
        ip("-n", made.head, "link", "set", "lo", "up")
        for i, node in enumerate(made.nodes):
            ip("netns", "add", node)
            ip("link", "add", made.head_side(i), "type", "veth", "peer", "name", f"{node}x")
            ip("link", "set", made.head_side(i), "netns", made.head)
            ip("link", "set", f"{node}x", "netns", node)
            ip("-n", made.head, "addr", "add", f"10.200.{i}.1/24", "dev", made.head_side(i))
            ip("-n", node, "addr", "add", f"10.200.{i}.2/24", "dev", f"{node}x")
            ip("-n", made.head, "link", "set", made.head_side(i), "up")
            ip("-n", node, "link", "set", f"{node}x", "up")
            ip("-n", node, "link", "set", "lo", "up")
        yield made
    finally:
        for name in (made.head, *made.nodes):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


@dataclass
class Cluster:
    """A service with [agents], and the node agents' keys and processes."""

    svc: RunningService
    port: int
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the service's address, as the agents reach it

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

    def start_agent(
        self,
        name: str,
        secret: Path,
        *extra: str,
        netns: str | None = None,
        host: str | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = start_agent(
            self.port,
            secret,
            self.base / "keys" / "server.key",
            self.base,
            name,
            *extra,
            host=host or self.host,
            netns=netns,
        )
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
        command: Callable[[Path], list[str]],
        hostlist: str = "node[0-3]",
        netns: Namespaces | None = None,
        **agents: Any,
    ) -> Cluster:
        """netns: the service runs in netns.head, bound to every address there."""
        svc = hk_service(start=False, hostlist=hostlist)
        svc.command = command(svc.base)
        port = free_port()
        keys.keygen(svc.base / "keys", "server")
        svc.service_options["keys-dir"] = str(svc.base / "keys")
        svc.tables["agents"] = {
            "endpoint": f"tcp://{'*' if netns else '127.0.0.1'}:{port}",
            "keys": str(svc.base / "agents"),
            **agents,
        }
        if netns is not None:
            svc.prefix = ["ip", "netns", "exec", netns.head]
        (svc.base / "agents").mkdir()
        cluster = Cluster(svc, port, host=netns.head_address if netns else "127.0.0.1")
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
    # Its output stays on the nodes: the command says where, once the unit has ended too.
    hkconsole = [sys.executable, "-m", "hkconsole", "--endpoint", cluster.svc.endpoint]
    output = subprocess.run(
        [*hkconsole, "output", "-j", "42", "-r", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert output.returncode == 1
    assert f"on node1: {cluster.base}/run-node1/42/1.out and .err" in output.stderr
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
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(status["offline_since"][0]["t"]))
    assert f"no agent since {since}" in offline[0]
    # The agents are the nodes' daemons: a service that stops (killing every command)
    # leaves them waiting, and they reconnect to the next one by themselves.
    cluster.svc.stop()
    time.sleep(0.5)
    assert [cluster.agents[f"node{i}"].poll() for i in range(3)] == [None, None, None]
    cluster.svc.start()
    cluster.wait_status(lambda s: s["offline"] == "3")


def sleeper(base: Path) -> list[str]:
    """Each rank appends a line per run (a second run of a rank would show), then waits
    for its release file."""
    path = base / "cleanup.sh"
    (base / "ran").mkdir()
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$HK_HOSTNAME $PPID" >> {base}/ran/$HK_RANK\n'
        f"while [ ! -e {base}/go ]; do sleep 0.05; done\n"
    )
    path.chmod(0o755)
    return [str(path)]


def runs(cluster: Cluster, rank: int) -> list[str]:
    try:
        return (cluster.base / "ran" / str(rank)).read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_an_unknown_key_is_pending_once_then_connects_by_itself_once_authorised(
    agents_cluster: Callable[..., Cluster],
) -> None:
    """Unknown, the key is kept pending and the agent asks again quietly; its key copied
    in by hand later (a site provisioning keys itself), it gets in without a restart."""
    cluster = agents_cluster(cleanup_script, hostlist="node0")
    secret = cluster.key("node0", "node0", authorise=False)
    cluster.start_agent("node0", secret)
    wait_until(lambda: "does not know this agent's key" in cluster.agent_log("node0"))
    time.sleep(1.5)  # several tries (every 0.3 s)
    assert cluster.svc.log().count("is pending: `hkservice keys accept node0` trusts it") == 1
    assert cluster.agent_log("node0").count("does not know this agent's key") == 1
    assert cluster.status()["offline"] == "0"
    public = cluster.base / "nodekeys" / "node0.key"
    public.rename(cluster.authorised / "node0.key")
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 7, "ranks": "0"})
    cluster.svc.wait_idle()
    assert runs(cluster, 0) == [f"node0 {cluster.agents['node0'].pid}"]


def test_a_key_naming_a_host_outside_the_cluster_is_refused(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    cluster.start_agent("rogue", cluster.key("rogue", "node[1-2]"))
    cluster.start_agent("nohosts", cluster.key("nohosts", None))
    wait_until(lambda: cluster.svc.log().count("refused an agent") == 2)
    log = cluster.svc.log()
    assert "key 'rogue'" in log and "names hosts not in the cluster: node2" in log
    assert "key 'nohosts'" in log and "names no hosts" in log
    assert cluster.status()["offline"] == "0-1"


def test_an_agent_claiming_a_host_its_key_does_not_name_is_not_given_it(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    cluster.start_agent("node0", cluster.key("node0", "node0"), "--hosts", "node[0-1]")
    cluster.wait_status(lambda s: s["offline"] == "1")
    assert "claims node1, which its key does not name: ignored" in cluster.svc.log()


def test_a_node_without_agent_holds_its_ranks_then_they_start_when_it_connects(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    cluster.start_agent("node0", cluster.key("node0", "node0"))
    cluster.wait_status(lambda s: s["offline"] == "1")
    cluster.svc.call("housekeeping.start", {"jobid": 9, "ranks": "0-1"})
    wait_until(lambda: runs(cluster, 0) != [])
    time.sleep(0.5)
    unit = cluster.svc.call("housekeeping.list")["units"]
    assert len(unit) == 1 and unit[0]["pending"] == "1"
    assert runs(cluster, 1) == []
    cluster.start_agent("node1", cluster.key("node1", "node1"))
    cluster.svc.wait_idle()
    assert runs(cluster, 1) == [f"node1 {cluster.agents['node1'].pid}"]
    assert cluster.status()["drained"] == []


def test_a_node_without_agent_past_lost_after_is_drained_and_its_rank_ends_lost(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]", **{"lost-after": "2s"})
    cluster.start_agent("node0", cluster.key("node0", "node0"))
    cluster.wait_status(lambda s: s["offline"] == "1")
    cluster.svc.call("housekeeping.start", {"jobid": 11, "ranks": "0-1"})
    cluster.svc.wait_idle(timeout=15)
    status = cluster.status()
    assert [(d["ranks"], d["reason"]) for d in status["drained"]] == [
        ("1", "housekeeping@fC lost: no agent on node1 for 2s")
    ]
    # Its agent comes back: nothing of that unit is run there after all.
    cluster.start_agent("node1", cluster.key("node1", "node1"))
    cluster.wait_status(lambda s: s["offline"] == "")
    time.sleep(0.5)
    assert runs(cluster, 1) == []


def test_an_agent_killed_mid_cleanup_and_restarted_never_runs_a_rank_twice(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(sleeper, hostlist="node[0-1]")
    secrets = {f"node{i}": cluster.key(f"node{i}", f"node{i}") for i in range(2)}
    for name, secret in secrets.items():
        cluster.start_agent(name, secret)
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 13, "ranks": "0-1"})
    wait_until(lambda: runs(cluster, 0) != [] and runs(cluster, 1) != [])
    cluster.agents["node1"].kill()
    cluster.agents["node1"].wait()
    cluster.start_agent("node1", secrets["node1"])
    (cluster.base / "go").touch()
    cluster.svc.wait_idle(timeout=20)
    assert len(runs(cluster, 0)) == 1 and len(runs(cluster, 1)) == 1
    drained = cluster.status()["drained"]
    # node1's command outlived its agent: the new agent cannot know how it ended.
    assert [(d["ranks"], d["reason"]) for d in drained] == [
        ("1", "housekeeping@fE lost: the node agent died")
    ]


def test_a_service_killed_with_8_agents_connected_adopts_their_commands(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(sleeper, hostlist="node[0-7]")
    for i in range(8):
        cluster.start_agent(f"node{i}", cluster.key(f"node{i}", f"node{i}"))
    cluster.wait_status(lambda s: s["offline"] == "", timeout=20)
    cluster.svc.call("housekeeping.start", {"jobid": 17, "ranks": "0-7"})
    wait_until(lambda: all(runs(cluster, i) for i in range(8)))
    cluster.svc.kill9()
    cluster.svc.start()
    cluster.wait_status(lambda s: s["offline"] == "", timeout=15)
    (cluster.base / "go").touch()
    cluster.svc.wait_idle(timeout=15)
    # Each command ran once, by its own agent; every one adopted, none relaunched.
    for i in range(8):
        assert runs(cluster, i) == [f"node{i} {cluster.agents[f'node{i}'].pid}"]
    assert cluster.status()["drained"] == []
    log = cluster.svc.log()
    assert all(f"adopted job 17 rank {i} (still running)" in log for i in range(8))
    assert "launched again" not in log


def test_a_kill_names_the_offline_nodes_and_reaches_them_when_their_agent_connects(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(sleeper, hostlist="node[0-2]")
    for i in (0, 1):
        cluster.start_agent(f"node{i}", cluster.key(f"node{i}", f"node{i}"))
    cluster.wait_status(lambda s: s["offline"] == "2")
    cluster.svc.call("housekeeping.start", {"jobid": 19, "ranks": "0-2"})
    wait_until(lambda: runs(cluster, 0) != [] and runs(cluster, 1) != [])
    kill = subprocess.run(
        [sys.executable, "-m", "hkconsole", "--endpoint", cluster.svc.endpoint, "kill", "-j", "19"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert kill.returncode == 0, kill.stderr
    assert kill.stdout.splitlines() == [
        f"signalled 3 ranks of 1 unit with SIGTERM{BY}",
        "node2 offline: not signalled yet (sent when its agent connects)",
    ]
    wait_until(lambda: cluster.svc.call("housekeeping.list")["units"][0]["pending"] == "2")
    # The output stays on the nodes: said where, rather than nothing at all.
    hkconsole = [sys.executable, "-m", "hkconsole", "--endpoint", cluster.svc.endpoint]
    output = subprocess.run(
        [*hkconsole, "output", "-j", "19"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (output.returncode, output.stdout) == (0, "")
    base = cluster.base
    assert output.stderr == (
        "the output of job fL stays on its nodes, where their node agents wrote it: "
        f"on node0: {base}/run-node0/19/0.out and .err; "
        f"on node1: {base}/run-node1/19/1.out and .err; "
        "on node2: RUN-DIR/19/2.out and .err (hk does not fetch it)\n"
    )
    cluster.start_agent("node2", cluster.key("node2", "node2"))
    cluster.svc.wait_idle()
    assert len(runs(cluster, 2)) <= 1


def test_an_agent_stopped_past_lost_after_loses_its_ranks_and_its_late_exit_changes_nothing(
    agents_cluster: Callable[..., Cluster],
) -> None:
    cluster = agents_cluster(sleeper, hostlist="node[0-1]", **{"lost-after": "2s"})
    for i in range(2):
        cluster.start_agent(f"node{i}", cluster.key(f"node{i}", f"node{i}"))
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 23, "ranks": "0-1"})
    wait_until(lambda: runs(cluster, 0) != [] and runs(cluster, 1) != [])
    cluster.agents["node1"].send_signal(signal.SIGSTOP)
    try:
        (cluster.base / "go").touch()  # node0's command ends; node1's agent cannot tell
        cluster.svc.wait_idle(timeout=20)
        drained = cluster.status()["drained"]
        assert [(d["ranks"], d["reason"]) for d in drained] == [
            ("1", "housekeeping@fQ lost: no agent on node1 for 2s")
        ]
    finally:
        cluster.agents["node1"].send_signal(signal.SIGCONT)
    # Resumed, it reconnects and reports the exit it kept: recorded, nothing changes.
    cluster.wait_status(lambda s: s["offline"] == "", timeout=15)
    wait_until(lambda: "ended after it was reported lost" in cluster.svc.log())
    assert [(d["ranks"]) for d in cluster.status()["drained"]] == ["1"]
    assert len(runs(cluster, 1)) == 1


def test_a_huge_message_from_an_agent_key_costs_the_service_nothing(
    agents_cluster: Callable[..., Cluster],
) -> None:
    """A stolen node key sends 64 MiB: libzmq drops it with the connection, unread; the
    service neither grows nor stops serving that node's real agent."""
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    secret = cluster.key("node0", "node0")
    assert cluster.svc.proc is not None
    pid = cluster.svc.proc.pid
    before = status(pid, "VmHWM")
    mine = keys.load(secret, need_secret=True)
    assert mine.secret is not None
    server = keys.load(cluster.base / "keys" / "server.key")
    thief = raw_dealer(
        f"tcp://127.0.0.1:{cluster.port}", CurveKeys(mine.public, mine.secret, server.public)
    )
    thief.send(b"\x00" * (64 << 20))
    wait_disconnected(thief)
    cluster.start_agent("node0", secret)
    cluster.start_agent("node1", cluster.key("node1", "node1"))
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 3, "ranks": "0-1"})
    cluster.svc.wait_idle()
    assert runs(cluster, 0) == [f"node0 {cluster.agents['node0'].pid}"]
    assert status(pid, "VmHWM") - before < 16 * 1024


def test_a_huge_message_from_the_service_end_costs_the_agent_nothing(tmp_path: Path) -> None:
    """The other direction: whatever holds the service's key (here a bare ROUTER with it)
    sends a node agent 64 MiB; the agent drops it unread, reconnects and says ready."""
    keys.keygen(tmp_path, "server")
    secret = keys.keygen(tmp_path, "node0", "node0")[1]
    server = keys.load(tmp_path / "server.key_secret", need_secret=True)
    assert server.secret is not None
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    agent = start_agent(port, secret, tmp_path / "server.key", tmp_path, "node0")

    def ready() -> bytes:
        assert router.poll(10_000), "the agent did not say ready"
        routing_id, body = router.recv_multipart()
        assert unpack(body)["op"] == "ready"
        return routing_id

    try:
        routing_id = ready()
        before = status(agent.pid, "VmHWM")
        router.send_multipart([routing_id, b"\x00" * (64 << 20)])
        ready()  # a new connection after libzmq dropped the old one
        assert agent.poll() is None
        assert status(agent.pid, "VmHWM") - before < 16 * 1024
    finally:
        agent.kill()
        agent.wait()
        router.close()
        ctx.term()


def keys_command(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hkservice",
            "keys",
            "--config",
            str(cluster.svc.config_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_enrolment_accept_reject_and_revoke(agents_cluster: Callable[..., Cluster]) -> None:
    """`hkservice keys`: two unknown agents are listed pending with the hosts they claim;
    one accepted gets in by itself and runs its node's cleanup, the other rejected is
    refused from then on; the accepted one revoked is disconnected at once."""
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    for i in range(2):
        cluster.start_agent(f"node{i}", cluster.key(f"node{i}", f"node{i}", authorise=False))
    wait_until(lambda: cluster.svc.log().count("is pending") == 2)
    listed = keys_command(cluster, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [row[:3] for row in rows] == [
        ["pending", "node0", "node0"],
        ["pending", "node1", "node1"],
    ]
    assert all(row[4].startswith("127.0.0.1") for row in rows), listed.stdout
    accepted = keys_command(cluster, "accept", "node0")
    assert accepted.returncode == 0, accepted.stderr
    cluster.wait_status(lambda s: s["offline"] == "1")
    cluster.svc.call("housekeeping.start", {"jobid": 5, "ranks": "0"})
    cluster.svc.wait_idle()
    assert runs(cluster, 0) == [f"node0 {cluster.agents['node0'].pid}"]
    assert keys_command(cluster, "reject", "node1").returncode == 0
    told = "(rejected or revoked): disconnected"
    wait_until(lambda: told in cluster.agent_log("node1"))
    wait_until(lambda: "was rejected" in cluster.svc.log())
    revoked = keys_command(cluster, "revoke", "node0")
    assert revoked.returncode == 0, revoked.stderr
    cluster.wait_status(lambda s: s["offline"] == "0-1", timeout=5)
    wait_until(lambda: told in cluster.agent_log("node0"))
    wait_until(lambda: cluster.svc.log().count("was rejected") == 2)
    states = [line.split()[:2] for line in keys_command(cluster, "list").stdout.splitlines()]
    assert states[1:] == [["rejected", "node0"], ["rejected", "node1"]]
    again = keys_command(cluster, "accept", "node0")
    assert again.returncode == 1 and "no key named 'node0'" in again.stderr
    assert [cluster.agents[f"node{i}"].poll() for i in range(2)] == [None, None]


def test_a_pending_key_claiming_hostile_things_is_kept_harmless(
    agents_cluster: Callable[..., Cluster],
) -> None:
    """An unknown key's `ready` is outside input: a name that would forge lines of the
    key file and hosts outside the cluster are not kept; nothing else it says is read."""
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    secret = cluster.key("mallory", "node0", authorise=False)
    mine = keys.load(secret, need_secret=True)
    assert mine.secret is not None
    server = keys.load(cluster.base / "keys" / "server.key")
    sock = raw_dealer(
        f"tcp://127.0.0.1:{cluster.port}", CurveKeys(mine.public, mine.secret, server.public)
    )
    forged = 'x"\ncurve\n    public-key = "' + "A" * 40
    sock.send(pack({"op": "ready", "hosts": ["node9", 5, "node1"], "pid": 1, "name": forged}))
    sock.send(pack({"op": "hello", "running": [[1, 0]], "exits": []}))
    assert sock.poll(10_000)
    assert unpack(sock.recv()) == {"op": "pending"}
    sock.close(linger=0)
    (pending,) = (cluster.base / "state" / "agents" / "pending").iterdir()
    cert = keys.load(pending)
    assert cert.public == mine.public
    assert (cert.metadata["name"], cert.metadata["hosts"]) == ("", "node1")
    listed = keys_command(cluster, "list")
    assert listed.returncode == 0 and "pending" in listed.stdout
    assert cluster.status()["offline"] == "0-1"


def test_a_partitioned_node_is_lost_and_drained_then_comes_back(
    namespaces: Namespaces, agents_cluster: Callable[..., Cluster]
) -> None:
    """Real separate hosts: the service in one network namespace, each node's agent in
    its own, joined by veth pairs. node1's link goes down past lost-after: its rank ends
    lost and the node is drained; node0 carries on. The link back up, the agent
    reconnects by itself and reports the exit it kept: recorded, nothing changes, nothing
    runs twice."""
    cluster = agents_cluster(
        sleeper, hostlist="node[0-1]", netns=namespaces, **{"lost-after": "2s"}
    )
    for i in range(2):
        cluster.start_agent(
            f"node{i}",
            cluster.key(f"node{i}", f"node{i}"),
            netns=namespaces.nodes[i],
            host=namespaces.address_for(i),
        )
    cluster.wait_status(lambda s: s["offline"] == "", timeout=15)
    cluster.svc.call("housekeeping.start", {"jobid": 29, "ranks": "0-1"})
    wait_until(lambda: runs(cluster, 0) != [] and runs(cluster, 1) != [])
    namespaces.link(1, "down")
    try:
        (cluster.base / "go").touch()  # both commands end; node1's agent cannot say so
        cluster.svc.wait_idle(timeout=20)
        drained = cluster.status()["drained"]
        assert [(d["ranks"], d["reason"]) for d in drained] == [
            ("1", "housekeeping@fW lost: no agent on node1 for 2s")
        ]
        assert cluster.status()["offline"] == "1"
    finally:
        namespaces.link(1, "up")
    cluster.wait_status(lambda s: s["offline"] == "", timeout=20)
    wait_until(lambda: "ended after it was reported lost" in cluster.svc.log(), timeout=15)
    assert [d["ranks"] for d in cluster.status()["drained"]] == ["1"]
    assert len(runs(cluster, 0)) == 1 and len(runs(cluster, 1)) == 1


def test_one_key_shared_by_every_node(agents_cluster: Callable[..., Cluster]) -> None:
    """Flux's model: all nodes hold one key naming every host; each agent says which
    host it is (--hosts) and runs that node's command, and only that node's."""
    cluster = agents_cluster(cleanup_script)
    shared = cluster.key("nodes", "node[0-3]")
    for i in range(4):
        cluster.start_agent(f"node{i}", shared, "--hosts", f"node{i}")
    cluster.wait_status(lambda s: s["offline"] == "")
    cluster.svc.call("housekeeping.start", {"jobid": 31, "ranks": "0-3"})
    cluster.svc.wait_idle()
    for i in range(4):
        assert runs(cluster, i) == [f"node{i} {cluster.agents[f'node{i}'].pid}"]
    assert [d["ranks"] for d in cluster.status()["drained"]] == ["2"]
    # One of them stopped: only its node goes offline, the others keep the shared key.
    cluster.agents["node1"].send_signal(signal.SIGTERM)
    cluster.agents["node1"].wait(10)
    cluster.wait_status(lambda s: s["offline"] == "1", timeout=5)


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    """contrib/systemd's units pass `systemd-analyze verify`, with ExecStart pointing at
    the hkservice installed here (the units expect /usr/bin/hkservice)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_part("systemd-analyze (systemd) is not installed")
    hkservice = Path(sys.executable).parent / "hkservice"
    units = []
    for unit in sorted((Path(__file__).parent.parent / "contrib" / "systemd").glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/bin/hkservice", str(hkservice)))
        units.append(str(copy))
    assert len(units) == 2
    verify = subprocess.run(
        [str(analyze), "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
