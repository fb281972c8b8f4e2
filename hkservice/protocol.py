"""The wire format shared by the service and its clients (see docs/protocol.md)."""

from __future__ import annotations

import os
from typing import Any

import msgpack

from hkservice import PROTOCOL_VERSION
from hkservice.errors import HkError

MAX_MESSAGE_BYTES = 1 << 20
# Between the service and its agents (local or node), in both directions: a launch names
# each rank's host and carries the command's environment, a hello lists every command
# running and every exit kept. Launches are cut into chunks (runner.launch_messages) so
# none comes near this; libzmq drops a bigger message, and the connection, unread.
AGENT_MAX_MESSAGE_BYTES = 16 << 20
# Drain reasons: one line of printable text, short enough to read in a table.
MAX_REASON = 256
# No request needs more than a map of maps; anything deeper is malformed, and refused
# before any code walks it (a repr of 1,000 nested lists is a RecursionError).
MAX_NESTING = 8

EVENT_STARTED = "housekeeping.started"
EVENT_FINISHED = "housekeeping.finished"
EVENT_RELEASED = "housekeeping.released"
EVENT_ENDED = "housekeeping.ended"
EVENT_STUCK = "housekeeping.stuck"
EVENT_DRAINED = "resource.drained"
EVENT_UNDRAINED = "resource.undrained"
EVENT_HEARTBEAT = "service.heartbeat"
HEARTBEAT_SECONDS = 2.0


# Errors travel back to the client as {"code", "message"}.
ProtocolError = HkError


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    # strict_map_key=False: ints as keys are legitimate in our maps' values.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def nesting_depth_over(value: Any, limit: int = MAX_NESTING) -> bool:
    """True if containers nest deeper than `limit`; iterative, so any depth is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def request(method: str, params: dict[str, Any] | None = None, req_id: int = 0) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "method": method, "params": params or {}}


class Prepacked(dict[str, Any]):
    """A result whose `key` is already msgpack bytes (`packed`), the rest packed as
    usual: `housekeeping.list` asked by many clients between two changes packs its
    units once (pack_reply splices the bytes in)."""

    def __init__(self, fields: dict[str, Any], key: str, packed: bytes) -> None:
        super().__init__(fields)
        self.key = key
        self.packed = packed


def pack_reply(reply: dict[str, Any]) -> bytes:
    """pack(reply), with a Prepacked result's bytes spliced in unchanged."""
    result = reply.get("result")
    if not isinstance(result, Prepacked):
        return pack(reply)
    packer = msgpack.Packer(use_bin_type=True)
    head = {k: v for k, v in reply.items() if k != "result"}
    parts = [packer.pack_map_header(len(head) + 1)]
    for key, value in head.items():
        parts += [packer.pack(key), packer.pack(value)]
    parts += [packer.pack("result"), packer.pack_map_header(len(result) + 1)]
    for key, value in result.items():
        parts += [packer.pack(key), packer.pack(value)]
    parts += [packer.pack(result.key), result.packed]
    return b"".join(parts)


def reply_ok(req_id: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "result": result}


def reply_error(req_id: int, code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "error": {"code": code, "message": message}}


def default_endpoint() -> str:
    """A private ipc endpoint: only the service's user can enter its directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    # os.path, not pathlib: this is on the command line's start-up path.
    base = os.path.join(runtime, "hk") if runtime else f"/tmp/hk-{os.getuid()}"
    return f"ipc://{base}/hk.sock"


# An AF_UNIX socket path (sun_path) holds 108 bytes with the terminating NUL.
IPC_PATH_MAX = 107


def endpoint_problem(endpoint: str, *, bind: bool = False) -> str | None:
    """What is wrong with an endpoint, quoting it; None if the service could use it.

    One set of rules for the service's config and its clients, so a typo is named the
    same way on both sides instead of surfacing as a ZMQError. `bind` allows tcp port `*`.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("ipc", "tcp"):
        return (
            f"'{endpoint}' is not an ipc:// or tcp:// endpoint "
            "(for example ipc:///run/hk/hk.sock or tcp://host:5555)"
        )
    if scheme == "ipc":
        if not rest:
            return f"'{endpoint}' has no socket path"
        if rest.startswith("@"):
            # An abstract socket has no file, so no permissions to restrict who connects.
            return f"'{endpoint}' is an abstract socket: give a file path"
        size = len(os.fsencode(rest))
        if size > IPC_PATH_MAX:
            return (
                f"the socket path of '{endpoint}' is {size} bytes, over the "
                f"{IPC_PATH_MAX}-byte limit of ipc socket paths"
            )
        return None
    host, colon, port = rest.rpartition(":")
    port_ok = (bind and port == "*") or (
        port.isascii() and port.isdigit() and 0 < int(port) < 65536
    )
    if not (colon and host and port_ok):
        return f"'{endpoint}' needs a host and a port (tcp://host:5555)"
    return None


def events_endpoint_for(endpoint: str) -> str:
    if endpoint.startswith("ipc://"):
        return endpoint + "-events"
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint.rpartition(":")
        if port.isdigit():
            return f"{host}:{int(port) + 1}"
    raise ValueError(f"cannot derive an events endpoint from '{endpoint}': set events-endpoint")
