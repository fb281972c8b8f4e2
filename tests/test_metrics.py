"""/metrics over real HTTP from a real service, and a real Prometheus scraping it."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hkservice.metrics import Gauges, gauges_text, node_state_counts
from tests.conftest import RunningService, ServiceFactory, missing_part
from tests.test_agents import Cluster as AgentsCluster
from tests.test_agents import agents_cluster, cleanup_script  # noqa: F401 - the fixture

Script = Callable[[str], str]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The metric set of observability.md, and nothing else.
METRICS = {
    "hk_nodes",
    "hk_units",
    "hk_ranks_running",
    "hk_ranks_stuck",
    "hk_rank_runs",
    "hk_rank_duration_seconds",
    "hk_releases",
    "hk_drains",
    "hk_kills",
    "hk_agents_connected",
    "hk_agent_last_seen_timestamp_seconds",
    "hk_requests",
    "hk_request_duration_seconds",
    "hk_build_info",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> tuple[set[str], Samples]:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(text))
    samples: Samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def metrics_service(
    hk_service: ServiceFactory, command: list[str], **kwargs: object
) -> tuple[RunningService, int]:
    port = free_port()
    svc = hk_service(
        hostlist="node[0-3]",
        command=command,
        tables={"metrics": {"endpoint": f"127.0.0.1:{port}"}},
        **kwargs,
    )
    return svc, port


def test_metrics_move_as_units_start_fail_and_release(
    hk_service: ServiceFactory, script: Script, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    command = script(f'[ "$HK_RANK" = 1 ] && exit 3\nwhile [ ! -e {go} ]; do sleep 0.05; done')
    svc, port = metrics_service(hk_service, [command], warn_after="0.3s")
    names, before = scrape(port)
    assert names == METRICS
    assert value(before, "hk_nodes", state="idle") == 4
    assert value(before, "hk_units") == 0
    assert value(before, "hk_agents_connected") == 1
    assert value(before, "hk_build_info", version="0.1.0") == 1

    svc.call("housekeeping.start", {"jobid": 1, "ranks": "0-1", "userid": 5})
    svc.wait_for(lambda r: r["units"] and r["units"][0]["failed"] == "1")
    time.sleep(0.5)  # past warn-after
    _, running = scrape(port)
    assert value(running, "hk_units") == 1
    assert value(running, "hk_ranks_running") == 1
    assert value(running, "hk_ranks_stuck") == 1
    assert value(running, "hk_rank_runs_total", result="exit") == 1
    assert value(running, "hk_drains_total", cause="exit") == 1
    assert [value(running, "hk_nodes", state=s) for s in ("idle", "housekeeping", "draining")] == [
        2,
        1,
        1,
    ]
    assert value(running, "hk_releases_total") == 0

    go.touch()
    svc.wait_idle()
    _, after = scrape(port)
    assert value(after, "hk_units") == 0
    assert value(after, "hk_ranks_running") == value(after, "hk_ranks_stuck") == 0
    assert value(after, "hk_releases_total") == 1
    assert value(after, "hk_rank_runs_total", result="ok") == 1
    assert value(after, "hk_rank_duration_seconds_count") == 2
    assert value(after, "hk_rank_duration_seconds_sum") >= 0.5  # rank 0 waited for `go`
    assert value(after, "hk_rank_duration_seconds_bucket", le="1.0") >= 1
    assert [value(after, "hk_nodes", state=s) for s in ("idle", "drained")] == [3, 1]
    assert value(after, "hk_requests_total", method="housekeeping.start", code="ok") == 1
    assert value(after, "hk_request_duration_seconds_count", method="housekeeping.start") == 1
    seen = value(after, "hk_agent_last_seen_timestamp_seconds", node=socket.gethostname())
    assert time.time() - 30 < seen <= time.time()

    # An operator's kill counts; a refused request counts under its code; no job or user
    # ever becomes a label.
    svc.call("resource.undrain", {"ranks": "1"})
    go.unlink()  # job 2's commands wait for the kill (with `go` there they could end first)
    svc.call("housekeeping.start", {"jobid": 2, "ranks": "0,2", "userid": 5})
    with contextlib.suppress(Exception):
        svc.call("housekeeping.start", {"jobid": 2, "ranks": "3"})
    svc.call("housekeeping.kill", {"jobid": 2, "signum": 15})
    svc.wait_idle()
    _, killed = scrape(port)
    assert value(killed, "hk_kills_total") == 2
    assert value(killed, "hk_requests_total", method="housekeeping.start", code="EEXIST") == 1
    assert value(killed, "hk_rank_runs_total", result="signal") == 2
    assert value(killed, "hk_drains_total", cause="signal") == 2
    labels = {name for (_, pairs) in killed for name, _ in pairs}
    assert labels == {"state", "result", "le", "cause", "method", "code", "node", "version"}

    # stats.nodes, answered once its rows are made in a worker thread, counts then; a
    # refused one at once.
    assert len(svc.call("stats.nodes", {"window": 3600})["nodes"]) == 3  # 3 never ran
    with contextlib.suppress(Exception):
        svc.call("stats.nodes", {"window": -1})
    _, asked = scrape(port)
    assert value(asked, "hk_requests_total", method="stats.nodes", code="ok") == 1
    assert value(asked, "hk_requests_total", method="stats.nodes", code="EINVAL") == 1
    assert value(asked, "hk_request_duration_seconds_count", method="stats.nodes") == 2


def test_metrics_endpoint_answers_only_metrics_and_survives_junk(
    hk_service: ServiceFactory,
) -> None:
    svc, port = metrics_service(hk_service, ["true"])
    assert get(f"http://127.0.0.1:{port}/")[0] == 404
    assert get(f"http://127.0.0.1:{port}/metrics?x=1")[0] == 200
    for junk in (b"\x00\xff garbage\r\n\r\n", b"GET /metrics\r\n\r\n", b"A" * 100_000):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(junk)
            conn.shutdown(socket.SHUT_WR)
            reply = conn.recv(200)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4")
    # A client that connects and says nothing holds nothing up.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        assert scrape(port)[1]
        assert svc.call("housekeeping.list")["units"] == []


def test_a_metrics_port_taken_is_logged_and_the_service_serves_on(
    hk_service: ServiceFactory,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = hk_service(tables={"metrics": {"endpoint": f"127.0.0.1:{port}"}})
        time.sleep(0.3)
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in svc.log()
        assert svc.call("housekeeping.list")["units"] == []


DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "hk.json"


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_grafana_dashboard_graphs_only_metrics_hk_serves() -> None:
    queries = dashboard_queries()
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for expr in queries
        for name in re.findall(r"\bhk_[a-z_]+", expr)
    }
    assert used <= METRICS
    # What the issue asks the dashboard to show.
    assert {"hk_nodes", "hk_rank_runs", "hk_rank_duration_seconds", "hk_ranks_stuck"} <= used


def test_node_state_counts_follow_hkconsole_nodes_rules() -> None:
    # 0 idle, 1 housekeeping, 2 draining, 3 drained, 4 offline, 5 drained and offline.
    counts = node_state_counts(6, housekeeping={1, 2, 4, 5}, drained={2, 3, 5}, offline={4, 5})
    assert counts == {"idle": 1, "housekeeping": 1, "draining": 2, "drained": 1, "offline": 1}
    assert sum(counts.values()) == 6


def test_a_real_prometheus_scrapes_hk_nodes(hk_service: ServiceFactory, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing_part("Prometheus is not installed (Debian package prometheus)")
    svc, port = metrics_service(hk_service, ["true"])
    svc.call("resource.drain", {"ranks": "3", "reason": "testing"})
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: hk\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n"
    )
    proc = subprocess.Popen(
        [
            str(prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        query = urllib.parse.urlencode({"query": "hk_nodes"})
        deadline = time.monotonic() + 60
        found: dict[str, float] = {}
        while time.monotonic() < deadline and len(found) < 5:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                status, text = get(f"http://127.0.0.1:{web}/api/v1/query?{query}", timeout=2)
                if status == 200:
                    result = json.loads(text)["data"]["result"]
                    found = {r["metric"]["state"]: float(r["value"][1]) for r in result}
        log = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
        assert found == {
            "idle": 3,
            "housekeeping": 0,
            "draining": 0,
            "drained": 1,
            "offline": 0,
        }, log
        # Every query of the Grafana dashboard is one this Prometheus takes.
        for expr in dashboard_queries():
            query = urllib.parse.urlencode({"query": expr})
            status, text = get(f"http://127.0.0.1:{web}/api/v1/query?{query}", timeout=5)
            assert (status, json.loads(text)["status"]) == (200, "success"), (expr, text)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_node_agents_are_counted_and_their_nodes_offline_until_they_connect(
    agents_cluster: Callable[..., AgentsCluster],  # noqa: F811
) -> None:
    cluster = agents_cluster(cleanup_script, hostlist="node[0-1]")
    port = free_port()
    cluster.svc.stop()
    cluster.svc.tables["metrics"] = {"endpoint": f"127.0.0.1:{port}"}
    cluster.svc.start()
    _, none = scrape(port)
    assert value(none, "hk_agents_connected") == 0
    assert value(none, "hk_nodes", state="offline") == 2
    cluster.start_agent("node0", cluster.key("node0", "node0"))
    cluster.wait_status(lambda s: s["offline"] == "1")
    _, one = scrape(port)
    assert value(one, "hk_agents_connected") == 1
    assert [value(one, "hk_nodes", state=s) for s in ("idle", "offline")] == [1, 1]
    seen = value(one, "hk_agent_last_seen_timestamp_seconds", node="node0")
    assert time.time() - 30 < seen <= time.time() + 1
    assert not [
        k
        for k in one
        if k[0] == "hk_agent_last_seen_timestamp_seconds"
        and k != ("hk_agent_last_seen_timestamp_seconds", (("node", "node0"),))
    ]


def test_gauges_read_back_whatever_the_agent_names() -> None:
    # The gauges are written by hk, not prometheus_client: Prometheus's own parser reads
    # them back, agent names with quotes, backslashes and newlines included.
    names = ['node"1', "node\\2", "node\n3", "node4"]
    state = Gauges(
        size=6,
        housekeeping={0, 1, 2},
        drained={2, 5},
        offline={4},
        units=2,
        running=3,
        stuck=1,
        agents={name: 1_700_000_000.25 + i for i, name in enumerate(names)},
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(gauges_text(state).decode())
        for s in family.samples
    }
    assert value(samples, "hk_nodes", state="housekeeping") == 2
    assert value(samples, "hk_nodes", state="offline") == 1
    assert value(samples, "hk_nodes", state="idle") == 1
    assert (value(samples, "hk_units"), value(samples, "hk_ranks_stuck")) == (2, 1)
    assert value(samples, "hk_agents_connected") == 4
    for i, name in enumerate(names):
        seen = value(samples, "hk_agent_last_seen_timestamp_seconds", node=name)
        assert seen == 1_700_000_000.25 + i
