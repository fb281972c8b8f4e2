"""Who may do what (docs/hkservice.md, Security): roles, the method table, CURVE keys.

- The method table (METHOD_ACCESS) is the one place that says which requests only read
  and which act; a method missing from it is an act, so a new method is refused to
  everyone but operators until someone decides otherwise.
- A caller's role comes from how it reached the service: the operator ipc socket (in a
  0700 directory: the service's own user) is an operator; the read-only endpoint gives at
  most a viewer; a tcp client is what the directory holding its CURVE key says
  (operators/, schedulers/, viewers/ under the keys directory).
- The ZAP handler runs on the service's own ZeroMQ context (an authenticator on another
  context means no handler at all, and libzmq then accepts any key), and the sockets set
  ZAP_ENFORCE_DOMAIN so that a missing handler refuses rather than accepts.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils import z85

from hkservice import keys
from hkservice.errors import HkError
from hkservice.text import acting, quoted, visible

log = logging.getLogger("hkservice")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"hk"


class Access(enum.Enum):
    READ = "read"
    START = "start"
    ACT = "act"


# The one table of what each method does. Reads show state; START hands nodes to
# housekeeping (what a scheduler hook needs); ACT changes what runs or what is drained.
METHOD_ACCESS: dict[str, Access] = {
    "service.config": Access.READ,
    "housekeeping.list": Access.READ,
    "housekeeping.unit": Access.READ,
    "housekeeping.output": Access.READ,
    "housekeeping.history": Access.READ,
    "housekeeping.audit": Access.READ,
    "stats.nodes": Access.READ,
    "stats.users": Access.READ,
    "resource.status": Access.READ,
    "housekeeping.start": Access.START,
    "housekeeping.kill": Access.ACT,
    "resource.drain": Access.ACT,
    "resource.undrain": Access.ACT,
}


def access_of(method: str) -> Access:
    return METHOD_ACCESS.get(method, Access.ACT)


class Role(enum.Enum):
    OPERATOR = "operator"
    SCHEDULER = "scheduler"
    VIEWER = "viewer"


ROLE_ACCESS: dict[Role, frozenset[Access]] = {
    Role.OPERATOR: frozenset(Access),
    Role.SCHEDULER: frozenset({Access.READ, Access.START}),
    Role.VIEWER: frozenset({Access.READ}),
}

# keys-dir/<directory> -> the role of the public keys in it
KEY_DIRECTORIES: dict[str, Role] = {
    "operators": Role.OPERATOR,
    "schedulers": Role.SCHEDULER,
    "viewers": Role.VIEWER,
}

# What a client may report as its user (SUDO_USER or login name): plain enough to show.
MAX_REPORTED_USER = 64


@dataclass(frozen=True)
class Listener:
    """One request endpoint: the operator one, or the read-only one."""

    endpoint: str
    read_only: bool
    curve: bool

    @property
    def ipc(self) -> bool:
        return self.endpoint.startswith("ipc://")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the role it has, and who it is as far as the service can tell.

    `name` is authenticated (the peer's uid on ipc, the key's name on tcp); `reported` is
    the user the client says it acts for (SUDO_USER, login name), not verified.
    """

    role: Role
    name: str
    how: str  # "uid 0", "key alice", "tcp 10.0.0.7 (no CURVE)"
    reported: str | None = None

    @property
    def by(self) -> str:
        return acting(self.name, self.reported)


@functools.lru_cache(maxsize=1024)
def _user_name(uid: int) -> str:
    """Asked at every request on ipc, where getpwuid read /etc/passwd each time (about
    50 us a request). A user renamed while the service runs keeps the old name in the
    audit until it restarts; the uid is recorded beside it."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _peer_uid(frame: zmq.Frame) -> int | None:
    """The connecting process's uid on an ipc socket: libzmq puts its SO_PEERCRED
    (`host:uid:gid:pid`) in the Peer-Address property."""
    with contextlib.suppress(zmq.ZMQError):
        parts = frame.get("Peer-Address").rsplit(":", 3)
        if len(parts) == 4 and parts[1].isdigit():
            return int(parts[1])
    return None


def _frame_property(frame: zmq.Frame, name: str) -> str | None:
    try:
        return frame.get(name)
    except zmq.ZMQError:  # EINVAL: the connection has no such property
        return None


def reported_user(message: dict[str, Any]) -> str | None:
    user = message.get("user")
    if user is None:
        return None
    if (
        not isinstance(user, str)
        or not user
        or len(user) > MAX_REPORTED_USER
        or not user.isprintable()
        or " " in user
    ):
        raise HkError(
            "EPROTO",
            f"'user' must be a user name of 1 to {MAX_REPORTED_USER} printable characters "
            "without spaces",
        )
    return user


def caller_of(frame: zmq.Frame, listener: Listener, reported: str | None) -> Caller:
    ceiling = Role.VIEWER if listener.read_only else Role.OPERATOR
    if listener.curve:
        # "role/name", set by our ZAP handler; a frame without it never got past ZAP.
        user_id = _frame_property(frame, "User-Id") or ""
        role_text, _, name = user_id.partition("/")
        role = Role(role_text) if role_text in {r.value for r in Role} else Role.VIEWER
        if listener.read_only:
            role = Role.VIEWER
        return Caller(role, name or "unknown key", f"key {name}", reported)
    if listener.ipc:
        uid = _peer_uid(frame)
        name = _user_name(uid) if uid is not None else "unknown uid"
        return Caller(ceiling, name, f"uid {uid}", reported)
    peer = _frame_property(frame, "Peer-Address") or "unknown address"
    return Caller(ceiling, peer, f"tcp {peer} (no CURVE)", reported)


def authorize(method: str, caller: Caller, listener: Listener, operator_endpoint: str) -> None:
    """EPERM, saying where to go instead, unless the caller's role allows the method."""
    access = access_of(method)
    if access in ROLE_ACCESS[caller.role]:
        return
    what = "a start" if access is Access.START else "an operator action"
    if listener.read_only:
        raise HkError(
            "EPERM",
            f"{method} is {what}: {listener.endpoint} is the read-only endpoint; "
            f"use the operator endpoint {operator_endpoint}",
        )
    raise HkError(
        "EPERM",
        f"{method} is {what}: key {quoted(caller.name)} is a {caller.role.value} key "
        f"(it may {', '.join(sorted(a.value for a in ROLE_ACCESS[caller.role]))})",
    )


class KeyRing:
    """The public keys of keys-dir/operators, schedulers and viewers, re-read when one of
    those directories changes (a key copied in works at the next connection)."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self._stamp: tuple[float, ...] = ()
        self._keys: dict[bytes, tuple[Role, keys.Certificate]] = {}

    def _mtimes(self) -> tuple[float, ...]:
        stamps: list[float] = []
        for directory in KEY_DIRECTORIES:
            try:
                stamps.append((self.keys_dir / directory).stat().st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)

    def lookup(self, public: bytes) -> tuple[Role, keys.Certificate] | None:
        stamp = self._mtimes()
        if stamp != self._stamp:
            found: dict[bytes, tuple[Role, keys.Certificate]] = {}
            # Most rights first: a key in both operators/ and viewers/ is an operator.
            for directory, role in KEY_DIRECTORIES.items():
                for public_key, cert in keys.load_public_keys(self.keys_dir / directory).items():
                    found.setdefault(public_key, (role, cert))
            self._keys, self._stamp = found, stamp
        return self._keys.get(public)


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27) for the CURVE endpoints of one context."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        ring: KeyRing,
        domains: Mapping[bytes, Callable[[bytes, str], bytes | None]] | None = None,
    ) -> None:
        self.ring = ring
        # Other ZAP domains on this context (the node agents' endpoint): each answers
        # with the User-Id of an accepted public key, or None to refuse it.
        self.domains = dict(domains or {})
        self._socket = ctx.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Bound before any CURVE socket binds, so no handshake can find it missing.
        self._socket.bind(ZAP_ENDPOINT)

    async def run(self) -> None:
        while True:
            request = await self._socket.recv_multipart()
            try:
                reply = self.answer(request)
            except Exception:  # a bad request must not end authentication
                log.exception("authentication: cannot answer a ZAP request")
                reply = [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"error"]
                reply += [b"", b""]
            await self._socket.send_multipart(reply)

    def answer(self, request: list[bytes]) -> list[bytes]:
        version, request_id, domain, address, _identity, mechanism, *credentials = request
        if version != b"1.0":
            return [b"1.0", request_id, b"400", b"bad ZAP version", b"", b""]
        peer = visible(address.decode("utf-8", "replace"))
        other = self.domains.get(domain)
        if other is not None and mechanism == b"CURVE" and len(credentials) == 1:
            user = other(z85.encode(credentials[0]), peer)
            if user is None:
                return [b"1.0", request_id, b"400", b"unknown key", b"", b""]
            return [b"1.0", request_id, b"200", b"OK", user, b""]
        if domain != ZAP_DOMAIN or mechanism != b"CURVE" or len(credentials) != 1:
            log.warning("refused a connection from %s: not CURVE", peer)
            return [b"1.0", request_id, b"400", b"CURVE required", b"", b""]
        public = z85.encode(credentials[0])
        found = self.ring.lookup(public)
        if found is None:
            log.warning(
                "refused a connection from %s: key %s is not in %s/{%s}",
                peer,
                public.decode(),
                self.ring.keys_dir,
                ",".join(KEY_DIRECTORIES),
            )
            return [b"1.0", request_id, b"400", b"unknown key", b"", b""]
        role, cert = found
        user_id = f"{role.value}/{cert.name}".encode()
        return [b"1.0", request_id, b"200", b"OK", user_id, b""]

    def close(self) -> None:
        self._socket.close(linger=0)


def make_curve_server(sock: zmq.Socket[Any], secret_key: bytes, domain: bytes = ZAP_DOMAIN) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    # Without a handler, libzmq would accept every key: enforcing the domain makes a
    # missing handler refuse instead.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
