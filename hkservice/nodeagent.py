"""`hkservice agent`: the node agent, parent of the housekeeping commands of its node(s).

It is the local agent (hkservice.agent: sessions, journal, acked exits, adoption after a
restart of either side) with another transport: instead of binding a socket the service
connects to, it connects out to the service's `[agents] endpoint` with a DEALER and CURVE,
so nodes need no open port and an agent started before the service simply waits.

Which hosts it serves is the service's decision, from the metadata of this agent's key
in its keys directory; the agent names the hosts it means to serve in its `ready` (the
key's hosts unless `--hosts` narrows them, for a key shared by every node) and the
service takes only those its key names.

Over the local agent's messages (docs/protocol.md), the node agent sends
  {"op": "ready", "hosts": [...], "pid"}  after each handshake: the service answers with
                                          its hello, as the local runner opens with one
  {"op": "leaving"}                       when stopped, so its nodes show offline at once
libzmq does not retry a handshake the service refused, even once the key is authorised
(spec/agents.md, pitfall 3): the agent watches its monitor socket and opens a new
connection after a pause, logging the refusal once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from hkservice import keys, limits
from hkservice.agent import Agent, UntrustedJournal, agent_socket_options
from hkservice.cluster import Cluster
from hkservice.config import state_home
from hkservice.protocol import pack
from hkservice.statedir import StateError, create_private, private_dir

log = logging.getLogger("hkservice.agent")

RETRY_SECONDS = 5.0
# After a connection ends: libzmq's own reconnect interval.
RECONNECT_SECONDS = 0.1
# libzmq's own heartbeats: a connection silent this long is dropped and made again, so a
# service that went away without a word (kill -9, a partition) is found by the agent too.
HEARTBEAT_MS = 5000
HEARTBEAT_TIMEOUT_MS = 15000
MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_DISCONNECTED
)


class NodeAgent(Agent):
    what = "the node agent"

    def __init__(
        self,
        run_dir: Path,
        connect: str,
        key: keys.Certificate,
        server_key: keys.Certificate,
        hosts: list[str],
        retry: float = RETRY_SECONDS,
    ) -> None:
        super().__init__(run_dir, connect, idle_exit=math.inf)
        assert key.secret is not None
        self.key = key
        self.server_key = server_key
        self.hosts = hosts
        self.retry = retry
        self._monitor: zmq.asyncio.Socket | None = None
        self._receiving: asyncio.Task[None] | None = None
        self._refused = False
        self._connected = False
        self._pending = False
        # Set to replace the socket (the service revoked this agent's key).
        self._restart = asyncio.Event()
        self._asking: asyncio.Task[None] | None = None

    def _open_socket(self) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        agent_socket_options(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.key.secret or b"")
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.key.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key.public)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self._monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        sock.connect(self.endpoint)
        return sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._sock.close(linger=0)
            self._sock = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    async def _transport(self) -> None:
        """Receive, and watch the connection: after a refused handshake libzmq gives up on
        this socket, so a new one is opened after a pause (the key may be authorised
        meanwhile); after every successful handshake the agent says it is ready."""
        log.info(
            "hkservice agent (pid %d) for %s: connecting to %s with key %s",
            os.getpid(),
            ",".join(self.hosts),
            self.endpoint,
            self.key.name,
        )
        while True:
            self._receiving = asyncio.create_task(self._receive())
            try:
                await self._watch()
            finally:
                self._receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                    await self._receiving
            self._close_socket()
            await asyncio.sleep(self.retry if self._refused else RECONNECT_SECONDS)
            self._sock = self._open_socket()

    async def _watch(self) -> None:
        """Returns when the socket must be replaced: the service refused the handshake,
        or the connection ended. libzmq reconnects by itself after a network error but
        not after a protocol error (a message over MAXMSGSIZE, say): a new socket covers
        both, and loses nothing, since the service's hello on the new connection asks
        for every exit not acknowledged."""
        while True:
            event = await self._next_event()
            if event is None:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self._refused or not self._connected:
                    log.info("connected to the service at %s", self.endpoint)
                self._refused = False
                self._connected = True
                await self._send(self._ready_message())
            elif event == zmq.EVENT_DISCONNECTED:
                if self._connected:
                    log.warning("lost the connection to the service at %s", self.endpoint)
                self._connected = False
                return
            else:
                if not self._refused:  # once, not at every retry
                    log.error(
                        "the service at %s refused this agent's key %s (%s): not in its "
                        "agents keys, or not for these hosts, or the wrong --server-key; "
                        "trying again every %g s",
                        self.endpoint,
                        self.key.path,
                        "authentication"
                        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                        else "handshake",
                        self.retry,
                    )
                self._refused = True
                self._connected = False
                return

    def _ready_message(self) -> dict[str, object]:
        return {
            "op": "ready",
            "hosts": self.hosts,
            "pid": os.getpid(),
            "name": self.key.name,
            # Where the commands' output stays (`hkconsole output` says so).
            "run_dir": str(self.run_dir),
        }

    async def _next_event(self) -> int | None:
        """The next monitor event, or None when the socket must be replaced at once."""
        assert self._monitor is not None
        received = asyncio.ensure_future(self._monitor.recv_multipart())
        restart = asyncio.ensure_future(self._restart.wait())
        done, _ = await asyncio.wait({received, restart}, return_when=asyncio.FIRST_COMPLETED)
        if restart in done:
            received.cancel()
            self._restart.clear()
            return None
        restart.cancel()
        return int(parse_monitor_message(received.result())["event"])

    async def _ask_again(self) -> None:
        """While the key is pending, say ready again now and then: once an operator
        accepts it, the next one gets in."""
        while self._pending:
            await asyncio.sleep(self.retry)
            if self._pending:
                await self._send(self._ready_message())

    async def _leaving(self) -> None:
        if self._connected:
            await self._send({"op": "leaving"})
            await asyncio.sleep(0.1)  # sent, not just queued, before the socket closes

    async def _handle(self, identity: bytes, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "again":  # the service dropped this connection: start over
            await self._send(self._ready_message())
            return
        if op == "pending":
            if not self._pending:
                log.warning(
                    "the service at %s does not know this agent's key %s yet: it keeps it "
                    "pending until an operator runs `hkservice keys accept %s` there; "
                    "asking again every %g s",
                    self.endpoint,
                    self.key.path,
                    self.key.name,
                    self.retry,
                )
                self._pending = True
                self._asking = asyncio.create_task(self._ask_again())
            return
        if op == "revoked":
            log.error(
                "the service at %s does not accept this agent's key %s (rejected or "
                "revoked): disconnected; trying again every %g s",
                self.endpoint,
                self.key.path,
                self.retry,
            )
            self._pending = False
            self._refused = True
            self._restart.set()
            return
        if op == "hello" and self._pending:
            log.info("the service accepted this agent's key %s", self.key.path)
            self._pending = False
        await super()._handle(identity, message)

    def _maybe_exit_after_bye(self) -> None:
        """A node agent is the node's daemon: a service that stops (even killing every
        command) does not stop it; it waits for the next one."""

    def _split(self, frames: list[bytes]) -> tuple[bytes, bytes]:
        return b"", frames[-1]

    def _session_from_the_future(self, session: int) -> bool:
        # The service's sessions come from its own clock, not this machine's; the key
        # exchange already proved who sent them.
        return False

    async def _send(self, message: dict[str, object]) -> None:
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                await self._sock.send(pack(message))


def _default_run_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/hk-agent")
    return state_home() / "hk-agent"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hkservice agent",
        description="Run the node agent: connect to the service and run the housekeeping "
        "commands of the hosts this agent's key names.",
        allow_abbrev=False,
    )
    parser.add_argument("--connect", required=True, metavar="tcp://HEAD:PORT")
    parser.add_argument("--key", required=True, type=Path, help="this agent's .key_secret")
    parser.add_argument("--server-key", required=True, type=Path, help="the service's .key")
    parser.add_argument(
        "--hosts",
        metavar="HOSTLIST",
        help="the hosts to serve (default: those the key names, else this host's name)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="journal and output (default /var/lib/hk-agent as root, else ~/.local/state/hk-agent)",
    )
    parser.add_argument("--retry", type=float, default=RETRY_SECONDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s hkservice-agent %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.connect.startswith("tcp://"):
        print(
            f"hkservice agent: ERROR: --connect {args.connect!r}: expected tcp://HOST:PORT",
            file=sys.stderr,
        )
        return 2
    try:
        key = keys.load(args.key, need_secret=True)
        server_key = keys.load(args.server_key)
        hosts_text = args.hosts or key.metadata.get("hosts") or socket.gethostname()
        cluster = Cluster(hosts_text)
    except (keys.KeyFileError, ValueError) as exc:
        print(f"hkservice agent: ERROR: {exc}", file=sys.stderr)
        return 1
    hosts = [cluster.hostname(rank) for rank in range(cluster.size)]
    run_dir: Path = args.run_dir or _default_run_dir()
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        private_dir(run_dir, "the run directory")
    except (OSError, StateError) as exc:
        print(f"hkservice agent: ERROR: {exc}", file=sys.stderr)
        return 1
    lock = os.fdopen(create_private(run_dir / "agent.lock"), "wb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"hkservice agent: ERROR: another agent runs with {run_dir}", file=sys.stderr)
        return 1
    limits.raise_open_files()
    agent = NodeAgent(run_dir, args.connect, key, server_key, hosts, args.retry)
    try:
        asyncio.run(agent.run())
    except UntrustedJournal as exc:
        log.error("%s", exc)
        return 1
    return 0
