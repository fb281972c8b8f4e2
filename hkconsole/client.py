"""ZeroMQ clients of hkservice: a blocking one for the command line, an asyncio one for the TUI.

Both follow the lazy-pirate pattern: a request that gets no reply within the timeout
closes the socket, so a late reply can never be taken for the answer to the next request.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from hkservice.protocol import (
    ProtocolError,
    default_endpoint,
    endpoint_problem,
    pack,
    request,
    unpack,
)

# Short enough that a dead service is reported within 5 s, start-up included.
DEFAULT_TIMEOUT = 4.0


class ServiceError(ProtocolError):
    """The service answered with an error, or could not be reached (code EHOSTDOWN)."""


def resolve_endpoint(endpoint: str | None = None) -> str:
    return endpoint or os.environ.get("HK_ENDPOINT") or default_endpoint()


def check_endpoint(endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    if problem is not None:
        raise ServiceError("EINVAL", f"invalid endpoint: {problem}")


def tcp_address(endpoint: str) -> tuple[str, int]:
    """(host, port) of a checked tcp:// endpoint; an IPv6 host loses its brackets."""
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _check_reachable(endpoint: str) -> None:
    check_endpoint(endpoint)
    # An ipc endpoint with no socket file means no service: say so at once instead of
    # letting the request time out.
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :]):
        raise ServiceError(
            "EHOSTDOWN",
            f"no hk service at {endpoint} (is hkservice running? set --endpoint or HK_ENDPOINT)",
        )


def _connect(sock: Any, endpoint: str) -> None:
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        # What check_endpoint lets through but ZeroMQ still refuses (e.g. a host name
        # it cannot parse): one line naming the endpoint, not a ZMQError.
        sock.close(linger=0)
        raise ServiceError("EINVAL", f"cannot connect to '{endpoint}': {exc.strerror}") from None


def _result(reply: Any, endpoint: str) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise ServiceError("EPROTO", f"malformed reply from {endpoint}")
    if "error" in reply:
        error = reply["error"] or {}
        raise ServiceError(str(error.get("code", "EPROTO")), str(error.get("message", "")))
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


def _timeout_error(endpoint: str, timeout: float) -> ServiceError:
    return ServiceError(
        "EHOSTDOWN", f"hk service at {endpoint} did not answer within {timeout:g} s"
    )


def wait_for_service(
    endpoint: str, timeout: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Poll until the service at `endpoint` answers; False if `alive()` turns false
    (the process we started died) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with Client(endpoint, timeout=1.0) as client:
                client.call("service.config")
            return True
        except ServiceError:
            time.sleep(0.05)
    return False


class Client:
    """Blocking request/reply client."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = timeout
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)

    def _connect(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            _check_reachable(self.endpoint)
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            _connect(sock, self.endpoint)
            self._socket = sock
        return self._socket

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        sock = self._connect()
        req_id = next(self._ids)
        sock.send(pack(request(method, params, req_id)))
        deadline_ms = int(self.timeout * 1000)
        while sock.poll(deadline_ms, zmq.POLLIN):
            reply = unpack(sock.recv())
            if isinstance(reply, dict) and reply.get("id") not in (req_id, 0):
                continue
            return _result(reply, self.endpoint)
        self.close()
        raise _timeout_error(self.endpoint, self.timeout)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio request/reply client; calls are serialised so replies cannot cross."""

    def __init__(self, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        # Imported here: asyncio alone costs the command line 30 ms of start-up.
        import asyncio

        import zmq.asyncio

        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = timeout
        self._context = zmq.asyncio.Context.instance()
        self._socket: Any = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    def _connect(self) -> Any:
        if self._socket is None:
            _check_reachable(self.endpoint)
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            _connect(sock, self.endpoint)
            self._socket = sock
        return self._socket

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self._lock:
            sock = self._connect()
            req_id = next(self._ids)
            await sock.send(pack(request(method, params, req_id)))
            deadline_ms = int(self.timeout * 1000)
            while await sock.poll(deadline_ms, zmq.POLLIN):
                reply = unpack(await sock.recv())
                if isinstance(reply, dict) and reply.get("id") not in (req_id, 0):
                    continue
                return _result(reply, self.endpoint)
            self.close()
            raise _timeout_error(self.endpoint, self.timeout)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
