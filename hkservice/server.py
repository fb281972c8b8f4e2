"""The service: wires the core to ZeroMQ, the runner and the store.

One asyncio loop does everything. Each change goes the same way: the core decides and
returns actions, the store writes them in one transaction, then events are published
and the runner acts. Exits that arrive within 10 ms are handed to the core as one batch,
so a unit finishing on many nodes at once makes one release, not thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal as signal_module
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import zmq
import zmq.asyncio

from hkservice import PROTOCOL_VERSION, __version__, audit, auth, core, endpoints, limits
from hkservice.cluster import Cluster, TargetError
from hkservice.config import Config
from hkservice.errors import HkError
from hkservice.idset import IdsetError, format_idset
from hkservice.metrics import hooks_for
from hkservice.protocol import (
    EVENT_DRAINED,
    EVENT_ENDED,
    EVENT_FINISHED,
    EVENT_HEARTBEAT,
    EVENT_RELEASED,
    EVENT_STARTED,
    EVENT_STUCK,
    EVENT_UNDRAINED,
    HEARTBEAT_SECONDS,
    MAX_MESSAGE_BYTES,
    MAX_REASON,
    Prepacked,
    nesting_depth_over,
    pack,
    pack_reply,
    reply_error,
    reply_ok,
    unpack,
)
from hkservice.recovery import open_state
from hkservice.runner import LaunchSpec, Runner, make_runner
from hkservice.scheduler import make_bridge
from hkservice.statedir import StateError
from hkservice.stats import History
from hkservice.text import plural, quoted, visible

log = logging.getLogger("hkservice")

BATCH_SECONDS = 0.010
OUTPUT_TAIL_MAX = 1000
MAX_USERID = (1 << 32) - 1
MAX_JOBID = (1 << 64) - 1
# Event sequence numbers are reserved on disk this many at a time (see Store.reserve_events).
EVENT_SEQ_BLOCK = 1 << 20


class StoreFailed(HkError):
    """A change could not be saved: the service stops rather than run on unsaved state."""

    def __init__(self, message: str) -> None:
        super().__init__("EINTERNAL", message)


# -- parameter checking ------------------------------------------------------


def _param(params: dict[str, Any], key: str, kind: type | tuple[type, ...], required: bool) -> Any:
    if key not in params or params[key] is None:
        if required:
            raise HkError("EPROTO", f"missing parameter '{key}'")
        return None
    value = params[key]
    if isinstance(value, bool) and kind is not bool:
        raise HkError("EPROTO", f"parameter '{key}' has the wrong type")
    if not isinstance(value, kind):
        raise HkError("EPROTO", f"parameter '{key}' has the wrong type")
    return value


def _jobid(params: dict[str, Any], required: bool = True) -> int | None:
    value = _param(params, "jobid", int, required)
    if value is not None and not 0 <= value <= MAX_JOBID:
        raise HkError("EINVAL", f"jobid {value} is out of range (0-{MAX_JOBID})")
    return value


def audited_method(method: str, handlers: dict[str, Any]) -> bool:
    """Known methods that act (unknown ones changed nothing: ENOSYS)."""
    return method in handlers and audit.audited(method)


def decode(body: memoryview | bytes) -> dict[str, Any] | tuple[str, str]:
    """A request map, or (code, message) saying why it is not one."""
    if len(body) > MAX_MESSAGE_BYTES:  # libzmq drops these first; kept for other callers
        return ("E2BIG", f"message of {len(body)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    try:
        message = unpack(body)
    except Exception:
        return ("EPROTO", "undecodable message: expected one msgpack map")
    if not isinstance(message, dict):
        return ("EPROTO", "malformed message: expected a msgpack map")
    if nesting_depth_over(message):
        return ("EPROTO", "malformed message: nested too deep")
    return message


class Service:
    def __init__(
        self,
        config: Config,
        *,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.time,
        stop_commands_on_exit: bool = False,
        recover: bool = False,
    ) -> None:
        self.config = config
        self.cluster: Cluster = config.cluster
        self.clock = clock
        self.stop_commands_on_exit = stop_commands_on_exit
        self.hk = core.Housekeeping(
            self.cluster.size,
            core.Policy(config.release_after, config.timeout, config.kill_grace, config.warn_after),
        )
        self._lock, self.store = open_state(
            config.state_dir,
            recover=recover,
            size=self.cluster.size,
            policy=self.hk.policy,
            now=clock(),
        )
        try:
            first_seq = self.store.reserve_events(EVENT_SEQ_BLOCK)
        except (OSError, sqlite3.Error) as exc:
            self.store.close()
            raise StateError(f"cannot write the state database {self.store.path}: {exc}") from None
        self.audit = audit.AuditLog(self.store)
        # One context for every socket: the ZAP handler answers only for its own.
        self._ctx = zmq.asyncio.Context()
        self.runner: Runner = runner or make_runner(config, self._ctx)
        self.runner.set_exit_callback(self._on_exit)
        self.history = History(
            self.store,
            self.hk,
            clock,
            keep=config.history_keep,
            flapping_after=config.flapping_after,
        )
        self.metrics = hooks_for(config.metrics_endpoint, self.hk, self.runner, self._offline_set)
        self._bound: list[endpoints.Bound] = []
        self._zap: auth.ZapHandler | None = None
        self._guard: limits.DescriptorGuard | None = None
        # Who sent the request being handled, and through which endpoint (set around
        # each handler call).
        self._caller: auth.Caller | None = None
        self._via: endpoints.Bound | None = None
        self._now = 0.0  # the time of the request being handled
        # Replies of handlers that answer later (an awaitable: stats.nodes|users, their
        # rows made in a worker thread), sent when their answer is ready.
        self._replying: set[asyncio.Task[None]] = set()
        # housekeeping.list's units, packed: made again after any change.
        self._units_packed: bytes | None = None
        self._seq = first_seq - 1
        self._seq_limit = first_seq + EVENT_SEQ_BLOCK - 1
        self._batch: dict[int, list[tuple[int, core.Outcome]]] = {}
        self._receipts: list[int] = []
        self._failed: BaseException | None = None
        self.exit_code = 0
        self._batch_handle: asyncio.TimerHandle | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self.bridge = make_bridge(config, self)
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "service.config": self._service_config,
            "housekeeping.start": self._start,
            "housekeeping.list": self._list,
            "housekeeping.unit": self._unit,
            "housekeeping.kill": self._kill,
            "housekeeping.output": self._output,
            "housekeeping.history": self._history,
            "resource.status": self._status,
            "resource.drain": self._drain,
            "resource.undrain": self._undrain,
            "stats.nodes": self.history.node_stats,
            "stats.users": self.history.user_stats,
            "housekeeping.audit": self._audit_list,
        }
        self.handlers = self.metrics.instrument(self.handlers)

    # -- lifecycle ----------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal_module.SIGTERM, signal_module.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.stop)
        self._bind()
        self.store.start_checkpoints()
        await self.metrics.listen()
        await self._recover()
        if self.bridge is not None:
            await self.bridge.start()
        if self._failed is None:
            log.info(
                "serving %s (events %s) for %s, %d nodes",
                self.config.endpoint,
                self.config.events_endpoint,
                self.cluster.text,
                self.cluster.size,
            )
        tasks = [asyncio.create_task(self._serve()), asyncio.create_task(self._heartbeat())]
        if self._zap is not None:
            tasks.append(asyncio.create_task(self._zap.run()))
        tasks.append(asyncio.create_task(self.history.run()))
        tasks.append(asyncio.create_task(self.metrics.serve()))
        await self._stopping.wait()
        for task in [*tasks, *self._replying]:
            task.cancel()
        for task in [*tasks, *self._replying]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # After a store failure nothing more is changed or killed: the commands stay
        # with the agent, and the next start carries on from what was saved.
        if self.stop_commands_on_exit and self._failed is None:
            with contextlib.suppress(StoreFailed):
                self._apply(self.hk.stop_all(self.clock()))
            await self.runner.stop_commands()
        # The exits the runner reported while stopping are saved (and acknowledged)
        # before the store closes; no timer may fire after it has.
        if self._batch_handle is not None:
            self._batch_handle.cancel()
            self._flush_batch()
        await self.runner.close()
        if self.bridge is not None:
            await self.bridge.close()
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        self._shutdown()
        if self._failed is not None:
            self.exit_code = 1

    def stop(self) -> None:
        self._stopping.set()

    def _bind(self) -> None:
        open_files = limits.raise_open_files()
        # The ZAP handler first: a CURVE socket bound before it would meet handshakes
        # with nobody to answer them.
        self._zap = auth.ZapHandler(
            self._ctx, auth.KeyRing(self.config.key_dir), self.runner.zap_domains()
        )
        self._bound = endpoints.bind_all(self._ctx, self.config)
        ipc = endpoints.ipc_sockets(self._bound)
        if ipc:
            self._guard = limits.DescriptorGuard(self._ctx, ipc, open_files)

    def _shutdown(self) -> None:
        if self._guard is not None:
            self._guard.close()  # its monitor sockets go before the context ends
        endpoints.close_all(self._bound)
        self._bound = []
        if self._zap is not None:
            self._zap.close()
        self._ctx.term()
        self.store.close()
        log.info("stopped")

    async def _recover(self) -> None:
        units = self.store.load_units()
        for rank, reason, t in self.store.load_drains():
            self.hk.restore_drain(rank, reason, t)
        for unit in units:
            self.hk.restore(unit)
        await self.runner.start(self._running_ranks, self._relaunch)
        try:
            if units:
                log.info("recovered %d units in progress", len(units))
                self._apply(self.hk.recover(self.clock()))
        except StoreFailed:
            pass  # logged; run() stops

    def _running_ranks(self) -> list[tuple[int, int]]:
        return [(u.jobid, r) for u in self.hk.units.values() for r in sorted(u.pending)]

    def _relaunch(self, keys: list[tuple[int, int]]) -> None:
        """Launch again ranks the agent never started (their launch was lost with an
        old connection to it): they have not run, so running them now is their one run."""
        by_unit: dict[int, list[int]] = {}
        for jobid, rank in keys:
            by_unit.setdefault(jobid, []).append(rank)
        for jobid, ranks in by_unit.items():
            unit = self.hk.units.get(jobid)
            if unit is None:
                continue
            todo = tuple(sorted(r for r in ranks if r in unit.pending))
            if not todo:
                continue
            log.warning(
                "housekeeping: %s on %s: launched again, its agent never started it",
                core.job_label(jobid),
                self.cluster.nodelist(todo),
            )
            self.runner.launch(LaunchSpec(jobid, unit.userid, todo, format_idset(unit.ranks)))

    # -- applying core actions ----------------------------------------------

    def _apply(self, actions: list[core.Action]) -> None:
        if actions:
            self._units_packed = None  # what `list` sends is made again at the next one
        if self._failed is not None:
            raise StoreFailed("the service is stopping: it could not save its state")
        if actions:
            try:
                self.store.apply(actions, self.hk)
            except Exception as exc:  # sqlite3.Error, or a value SQLite refuses
                # The core has already changed its memory and cannot take it back; the
                # disk has not. Carrying on would act on, and tell clients about, state
                # a restart forgets (a unit holding nodes forever, never launched). So
                # nothing of this change is acted on or published: the service stops,
                # and the next start resumes from what was saved, learning from the
                # agent again the exits that were not acknowledged.
                self._fail(exc)
                raise StoreFailed(
                    f"could not save the state in {self.store.path} ({exc}): "
                    "the service is stopping"
                ) from exc
        self.history.observe(actions)
        self.metrics.observe(actions)
        for action in actions:
            self._effect(action)
        if self.bridge is not None and actions:
            self.bridge.on_actions(actions)
        self._schedule_deadline()

    def _by(self) -> str:
        """Who asked for the change being made: the service itself outside requests."""
        return self._caller.by if self._caller is not None else "the service"

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            log.critical(
                "could not save the state in %s: %s; stopping, so that the next start "
                "resumes from what was saved",
                self.store.path,
                exc,
            )
            self._failed = exc
        self.stop()

    def _reserve_events(self) -> None:
        try:
            first = self.store.reserve_events(EVENT_SEQ_BLOCK)
        except Exception as exc:
            self._fail(exc)
            raise StoreFailed(f"could not save the state in {self.store.path} ({exc})") from exc
        self._seq = first - 1
        self._seq_limit = first + EVENT_SEQ_BLOCK - 1

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        if not self._bound or self._failed is not None:
            return
        if self._seq >= self._seq_limit:
            try:
                self._reserve_events()
            except StoreFailed:
                return
        self._seq += 1
        body = {"v": PROTOCOL_VERSION, "seq": self._seq, "t": self.clock(), **body}
        frames = [topic.encode(), pack(body)]
        for b in self._bound:
            with contextlib.suppress(zmq.ZMQError):
                b.pub_now.send_multipart(frames, flags=zmq.NOBLOCK)

    def _effect(self, action: core.Action) -> None:
        match action:
            case core.UnitStarted(jobid):
                unit = self.hk.units[jobid]
                log.info(
                    "housekeeping: %s started on %s",
                    core.job_label(jobid),
                    self.cluster.nodelist(unit.ranks),
                )
                self._publish(EVENT_STARTED, unit.to_wire())
            case core.Launch(jobid, userid, ranks, all_ranks):
                self.runner.launch(LaunchSpec(jobid, userid, ranks, all_ranks))
            case core.Signal(jobid, ranks, signum):
                # Operator kills, timeouts and SIGKILL escalations alike: the log says
                # which commands got which signal, and where.
                log.info(
                    "housekeeping: %s on %s: sent SIG%s",
                    core.job_label(jobid),
                    self.cluster.nodelist(ranks),
                    core.signal_name(signum),
                )
                self.runner.signal(jobid, ranks, signum)
            case core.RankFinished(jobid, rank, outcome, _):
                if not outcome.ok:
                    log.error(
                        "housekeeping: %s (rank %d) %s: %s",
                        self.cluster.hostname(rank),
                        rank,
                        core.job_label(jobid),
                        outcome.describe(),
                    )
                self._publish(
                    EVENT_FINISHED, {"jobid": jobid, "rank": rank, "outcome": outcome.to_wire()}
                )
            case core.Drained(ranks, reason, t):
                # A warning: the failure itself was logged as an error when it happened,
                # and an operator's drain is no error at all.
                body: dict[str, Any] = {"ranks": format_idset(ranks), "reason": reason, "t": t}
                by = self._drainer(action)
                if by is not None:
                    body["by"] = by
                log.warning(
                    "drained %s%s: %s",
                    self.cluster.nodelist(ranks),
                    f" by {by}" if by is not None else "",
                    visible(reason),
                )
                self._publish(EVENT_DRAINED, body)
            case core.Undrained(ranks):
                log.info("undrained %s by %s", self.cluster.nodelist(ranks), self._by())
                self._publish(EVENT_UNDRAINED, {"ranks": format_idset(ranks)})
            case core.Released(jobid, ranks, final):
                self._publish(
                    EVENT_RELEASED,
                    {"jobid": jobid, "ranks": format_idset(ranks), "final": final},
                )
            case core.Stuck(jobid, ranks):
                log.warning(
                    "housekeeping: %s on %s: still running after warn-after (%s)",
                    core.job_label(jobid),
                    self.cluster.nodelist(ranks),
                    plural(len(ranks), "rank"),
                )
                self._publish(EVENT_STUCK, {"jobid": jobid, "ranks": format_idset(ranks)})
            case core.UnitEnded(jobid, _):
                log.info("housekeeping: %s complete", core.job_label(jobid))
                self.runner.forget(jobid)
                self._publish(EVENT_ENDED, {"jobid": jobid})
            case _:
                pass

    def _drainer(self, drained: core.Drained) -> str | None:
        """Who drained: the caller of a drain request; for the drain of ranks whose
        command an operator killed, that operator (recorded in the audit log as theirs);
        None for the service's own drains (failures, timeouts)."""
        if self._caller is not None:
            return self._caller.by
        if drained.killed_at is None:
            return None
        killer = self.audit.killer(drained.killed_at)
        if killer is None:
            return None
        nodes = self.cluster.nodelist(drained.ranks)
        params = {"ranks": format_idset(drained.ranks), "reason": drained.reason}
        try:
            self.audit.record_kill_drain(drained.t, killer, drained.killed_at, params, nodes)
        except Exception as exc:  # sqlite3.Error: as for any change that cannot be saved
            self._fail(exc)
        return killer.by

    def _on_exit(self, jobid: int, rank: int, outcome: core.Outcome, receipt: int | None) -> None:
        self._batch.setdefault(jobid, []).append((rank, outcome))
        if receipt is not None:
            self._receipts.append(receipt)
        if self._batch_handle is None:
            loop = asyncio.get_running_loop()
            self._batch_handle = loop.call_later(BATCH_SECONDS, self._flush_batch)

    def _flush_batch(self) -> None:
        self._batch_handle = None
        batch, self._batch = self._batch, {}
        receipts, self._receipts = self._receipts, []
        now = self.clock()
        try:
            for jobid, results in batch.items():
                self._apply(self.hk.finished(jobid, results, now))
        except StoreFailed:
            return  # unacknowledged: the agent reports them again to the next start
        # Only now that they are saved may the agent forget these exits.
        self.runner.ack(receipts)

    def _schedule_deadline(self) -> None:
        deadline = self.hk.next_deadline()
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if deadline is None:
            return
        delay = max(0.0, deadline - self.clock())
        loop = asyncio.get_running_loop()
        self._deadline_handle = loop.call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        with contextlib.suppress(StoreFailed):
            self._apply(self.hk.tick(self.clock()))

    async def _heartbeat(self) -> None:
        while True:
            self._publish(EVENT_HEARTBEAT, {})
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # -- requests -----------------------------------------------------------

    async def _serve(self) -> None:
        queue = endpoints.RequestQueue(self._bound)
        while True:
            # Nothing that goes wrong with one request may end the loop: the heartbeats
            # would go on, and the service would look alive while answering no one.
            try:
                queue.pull(self._classify)
                if not queue:
                    await queue.poller.poll()
                    continue
                request, decoded = queue.pop()
                self._answer(request, decoded)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("request loop: a request failed outside its handler")
            # Exits and timers get their turn between requests.
            await asyncio.sleep(0)

    def _classify(self, frame: zmq.Frame) -> tuple[bool, dict[str, Any] | tuple[str, str]]:
        decoded = decode(frame.buffer)
        is_act = (
            isinstance(decoded, dict)
            and isinstance(decoded.get("method"), str)
            and auth.access_of(decoded["method"]) is not auth.Access.READ
        )
        return is_act, decoded

    def _answer(self, request: endpoints.Request, decoded: Any) -> None:
        reply = self.handle_decoded(decoded, request)
        if isinstance(reply, dict):
            with contextlib.suppress(zmq.ZMQError):
                request.bound.router_now.send_multipart(
                    [*request.envelope, pack_reply(reply)], flags=zmq.NOBLOCK
                )
            return
        # Answered later: the next requests are served meanwhile.
        task = asyncio.create_task(self._answer_later(request, reply))
        self._replying.add(task)
        task.add_done_callback(self._replying.discard)

    async def _answer_later(
        self, request: endpoints.Request, reply: Awaitable[dict[str, Any]]
    ) -> None:
        frames = [*request.envelope, pack_reply(await reply)]
        # Through the asyncio socket, not router_now: sending processes libzmq's pending
        # commands, which can take the edge of the socket's fd that _serve's poll waits
        # for, leaving a request unread, and no later one would wake it; the asyncio
        # socket checks again after a send while a poll waits on it.
        with contextlib.suppress(zmq.ZMQError):
            await request.bound.router.send_multipart(frames, flags=zmq.NOBLOCK)

    def handle_decoded(
        self, decoded: Any, request: endpoints.Request
    ) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        """The reply to a request, or, for a handler that answers later, a coroutine
        whose result it is."""
        if isinstance(decoded, tuple):
            code, text = decoded
            return reply_error(0, code, text)
        message: dict[str, Any] = decoded
        req_id = message.get("id", 0)
        if not isinstance(req_id, int) or isinstance(req_id, bool):
            req_id = 0
        try:
            caller = auth.caller_of(
                request.frame, request.bound.listener, auth.reported_user(message)
            )
        except HkError as exc:
            return reply_error(req_id, exc.code, exc.message)
        self._caller, self._via = caller, request.bound
        now = self._now = self.clock()
        try:
            result = self.handle(message, request.bound)
        except Exception as exc:
            reply = self._error_reply(req_id, message, exc)
        else:
            if inspect.isawaitable(result):
                return self._reply_later(req_id, message, caller, now, result)
            reply = reply_ok(req_id, result)
        finally:
            self._caller = self._via = None
        self._audit(message, caller, reply, now)
        return reply

    async def _reply_later(
        self,
        req_id: int,
        message: dict[str, Any],
        caller: auth.Caller,
        now: float,
        result: Awaitable[dict[str, Any]],
    ) -> dict[str, Any]:
        try:
            reply = reply_ok(req_id, await result)
        except Exception as exc:
            reply = self._error_reply(req_id, message, exc)
        self._audit(message, caller, reply, now)
        return reply

    def _error_reply(self, req_id: int, message: dict[str, Any], exc: Exception) -> dict[str, Any]:
        if isinstance(exc, HkError):
            return reply_error(req_id, exc.code, exc.message)
        # A bug must cost one request, never the service.
        method = message.get("method")
        log.error(
            "internal error handling %s",
            visible(method) if isinstance(method, str) else "?",
            exc_info=exc,
        )
        return reply_error(req_id, "EINTERNAL", f"internal error: {type(exc).__name__}")

    def _audit(
        self, message: dict[str, Any], caller: auth.Caller, reply: dict[str, Any], now: float
    ) -> None:
        method = message.get("method")
        if not isinstance(method, str) or not audited_method(method, self.handlers):
            return
        if self._failed is not None:
            # The store failed and the service is stopping (logged): another write would
            # only hold this reply for another busy timeout and fail the same way.
            return
        params = message.get("params")
        if "error" in reply:
            error = reply["error"]
            ok, text = False, f"refused: {error['code']}: {error['message']}"
        else:
            ok, text = True, audit.effect(method, params, reply["result"], self.cluster)
        try:
            self.audit.record(now, caller, method, params, ok, text)
        except Exception as exc:  # sqlite3.Error: as for any change that cannot be saved
            self._fail(exc)

    def handle(
        self, message: dict[str, Any], bound: endpoints.Bound
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        if self._failed is not None:
            raise StoreFailed("the service is stopping: it could not save its state")
        version = message.get("v")
        # `is int`: True and 1.0 compare equal to 1 but are not a version.
        if type(version) is not int or version != PROTOCOL_VERSION:
            shown = version if type(version) is int else f"of type {type(version).__name__}"
            raise HkError(
                "EPROTO", f"protocol version {shown} not supported (this is {PROTOCOL_VERSION})"
            )
        method = message.get("method")
        if not isinstance(method, str):
            raise HkError("EPROTO", "missing method")
        handler = self.handlers.get(method)
        if handler is None:
            raise HkError("ENOSYS", f"unknown method {quoted(method)}")
        assert self._caller is not None
        auth.authorize(method, self._caller, bound.listener, self.config.endpoint)
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise HkError("EPROTO", "params must be a map")
        result = handler(params)
        return result if result is not None else {}

    def _ranks(self, params: dict[str, Any], required: bool = True) -> set[int] | None:
        text = _param(params, "ranks", str, required)
        if text is None:
            return None
        try:
            return self.cluster.parse_ranks(text, strict=True)
        except (IdsetError, TargetError) as exc:
            raise HkError("EINVAL", str(exc)) from None

    def _service_config(self, params: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "hostlist": self.cluster.text,
            "size": self.cluster.size,
            "command": cfg.command,
            "release-after": cfg.release_after,
            "timeout": cfg.timeout,
            "kill-grace": cfg.kill_grace,
            # The endpoint asked, and its events: a viewer on the read-only endpoint
            # follows the read-only events.
            "endpoint": self._via.listener.endpoint if self._via else cfg.endpoint,
            "events-endpoint": self._via.events_endpoint if self._via else cfg.events_endpoint,
            "operator-endpoint": cfg.endpoint,
            "read-endpoint": cfg.read_endpoint,
            "state-dir": str(cfg.state_dir),
            "t_now": self.clock(),
        }

    def _start(self, params: dict[str, Any]) -> dict[str, Any]:
        jobid = _jobid(params)
        assert jobid is not None
        ranks = self._ranks(params)
        assert ranks is not None
        userid = _param(params, "userid", int, False)
        if userid is None:
            userid = os.getuid()
        elif not 0 <= userid <= MAX_USERID:
            raise HkError("EINVAL", f"userid {userid} is out of range (0-{MAX_USERID})")
        self.start_unit(jobid, userid, ranks)
        return {"jobid": jobid}

    def start_unit(self, jobid: int, userid: int, ranks: Iterable[int]) -> None:
        self._apply(self.hk.start(jobid, userid, ranks, self.clock()))

    def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._units_packed is None:
            self._units_packed = pack([u.to_wire() for u in self.hk.units.values()])
        return Prepacked({"t_now": self.clock()}, "units", self._units_packed)

    def _unit(self, params: dict[str, Any]) -> dict[str, Any]:
        jobid = _jobid(params)
        assert jobid is not None
        unit = self.hk.unit(jobid)
        detail = [
            {
                "rank": rec.rank,
                "hostname": self.cluster.hostname(rec.rank),
                "state": rec.state,
                "t_start": rec.t_start,
                "t_end": rec.t_end,
                "outcome": rec.outcome.to_wire() if rec.outcome else None,
            }
            for rec in (unit.records[r] for r in unit.ranks)
        ]
        return {**unit.to_wire(), "rank_detail": detail}

    def _kill(self, params: dict[str, Any]) -> dict[str, Any]:
        signum = _param(params, "signum", int, False)
        if signum is None:
            signum = core.SIGTERM
        jobid = _jobid(params, required=False)
        ranks = self._ranks(params, required=False)
        all_units = bool(_param(params, "all", bool, False))
        down = self.runner.down_since
        if down is not None:
            # A kill now would be a success reply for a signal nobody can send.
            raise HkError(
                "EAGAIN",
                "the local agent is not answering (since "
                f"{time.strftime('%H:%M:%S', time.localtime(down))}): no command can be "
                "signalled until it does; try again",
            )
        # At the request's time: the audit records the kill at that time, and a drain
        # that follows from it finds the killer there.
        result = self.hk.kill(signum, self._now, jobid=jobid, ranks=ranks, all_units=all_units)
        log.info(
            "kill request by %s: %s of %s, SIG%s",
            self._by(),
            plural(result.ranks, "rank"),
            plural(result.units, "unit"),
            core.signal_name(signum),
        )
        self._apply(result.actions)
        reply: dict[str, Any] = {
            "units": result.units,
            "ranks": result.ranks,
            "signum": signum,
            "by": self._by(),
        }
        # Node agents: a signal for a node whose agent is not connected waits for it.
        offline = set(self.runner.offline_nodes() or ()) & {
            rank for a in result.actions if isinstance(a, core.Signal) for rank in a.ranks
        }
        if offline:
            reply["offline"] = self.cluster.nodelist(sorted(offline))
        return reply

    def _output(self, params: dict[str, Any]) -> dict[str, Any]:
        jobid = _jobid(params)
        assert jobid is not None
        rank = _param(params, "rank", int, False)
        tail = _param(params, "tail", int, False) or 20
        tail = max(1, min(tail, OUTPUT_TAIL_MAX))
        unit = self.hk.units.get(jobid)
        if unit is None:
            kept = self.runner.has_output(jobid)
            if kept is None:
                raise HkError("ENOENT", f"no output kept for job {core.job_label(jobid)}")
            ranks: list[int] = kept
        else:
            ranks = list(unit.ranks)
        if rank is not None:
            if rank not in ranks:
                raise HkError("ENOENT", f"job {core.job_label(jobid)} has no rank {rank}")
            ranks = [rank]
        return self.runner.output(jobid, ranks, tail)

    def _audit_list(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = _param(params, "limit", int, False) or 100
        return {"entries": self.audit.entries(max(1, min(limit, 10_000)))}

    def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = _param(params, "limit", int, False) or 100
        return {"units": self.store.history(max(1, min(limit, 10_000)))}

    def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        groups: dict[tuple[str, float], list[int]] = {}
        for rank, (reason, t) in self.hk.drains.items():
            groups.setdefault((reason, t), []).append(rank)
        return {
            "hostlist": self.cluster.text,
            "size": self.cluster.size,
            "housekeeping": format_idset(self.hk.housekeeping_ranks()),
            "drained": [
                self._drain_entry(ranks, reason, t)
                for (reason, t), ranks in sorted(groups.items(), key=lambda g: min(g[1]))
            ],
            "offline": self._offline(),
            "offline_since": self._offline_since(),
            # Node agents (each node its own, offline while it is away), or one local one.
            "agents": self.runner.offline_nodes() is not None,
            "flapping": format_idset(self.history.flapping()),
        }

    def _drain_entry(self, ranks: list[int], reason: str, t: float) -> dict[str, Any]:
        entry: dict[str, Any] = {"ranks": format_idset(ranks), "reason": reason, "t": t}
        by = self.audit.drained_by(t)
        if by is not None:
            entry["by"] = by
        return entry

    def _offline(self) -> str:
        return format_idset(self._offline_set())

    def _offline_since(self) -> list[dict[str, Any]]:
        """Offline nodes grouped by since when (node agents only)."""
        groups: dict[float, list[int]] = {}
        for rank, since in (self.runner.offline_nodes() or {}).items():
            groups.setdefault(since, []).append(rank)
        return [
            {"ranks": format_idset(ranks), "t": t}
            for t, ranks in sorted(groups.items(), key=lambda g: min(g[1]))
        ]

    def _offline_set(self) -> set[int]:
        """Nodes with commands running while the agent cannot be reached (spec §7):
        nothing can be known or done about them until it answers. With node agents,
        every node whose agent is not connected."""
        nodes = self.runner.offline_nodes()
        if nodes is not None:
            return set(nodes)
        if self.runner.down_since is None:
            return set()
        return {r for u in self.hk.units.values() for r in u.pending}

    def _drain(self, params: dict[str, Any]) -> dict[str, Any]:
        ranks = self._ranks(params)
        assert ranks is not None
        reason = _param(params, "reason", str, False) or ""
        if len(reason) > MAX_REASON or not reason.isprintable():
            raise HkError(
                "EINVAL",
                f"a drain reason is at most {MAX_REASON} printable characters on one line "
                f"(this one has {len(reason)} characters"
                + ("" if reason.isprintable() else ", with control characters or line breaks")
                + ")",
            )
        already = self.drain_ranks(ranks, reason, self._now)
        return {
            "drained": format_idset(ranks - already),
            "already": format_idset(already),
            "by": self._by(),
        }

    def drain_ranks(self, ranks: set[int], reason: str, now: float | None = None) -> set[int]:
        """Drain ranks; returns those already drained (they keep their first reason)."""
        now = self.clock() if now is None else now
        actions, already = self.hk.drain(ranks, reason, now)
        self._apply(actions)
        return already

    def _undrain(self, params: dict[str, Any]) -> dict[str, Any]:
        ranks = self._ranks(params)
        assert ranks is not None
        self._apply(self.hk.undrain(ranks))
        return {"undrained": format_idset(ranks), "by": self._by()}


def run_service(
    config: Config, *, stop_commands_on_exit: bool = False, recover: bool = False
) -> int:
    service = Service(config, stop_commands_on_exit=stop_commands_on_exit, recover=recover)
    asyncio.run(service.run())
    return service.exit_code
