"""The service's sockets: where clients connect, what each may do there, and in what
order their requests are served.

- The operator endpoint (`[service] endpoint`) and the optional read-only endpoint
  (`read-endpoint`), each a ROUTER with an events PUB beside it.
- An ipc operator socket lives in a 0700 directory (only the service's user gets in); a
  read-only ipc socket in a directory others may enter but not write, mode 0666.
- tcp endpoints use CURVE with the service's key (keys-dir/server.key_secret) and the
  clients' keys (auth.KeyRing); tcp without CURVE only with `insecure = true`.
- Every socket drops messages over MAX_MESSAGE_BYTES inside libzmq, before they are
  read into memory.
- Requests are taken from every socket as they come and queued: acts (starts, kills,
  drains) are served before reads, so a scheduler pipelining starts on one connection is
  not held up behind clients that list in a loop (the ROUTER alone serves one message
  per connection in turn).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from hkservice import auth, keys, limits
from hkservice.config import Config
from hkservice.protocol import MAX_MESSAGE_BYTES

log = logging.getLogger("hkservice")

SERVER_KEY = "server" + keys.SECRET_SUFFIX
# Requests held in the queue at most (bytes): beyond it they wait in libzmq's queues.
QUEUE_BYTES_MAX = 64 << 20


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def prepare_ipc(endpoint: str, *, shared: bool = False) -> None:
    """Make the socket's directory, check who may enter it, remove a stale socket.

    Private (operator) sockets: only the service's user may enter the directory: that is
    what gives kill, drain and start their operator rights on a local ipc endpoint.
    mkdir's mode only applies to a directory it creates, so one that was already there (a
    /tmp name anyone could have taken first) is checked. Shared (read-only) sockets: others
    may enter, but nobody else may write there (or they could put their own socket in its
    place).
    """
    path = ipc_path(endpoint)
    if path is None:
        return
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o755 if shared else 0o700)
    st = directory.lstat()
    uid = os.getuid()
    mode = stat.S_IMODE(st.st_mode)
    bad_mode = mode & 0o022 if shared else mode & 0o077
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or bad_mode:
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
        need = (
            "no group or other write access (mode 0755)"
            if shared
            else "no group or other access (mode 0700)"
        )
        role = "read-only socket's directory" if shared else "socket directory"
        must = (
            "must be owned by the service's user"
            if shared
            else "must be private to the service's user"
        )
        raise RuntimeError(
            f"the {role} {directory} {must}: it is {what} "
            f"owned by uid {st.st_uid} with mode {mode:04o}, where it needs owner uid {uid} "
            f"and {need}"
        )
    if shared and not mode & 0o001:
        raise RuntimeError(
            f"the read-only socket's directory {directory} has mode {mode:04o}: other users "
            "cannot reach the socket in it (it needs 0755; the operator socket's directory "
            "is private, so give the read-only socket a directory of its own)"
        )
    if path.exists():
        path.unlink()


@dataclass
class Bound:
    """One request endpoint as bound: its ROUTER, its events PUB, what it allows."""

    listener: auth.Listener
    router: zmq.asyncio.Socket
    pub: zmq.asyncio.Socket
    events_endpoint: str

    def __post_init__(self) -> None:
        # Blocking views of the same sockets, for reads and sends that must not wait
        # (an asyncio socket returns a future even for a NOBLOCK call).
        self.router_now = zmq.Socket.shadow(self.router.underlying)
        self.pub_now = zmq.Socket.shadow(self.pub.underlying)


def _limit(sock: zmq.Socket[Any]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.BACKLOG, limits.BACKLOG)


def server_key(config: Config) -> bytes | None:
    """The service's CURVE secret key, or None if it has none (a clear error if the
    file is there but unreadable or not a key)."""
    path = config.key_dir / SERVER_KEY
    if not path.exists():
        return None
    try:
        cert = keys.load(path, need_secret=True)
    except keys.KeyFileError as exc:
        raise RuntimeError(str(exc)) from None
    assert cert.secret is not None
    return cert.secret


def bind_all(ctx: zmq.asyncio.Context, config: Config) -> list[Bound]:
    pairs = [(config.endpoint, config.events_endpoint, False)]
    if config.read_endpoint is not None and config.read_events_endpoint is not None:
        pairs.append((config.read_endpoint, config.read_events_endpoint, True))
    tcp = [e for pair in pairs for e in pair[:2] if e.startswith("tcp://")]
    secret = server_key(config) if tcp else None
    if tcp and secret is None:
        if not config.insecure:
            raise RuntimeError(
                f"{tcp[0]} is a tcp endpoint without CURVE: anyone who reaches it could kill, "
                f"drain and start. Make the service's key with `hkservice keygen server "
                f"--dir {config.key_dir}` and put clients' public keys in "
                f"{config.key_dir}/operators (or viewers, schedulers); or set "
                "`insecure = true` in [service] to run without authentication"
            )
        log.warning(
            "insecure = true: %s accepts anyone who can reach it, without CURVE: they may "
            "kill, drain and start",
            ", ".join(tcp),
        )
    bound: list[Bound] = []
    try:
        for endpoint, events, shared in pairs:
            router = ctx.socket(zmq.ROUTER)
            pub = ctx.socket(zmq.PUB)
            curve = secret is not None and endpoint.startswith("tcp://")
            bound.append(Bound(auth.Listener(endpoint, shared, curve), router, pub, events))
            for sock, where in ((router, endpoint), (pub, events)):
                _limit(sock)
                prepare_ipc(where, shared=shared)
                if secret is not None and where.startswith("tcp://"):
                    auth.make_curve_server(sock, secret)
                try:
                    sock.bind(where)
                except zmq.ZMQError as exc:
                    raise RuntimeError(f"cannot bind {where}: {exc.strerror}") from None
                path = ipc_path(where)
                if path is not None:
                    # Even in a shared directory, only the service's user may connect to
                    # the operator socket; anyone may connect to a read-only one.
                    path.chmod(0o666 if shared else 0o600)
    except BaseException:
        close_all(bound)
        raise
    return bound


def ipc_sockets(bound: list[Bound]) -> list[tuple[zmq.asyncio.Socket, Path]]:
    """Every socket with an ipc listener, and its socket file."""
    found = []
    for b in bound:
        for sock, where in ((b.router, b.listener.endpoint), (b.pub, b.events_endpoint)):
            path = ipc_path(where)
            if path is not None:
                found.append((sock, path))
    return found


def close_all(bound: list[Bound]) -> None:
    for b in bound:
        for sock, where in ((b.router, b.listener.endpoint), (b.pub, b.events_endpoint)):
            sock.close(linger=0)
            path = ipc_path(where)
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()


@dataclass
class Request:
    bound: Bound
    envelope: list[bytes]
    frame: zmq.Frame


class RequestQueue:
    """Requests taken from every ROUTER, acts first (see the module's docstring)."""

    def __init__(self, bound: list[Bound]) -> None:
        self.bound = bound
        self.acts: collections.deque[tuple[Request, Any]] = collections.deque()
        self.reads: collections.deque[tuple[Request, Any]] = collections.deque()
        self._bytes = 0
        self.poller = zmq.asyncio.Poller()
        for b in bound:
            self.poller.register(b.router, zmq.POLLIN)

    def __bool__(self) -> bool:
        return bool(self.acts or self.reads)

    def pull(self, classify: Any) -> None:
        """Take every request waiting in libzmq, without blocking; `classify(frame)`
        returns (is_act, decoded) so each body is decoded once."""
        for b in self.bound:
            while self._bytes < QUEUE_BYTES_MAX:
                try:
                    frames = b.router_now.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(frames) < 2:
                    continue
                frame = frames[-1]
                request = Request(b, [f.bytes for f in frames[:-1]], frame)
                is_act, decoded = classify(frame)
                (self.acts if is_act else self.reads).append((request, decoded))
                self._bytes += len(frame)

    def pop(self) -> tuple[Request, Any]:
        item = self.acts.popleft() if self.acts else self.reads.popleft()
        self._bytes -= len(item[0].frame)
        return item
