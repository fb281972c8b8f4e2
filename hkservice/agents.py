"""The agents runner: each node's commands run on the node, by its `hkservice agent`.

With an `[agents]` section the service binds a ROUTER at `[agents] endpoint` with CURVE;
node agents (hkservice.nodeagent) connect to it. The ZAP handler (on the service's own
context, domain `hk-agents`, enforced: spec/agents.md pitfall 2) accepts public keys
found in `[agents] keys` if every host the key's metadata names is in the cluster; the
User-Id it gives the connection is the key's name, so which nodes a connection may serve
comes from the site's key, never from what the agent says. An unknown key gets in as
pending (User-Id PENDING + key): its `ready` is kept for an operator (hkservice.enrol)
and nothing else it says is read; a rejected one is refused.

Per connection the conversation is the local agent's (docs/protocol.md): the agent says
`ready` after each handshake, the runner says hello with a session and reconciles what
the agent reports (adopt running commands, record exits, relaunch what it never saw).
Ranks of a node without an agent are held: their launch is not sent, and the
reconciliation at its agent's hello starts them. After `lost-after` without an agent
they end `lost: no agent on NODE for 5m` (the core drains the node before releasing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from hkservice import auth, enrol, keys
from hkservice.agent import agent_socket_options
from hkservice.cluster import Cluster
from hkservice.config import AgentsConfig
from hkservice.core import Outcome, job_label
from hkservice.enrol import KeyDirs
from hkservice.errors import HkError
from hkservice.fsd import format_duration_config, format_fsd
from hkservice.protocol import pack, unpack
from hkservice.runner import (
    ExitCallback,
    LaunchSpec,
    RelaunchCallback,
    launch_messages,
    parse_status,
)
from hkservice.text import visible

log = logging.getLogger("hkservice.agents")

ZAP_DOMAIN = b"hk-agents"
# An agent is asked for news this often, and dropped (its nodes offline) when silent for
# SILENCE_SECONDS or lost-after if shorter (pinged 4 times meanwhile then). Flux's
# torpid_max is 30 s too. Each ping is a message each way in Python: every second, they
# were 10% of a core with 1,024 agents connected.
PING_SECONDS = 5.0
SILENCE_SECONDS = 30.0


# The User-Id of a connection whose key is unknown: this, then the key (z85). A key's
# name starts with a letter or digit, so the two never meet.
PENDING = "?"


class _KeyDir:
    """The public keys of one directory, re-read when the directory changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp: float | None = None
        self.keys: dict[bytes, keys.Certificate] = {}

    def reload(self) -> bool:
        """True if the directory changed since the last look."""
        try:
            stamp = self.directory.stat().st_mtime
        except OSError:
            stamp = -1.0
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.keys = keys.load_public_keys(self.directory)
        return True


class AgentKeys:
    """The agents' keys: `[agents] keys` (accepted), and those enrolment keeps pending or
    rejected (hkservice.enrol); answers the ZAP requests of the agents endpoint (each
    refusal logged once per key). An unknown key gets in as pending: it may only say
    which hosts it claims, and is kept for an operator to accept."""

    def __init__(self, dirs: KeyDirs, cluster: Cluster) -> None:
        self.dirs = dirs
        self.directory = dirs.accepted
        self.cluster = cluster
        self._accepted = _KeyDir(dirs.accepted)
        self._rejected = _KeyDir(dirs.rejected)
        # public key -> its hosts as ranks, and what is wrong with them: worked out once
        # per key, not at every handshake (one key shared by 1,024 agents naming 1,024
        # hosts was a million lookups).
        self._hosts: dict[bytes, tuple[set[int], str | None]] = {}
        self._refused: set[tuple[bytes, str]] = set()
        self._pending_logged: set[bytes] = set()
        # key name -> the ranks its metadata names
        self.ranks: dict[str, set[int]] = {}
        # unknown key -> the address it last knocked from
        self.knocking: dict[bytes, str] = {}

    def _reload(self) -> None:
        self._rejected.reload()
        if self._accepted.reload():
            self._hosts = {}
            names = {cert.name for cert in self._accepted.keys.values()}
            # A revoked key's name serves nothing from now on.
            self.ranks = {name: r for name, r in self.ranks.items() if name in names}

    def accepted(self, public: bytes) -> keys.Certificate | None:
        self._reload()
        return self._accepted.keys.get(public)

    def rejected(self, public: bytes) -> bool:
        self._reload()
        return public in self._rejected.keys

    def revoked_names(self, names: Iterable[str]) -> set[str]:
        """Those of `names` no accepted key has any more."""
        self._reload()
        return {name for name in names if name not in self.ranks}

    def allow(self, cert: keys.Certificate, peer: str) -> set[int] | None:
        """The ranks an accepted key serves, or None (logged) if its hosts are wrong."""
        known = self._hosts.get(cert.public)
        if known is None:
            known = self._hosts[cert.public] = self.hosts_problem(cert)
        ranks, problem = known
        if problem is not None:
            self._refuse(cert.public, peer, f"key {cert.name!r} ({cert.path}): {problem}")
            return None
        self.ranks[cert.name] = ranks
        return ranks

    def keep_pending(self, public: bytes, name: str, hosts: list[str], peer: str) -> None:
        """An unknown key's agent said who it is: kept for an operator (logged once)."""
        ranks = sorted({r for h in hosts if (r := self.cluster.rank_of(h)) is not None})
        claimed = self.cluster.nodelist(ranks) if ranks else ""
        path = enrol.record_pending(self.dirs, public, name, claimed, peer, time.time())
        if public not in self._pending_logged:
            self._pending_logged.add(public)
            log.warning(
                "agent key %s (%s) from %s claiming %s is pending: `hkservice keys accept "
                "%s` trusts it%s",
                public.decode(),
                visible(name) or "no name",
                peer,
                claimed or "no host of the cluster",
                visible(name) or public.decode(),
                f" (kept in {path})" if path is not None else "",
            )

    def hosts_problem(self, cert: keys.Certificate) -> tuple[set[int], str | None]:
        text = cert.metadata.get("hosts")
        if not text:
            return set(), "its key names no hosts (hkservice keygen NAME --hosts HOSTLIST)"
        try:
            named = Cluster(text)
        except ValueError as exc:
            return set(), f"its key's hosts are not a hostlist: {exc}"
        ranks: set[int] = set()
        outside: list[str] = []
        for i in range(named.size):
            host = named.hostname(i)
            rank = self.cluster.rank_of(host)
            if rank is None:
                outside.append(host)
            else:
                ranks.add(rank)
        if outside:
            return ranks, f"its key names hosts not in the cluster: {','.join(outside[:5])}"
        return ranks, None

    def answer(self, public: bytes, peer: str) -> bytes | None:
        """The User-Id of an accepted key (its name) or of an unknown one (PENDING and
        the key); None for a refused one."""
        cert = self.accepted(public)
        if cert is not None:
            return cert.name.encode() if self.allow(cert, peer) is not None else None
        rejected = self._rejected.keys.get(public)
        if rejected is not None:
            self._refuse(public, peer, f"key {public.decode()} was rejected ({rejected.path})")
            return None
        if public not in self.knocking and enrol.pending_count(self.dirs) >= enrol.MAX_PENDING:
            self._refuse(
                public,
                peer,
                f"key {public.decode()} is not in {self.directory}, and "
                f"{enrol.MAX_PENDING} keys are pending already (hkservice keys list)",
            )
            return None
        if len(self.knocking) < 4 * enrol.MAX_PENDING:
            self.knocking[public] = peer
        return (PENDING + public.decode()).encode()

    def _refuse(self, public: bytes, peer: str, why: str) -> None:
        # An agent retries every few seconds: one line per key and reason, not a storm.
        if (public, why) not in self._refused:
            self._refused.add((public, why))
            log.warning("refused an agent from %s: %s", peer, why)


@dataclass(eq=False)  # one per connection: compared and hashed by identity
class Link:
    """One connection of a node agent."""

    routing_id: bytes
    name: str  # its key's name
    ranks: set[int]
    user_id: str = ""  # the connection's, from the handshake (PENDING... when it began so)
    run_dir: str = ""  # where the agent keeps its commands' output, as it says
    pid: int = 0
    session: int = 0
    greeted: bool = False
    last_heard: float = 0.0
    pinged: float = 0.0
    expected: set[tuple[int, int]] = field(default_factory=set)


class AgentsRunner:
    """Runner (hkservice.runner.Runner) whose commands run on their nodes' agents."""

    def __init__(
        self,
        config: AgentsConfig,
        cluster: Cluster,
        command: list[str],
        ctx: zmq.asyncio.Context,
        secret_key: bytes,
        state_dir: Path,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.command = command
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._ctx = ctx
        self._secret_key = secret_key
        self.keys = AgentKeys(KeyDirs.of(config.keys, state_dir), cluster)
        self._callback: ExitCallback = lambda jobid, rank, outcome, receipt: None
        self._expected: Callable[[], Iterable[tuple[int, int]]] = lambda: ()
        self._relaunch: RelaunchCallback = lambda keys: None
        self._sock: zmq.asyncio.Socket | None = None
        # The same socket, for sends and reads that never wait.
        self._now: zmq.Socket[bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.links: dict[bytes, Link] = {}
        self.link_of: dict[int, Link] = {}
        started = time.time()
        # rank -> since when it has no agent (every node until its agent connects)
        self.offline_since: dict[int, float] = dict.fromkeys(range(cluster.size), started)
        self._receipts: dict[int, tuple[int, int]] = {}  # receipt -> (rank, agent seq)
        self._next_receipt = 0
        self._held_signals: dict[int, list[tuple[int, int]]] = {}  # rank -> (jobid, signum)
        self._lost: set[tuple[int, int]] = set()

    # -- Runner -------------------------------------------------------------

    def set_exit_callback(self, callback: ExitCallback) -> None:
        self._callback = callback

    @property
    def down_since(self) -> float | None:
        return None  # per node: see offline_nodes()

    def offline_nodes(self) -> dict[int, float]:
        return self.offline_since

    def agents_seen(self) -> dict[str, float]:
        # last_heard is loop time (it times silences): told as wall clock here.
        wall, loop = time.time(), asyncio.get_running_loop().time()
        return {
            link.name: wall - (loop - link.last_heard)
            for link in self.links.values()
            if link.greeted
        }

    def zap_domains(self) -> dict[bytes, Callable[[bytes, str], bytes | None]]:
        return {ZAP_DOMAIN: self.keys.answer}

    async def start(
        self, expected: Callable[[], Iterable[tuple[int, int]]], relaunch: RelaunchCallback
    ) -> None:
        self._expected = expected
        self._relaunch = relaunch
        sock = self._ctx.socket(zmq.ROUTER)
        agent_socket_options(sock)
        sock.setsockopt(zmq.LINGER, 0)
        # A reconnecting agent takes its routing id over rather than being refused.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # No libzmq heartbeats of its own (the agents send theirs, and the pings above
        # find a silent one; each heartbeat is a CURVE message in the I/O thread): TCP
        # keepalives close what a vanished machine left open.
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
        auth.make_curve_server(sock, self._secret_key, ZAP_DOMAIN)
        sock.bind(self.config.endpoint)
        self._sock = sock
        self._now = zmq.Socket.shadow(sock.underlying)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._keep_alive())]
        log.info(
            "waiting for node agents at %s (keys in %s)", self.config.endpoint, self.config.keys
        )

    def launch(self, spec: LaunchSpec) -> None:
        for link, ranks in self._by_link(spec.ranks).items():
            for message in launch_messages(
                spec, ranks, self.command, self.base_env, self.cluster.hostname
            ):
                self._send(link, message)
        # Ranks of offline nodes: held; their agent's hello reconciliation starts them.

    def signal(self, jobid: int, ranks: Iterable[int], signum: int) -> None:
        ranks = list(ranks)
        for link, mine in self._by_link(ranks).items():
            self._send(link, {"op": "signal", "jobid": jobid, "ranks": mine, "signum": signum})
        for rank in ranks:
            if rank not in self.link_of:
                self._held_signals.setdefault(rank, []).append((jobid, signum))

    def ack(self, receipts: list[int]) -> None:
        per_link: dict[bytes, list[int]] = {}
        for receipt in receipts:
            found = self._receipts.pop(receipt, None)
            if found is None:
                continue
            rank, seq = found
            link = self.link_of.get(rank)
            if link is not None:
                per_link.setdefault(link.routing_id, []).append(seq)
        for routing_id, seqs in per_link.items():
            self._send(self.links[routing_id], {"op": "ack", "seqs": seqs})

    def output(self, jobid: int, ranks: Iterable[int], tail: int) -> dict[str, object]:
        """Not fetched from the nodes: the reply says where it is instead (no lines alone
        looked like commands that wrote nothing)."""
        return {
            "lines": [],
            "truncated": False,
            "kept_on_nodes": self._output_elsewhere(jobid, sorted(ranks)),
        }

    def has_output(self, jobid: int) -> list[int] | None:
        """A unit no longer in progress: which ranks it had is not known here, so every
        connected agent's place is named."""
        raise HkError("ENOENT", self._output_elsewhere(jobid, sorted(self.link_of)))

    def _output_elsewhere(self, jobid: int, ranks: list[int]) -> str:
        where: dict[str, list[int]] = {}
        for rank in ranks:
            link = self.link_of.get(rank)
            run_dir = link.run_dir if link is not None and link.run_dir else "RUN-DIR"
            where.setdefault(run_dir, []).append(rank)
        places = "; ".join(
            f"on {self.cluster.nodelist(r)}: {d}/{jobid}/"
            + (f"{r[0]}.out and .err" if len(r) == 1 else "RANK.out and .err")
            for d, r in list(where.items())[:8]
        ) + ("; ..." if len(where) > 8 else "")
        return (
            f"the output of job {job_label(jobid)} stays on its nodes, where their node "
            "agents wrote it: "
            + (places or "RUN-DIR/JOBID/RANK.out and .err of each agent")
            + " (hk does not fetch it)"
        )

    def forget(self, jobid: int) -> None:
        pass

    async def stop_commands(self) -> None:
        for link in list(self.links.values()):
            if link.greeted:
                self._send(link, {"op": "shutdown", "kill": True})

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            # Long enough for what is queued (the last acks, shutdowns) to leave.
            self._sock.close(linger=1000)
            self._sock = self._now = None

    # -- connections --------------------------------------------------------

    def _by_link(self, ranks: Iterable[int]) -> dict[Link, list[int]]:
        grouped: dict[Link, list[int]] = {}
        for rank in ranks:
            link = self.link_of.get(rank)
            if link is not None:
                grouped.setdefault(link, []).append(rank)
        return grouped

    def _send(self, link: Link, message: dict[str, Any]) -> None:
        message["session"] = link.session
        self._send_raw(link.routing_id, message)

    def _send_raw(self, routing_id: bytes, message: dict[str, Any]) -> None:
        """To a connection, whether or not it is a link. At once, without a future:
        with no high-water mark a ROUTER never blocks (a message to a peer that is gone
        is dropped), and a future per ping cost most of the idle CPU with 1,024 agents."""
        if self._now is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            self._now.send_multipart([routing_id, pack(message)], flags=zmq.NOBLOCK)

    async def _read(self) -> None:
        assert self._sock is not None and self._now is not None
        sock, now = self._sock, self._now
        while True:
            # Everything already queued is taken at once: a thousand agents' pongs are
            # a thousand messages a second, not a thousand turns of the loop.
            batch = [await sock.recv_multipart(copy=False)]
            with contextlib.suppress(zmq.Again):
                while len(batch) < 1000:
                    batch.append(now.recv_multipart(zmq.NOBLOCK, copy=False))
            for frames in batch:
                if len(frames) != 2:
                    continue
                try:
                    user_id = frames[-1].get("User-Id")
                    self._take(frames[0].bytes, user_id, frames[1].bytes)
                except Exception:  # one bad message must not end the agents endpoint
                    log.exception("agents: cannot handle a message")

    def _take(self, routing_id: bytes, name: str, body: bytes) -> None:
        try:
            message = unpack(body)
        except Exception:
            message = None
        if not isinstance(message, dict):
            log.warning("agents: undecodable message from agent %s", visible(name))
            return
        op = message.get("op")
        link = self.links.get(routing_id)
        if link is not None and link.user_id != name:
            return  # a routing id is the client's choice: only its authenticated key counts
        if op == "ready":
            self._ready(routing_id, name, message)
            return
        if link is None and name.startswith(PENDING):
            return  # an unknown key may say who it is, nothing more
        if link is None:
            # A connection the service dropped (silent too long, a SIGSTOP) that is still
            # up on the agent's side: it would never say ready again by itself.
            if op != "leaving":
                self._send_raw(routing_id, {"op": "again"})
            return
        link.last_heard = asyncio.get_running_loop().time()
        if op == "hello" and not link.greeted:
            self._greeted(link, message)
        elif op in ("pong", "exits"):
            self._exits(link, message.get("exits", []))
        elif op == "leaving":
            log.info("agent %s (pid %d) is stopping", name, link.pid)
            self._drop(link)

    def _ready(self, routing_id: bytes, user_id: str, message: dict[str, Any]) -> None:
        name = user_id
        if user_id.startswith(PENDING):
            # Unknown at its handshake: accepted since (`hkservice keys accept`, or copied
            # in by hand), or still pending.
            public = user_id[len(PENDING) :].encode()
            cert = self.keys.accepted(public)
            peer = self.keys.knocking.get(public, "an unknown address")
            if cert is None and self.keys.rejected(public):
                self._send_raw(routing_id, {"op": "revoked"})  # it goes; refused from now on
                return
            if cert is None or self.keys.allow(cert, peer) is None:
                if cert is None:
                    claimed_name = message.get("name")
                    hosts = message.get("hosts")
                    self.keys.keep_pending(
                        public,
                        claimed_name if isinstance(claimed_name, str) else "",
                        [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else [],
                        peer,
                    )
                self._send_raw(routing_id, {"op": "pending"})
                return
            name = cert.name
        allowed = self.keys.ranks.get(name, set())
        claimed = message.get("hosts")
        ranks: set[int] = set()
        if isinstance(claimed, list):
            for host in claimed:
                rank = self.cluster.rank_of(host) if isinstance(host, str) else None
                if rank is None or rank not in allowed:
                    log.warning(
                        "agent %s claims %s, which its key does not name: ignored",
                        visible(name),
                        visible(str(host)),
                    )
                else:
                    ranks.add(rank)
        if not ranks:
            log.warning("agent %s serves no host of the cluster: not used", visible(name))
            return
        old = self.links.get(routing_id)
        if old is not None:
            self._drop(old, quiet=True)
        for rank in ranks:
            previous = self.link_of.get(rank)
            if previous is not None:
                # The same node again (a restarted agent, a new connection): the newest
                # connection serves it.
                self._drop(previous, quiet=True)
        pid = message.get("pid")
        link = Link(routing_id, name, ranks, user_id, pid=pid if isinstance(pid, int) else 0)
        run_dir = message.get("run_dir")
        if isinstance(run_dir, str) and len(run_dir) <= 1024:
            link.run_dir = visible(run_dir)
        link.session = time.time_ns()
        link.last_heard = asyncio.get_running_loop().time()
        self.links[routing_id] = link
        # What the service believes running on these nodes when it says hello: launches
        # after it go on this connection, after the hello (the agent sees them in order).
        link.expected = {(j, r) for j, r in self._expected() if r in ranks}
        self._send(link, {"op": "hello"})

    def _greeted(self, link: Link, hello: dict[str, Any]) -> None:
        link.greeted = True
        link.pid = int(hello.get("pid", link.pid) or 0)
        for rank in link.ranks:
            self.link_of[rank] = link
            self.offline_since.pop(rank, None)
        running: set[tuple[int, int]] = set()
        for item in hello.get("running", []):
            key = (int(item[0]), int(item[1]))
            if key[1] in link.ranks:
                running.add(key)
            else:
                log.warning(
                    "agent %s reports job %d rank %d, not one of its nodes: ignored",
                    visible(link.name),
                    *key,
                )
        ended: dict[tuple[int, int], tuple[int, str]] = {}
        saved: list[int] = []
        for seq, jobid, rank, status in hello.get("exits", []):
            key = (int(jobid), int(rank))
            if key[1] not in link.ranks:
                log.warning(
                    "agent %s reports an exit of job %d rank %d, not one of its nodes: ignored",
                    visible(link.name),
                    *key,
                )
            elif key in link.expected and key not in self._lost:
                ended[key] = (int(seq), str(status))
            else:
                if key in self._lost:
                    log.info("job %d rank %d ended after it was reported lost: %s", *key, status)
                    self._lost.discard(key)
                saved.append(int(seq))  # recorded already (or decided lost): forget it
        never: list[tuple[int, int]] = []
        for key in sorted(link.expected):
            if key in self._lost:
                continue
            if key in ended:
                seq, status = ended[key]
                self._callback(*key, parse_status(status), self._receipt(key[1], seq))
            elif key in running:
                log.info("adopted job %d rank %d (still running)", *key)
            else:
                never.append(key)
        if saved:
            self._send(link, {"op": "ack", "seqs": saved})
        log.info(
            "agent %s (pid %d) connected: serves %s",
            link.name,
            link.pid,
            self.cluster.nodelist(sorted(link.ranks)),
        )
        if never:
            self._relaunch(never)
        for rank in sorted(link.ranks):
            for jobid, signum in self._held_signals.pop(rank, []):
                self._send(
                    link, {"op": "signal", "jobid": jobid, "ranks": [rank], "signum": signum}
                )

    def _receipt(self, rank: int, seq: int) -> int:
        self._next_receipt += 1
        self._receipts[self._next_receipt] = (rank, seq)
        return self._next_receipt

    def _exits(self, link: Link, exits: list[Any]) -> None:
        if not link.greeted:
            return
        late: list[int] = []
        for seq, jobid, rank, status in exits:
            key = (int(jobid), int(rank))
            if key[1] not in link.ranks:
                log.warning(
                    "agent %s reports an exit of job %d rank %d, not one of its nodes: ignored",
                    visible(link.name),
                    *key,
                )
            elif key in self._lost:
                # Decided lost already: its late exit changes nothing.
                log.info("job %d rank %d ended after it was reported lost: %s", *key, status)
                self._lost.discard(key)
                late.append(int(seq))
            else:
                self._callback(*key, parse_status(str(status)), self._receipt(key[1], int(seq)))
        if late:
            self._send(link, {"op": "ack", "seqs": late})

    def _drop(self, link: Link, quiet: bool = False, since: float | None = None) -> None:
        self.links.pop(link.routing_id, None)
        now = time.time() if since is None else since
        for rank in link.ranks:
            if self.link_of.get(rank) is link:
                del self.link_of[rank]
                self.offline_since[rank] = now
        if not quiet and link.greeted:
            log.warning(
                "agent %s (pid %d) is gone: %s offline",
                link.name,
                link.pid,
                self.cluster.nodelist(sorted(link.ranks)),
            )

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Never silent longer than lost-after allows: its ranks are lost by then.
            silence = min(SILENCE_SECONDS, self.config.lost_after)
            ping_every = min(PING_SECONDS, silence / 4)
            await asyncio.sleep(min(1.0, ping_every))
            now = loop.time()
            self._disconnect_revoked()
            for link in list(self.links.values()):
                if now - link.last_heard > silence:
                    log.warning(
                        "agent %s (pid %d) silent for %s", link.name, link.pid, format_fsd(silence)
                    )
                    # Offline since it was last heard: lost-after counts from then.
                    self._drop(link, since=time.time() - (now - link.last_heard))
                elif link.greeted and now - max(link.last_heard, link.pinged) >= ping_every:
                    link.pinged = now
                    self._send(link, {"op": "ping"})
            self._declare_lost()

    def _disconnect_revoked(self) -> None:
        """Links whose key is no longer accepted (`hkservice keys revoke`, or its file
        removed) are dropped at once and told so: the agent closes its connection."""
        revoked = self.keys.revoked_names({link.name for link in self.links.values()})
        for link in [link for link in self.links.values() if link.name in revoked]:
            log.warning(
                "agent %s (pid %d): its key is no longer accepted: disconnected, %s offline",
                link.name,
                link.pid,
                self.cluster.nodelist(sorted(link.ranks)),
            )
            self._send_raw(link.routing_id, {"op": "revoked"})
            self._drop(link, quiet=True)

    def _declare_lost(self) -> None:
        lost_after = self.config.lost_after
        now = time.time()
        gone = {r for r, since in self.offline_since.items() if now - since >= lost_after}
        if not gone:
            return
        for key in list(self._expected()):
            jobid, rank = key
            if rank in gone and key not in self._lost:
                self._lost.add(key)
                why = (
                    f"no agent on {self.cluster.hostname(rank)} for "
                    f"{format_duration_config(lost_after)}"
                )
                log.error("job %d rank %d: %s", jobid, rank, why)
                self._callback(jobid, rank, Outcome("lost", text=why), None)
