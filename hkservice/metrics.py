"""Prometheus metrics at `[metrics] endpoint`, /metrics (docs/hkservice.md, Metrics).

The service calls a few hooks: `observe(actions)` after each saved change, `instrument`
once over its request handlers, `listen()` as it starts and `serve()` as a task. `Hooks`
does nothing, for a service without an endpoint: then no metric is kept and
prometheus_client is not even imported.

The scrape is answered by a small asyncio HTTP handler on the service's loop, which
copies what the gauges need from the core and the runner (the core is not made for two
threads; the copy takes well under a millisecond) and has the text built in a worker
thread: a request arriving meanwhile waits one GIL switch interval (5 ms) at most, not
for the whole exposition. The counters and histograms are prometheus_client's
(lock-protected, `generate_latest`); the gauges are written here, as one
`hk_agent_last_seen_timestamp_seconds` series per agent through prometheus_client's
generic path took 0.2 s for 16,384 agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from hkservice import __version__, core
from hkservice.errors import HkError
from hkservice.store import run_result

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from hkservice.runner import Runner

log = logging.getLogger("hkservice")

Handler = Callable[[dict[str, Any]], Any]

RESULTS = ("ok", "exit", "signal", "timeout", "launch", "lost")
NODE_STATES = ("idle", "housekeeping", "draining", "drained", "offline")
# Cleanups take seconds to hours: buckets up to a day.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
REQUEST_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5)
# A scrape request is one line and a few headers; anything longer is not Prometheus.
MAX_REQUEST_LINE = 8192
MAX_HEADERS = 100
READ_TIMEOUT = 5.0


class Hooks:
    """No metrics: every hook costs nothing."""

    def observe(self, actions: Iterable[core.Action]) -> None:
        pass

    def instrument(self, handlers: dict[str, Handler]) -> dict[str, Handler]:
        return handlers

    async def listen(self) -> None:
        """Bind the endpoint: before the service answers its first request."""

    async def serve(self) -> None:
        """Answer scrapes until cancelled."""


def hooks_for(
    endpoint: tuple[str, int] | None,
    hk: core.Housekeeping,
    runner: Runner,
    offline: Callable[[], set[int]],
) -> Hooks:
    if endpoint is None:
        return Hooks()
    return Prometheus(endpoint, hk, runner, offline)


def node_state_counts(
    size: int, housekeeping: set[int], drained: set[int], offline: set[int]
) -> dict[str, int]:
    """How many nodes are in each state, by the rules of `hkconsole nodes` (each node in
    one state: a drain first, then offline, then housekeeping)."""
    draining = len(drained & housekeeping)
    offline_only = offline - drained
    busy = housekeeping - drained - offline_only
    return {
        "idle": size - len(housekeeping | drained | offline_only),
        "housekeeping": len(busy),
        "draining": draining,
        "drained": len(drained) - draining,
        "offline": len(offline_only),
    }


class Gauges(NamedTuple):
    """What the gauges show, copied on the event loop for the scrape thread."""

    size: int
    housekeeping: set[int]
    drained: set[int]
    offline: set[int]
    units: int
    running: int
    stuck: int
    agents: dict[str, float]


def _escaped(label_values: list[str]) -> list[str]:
    """Label values as the text format quotes them; checked all at once, as 16,384 agent
    names seldom hold a backslash, a quote or a newline."""
    if not any(char in "".join(label_values) for char in '\\"\n'):
        return label_values
    return [v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in label_values]


def _gauge(name: str, doc: str, value: float | None = None, **labelled: dict[str, str]) -> str:
    """One gauge in the text format: one value, or `label={label value: value text}`."""
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} gauge"]
    if value is not None:
        lines.append(f"{name} {value!r}")
    for label, samples in labelled.items():
        keys = list(samples)
        lines += [
            f'{name}{{{label}="{key}"}} {samples[raw]}'
            for key, raw in zip(_escaped(keys), keys, strict=True)
        ]
    return "\n".join(lines) + "\n"


def gauges_text(state: Gauges) -> bytes:
    """The gauges: nodes by state, units, running and stuck commands, agents."""
    counts = node_state_counts(state.size, state.housekeeping, state.drained, state.offline)
    agents = state.agents
    # Milliseconds are plenty, and a fixed 3 decimals takes a third of repr's time.
    seen = {node: f"{agents[node]:.3f}" for node in sorted(agents)}
    return "".join(
        [
            _gauge(
                "hk_nodes",
                "Nodes in each housekeeping state",
                state={s: repr(float(counts[s])) for s in NODE_STATES},
            ),
            _gauge("hk_units", "Housekeeping units in progress", float(state.units)),
            _gauge("hk_ranks_running", "Housekeeping commands running", float(state.running)),
            _gauge(
                "hk_ranks_stuck",
                "Housekeeping commands running past warn-after",
                float(state.stuck),
            ),
            _gauge("hk_agents_connected", "Agents the service is connected to", float(len(agents))),
            _gauge(
                "hk_agent_last_seen_timestamp_seconds",
                "When each agent last said anything (Unix time)",
                node=seen,
            ),
        ]
    ).encode()


class Prometheus(Hooks):
    def __init__(
        self,
        endpoint: tuple[str, int],
        hk: core.Housekeeping,
        runner: Runner,
        offline: Callable[[], set[int]],
    ) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            Info,
            disable_created_metrics,
        )

        # `_created` series double every counter and histogram for nothing a dashboard uses.
        disable_created_metrics()
        self.endpoint = endpoint
        self._server: asyncio.Server | None = None
        self.hk = hk
        self.runner = runner
        self.offline = offline
        # Not auto_describe: that would read the gauges now, off the event loop.
        self.registry: CollectorRegistry = CollectorRegistry()
        registry = self.registry
        self.runs = Counter(
            "hk_rank_runs", "Housekeeping commands ended, by result", ["result"], registry=registry
        )
        for result in RESULTS:
            self.runs.labels(result)
        self.duration = Histogram(
            "hk_rank_duration_seconds",
            "How long each rank's housekeeping command ran",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.releases = Counter(
            "hk_releases", "Releases of nodes back to the scheduler", registry=registry
        )
        self.drains = Counter(
            "hk_drains",
            "Nodes drained, by cause: how their command failed, or operator",
            ["cause"],
            registry=registry,
        )
        self.kills = Counter(
            "hk_kills", "Running commands signalled by an operator's kill", registry=registry
        )
        self.requests = Counter(
            "hk_requests",
            "Requests answered, by method and result code",
            ["method", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "hk_request_duration_seconds",
            "Time to answer a request",
            ["method"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        Info("hk_build", "The running hkservice", registry=registry).info({"version": __version__})

    # -- hooks --------------------------------------------------------------

    def observe(self, actions: Iterable[core.Action]) -> None:
        for action in actions:
            match action:
                case core.RankFinished(_, _, outcome, t_end, t_start):
                    self.runs.labels(run_result(outcome)).inc()
                    self.duration.observe(max(0.0, t_end - t_start))
                case core.Released():
                    self.releases.inc()
                case core.Drained(ranks, _, _, cause):
                    self.drains.labels(cause).inc(len(ranks))
                case core.Signal(jobid, ranks, signum):
                    self.kills.inc(self._operator_kills(jobid, ranks, signum))
                case _:
                    pass

    def _operator_kills(self, jobid: int, ranks: Iterable[int], signum: int) -> int:
        # Timeouts and SIGKILL escalations also signal: only the operator's own count.
        unit = self.hk.units.get(jobid)
        if unit is None:
            return 0
        records = (unit.records[r] for r in ranks)
        return sum(1 for r in records if r.kill_cause == "operator" and r.kill_signal == signum)

    def instrument(self, handlers: dict[str, Handler]) -> dict[str, Handler]:
        # Wrapping the handlers, not the dispatch: only known methods become label values
        # (a client sending random method names must not grow the metric set).
        return {method: self._timed(method, handler) for method, handler in handlers.items()}

    def _timed(self, method: str, handler: Handler) -> Handler:
        requests = self.requests
        duration = self.request_duration.labels(method)

        def counted(start: float, code: str) -> None:
            duration.observe(time.perf_counter() - start)
            requests.labels(method, code).inc()

        def code_of(exc: BaseException) -> str:
            return exc.code if isinstance(exc, HkError) else "EINTERNAL"

        def timed(params: dict[str, Any]) -> Any:
            start = time.perf_counter()
            try:
                result = handler(params)
            except BaseException as exc:
                counted(start, code_of(exc))
                raise
            if inspect.isawaitable(result):
                return timed_later(start, result)  # answered later (stats.nodes|users)
            counted(start, "ok")
            return result

        async def timed_later(start: float, result: Awaitable[Any]) -> Any:
            try:
                answer = await result
            except BaseException as exc:
                counted(start, code_of(exc))
                raise
            counted(start, "ok")
            return answer

        return timed

    async def listen(self) -> None:
        host, port = self.endpoint
        try:
            self._server = await asyncio.start_server(
                self._answer, host, port, limit=MAX_REQUEST_LINE, reuse_address=True
            )
        except OSError as exc:
            log.error("metrics: cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return
        log.info("metrics: serving http://%s/metrics", _host_port(host, port))

    async def serve(self) -> None:
        if self._server is not None:
            async with self._server:
                await self._server.serve_forever()

    # -- the scrape ---------------------------------------------------------

    def gauges(self) -> Gauges:
        """The gauges' values now: on the event loop, the only thread that may read the
        core and the runner."""
        hk = self.hk
        running = stuck = 0
        for unit in hk.units.values():
            running += len(unit.pending)
            if unit.stuck:
                stuck += len(unit.pending)
        return Gauges(
            hk.size,
            hk.housekeeping_ranks(),
            set(hk.drains),
            self.offline(),
            len(hk.units),
            running,
            stuck,
            self.runner.agents_seen(),
        )

    def exposition(self, state: Gauges) -> bytes:
        """The scrape's text; in a worker thread."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry) + gauges_text(state)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._read_request(reader), READ_TIMEOUT)
            if status == "200 OK":
                from prometheus_client import CONTENT_TYPE_LATEST

                content_type = CONTENT_TYPE_LATEST
            else:
                content_type = "text/plain; charset=utf-8"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if body is None else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away or talked nonsense: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        line = await reader.readline()
        for _ in range(MAX_HEADERS):
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
        else:
            return "431 Request Header Fields Too Large", b"too many headers\n"
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", b"not an HTTP request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return "404 Not Found", b"hkservice serves /metrics only\n"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n"
        body = await asyncio.to_thread(self.exposition, self.gauges())
        return "200 OK", b"" if method == b"HEAD" else body


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
