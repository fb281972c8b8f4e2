"""ZeroMQ clients of hkservice: a blocking one for the command line, an asyncio one for the TUI.

Both follow the lazy-pirate pattern: a request that gets no reply within the timeout
closes the socket, so a late reply can never be taken for the answer to the next request.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import zmq

from hkservice.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    default_endpoint,
    endpoint_problem,
    pack,
    request,
    unpack,
)
from hkservice.text import visible

# Short enough that a dead service is reported within 5 s, start-up included.
DEFAULT_TIMEOUT = 4.0


class ServiceError(ProtocolError):
    """The service answered with an error, or could not be reached (code EHOSTDOWN)."""


def acted_by(result: dict[str, Any]) -> str:
    """` by alice (as root)`: who the service recorded as acting on a kill, drain or
    undrain reply, as shown after what was done ('' from older services)."""
    by = result.get("by")
    return f" by {visible(by)}" if isinstance(by, str) and by else ""


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
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://") :]
    # An ipc endpoint with no socket file means no service, and one we may not open means
    # no rights: say which at once instead of letting the request time out.
    try:
        os.stat(path)
    except FileNotFoundError:
        from hkservice.limits import full_path

        if os.path.exists(full_path(path)):
            raise ServiceError(
                "EAGAIN",
                f"the hk service at {endpoint} refuses new connections for now: it is out "
                "of file descriptors (its log says more); try again",
            ) from None
        raise ServiceError(
            "EHOSTDOWN",
            f"no hk service at {endpoint} (is hkservice running? set --endpoint or HK_ENDPOINT)",
        ) from None
    except PermissionError:
        raise permission_denied(endpoint, path) from None
    except OSError:
        return  # e.g. a path too long: let ZeroMQ say
    if not os.access(path, os.W_OK):  # connecting to a unix socket needs write permission
        raise permission_denied(endpoint, path)


def permission_denied(endpoint: str, path: str) -> ServiceError:
    return ServiceError(
        "EPERM",
        f"permission denied: you may not connect to the socket {path} ({endpoint}); "
        "the operator endpoint is for the service's user only: run as that user (sudo), "
        "or use the service's read-only endpoint to look",
    )


def reported_user() -> str | None:
    """Who the client acts for, as it says (the service records it marked as reported):
    the sudo caller if any, else the login name."""
    for variable in ("SUDO_USER", "USER", "LOGNAME"):
        name = os.environ.get(variable)
        if name and len(name) <= 64 and name.isprintable() and " " not in name:
            return name
    return None


class CurveKeys(NamedTuple):
    """A tcp client's CURVE keys: its own pair and the service's public key (z85).

    A NamedTuple, not a dataclass: importing dataclasses (and inspect, ast behind it)
    cost every command line 10 ms of start-up."""

    public: bytes
    secret: bytes
    server: bytes


def curve_keys(key_file: str | None = None, server_key_file: str | None = None) -> CurveKeys | None:
    """The keys from options, else $HK_KEY and $HK_SERVER_KEY; None if neither is set.

    key_file: the client's secret key file (NAME.key_secret, from `hkservice keygen`);
    server_key_file: the service's public key file (server.key).
    """
    key_file = key_file or os.environ.get("HK_KEY")
    server_key_file = server_key_file or os.environ.get("HK_SERVER_KEY")
    if not key_file and not server_key_file:
        return None
    if not (key_file and server_key_file):
        missing = "--server-key (or HK_SERVER_KEY)" if key_file else "--key (or HK_KEY)"
        raise ServiceError("EINVAL", f"CURVE needs both keys: {missing} is missing")
    from pathlib import Path

    from hkservice import keys

    try:
        mine = keys.load(Path(key_file), need_secret=True)
        server = keys.load(Path(server_key_file))
    except keys.KeyFileError as exc:
        raise ServiceError("EINVAL", str(exc)) from None
    assert mine.secret is not None
    return CurveKeys(mine.public, mine.secret, server.public)


def apply_curve(sock: Any, keys: CurveKeys | None) -> None:
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


def _request_bytes(method: str, params: dict[str, Any] | None, req_id: int) -> bytes:
    message = request(method, params, req_id)
    user = reported_user()
    if user is not None:
        message["user"] = user
    body = pack(message)
    # The service's sockets drop a bigger message unanswered: refuse it here, clearly.
    if len(body) > MAX_MESSAGE_BYTES:
        raise ServiceError(
            "E2BIG", f"request of {len(body)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
        )
    return body


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
    endpoint: str,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
    keys: CurveKeys | None = None,
) -> bool:
    """Poll until the service at `endpoint` answers; False if `alive()` turns false
    (the process we started died) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with Client(endpoint, timeout=1.0, keys=keys) as client:
                client.call("service.config")
            return True
        except ServiceError:
            time.sleep(0.05)
    return False


class Client:
    """Blocking request/reply client."""

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        keys: CurveKeys | None = None,
    ) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = timeout
        self.keys = keys
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._ids = itertools.count(1)

    def _connect(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            _check_reachable(self.endpoint)
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            apply_curve(sock, self.keys)
            _connect(sock, self.endpoint)
            self._socket = sock
        return self._socket

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        req_id = next(self._ids)
        body = _request_bytes(method, params, req_id)
        sock = self._connect()
        sock.send(body)
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

    def __init__(
        self,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        keys: CurveKeys | None = None,
    ) -> None:
        # Imported here: asyncio alone costs the command line 30 ms of start-up.
        import asyncio

        import zmq.asyncio

        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = timeout
        self.keys = keys
        self._context = zmq.asyncio.Context.instance()
        self._socket: Any = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    def _connect(self) -> Any:
        if self._socket is None:
            _check_reachable(self.endpoint)
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            apply_curve(sock, self.keys)
            _connect(sock, self.endpoint)
            self._socket = sock
        return self._socket

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        async with self._lock:
            req_id = next(self._ids)
            body = _request_bytes(method, params, req_id)
            sock = self._connect()
            await sock.send(body)
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
