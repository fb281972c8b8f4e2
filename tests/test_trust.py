"""Trust (docs/hkservice.md, Security): limits on what clients send, roles, CURVE keys.

Every test runs a real hkservice and real ZeroMQ clients; users other than the test's
own are real users (nobody), keys are made by `hkservice keygen`.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from hkconsole.client import Client, CurveKeys, ServiceError, curve_keys
from hkservice import keys
from hkservice.idset import parse_idset
from hkservice.protocol import MAX_REASON, pack, unpack
from tests.conftest import RunningService, ServiceFactory, missing_part

NOBODY = 65534


def raw_call(endpoint: str, body: bytes, timeout_ms: int = 5000) -> dict[str, Any] | None:
    """Send raw bytes; the reply, or None if none came."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(body)
        if not sock.poll(timeout_ms):
            return None
        return unpack(sock.recv())
    finally:
        sock.close()


def raw_dealer(endpoint: str, curve: CurveKeys | None = None) -> zmq.Socket[Any]:
    """A DEALER connected to `endpoint` (with CURVE keys if given), monitored: see
    wait_disconnected."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server)
    sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(endpoint)
    return sock


def wait_disconnected(sock: zmq.Socket[Any], timeout: float = 10.0) -> None:
    """Until the peer closes the connection: how libzmq answers a message over the
    peer's ZMQ_MAXMSGSIZE (without the limit it reads it whole and stays connected)."""
    monitor = sock.get_monitor_socket()
    try:
        assert monitor.poll(int(timeout * 1000)), "the peer kept the connection"
    finally:
        sock.disable_monitor()
        sock.close(linger=0)


def status(pid: int, field: str) -> int:
    """A kB figure (VmHWM, VmSize) from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"  # msgpack: [[[...1...]]]


# -- limits on what clients send ----------------------------------------------


def test_an_oversized_request_is_dropped_before_it_is_read(hk_service: ServiceFactory) -> None:
    svc = hk_service()
    assert svc.proc is not None
    before = status(svc.proc.pid, "VmHWM")
    reply = raw_call(svc.endpoint, b"\x00" * (64 << 20), timeout_ms=1000)
    assert svc.call("service.config")["size"] == 4
    # Read whole, 64 MiB would have cost at least as much in the service.
    assert status(svc.proc.pid, "VmHWM") - before < 16 * 1024
    assert reply is None


def test_a_request_too_big_for_memory_leaves_the_service_answering(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service()
    assert svc.proc is not None
    pid = svc.proc.pid
    # Room for libzmq to take in 64 MiB, not for a copy of it too: the old request loop
    # died there of a MemoryError while the heartbeats went on.
    room = status(pid, "VmSize") * 1024 + (96 << 20)
    resource.prlimit(pid, resource.RLIMIT_AS, (room, room))
    assert raw_call(svc.endpoint, b"\x00" * (64 << 20), timeout_ms=1000) is None
    for _ in range(3):
        assert svc.call("service.config")["size"] == 4
    assert svc.proc.poll() is None


def test_a_huge_message_to_the_local_agent_is_dropped_unread(hk_service: ServiceFactory) -> None:
    """Whoever may open the agent's socket (the service's user) sends it 64 MiB: libzmq
    drops it (and that connection) unread; the agent neither grows nor dies, and the
    service's own connection to it carries on."""
    svc = hk_service()
    agent = svc.agent_pid()
    assert agent is not None
    before = status(agent, "VmHWM")
    sock = raw_dealer(f"ipc://{svc.state_dir}/run/agent.sock")
    sock.send(b"\x00" * (64 << 20))
    wait_disconnected(sock)
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0-3"})
    svc.wait_idle()
    assert svc.agent_pid() == agent
    assert status(agent, "VmHWM") - before < 16 * 1024


def test_the_client_refuses_a_request_over_the_limit_itself(hk_service: ServiceFactory) -> None:
    svc = hk_service()
    with pytest.raises(ServiceError, match="over the 1048576-byte limit") as err:
        svc.call("resource.drain", {"ranks": "0", "reason": "x" * (2 << 20)})
    assert err.value.code == "E2BIG"


@pytest.mark.parametrize(
    "message",
    [
        {"v": True, "id": 1, "method": "housekeeping.list"},
        {"v": 1.0, "id": 1, "method": "housekeeping.list"},
        {"v": "1", "id": 1, "method": "housekeeping.list"},
        {"v": [[[[[[[[[[1]]]]]]]]]], "id": 1, "method": "housekeeping.list"},
    ],
    ids=["true", "float", "string", "nested"],
)
def test_a_version_that_is_not_the_integer_1_is_eproto(
    hk_service: ServiceFactory, message: dict[str, Any]
) -> None:
    svc = hk_service()
    reply = raw_call(svc.endpoint, pack(message))
    assert reply is not None
    assert reply["error"]["code"] == "EPROTO"
    assert "protocol version" in reply["error"]["message"] or "nested" in reply["error"]["message"]


@pytest.mark.parametrize("where", ["v", "id", "method", "params", "param", "user", "extra"])
def test_deep_nesting_anywhere_is_eproto_without_a_traceback(
    hk_service: ServiceFactory, where: str
) -> None:
    svc = hk_service()
    deep = b"\x91" * 1000 + b"\x01"
    fields = {
        "v": b"\xa1v" + b"\x01",
        "id": b"\xa2id\x05",
        "method": b"\xa6method\xb1housekeeping.list",
        "params": b"\xa6params\x80",
    }
    if where == "param":
        fields["params"] = b"\xa6params\x81\xa5jobid" + deep
    elif where in ("extra", "user"):
        fields[where] = bytes([0xA0 | len(where)]) + where.encode() + deep
    else:
        key = fields[where][: 1 + (fields[where][0] & 0x1F)]
        fields[where] = key + deep
    body = bytes([0x80 | len(fields)]) + b"".join(fields.values())
    reply = raw_call(svc.endpoint, body)
    assert reply is not None
    assert reply["error"]["code"] == "EPROTO", reply
    assert svc.call("service.config")["size"] == 4
    assert "Traceback" not in svc.log()


# -- reasons -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("x" * (MAX_REASON + 1), "257 characters"),
        ("disk\nnode9 drained: forged", "line breaks"),
        ("fan \x1b[2J", "control characters"),
        ("tab\there", "control characters"),
    ],
    ids=["long", "newline", "escape", "tab"],
)
def test_a_drain_reason_is_one_short_printable_line(
    hk_service: ServiceFactory, reason: str, why: str
) -> None:
    svc = hk_service()
    with pytest.raises(ServiceError, match=f"at most {MAX_REASON} printable") as err:
        svc.call("resource.drain", {"ranks": "1", "reason": reason})
    assert err.value.code == "EINVAL"
    assert why in err.value.message
    assert svc.call("resource.status")["drained"] == []


def test_a_reason_of_256_printable_characters_is_kept_whole(hk_service: ServiceFactory) -> None:
    svc = hk_service()
    reason = "é" * MAX_REASON
    svc.call("resource.drain", {"ranks": "1", "reason": reason})
    [drain] = svc.call("resource.status")["drained"]
    assert drain["reason"].startswith(reason)


# -- open files ------------------------------------------------------------------


def lowered_nofile(soft: int, hard: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return lower


def connect_many(endpoint: str, count: int) -> tuple[zmq.Context[Any], list[zmq.Socket[Any]]]:
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, count + 100)
    socks = []
    for i in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(pack({"v": 1, "id": i + 1, "method": "service.config"}))
        socks.append(sock)
    return ctx, socks


def answered(socks: list[zmq.Socket[Any]], timeout: float, quiet: float | None = None) -> int:
    """How many of `socks` got their answer within `timeout`, or before no answer came
    for `quiet` seconds (those left unanswered will not be)."""
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    got: set[int] = set()
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while len(got) < len(socks) and time.monotonic() < deadline:
        if got and quiet is not None and time.monotonic() - last > quiet:
            break
        for sock, _ in poller.poll(200):
            sock.recv()
            got.add(id(sock))
            poller.unregister(sock)
            last = time.monotonic()
    return len(got)


def test_a_thousand_clients_at_once_under_a_soft_limit_of_1024(
    hk_service: ServiceFactory,
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        missing_part(f"a hard open files limit of 4096 (it is {hard})")
    svc = hk_service(start=False)
    svc.preexec_fn = lowered_nofile(1024, 4096)
    svc.start()
    assert svc.proc is not None
    limits = Path(f"/proc/{svc.proc.pid}/limits").read_text()
    assert any(
        line.startswith("Max open files") and "4096                 4096" in line
        for line in limits.splitlines()
    ), limits
    ctx, socks = connect_many(svc.endpoint, 1000)
    try:
        assert answered(socks, 30) == 1000
    finally:
        for sock in socks:
            sock.close()
        ctx.term()
    assert svc.proc.poll() is None
    assert svc.call("service.config")["size"] == 4


# -- who may connect -------------------------------------------------------------


# The interpreter may live where nobody cannot read (/root/.pyenv): it starts as root,
# loads what the command line needs, then becomes nobody before it runs it.
AS_NOBODY = f"""
import _socket, json, locale, os, pwd, sys, tomllib
import zmq
import hkconsole.cli, hkconsole.client, hkconsole.formatter, hkconsole.tables
hkconsole.cli.build_parser().parse_args(sys.argv[1:])
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
sys.exit(hkconsole.cli.main(sys.argv[1:]))
"""


def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if os.getuid() != 0:
        missing_part("root, to run a client as another user")
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": "/", "USER": "nobody", "SUDO_USER": ""},
        cwd="/",
    )


def hkconsole(*args: str) -> list[str]:
    return list(args)


def test_a_user_without_access_to_the_socket_is_told_permission_denied(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service()
    proc = as_nobody(hkconsole("--endpoint", svc.endpoint, "list"))
    assert proc.returncode == 1
    socket_path = svc.endpoint[len("ipc://") :]
    assert f"permission denied: you may not connect to the socket {socket_path}" in proc.stderr
    assert "is hkservice running" not in proc.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone may enter (for a read-only socket): /tmp/hk-read-XXXX, 0755."""
    path = Path(tempfile.mkdtemp(prefix="hk-read-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def with_read_endpoint(hk_service: ServiceFactory, shared: Path, **kwargs: Any) -> RunningService:
    svc = hk_service(start=False, **kwargs)
    svc.service_options["read-endpoint"] = f"ipc://{shared}/read.sock"
    return svc.start()


def test_the_read_only_endpoint_serves_reads_to_anyone_and_refuses_acts(
    hk_service: ServiceFactory, shared_dir: Path
) -> None:
    svc = with_read_endpoint(hk_service, shared_dir, command=["sleep", "600"])
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-1"})
    read = f"ipc://{shared_dir}/read.sock"
    mode = stat.S_IMODE((shared_dir / "read.sock").stat().st_mode)
    assert mode == 0o666
    proc = as_nobody(hkconsole("--endpoint", read, "list", "-n", "-o", "{id.dec} {nodelist}"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7", "node[0-1]"]
    for method, params in [
        ("housekeeping.kill", {"jobid": 7}),
        ("resource.drain", {"ranks": "2", "reason": "x"}),
        ("resource.undrain", {"ranks": "2"}),
        ("housekeeping.start", {"jobid": 8, "ranks": "3"}),
    ]:
        with Client(read, timeout=5) as client, pytest.raises(ServiceError) as err:
            client.call(method, params)
        assert err.value.code == "EPERM"
        assert f"use the operator endpoint {svc.endpoint}" in err.value.message
    proc = as_nobody(hkconsole("--endpoint", read, "kill", "-j", "7"))
    assert proc.returncode == 1
    assert "read-only endpoint; use the operator endpoint" in proc.stderr
    assert svc.call("housekeeping.list")["units"][0]["pending"] == "0-1"
    config = Client(read, timeout=5).call("service.config")
    assert config["events-endpoint"] == f"{read}-events"
    assert stat.S_IMODE((shared_dir / "read.sock-events").stat().st_mode) == 0o666


def test_a_read_only_socket_in_a_private_directory_is_refused_at_start(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(start=False)
    svc.service_options["read-endpoint"] = f"ipc://{svc.base}/read.sock"
    with pytest.raises(RuntimeError, match="did not start"):
        svc.start()
    assert "other users cannot reach the socket" in svc.log()


# -- tcp and CURVE ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keygen(directory: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hkservice", "keygen", name, "--dir", str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_keygen_writes_a_private_secret_and_a_public_key_naming_its_hosts(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        proc = keygen(tmp_path, "node7", "--hosts", "node[7-8]")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    secret, public = tmp_path / "node7.key_secret", tmp_path / "node7.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    cert = keys.load(public)
    assert cert.metadata == {"name": "node7", "hosts": "node[7-8]"}
    assert cert.secret is None
    # pyzmq reads it as its own certificate format.
    import zmq.auth

    pub, sec = zmq.auth.load_certificate(secret)
    assert pub == cert.public and sec == keys.load(secret).secret
    again = keygen(tmp_path, "node7")
    assert again.returncode == 1
    assert "already exists: not overwritten" in again.stderr
    bad = keygen(tmp_path, "../evil")
    assert bad.returncode == 1 and "is not a key name" in bad.stderr
    bad = keygen(tmp_path, "n1", "--hosts", "node[1-")
    assert bad.returncode == 1 and "--hosts:" in bad.stderr


def tcp_service(hk_service: ServiceFactory, **options: Any) -> RunningService:
    svc = hk_service(start=False, command=["sleep", "600"])
    port, events = free_port(), free_port()
    svc.service_options.update(
        {
            "endpoint": f"tcp://127.0.0.1:{port}",
            "events-endpoint": f"tcp://127.0.0.1:{events}",
            "keys-dir": str(svc.base / "keys"),
            **options,
        }
    )
    return svc


def test_tcp_without_curve_is_refused_at_start(hk_service: ServiceFactory) -> None:
    svc = tcp_service(hk_service)
    with pytest.raises(RuntimeError, match="did not start"):
        svc.start()
    assert "is a tcp endpoint without CURVE" in svc.log()
    assert "hkservice keygen server" in svc.log()


def test_insecure_tcp_starts_with_a_warning_at_every_start(hk_service: ServiceFactory) -> None:
    svc = tcp_service(hk_service, insecure=True)
    svc.start()
    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0"})
    svc.stop()
    svc.start()
    assert svc.log().count("insecure = true:") == 2


def make_keys(svc: RunningService) -> dict[str, CurveKeys]:
    """The service's key, and one client key per role directory (and one unlisted)."""
    key_dir = svc.base / "keys"
    assert keygen(key_dir, "server").returncode == 0
    made: dict[str, CurveKeys] = {}
    for name, directory in [
        ("olivia", "operators"),
        ("sam", "schedulers"),
        ("vera", "viewers"),
        ("mallory", None),
    ]:
        assert keygen(svc.base / "clients", name).returncode == 0
        if directory is not None:
            (key_dir / directory).mkdir(parents=True, exist_ok=True)
            (svc.base / "clients" / f"{name}.key").rename(key_dir / directory / f"{name}.key")
        made[name] = curve_keys(
            str(svc.base / "clients" / f"{name}.key_secret"), str(key_dir / "server.key")
        )
    return made


def curve_service(
    svc: RunningService,
) -> tuple[RunningService, dict[str, CurveKeys]]:
    """Start `svc` (not started yet) with the keys of make_keys, as olivia the operator."""
    made = make_keys(svc)
    svc.keys = made["olivia"]
    svc.start()
    return svc, made


def test_curve_keys_give_each_client_its_role(hk_service: ServiceFactory) -> None:
    svc, made = curve_service(tcp_service(hk_service))

    def call(name: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        with Client(svc.endpoint, timeout=3, keys=made[name]) as client:
            return client.call(method, params)

    call("sam", "housekeeping.start", {"jobid": 5, "ranks": "0-1"})
    assert [u["jobid"] for u in call("vera", "housekeeping.list")["units"]] == [5]
    with pytest.raises(ServiceError, match="key 'vera' is a viewer key") as err:
        call("vera", "housekeeping.kill", {"jobid": 5})
    assert err.value.code == "EPERM"
    with pytest.raises(ServiceError, match="key 'sam' is a scheduler key") as err:
        call("sam", "resource.drain", {"ranks": "3", "reason": "no"})
    call("olivia", "resource.drain", {"ranks": "3", "reason": "fan"})
    with pytest.raises(ServiceError, match="did not answer") as err:
        call("mallory", "housekeeping.list")
    assert "key " + made["mallory"].public.decode() + " is not in" in svc.log()
    # No key at all: the handshake fails, nothing is served.
    with Client(svc.endpoint, timeout=2) as client, pytest.raises(ServiceError):
        client.call("housekeeping.list")
    assert call("olivia", "housekeeping.kill", {"jobid": 5, "signum": 9})["ranks"] == 2


def test_the_read_only_endpoint_over_tcp_serves_reads_and_refuses_every_act(
    hk_service: ServiceFactory,
) -> None:
    """With CURVE, any known key on the read-only endpoint is a viewer, an operator's
    too: reads are served, every act is EPERM naming the operator endpoint, and nothing
    changes; an unknown key gets nothing at all."""
    read, read_events = free_port(), free_port()
    svc = tcp_service(
        hk_service,
        **{
            "read-endpoint": f"tcp://127.0.0.1:{read}",
            "read-events-endpoint": f"tcp://127.0.0.1:{read_events}",
        },
    )
    svc, made = curve_service(svc)
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-1"})
    svc.call("resource.drain", {"ranks": "3", "reason": "fan"})
    endpoint = f"tcp://127.0.0.1:{read}"
    with Client(endpoint, timeout=5, keys=made["olivia"]) as client:
        assert [u["jobid"] for u in client.call("housekeeping.list")["units"]] == [7]
        assert client.call("resource.status")["drained"][0]["ranks"] == "3"
        assert client.call("service.config")["events-endpoint"] == (
            f"tcp://127.0.0.1:{read_events}"
        )
        for method, params in [
            ("housekeeping.kill", {"jobid": 7, "signum": 9}),
            ("resource.drain", {"ranks": "2", "reason": "x"}),
            ("resource.undrain", {"ranks": "3"}),
            ("housekeeping.start", {"jobid": 8, "ranks": "2"}),
        ]:
            with pytest.raises(ServiceError) as err:
                client.call(method, params)
            assert err.value.code == "EPERM", method
            assert f"use the operator endpoint {svc.endpoint}" in err.value.message
    with (
        Client(endpoint, timeout=1, keys=made["mallory"]) as client,
        pytest.raises(ServiceError, match="did not answer"),
    ):
        client.call("housekeeping.list")
    assert [u["pending"] for u in svc.call("housekeeping.list")["units"]] == ["0-1"]
    assert [d["ranks"] for d in svc.call("resource.status")["drained"]] == ["3"]
    refused = [e for e in svc.call("housekeeping.audit")["entries"] if not e["ok"]]
    assert [(e["who"], e["role"]) for e in refused] == [("olivia", "viewer")] * 4


def test_a_key_copied_into_viewers_works_at_the_next_connection(
    hk_service: ServiceFactory,
) -> None:
    svc, made = curve_service(tcp_service(hk_service))
    with (
        Client(svc.endpoint, timeout=2, keys=made["mallory"]) as client,
        pytest.raises(ServiceError),
    ):
        client.call("housekeeping.list")
    (svc.base / "clients" / "mallory.key").rename(svc.base / "keys" / "viewers" / "mallory.key")
    with Client(svc.endpoint, timeout=3, keys=made["mallory"]) as client:
        assert client.call("housekeeping.list")["units"] == []


# -- audit -----------------------------------------------------------------------


def cli(
    capsys: pytest.CaptureFixture[str], endpoint: str, *args: str, keys_args: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    from hkconsole.cli import main

    code = main(["--endpoint", endpoint, *keys_args, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_act_is_audited_with_who_asked_over_ipc(
    hk_service: ServiceFactory,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = with_read_endpoint(hk_service, shared_dir, command=["sleep", "600"])
    monkeypatch.setenv("SUDO_USER", "alice")
    run = lambda *a: cli(capsys, svc.endpoint, *a)  # noqa: E731
    assert run("start", "-j", "42", "-t", "node[0-1]")[0] == 0
    assert run("drain", "node3", "bad", "fan")[0] == 0
    assert run("kill", "-q", "-j", "42", "-s", "KILL")[0] == 0
    svc.wait_idle()
    assert run("undrain", "node0")[0] == 0
    monkeypatch.setenv("SUDO_USER", "mallory")
    read = f"ipc://{shared_dir}/read.sock"
    assert cli(capsys, read, "undrain", "node3")[0] == 1
    assert run("list")[0] == 0  # reads are not audited
    code, out, _ = run("audit", "-o", "json")
    assert code == 0
    entries = json.loads(out)["entries"]
    assert [(e["method"], e["ok"], e["reported"]) for e in entries] == [
        ("resource.undrain", False, "mallory"),
        ("resource.undrain", True, "alice"),
        ("resource.drain", True, "alice"),  # what the kill made: its cleanup cut short
        ("housekeeping.kill", True, "alice"),
        ("resource.drain", True, "alice"),
        ("housekeeping.start", True, "alice"),
    ]
    assert all(e["who"] == "root" and e["how"] == "uid 0" for e in entries)
    assert [e["role"] for e in entries] == ["viewer"] + ["operator"] * 5
    assert entries[0]["effect"].startswith("refused: EPERM: resource.undrain is an operator")
    killed_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entries[3]["t"]))
    assert entries[2]["effect"] == (
        f"drained node[0-1]: its cleanup killed (housekeeping.kill {killed_at})"
    )
    assert entries[2]["params"]["reason"].endswith("signal: killed KILL")
    assert entries[3]["effect"] == "sent SIGKILL to 2 ranks of 1 units"
    assert entries[4]["params"] == {"ranks": "3", "reason": "bad fan"}
    assert entries[4]["effect"] == "drained node3"
    assert entries[1]["effect"] == "undrained node0"
    assert entries[5]["effect"].startswith("started ") and entries[5]["effect"].endswith(
        "on node[0-1]"
    )
    assert entries[5]["t"] <= entries[0]["t"]
    table = run("audit", "-n")[1].splitlines()
    assert len(table) == 6
    assert "alice (as root)" in table[4] and "resource.drain" in table[4]
    assert "drained node3" in table[4]
    assert "refused" in run("audit", "-n", "-o", "long", "-l", "1")[1]
    # The drain says who made it, over a restart too; a drain that follows from a kill
    # names the killer.
    svc.stop()
    svc.start()
    drained = {e["ranks"]: e for e in svc.call("resource.status")["drained"]}
    assert drained["3"]["by"] == "alice (as root)"
    assert drained["1"]["by"] == "alice (as root)"
    out = run("drain", "-n", "-o", "long")[1]
    assert [line.split()[-2:] for line in out.splitlines() if "bad fan" in line] == [
        ["root)", "node3"]
    ]
    assert "alice (as root)" in out
    assert "drained node3 by alice (as root): bad fan" in svc.log()
    assert "kill request by alice (as root)" in svc.log()


def test_a_drain_that_follows_a_kill_names_the_killer_across_a_restart(
    hk_service: ServiceFactory, script: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command ignores SIGTERM, the service is killed -9 and restarted before the
    command ends: the drain (a cleanup cut short by an operator's kill) still names who
    killed, from the kill's time saved with the rank."""
    go = Path(tempfile.mkdtemp(prefix="hk-go-", dir="/tmp")) / "go"
    svc = hk_service(
        command=[script(f'trap "" TERM\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexit 0')]
    )
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0-1"})
    monkeypatch.setenv("SUDO_USER", "alice")
    assert Client(svc.endpoint, timeout=5).call("housekeeping.kill", {"jobid": 5})["by"] == (
        "alice (as root)"
    )
    svc.kill9()
    svc.start()
    go.touch()
    svc.wait_idle()
    drained = svc.call("resource.status")["drained"]
    # The two ranks may end in one batch or two: one drain each time.
    assert set().union(*(parse_idset(d["ranks"]) for d in drained)) == {0, 1}
    assert {d["by"] for d in drained} == {"alice (as root)"}
    assert all("signal: killed TERM" in d["reason"] for d in drained)
    assert "by alice (as root): housekeeping@" in svc.log()
    go.unlink()
    go.parent.rmdir()


def test_audit_over_tcp_names_the_key(
    hk_service: ServiceFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = curve_service(tcp_service(hk_service))
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("USER", "ops")
    server = str(svc.base / "keys" / "server.key")

    def run(name: str, *args: str) -> tuple[int, str, str]:
        secret = str(svc.base / "clients" / f"{name}.key_secret")
        return cli(capsys, svc.endpoint, *args, keys_args=("--key", secret, "--server-key", server))

    assert run("vera", "drain", "node2", "fan")[0] == 1
    assert run("olivia", "drain", "node2", "fan")[0] == 0
    code, out, err = run("vera", "audit", "-o", "json")
    assert code == 0, err
    entries = json.loads(out)["entries"]
    assert [(e["who"], e["how"], e["role"], e["ok"]) for e in entries] == [
        ("olivia", "key olivia", "operator", True),
        ("vera", "key vera", "viewer", False),
    ]
    assert entries[0]["reported"] == "ops"
    assert svc.call("resource.status")["drained"][0]["by"] == "ops (as olivia)"


def test_every_method_is_in_the_one_table_of_reads_and_acts(tmp_path: Path) -> None:
    """A method left out of auth.METHOD_ACCESS would be an act: refused to viewers."""
    from hkservice.auth import METHOD_ACCESS, Access
    from hkservice.config import parse_config
    from hkservice.server import Service

    config = parse_config(
        {
            "cluster": {"hostlist": "n[0-1]"},
            "housekeeping": {"command": ["true"]},
            "service": {"state-dir": str(tmp_path / "state")},
        }
    )
    service = Service(config)
    try:
        assert set(service.handlers) <= set(METHOD_ACCESS)
    finally:
        service.store.close()
    acts = {m for m, a in METHOD_ACCESS.items() if a is not Access.READ}
    assert acts == {"housekeeping.start", "housekeeping.kill", "resource.drain", "resource.undrain"}


def test_out_of_descriptors_the_service_refuses_connections_and_does_not_abort(
    hk_service: ServiceFactory,
) -> None:
    svc = hk_service(start=False)
    svc.preexec_fn = lowered_nofile(1024, 1024)  # the hard limit itself: nothing to raise
    svc.start()
    assert svc.proc is not None
    ctx, socks = connect_many(svc.endpoint, 1500)
    try:
        served = answered(socks, 8, quiet=2)
        assert svc.proc.poll() is None, svc.log()
        assert 300 < served < 1500
        assert "refusing new connections:" in svc.log()
        full = svc.endpoint[len("ipc://") :] + ".full"
        assert os.path.exists(full)
        with pytest.raises(ServiceError, match="refuses new connections for now") as err:
            Client(svc.endpoint, timeout=2).call("service.config")
        assert err.value.code == "EAGAIN"
    finally:
        for sock in socks:
            sock.close()
        ctx.term()
    deadline = time.monotonic() + 10
    while "accepting connections again" not in svc.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert svc.call("service.config")["size"] == 4
    assert "Traceback" not in svc.log()


async def test_the_console_follows_a_curve_service_with_a_viewer_key(
    hk_service: ServiceFactory,
) -> None:
    from hkconsole.tui.app import HkConsole
    from tests.test_tui import rows, until

    svc, made = curve_service(tcp_service(hk_service))
    svc.call("housekeeping.start", {"jobid": 5, "ranks": "0-1"})
    app = HkConsole(svc.endpoint, keys=made["vera"])
    app.feed.interval = 60.0  # no periodic resync: what changes comes by the events
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.connected and rows(app) == [5])
        # Events come over CURVE too: a new unit shows without waiting for a resync.
        svc.call("housekeeping.start", {"jobid": 6, "ranks": "2"})
        await until(pilot, lambda: rows(app) == [5, 6], timeout=3)
